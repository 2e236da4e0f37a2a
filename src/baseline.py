"""Runs that share nothing (`useSharedMap: false`): plain crawlee, the baseline the benchmarks compare with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apify import Actor
from crawlee.crawlers import BeautifulSoupCrawler

from .page_items import PageItems

if TYPE_CHECKING:
    from .crawl_options import CrawlOptions, Handler
    from .input import CrawlerInput
    from .supervisor import Supervisor


async def crawl_without_sharing(
    crawl_input: CrawlerInput,
    options: CrawlOptions,
    run_id: str,
    supervisor: Supervisor,
    router: Handler,
) -> None:
    """Crawl with this run's own queue only, `router` handling the pages; every run crawls the whole site."""
    crawler = BeautifulSoupCrawler(
        max_requests_per_crawl=crawl_input.max_requests_per_crawl, **options.crawler_kwargs(PageItems().wrap(router))
    )
    await supervisor.run_crawler(crawler, crawler.run(options.start_urls))
    await Actor.set_value('OUTPUT', {'runId': run_id, 'pagesProcessed': crawler.statistics.state.requests_finished})

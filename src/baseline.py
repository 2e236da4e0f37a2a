"""Runs that share nothing (`useSharedMap: false`): plain crawlee, the baseline the benchmarks compare with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apify import Actor
from crawlee.crawlers import BeautifulSoupCrawler

if TYPE_CHECKING:
    from .crawl_options import CrawlOptions
    from .input import CrawlerInput
    from .supervisor import Supervisor


async def crawl_without_sharing(
    crawl_input: CrawlerInput,
    options: CrawlOptions,
    run_id: str,
    supervisor: Supervisor,
    crawler_options: dict[str, Any],
) -> None:
    """Crawl with this run's own queue only; every run crawls the whole site."""
    crawler = BeautifulSoupCrawler(max_requests_per_crawl=crawl_input.max_requests_per_crawl, **crawler_options)
    await supervisor.run_crawler(crawler, crawler.run(options.start_urls))
    await Actor.set_value('OUTPUT', {'runId': run_id, 'pagesProcessed': crawler.statistics.state.requests_finished})

"""A BeautifulSoup crawler whose parallel runs share URL state through a shared map in a named key-value store.

Read this file top to bottom: it is the template. The distributed work lives in `src/shared_map/` behind
`SharedRequestManager`: the run's request queue, made to skip what other runs know and to fetch only the URLs this
run owns, with the shared map (URL -> status, synced through the named store) behind it. `docs/architecture.md`
follows one URL through it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from apify import Actor
from crawlee import ConcurrencySettings

from .baseline import crawl_without_sharing
from .crawl_options import CrawlOptions
from .input import CrawlerInput, exit_if_input_file_is_invalid
from .lean_crawler import LeanBeautifulSoupCrawler
from .migration import joined_before, paused_on_migration
from .preflight import read_input
from .results import skip_saved_pages
from .routes import router
from .shared_map import SharedRequestManager
from .summary import finish_run
from .supervisor import Supervisor


async def main() -> None:
    """Crawl the start URLs; with `parallelRuns` > 1, together with that many runs in total."""
    exit_if_input_file_is_invalid()  # Actor.init() would fail on a broken INPUT.json with a long traceback
    async with Actor:
        prepared = await read_input()  # on invalid input: one line saying what to fix, and the run fails
        if prepared is None:
            return
        crawl_input, options = prepared  # options: URL lists, sitemaps, globs, robots.txt, rate, proxy
        run_id = Actor.configuration.actor_run_id or f'local-{uuid.uuid4().hex[:8]}'
        async with Supervisor.fan_out(crawl_input, run_id) as supervisor:  # the other runs; Ctrl-C stops them all
            if not crawl_input.use_shared_map:
                await crawl_without_sharing(
                    crawl_input, options, run_id, supervisor, crawler_options(crawl_input, options)
                )
                return
            started = time.monotonic()
            async with SharedRequestManager.open_crawl(
                crawl_input.shared_store_name,
                connection=crawl_input.shared_storage_connection,
                run_id=run_id,
                sync_interval_secs=crawl_input.sync_interval_secs,
                dead_after_secs=crawl_input.dead_run_timeout_secs,
                expected_runs=crawl_input.parallel_runs,
                with_depths=crawl_input.max_crawl_depth is not None,
                max_processed=crawl_input.max_requests_per_crawl,
            ) as manager:
                # keep_alive: an empty queue does not end the run while other runs may still hand URLs over to it.
                crawler = LeanBeautifulSoupCrawler(  # BeautifulSoupCrawler, less CPU per page (src/lean_crawler.py)
                    request_manager=options.wrap(manager), keep_alive=True, **crawler_options(crawl_input, options)
                )
                await skip_saved_pages(manager)  # a resumed run: the pages already in its dataset are done
                if not await joined_before():  # a migrated run goes on at once: the others may have finished
                    await supervisor.wait_unless_stopped(manager.wait_for_runs())
                async with paused_on_migration(crawler, manager):  # on the platform: nothing saved is lost
                    await supervisor.run_crawler(crawler, manager.run(crawler, options.start_urls))
            await finish_run(crawl_input, run_id, crawler, manager, supervisor, started=started)


def crawler_options(crawl_input: CrawlerInput, options: CrawlOptions) -> dict[str, Any]:
    """The crawler's options from the input, as in the official template."""
    return {
        'request_handler': router,
        'max_request_retries': crawl_input.max_request_retries,
        'retry_on_blocked': crawl_input.retry_on_blocked,
        'max_crawl_depth': crawl_input.max_crawl_depth,
        'concurrency_settings': ConcurrencySettings(
            max_concurrency=crawl_input.max_concurrency,
            desired_concurrency=min(10, crawl_input.max_concurrency),
        ),
        **options.crawler_options,  # robots.txt, proxy
    }

"""The official Apify template (`async with Actor:`, the input, a `Router`, `crawler.run`) plus what shares the crawl.

`Supervisor.fan_out` starts the other runs; `SharedRequestManager` (`src/shared_map/`) is the run's request queue,
made to skip what other runs know and to fetch only the URLs this run owns. `docs/architecture.md` follows one URL.
"""

from __future__ import annotations

import time
import uuid

from apify import Actor

from .baseline import crawl_without_sharing
from .input import exit_if_input_file_is_invalid
from .lean_crawler import LeanBeautifulSoupCrawler
from .migration import joined_before, paused_on_migration
from .page_items import PageItems
from .preflight import read_input
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
                await crawl_without_sharing(crawl_input, options, run_id, supervisor, router)
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
                pages = await PageItems.open(manager.shared)  # a resume fetches its unsynced saved pages again
                crawler = LeanBeautifulSoupCrawler(  # BeautifulSoupCrawler, less CPU per page (src/lean_crawler.py)
                    request_manager=options.wrap(manager),  # skips excluded URLs, paces to maxRequestsPerMinute
                    keep_alive=True,  # an empty queue does not end the run: other runs may still hand URLs over
                    **options.crawler_kwargs(pages.wrap(router), is_known=manager.is_known),  # known links: no requests
                )
                if not await joined_before():  # a migrated run goes on at once: the others may have finished
                    await supervisor.wait_unless_stopped(manager.wait_for_runs())
                async with paused_on_migration(crawler, manager):  # on the platform: nothing saved is lost
                    await supervisor.run_crawler(crawler, manager.run(crawler, options.start_urls))
            await finish_run(crawl_input, run_id, crawler, manager, supervisor, started=started)

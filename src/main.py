"""A BeautifulSoup crawler whose parallel runs share URL state through a shared map in a named key-value store.

Read this file top to bottom: it is the template. The distributed work lives in `src/shared_map/` behind two
objects: `SharedMap` (the URL -> status map every run keeps in memory and syncs) and `SharedRequestManager` (the
run's request queue, made to skip what other runs know and to fetch only the URLs this run owns).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from apify import Actor
from crawlee import ConcurrencySettings
from crawlee.crawlers import BeautifulSoupCrawler

from .crawl_options import CrawlOptions, prepare_crawl_options
from .fanout import SUMMARY_PREFIX, ChildRun, fan_out, summary_table
from .input import CrawlerInput, InputError, exit_if_input_file_is_invalid
from .preflight import prepare_shared_store
from .routes import router
from .shared_map import SharedMap, SharedRequestManager


async def main() -> None:
    """Crawl the start URLs; with `parallelRuns` > 1, together with that many runs in total."""
    exit_if_input_file_is_invalid()  # Actor.init() would fail on a broken INPUT.json with a long traceback
    async with Actor:
        try:
            crawl_input = CrawlerInput.parse(await Actor.get_input() or {})
            await prepare_shared_store(crawl_input)  # before children start: store reachable, earlier results kept
            options = await prepare_crawl_options(crawl_input)  # URL lists, sitemaps, globs, robots.txt, rate, proxy
        except InputError as exc:
            Actor.log.error(str(exc))
            await Actor.fail(status_message=str(exc))
            return
        if crawl_input.unknown_fields:
            Actor.log.warning(f'Ignoring unknown input fields: {", ".join(crawl_input.unknown_fields)}')
        run_id = Actor.configuration.actor_run_id or f'local-{uuid.uuid4().hex[:8]}'
        children = await fan_out(crawl_input, run_id)
        try:
            await crawl(crawl_input, options, run_id, children)
        finally:
            for child in children:
                child.stop_if_running()  # a failed parent must not leave local child processes behind


async def crawl(crawl_input: CrawlerInput, options: CrawlOptions, run_id: str, children: list[ChildRun]) -> None:
    """This run's share of the crawl; the parent also prints every run's summary at the end."""
    started = time.monotonic()

    crawler_options: dict[str, Any] = {
        'request_handler': router,
        'max_request_retries': crawl_input.max_request_retries,
        'max_crawl_depth': crawl_input.max_crawl_depth,
        'concurrency_settings': ConcurrencySettings(
            max_concurrency=crawl_input.max_concurrency,
            desired_concurrency=min(10, crawl_input.max_concurrency),
        ),
        **options.crawler_options,  # robots.txt, proxy
    }
    if not crawl_input.use_shared_map:  # Runs that share nothing: the baseline the benchmark compares with.
        crawler = BeautifulSoupCrawler(max_requests_per_crawl=crawl_input.max_requests_per_crawl, **crawler_options)
        await crawler.run(options.start_urls)
        summary = {'runId': run_id, 'pagesProcessed': crawler.statistics.state.requests_finished}
        await Actor.set_value('OUTPUT', summary)
        return

    shared = await SharedMap.open(
        crawl_input.shared_store_name,
        connection=crawl_input.shared_storage_connection,
        run_id=run_id,
        heartbeat_secs=min(crawl_input.sync_interval_secs, crawl_input.dead_run_timeout_secs / 4),
    )
    depths = None
    if crawl_input.max_crawl_depth is not None:  # so a URL handed to another run keeps its depth
        depths = SharedMap(shared.store, run_id=run_id, prefix='SMD')
        await depths.initialize()
    manager = await SharedRequestManager.open(
        shared,
        sync_interval_secs=crawl_input.sync_interval_secs,
        dead_after_secs=crawl_input.dead_run_timeout_secs,
        expected_runs=crawl_input.parallel_runs,
        depths=depths,
        max_processed=crawl_input.max_requests_per_crawl,
    )
    # keep_alive: an empty queue does not end the run while other runs may still hand URLs over to it.
    crawler = BeautifulSoupCrawler(request_manager=options.wrap(manager), keep_alive=True, **crawler_options)
    await manager.wait_for_runs(timeout_secs=max(60.0, 3 * crawl_input.sync_interval_secs))
    manager.start(on_done=crawler.stop)
    await crawler.run(options.start_urls)
    await manager.close()
    if depths is not None:
        await depths.close()
    await shared.close()

    state = crawler.statistics.state
    summary = {
        'runId': run_id,
        'pagesProcessed': state.requests_finished,
        'pagesFailed': state.requests_failed,
        **{_camel(name): value for name, value in manager.stats.to_dict().items()},
        'storeOperations': shared.stats.store_operations + (depths.stats.store_operations if depths else 0),
        'entriesInMap': len(shared),
        'seconds': round(time.monotonic() - started, 2),
    }
    await Actor.set_value('OUTPUT', summary)
    await shared.store.set_value(f'{SUMMARY_PREFIX}{run_id}', summary)
    Actor.log.info(f'Run summary: {summary}')

    if children:
        for child in children:
            await child.wait()
        summaries = [summary]
        for child in children:
            child_summary = await shared.store.get_value(f'{SUMMARY_PREFIX}{child.run_id}')
            summaries.append(child_summary or _missing_summary(child.run_id))
        Actor.log.info('Parallel runs:\n' + summary_table(summaries))


def _camel(name: str) -> str:
    head, *rest = name.split('_')
    return head + ''.join(part.title() for part in rest)


def _missing_summary(run_id: str) -> dict[str, Any]:
    names = ['pagesProcessed', 'pagesFailed', 'knownSkipped', 'handedOver', 'takenOver', 'skippedBeforeFetch']
    return {'runId': f'{run_id} (no summary: failed?)', **dict.fromkeys(names, 0), 'syncs': 0, 'storeOperations': 0,
            'seconds': 0.0}  # fmt: skip

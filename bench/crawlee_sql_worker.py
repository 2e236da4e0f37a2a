"""Plain crawlee, for the frontier benchmark: one of several processes sharing ONE request queue on PostgreSQL.

A `BeautifulSoupCrawler` whose request queue is a named `RequestQueue` of crawlee's `SqlStorageClient`: several
processes started with the same connection string crawl one site together, with crawlee's own locking (a fetched
request is blocked for the others). The handler does what the template's `src/routes.py` does: log, save the
page's URL, title and depth, enqueue the links to the same host. Datasets stay in each process's own storage folder
(`CRAWLEE_STORAGE_DIR`), as the template's runs keep theirs.

    python -m bench.crawlee_sql_worker --connection postgresql+asyncpg://... --start-url http://127.0.0.1:8322/ \
        [--prepare] [--summary run.json]

`--prepare` creates the tables and adds the start URL, then exits: run it once before starting the workers, so they
do not race to create the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from crawlee import ConcurrencySettings
from crawlee.crawlers import BeautifulSoupCrawler, BeautifulSoupCrawlingContext
from crawlee.router import Router
from crawlee.storage_clients import SqlStorageClient
from crawlee.storages import RequestQueue

QUEUE_NAME = 'bench-frontier'
Json = dict[str, Any]
MAX_REQUEST_RETRIES = 3  # the template's default (`maxRequestRetries`)

router = Router[BeautifulSoupCrawlingContext]()


@router.default_handler
async def default_handler(context: BeautifulSoupCrawlingContext) -> None:
    """The template's handler (src/routes.py) without the shared map: save the page, enqueue same-host links."""
    context.log.info(f'Processing {context.request.url} ...')
    title = context.soup.title.get_text(strip=True) if context.soup.title else None
    await context.push_data(
        {
            'url': context.request.url,
            'loadedUrl': context.request.loaded_url,
            'title': title,
            'depth': context.request.crawl_depth,
        }
    )
    await context.enqueue_links(strategy='same-hostname')


async def run(connection: str, start_url: str, *, prepare: bool, max_concurrency: int) -> Json | None:
    """Prepare the shared queue, or crawl from it until it is finished (every request handled by some process).

    Returns what this process did: pages processed and failed, seconds (None when preparing).
    """
    storage_client = SqlStorageClient(connection_string=connection)
    try:
        queue = await RequestQueue.open(name=QUEUE_NAME, storage_client=storage_client)
        if prepare:
            await queue.add_request(start_url)
            return None
        crawler = BeautifulSoupCrawler(
            request_handler=router,
            request_manager=queue,
            max_request_retries=MAX_REQUEST_RETRIES,
            concurrency_settings=ConcurrencySettings(
                max_concurrency=max_concurrency, desired_concurrency=min(10, max_concurrency)
            ),
        )
        started = time.monotonic()
        await crawler.run()
        state = crawler.statistics.state
        return {
            'pagesProcessed': state.requests_finished,
            'pagesFailed': state.requests_failed,
            'seconds': round(time.monotonic() - started, 2),
        }
    finally:
        await storage_client.close()


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] if __doc__ else None)
    parser.add_argument('--connection', required=True, help='SQLAlchemy URL, postgresql+asyncpg://...')
    parser.add_argument('--start-url', required=True)
    parser.add_argument('--prepare', action='store_true', help='create the tables, add the start URL and exit')
    parser.add_argument('--max-concurrency', type=int, default=10)
    parser.add_argument('--summary', type=Path, help='where to write pages processed / failed and seconds (JSON)')
    args = parser.parse_args()
    summary = asyncio.run(
        run(args.connection, args.start_url, prepare=args.prepare, max_concurrency=args.max_concurrency)
    )
    if summary is not None and args.summary is not None:
        args.summary.write_text(json.dumps(summary), encoding='utf-8')


if __name__ == '__main__':
    main()

"""End-to-end: the actor as real processes against a real local HTTP site (the site counts every fetch)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from src.demo.site import (
    HOSTILE_LINKS,
    LONG_SEGMENT,
    UNICODE_PATH,
    RunningSite,
    page_links,
    page_path,
    serve_site,
)
from src.shared_map import SharedMap, open_store
from tests.actor.project import ROOT, child_pid, dataset_urls, finish, outputs, run_actor, start_actor
from tests.conftest import fresh_database, fresh_redis


@pytest.fixture
def site() -> Iterator[RunningSite]:
    running = serve_site(300, delay_secs=0.005)
    yield running
    running.stop()


def crawl_input(site: RunningSite, **extra: Any) -> dict[str, Any]:
    return {
        'startUrls': [{'url': site.url}],
        'sharedStoreName': 'test-crawl',
        'syncIntervalSecs': 0.5,
        'deadRunTimeoutSecs': 4,
        **extra,
    }


async def test_one_run_crawls_the_site_once(site: RunningSite, tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    code, log = await asyncio.to_thread(run_actor, ROOT, crawl_input(site), storage=storage)
    assert code == 0, log[-3000:]
    stats = site.stats.snapshot()
    assert stats['distinct'] == site.pages, 'every page was crawled'
    assert stats['duplicates'] == 0
    assert len(dataset_urls(storage)) == site.pages
    (summary,) = outputs(storage)
    assert summary['pagesProcessed'] == site.pages


async def test_three_parallel_runs_cover_every_page_with_few_duplicates(site: RunningSite, tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    code, log = await asyncio.to_thread(run_actor, ROOT, crawl_input(site, parallelRuns=3), storage=storage)
    assert code == 0, log[-3000:]
    stats = site.stats.snapshot()
    assert stats['distinct'] == site.pages, 'every page was crawled'
    assert stats['duplicates'] <= site.pages // 100, f'{stats["duplicates"]} duplicate fetches'
    summaries = outputs(storage)
    assert len(summaries) == 3
    assert all(s['pagesProcessed'] > site.pages // 10 for s in summaries), 'the work was shared'
    assert sum(s['pagesProcessed'] for s in summaries) == stats['fetches']
    # Each run kept its own dataset; together they hold every page once.
    children = sorted((storage / 'parallel-runs').iterdir())
    assert len(children) == 2
    urls = dataset_urls(storage)
    assert len(urls) == len(set(urls)) == site.pages
    assert 'Parallel runs:' in log


async def test_a_killed_run_leaves_no_url_behind(tmp_path: Path) -> None:
    site = serve_site(300, delay_secs=0.03)
    try:
        storage, log_file = tmp_path / 'storage', tmp_path / 'storage.log'
        parent = start_actor(ROOT, crawl_input(site, parallelRuns=3, maxConcurrency=3), log_file, storage=storage)
        deadline = time.monotonic() + 60
        while site.stats.snapshot()['fetches'] < 60 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a counter other threads update
            await asyncio.sleep(0.1)
        pid = child_pid(storage, '-2')
        assert pid is not None, 'the child run is running'
        run_id = next(folder.name for folder in (storage / 'parallel-runs').iterdir() if folder.name.endswith('-2'))
        os.kill(pid, signal.SIGKILL)
        code, log = await asyncio.to_thread(finish, parent, 240, log_file)
        assert code == 0, log[-3000:]
        stats = site.stats.snapshot()
        assert stats['distinct'] == site.pages, 'the surviving runs took over the dead run URLs'
        # What the killed run did since its last sync is lost with it: the pages it saved meanwhile and the ones in
        # flight are fetched again by the others, once. Nothing else is fetched twice.
        killed = {url.removeprefix(site.url.rstrip('/')) for url in dataset_urls(storage / 'parallel-runs' / run_id)}
        twice = {path for path, count in stats['counts'].items() if count > 1}
        assert max(stats['counts'].values()) <= 2, 'no page fetched more than twice'
        assert len(twice - killed) <= 3, f'only the killed run pages (+ 3 in flight) twice: {sorted(twice - killed)}'
        assert 'no summary' in log
    finally:
        site.stop()


async def test_rerun_with_the_same_store_continues_the_crawl(site: RunningSite, tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    code, log = await asyncio.to_thread(run_actor, ROOT, crawl_input(site, maxRequestsPerCrawl=60), storage=storage)
    assert code == 0, log[-3000:]
    first = site.stats.snapshot()['distinct']
    assert 60 <= first < site.pages
    code, log = await asyncio.to_thread(run_actor, ROOT, crawl_input(site), storage=storage)
    assert code == 0, log[-3000:]
    stats = site.stats.snapshot()
    assert stats['distinct'] == site.pages
    assert stats['duplicates'] == 0, 'pages of the first run were not fetched again'


async def test_invalid_input_stops_the_run_with_a_clear_message(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    code, log = await asyncio.to_thread(
        run_actor, ROOT, {'startUrls': [{'url': 'nota-url'}], 'parallelRuns': 0}, storage=storage
    )
    assert code != 0
    assert '"nota-url" is not an http(s) URL' in log
    assert 'parallelRuns must be between 1 and 50' in log
    assert not (storage / 'parallel-runs').exists()


async def test_hostile_content_keeps_the_crawl_correct_and_the_store_valid(tmp_path: Path) -> None:
    site = serve_site(100, hostile=True)
    try:
        storage = tmp_path / 'storage'
        actor_input = crawl_input(site, parallelRuns=2, maxRequestRetries=1)
        code, log = await asyncio.to_thread(run_actor, ROOT, actor_input, storage=storage)
        assert code == 0, log[-3000:]
        counts = site.stats.snapshot()['counts']
    finally:
        site.stop()
    assert all(f'/hostile/n/{i}.html' in counts for i in range(HOSTILE_LINKS)), 'every one of 3,000 links'
    assert f'/hostile/long/{LONG_SEGMENT}.html' in counts
    assert UNICODE_PATH in counts
    variants = ['/hostile/query.html?a=1&b=2', '/hostile/query.html?b=2&a=1&utm_source=news']
    assert sum(variant in counts for variant in variants) == 1, 'one page under two query orders: fetched once'
    assert counts.get('/hostile/error.html') == 2, 'a 500 is retried, then given up'
    duplicates = sum(count - 1 for path, count in counts.items() if path != '/hostile/error.html')
    assert duplicates <= (HOSTILE_LINKS + 100) // 100

    shared = await load_shared_map(storage / 'key_value_stores' / 'test-crawl')
    assert 'enqueued' not in shared.values(), 'nothing left waiting'
    assert sum(1 for value in shared.values() if value == 'failed') >= 1
    assert not any('localhost' in url for url in shared), 'the other host was not crawled'
    for record in (storage / 'key_value_stores' / 'test-crawl').iterdir():
        name = record.name.removesuffix('.__metadata__.json')
        assert re.match(r"^[a-zA-Z0-9!\-_.'()]{1,256}$", name), name
        assert record.stat().st_size < 9 * 1024 * 1024


async def load_shared_map(folder: Path) -> dict[str, Any]:
    store = await open_store(folder.name, connection=f'file://{folder.parent.parent}')
    shared = SharedMap(store, run_id='checker')
    await shared.initialize()
    return dict(shared)


async def test_max_crawl_depth_holds_across_runs(site: RunningSite, tmp_path: Path) -> None:
    # Pages within 2 links of the home page, by breadth-first search over the site's own link graph.
    depth = {0: 0}
    frontier = [0]
    while frontier:
        page = frontier.pop(0)
        if depth[page] < 2:
            for link in page_links(page, site.pages):
                if link not in depth:
                    depth[link] = depth[page] + 1
                    frontier.append(link)
    expected = {page_path(page) for page in depth}
    storage = tmp_path / 'storage'
    code, log = await asyncio.to_thread(
        run_actor, ROOT, crawl_input(site, parallelRuns=2, maxCrawlDepth=2), storage=storage
    )
    assert code == 0, log[-3000:]
    fetched = set(site.stats.snapshot()['counts'])
    assert fetched == expected, f'{len(fetched - expected)} too deep, {len(expected - fetched)} missing'
    summaries = outputs(storage)
    assert all(s['pagesProcessed'] > 0 for s in summaries)
    assert sum(s['handedOver'] for s in summaries) > 0, 'URLs crossed between runs, with their depth'


@pytest.mark.skipif(not os.environ.get('TEST_POSTGRES_CTL'), reason='needs the test PostgreSQL server (make test)')
async def test_the_crawl_goes_on_while_the_shared_database_is_down(tmp_path: Path) -> None:
    ctl = shlex.split(os.environ['TEST_POSTGRES_CTL'])
    site = serve_site(300, delay_secs=0.03)
    try:
        async with fresh_database() as connection:
            storage, log_file = tmp_path / 'storage', tmp_path / 'storage.log'
            actor_input = crawl_input(site, parallelRuns=2, sharedStorageConnection=connection, deadRunTimeoutSecs=30)
            parent = start_actor(ROOT, actor_input, log_file, storage=storage)
            deadline = time.monotonic() + 60
            while site.stats.snapshot()['fetches'] < 50 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.to_thread(subprocess.run, [*ctl, '-m', 'fast', 'stop'], check=True, capture_output=True)
            down_at = site.stats.snapshot()['fetches']
            await asyncio.sleep(3)
            during = site.stats.snapshot()['fetches'] - down_at
            options = os.environ['TEST_POSTGRES_OPTIONS']
            await asyncio.to_thread(
                subprocess.run, [*ctl, '-w', '-o', options, 'start'], check=True, capture_output=True
            )
            code, log = await asyncio.to_thread(finish, parent, 240, log_file)
        assert code == 0, log[-3000:]
        assert during > 10, 'the runs kept crawling on local state while the database was down'
        assert 'Sharing the crawl state failed, will retry' in log
        stats = site.stats.snapshot()
        assert stats['distinct'] == site.pages, 'syncs resumed and the crawl finished'
        assert stats['duplicates'] <= 10
    finally:
        site.stop()


async def test_two_parallel_runs_share_the_crawl_through_redis(tmp_path: Path) -> None:
    """sharedStorageConnection = a Redis URL (RedisJSON loaded): every page fetched and saved once, and the shared
    map is in Redis, where the CLI reads it."""
    storage = tmp_path / 'storage'
    site = serve_site(120, delay_secs=0.005)
    try:
        async with fresh_redis() as connection:
            actor_input = crawl_input(site, parallelRuns=2, sharedStorageConnection=connection)
            code, log = await asyncio.to_thread(run_actor, ROOT, actor_input, storage=storage)
            shown, exported, reset = [
                await asyncio.to_thread(shared_map_cli, command, 'test-crawl', '--connection', connection, *extra)
                for command, *extra in (['inspect'], ['export'], ['reset', '--yes'])
            ]
            after_reset = await load_fresh_map('test-crawl', connection)
    finally:
        site.stop()
    assert code == 0, log[-3000:]
    assert 'is missing or invalid' not in log, "crawlee's warning on a missing key is expected by the map: quiet"
    stats = site.stats.snapshot()
    assert stats['distinct'] == site.pages, 'every page was crawled'
    assert stats['duplicates'] <= 1, f'{stats["duplicates"]} duplicate fetches'
    summaries = outputs(storage)
    assert len(summaries) == 2
    assert all(s['pagesProcessed'] > 0 for s in summaries), 'the work was shared'
    urls = dataset_urls(storage)
    assert len(urls) == len(set(urls)) == site.pages
    assert shown.returncode == 0, shown.stderr
    assert f'processed    {site.pages}' in shown.stdout
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert sum(row['value'] == 'processed' for row in rows) == site.pages
    assert reset.returncode == 0, reset.stderr
    assert after_reset == {}, 'reset deleted the map'
    assert not (storage / 'key_value_stores' / 'test-crawl').exists(), 'the shared store is in Redis, not here'


def shared_map_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, '-m', 'src.shared_map', *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


async def load_fresh_map(name: str, connection: str) -> dict[str, object]:
    shared = SharedMap(await open_store(name, connection=connection), run_id='checker')
    await shared.initialize()
    return dict(shared)

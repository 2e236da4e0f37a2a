"""End-to-end: a 3-run crawl interrupted with SIGINT, then the same command again, finishes the crawl.

Real processes in a full copy of the repository (the parent and the child runs it starts), a real signal to the
whole process group at a random moment, and a local site that counts every fetch.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

from src.demo.site import serve_site
from tests.actor.project import copy_project, kill_group, run_actor, start_actor, wait_group_gone, write_input

PAGES = 500


async def test_an_interrupted_crawl_resumes_and_fetches_every_page_once(tmp_path: Path) -> None:
    site = serve_site(PAGES, delay_secs=0.03)
    stop_after = random.randint(30, 400)
    note = f'interrupted after {stop_after} fetches'
    try:
        repo = copy_project(tmp_path / 'repo')
        write_input(
            repo / 'storage',
            {
                'startUrls': [{'url': site.url}],
                'sharedStoreName': 'resumed-crawl',
                'parallelRuns': 3,
                'maxConcurrency': 3,
                'syncIntervalSecs': 1,
                'deadRunTimeoutSecs': 4,
            },
        )
        first = start_actor(repo, None, repo / 'storage.log')
        deadline = time.monotonic() + 120
        while site.stats.snapshot()['fetches'] < stop_after and first.poll() is None:
            assert time.monotonic() < deadline, f'{note}: the first attempt did not get that far'
            await asyncio.sleep(0.05)
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
        if not await asyncio.to_thread(wait_group_gone, first.pid, 15):
            kill_group(first)  # children that outlive the parent's SIGINT (another change makes them stop)
        first.wait(timeout=10)
        before = site.stats.snapshot()
        assert before['distinct'] < PAGES, f'{note}: the crawl was not over yet'

        started = time.monotonic()
        code, log = await asyncio.to_thread(run_actor, repo, timeout=150, purge=False)
        seconds = time.monotonic() - started
        stats = site.stats.snapshot()
    finally:
        site.stop()
    assert code == 0, f'{note}\n{log[-3000:]}'
    assert stats['distinct'] == PAGES, f'{note}: {PAGES - stats["distinct"]} pages never fetched'
    assert stats['duplicates'] < PAGES // 100, f'{note}: {stats["duplicates"]} duplicate fetches'
    assert seconds < 90, f'{note}: the resumed crawl took {seconds:.0f} s'

"""The map as the crawl's frontier (issue #11), through the real actor in a full copy of the project.

A fork's router with two labels: every page is routed by the label it was enqueued with, whichever run fetches it
(handed over, taken over from a killed run), and the shared crawl writes no request-queue storage.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from src.demo.site import serve_site
from tests.actor.project import (
    child_pids,
    copy_project,
    dataset_count,
    finish,
    outputs,
    run_folders,
    start_actor,
    wait_until,
)

# What a fork writes in src/routes.py: pages of sections 0-7 are DETAIL pages, the rest LIST pages.
TWO_LABEL_ROUTES = """
from __future__ import annotations

import re

from crawlee.crawlers import BeautifulSoupCrawlingContext
from crawlee.router import Router

router = Router[BeautifulSoupCrawlingContext]()
DETAIL = re.compile(r'.*/section-[0-7]/')  # crawlee matches from the start of the URL


async def save_and_follow(context: BeautifulSoupCrawlingContext) -> None:
    await context.push_data({'url': context.request.url, 'handler': context.request.label or 'LIST'})
    await context.enqueue_links(strategy='same-hostname', include=[DETAIL], label='DETAIL', user_data={'from': 'x'})
    await context.enqueue_links(strategy='same-hostname', exclude=[DETAIL])


@router.default_handler
async def list_handler(context: BeautifulSoupCrawlingContext) -> None:
    await save_and_follow(context)


@router.handler('DETAIL')
async def detail_handler(context: BeautifulSoupCrawlingContext) -> None:
    assert context.request.user_data.get('from') == 'x', 'user data travelled with the request'
    await save_and_follow(context)
"""


def test_labels_travel_with_urls_across_runs_and_a_killed_run(tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    (project / 'src' / 'routes.py').write_text(TWO_LABEL_ROUTES)
    storage = project / 'storage'
    site = serve_site(300, delay_secs=0.02)
    try:
        actor_input = {
            'startUrls': [{'url': site.url}],
            'parallelRuns': 3,
            'maxConcurrency': 3,
            'syncIntervalSecs': 0.5,
            'deadRunTimeoutSecs': 4,
        }
        proc = start_actor(project, actor_input, tmp_path / 'out.log')
        wait_until(lambda: len(child_pids(storage)) == 2, 60, 'the child runs to start')
        run_id, pid = sorted(child_pids(storage).items())[-1]
        wait_until(lambda: dataset_count(storage / 'parallel-runs' / run_id) >= 10, 120, 'a child to save 10 pages')
        os.kill(pid, signal.SIGKILL)  # its queue was in memory: the others take its URLs over from the map
        code, log = finish(proc, 240, tmp_path / 'out.log')
        stats = site.stats.snapshot()
    finally:
        site.stop()
    assert code == 0, log[-3000:]
    assert stats['distinct'] == site.pages, 'every page fetched'
    items = [item for folder in run_folders(storage) for item in _items(folder)]
    expected = {url: ('DETAIL' if '/section-' in url and int(url.split('/section-')[1].split('/')[0]) < 8 else 'LIST')
                for url in (item['url'] for item in items)}  # fmt: skip
    wrong = [item for item in items if item['handler'] != expected[item['url']] and item['url'] != site.url]
    assert not wrong, f'{len(wrong)} pages routed to the wrong handler, e.g. {wrong[:3]}'
    assert any(item['handler'] == 'DETAIL' for item in items)
    assert {item['url'] for item in items} >= {site.url.rstrip('/') + path for path in stats['counts']}, (
        'every fetched page was handled without error (the DETAIL handler checks its user data)'
    )
    taken_over = sum(summary['takenOver'] for summary in outputs(storage))
    assert taken_over > 0, 'URLs were handed over or taken over from the killed run'
    queues = [path for folder in run_folders(storage) for path in (folder / 'request_queues').rglob('*.json')]
    assert queues == [], f'the shared crawl wrote request-queue storage: {queues[:3]}'


def _items(folder: Path) -> list[dict[str, str]]:
    dataset = folder / 'datasets' / 'default'
    return [json.loads(p.read_text()) for p in sorted(dataset.glob('*.json')) if p.name != '__metadata__.json']

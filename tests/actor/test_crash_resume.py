"""End-to-end: a run killed with `kill -9` between two syncs, then resumed, finds the rest of the site and saves each
item once. The user's handler pushes two items per page plus a stub about another page (as a listing page does).

Real `python -m src` processes in a full copy of the project, a real SIGKILL, a local site that counts every fetch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

from src.demo.site import serve_site
from src.page_items import ITEM_FIELD, PAGE_FIELD
from tests.actor.project import copy_project, dataset_items, run_actor, start_actor

PAGES = 40

# What a user's handler may push besides the page itself: a second item, and a stub about a page it links to.
USER_PUSHES = """    first_link = context.soup.select_one('li a')
    await context.push_data({'url': context.request.url, 'second': True})
    if first_link is not None:  # a stub about another page, which must not make that page count as done
        await context.push_data({'url': urljoin(context.request.url, str(first_link['href'])), 'stub': True})
    await context.push_data(
"""


def with_user_pushes(repo: Path) -> None:
    routes = repo / 'src' / 'routes.py'
    text = routes.read_text()
    assert text.count('    await context.push_data(\n') == 1, 'the template pushes one item per page'
    text = text.replace('    await context.push_data(\n', USER_PUSHES)
    routes.write_text(text + '\n\nfrom urllib.parse import urljoin  # noqa: E402\n')


async def test_a_run_killed_between_syncs_resumes_and_finds_the_rest_of_the_site(tmp_path: Path) -> None:
    site = serve_site(PAGES, delay_secs=0.15)
    try:
        repo = copy_project(tmp_path / 'repo')
        with_user_pushes(repo)
        storage = repo / 'storage'
        actor_input = {
            'startUrls': [{'url': site.url}],
            'sharedStoreName': 'crash-crawl',
            'maxConcurrency': 1,
            'syncIntervalSecs': 5,  # no sync between the first ones and the kill, ~1 s in
            'deadRunTimeoutSecs': 10,  # the resumed run (a new run id) takes over from the killed one after this
        }
        run = start_actor(repo, actor_input, tmp_path / 'first.log')
        deadline = time.monotonic() + 60
        while len(dataset_items(storage)) < 6:  # two pages saved, three items each
            assert run.poll() is None, (tmp_path / 'first.log').read_text()[-3000:]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        saved = {item[PAGE_FIELD] for item in dataset_items(storage)}
        fetched_before = site.stats.snapshot()['counts']

        code, log = await asyncio.to_thread(run_actor, repo, timeout=120, purge=False)
        stats = site.stats.snapshot()
    finally:
        site.stop()
    assert code == 0, log[-3000:]
    assert stats['distinct'] == PAGES, f'{PAGES - stats["distinct"]} pages never fetched after the resume'
    assert 'fetched again to find their links' in log
    twice = {path for path, count in stats['counts'].items() if count > 1}
    assert max(stats['counts'].values()) <= 2
    assert twice <= set(fetched_before), 'only pages the killed run had fetched are fetched again'
    assert len(saved) >= 2

    items = dataset_items(storage)
    positions = Counter((item[PAGE_FIELD], item[ITEM_FIELD]) for item in items)
    assert max(positions.values()) == 1, 'no item saved twice'
    per_page = Counter(item[PAGE_FIELD] for item in items)
    assert len(per_page) == PAGES
    assert set(per_page.values()) == {3}, 'every page: its three items, once each'
    own = Counter(item['url'] for item in items if not item.get('stub') and not item.get('second'))
    assert len(own) == PAGES
    assert set(own.values()) == {1}

"""Every crawl is its own (`src/crawl_identity.py`): a fresh start is a new crawl, with its own store and results."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from src.demo.site import page_path, serve_site
from tests.actor.project import ROOT, copy_project, dataset_items, outputs, run_actor

# A labelled handler added to the copy's routes: two items for its page, the request's user data in them.
DETAIL_ROUTE = '''

@router.handler('DETAIL')
async def detail_handler(context: BeautifulSoupCrawlingContext) -> None:
    """A page a start URL labels DETAIL: two items, with the user data the start URL gave."""
    for part in (1, 2):
        data = context.request.user_data.get('from')
        await context.push_data({'url': context.request.url, 'part': part, 'from': data})
    await context.enqueue_links()
'''
PAGES = 30
QUICK = {'syncIntervalSecs': 0.5, 'deadRunTimeoutSecs': 5}


def named_items(storage: Path, name: str) -> list[dict[str, object]]:
    folder = storage / 'datasets' / name
    return [json.loads(p.read_text()) for p in sorted(folder.glob('*.json')) if p.name != '__metadata__.json']


def test_each_fresh_start_is_a_new_crawl_with_its_own_results(tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    with (project / 'src' / 'routes.py').open('a') as routes:
        routes.write(DETAIL_ROUTE)
    storage = project / 'storage'
    site = serve_site(PAGES)
    detail = site.url.rstrip('/') + page_path(1)
    fetched: list[Counter[str]] = []

    def crawl(actor_input: dict[str, Any]) -> str:
        before = Counter(site.stats.snapshot()['counts'])
        code, log = run_actor(project, {**actor_input, **QUICK}, timeout=120)
        assert code == 0, log[-3000:]
        fetched.append(Counter(site.stats.snapshot()['counts']) - before)
        return log

    try:
        # A depth-1 crawl with two runs, then two full crawls with the same input, into one named result set.
        crawl({'startUrls': [{'url': f'{site.url}#top'}], 'maxCrawlDepth': 1, 'parallelRuns': 2})
        depth_1 = [item['url'] for item in dataset_items(storage)]
        full: dict[str, Any] = {
            'startUrls': [{'url': site.url}, {'url': detail, 'label': 'DETAIL', 'userData': {'from': 'input'}}],
            'datasetName': 'all-results',
        }
        crawl(full)
        logs = [crawl({**full, 'parallelRuns': 2})]
    finally:
        site.stop()

    assert 1 < len(fetched[0]) < PAGES, 'the depth-1 crawl fetched part of the site'
    assert len(set(depth_1)) == len(depth_1) == sum(fetched[0].values()), 'its results: exactly its pages, each once'
    assert site.url in depth_1, "a result's url is the URL fetched, without the start URL's #fragment"
    for counts in fetched[1:]:
        assert len(counts) == PAGES, 'each fresh start is a new crawl: it fetches every page'
        assert set(counts.values()) == {1}, 'each page once'

    results = named_items(storage, 'all-results')
    assert len(results) == 2 * (PAGES + 1), 'each crawl added its own pages, each once, and kept the older items'
    for part in (results[: PAGES + 1], results[PAGES + 1 :]):
        assert len({item['url'] for item in part}) == PAGES
        assert [item.get('part') for item in part if item['url'] == detail] == [1, 2], 'both items of the page'
        assert {item.get('from') for item in part if item['url'] == detail} == {'input'}, 'routed with its user data'
    summary = outputs(storage)[0]
    assert (summary['resultsMerged'], summary['duplicatesDropped']) == (PAGES + 1, 0), 'counts of this crawl only'
    assert 'Results: 62 items in dataset "all-results" (31 merged from 2 run datasets of this crawl' in logs[0]

    listing = subprocess.run(
        [str(ROOT / '.venv' / 'bin' / 'python'), '-m', 'src.shared_map', 'inspect', '--storage-dir', str(storage)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listing.count('  crawl-') == 3, f'each crawl has its own store, listed by inspect:\n{listing}'
    assert listing.count('runs: 2 finished') == 2, listing

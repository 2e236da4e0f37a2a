"""No user data destroyed: a resumed crawl keeps the earlier results; the shared store is never crawlee's default
store (which crawlee purges when a run starts). Real `python -m src` processes against a real local site."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.demo.site import RunningSite, serve_site
from src.shared_map import InvalidOptionError, open_store
from tests.actor.project import ROOT, run_actor
from tests.actor.test_user_errors import error_lines

QUICK = {'syncIntervalSecs': 0.5, 'deadRunTimeoutSecs': 4}  # a small crawl ends at a sync: sync often


@pytest.fixture
def site() -> Iterator[RunningSite]:
    running = serve_site(200, delay_secs=0.005)
    yield running
    running.stop()


def items(storage: Path) -> dict[str, str]:
    """The dataset's item files (name -> content) in a run's storage folder."""
    folder = storage / 'datasets' / 'default'
    return {p.name: p.read_text() for p in sorted(folder.glob('*.json')) if p.name != '__metadata__.json'}


async def test_a_resumed_crawl_keeps_the_results_of_the_earlier_attempt(site: RunningSite, tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    actor_input = {
        'startUrls': [{'url': site.url}],
        'sharedStoreName': 'resumed-crawl',
        'syncIntervalSecs': 0.5,
        'deadRunTimeoutSecs': 4,
    }
    first_attempt = {**actor_input, 'maxRequestsPerCrawl': 40, 'parallelRuns': 2}
    code, output = await asyncio.to_thread(run_actor, ROOT, storage=storage, actor_input=first_attempt)
    assert code == 0, output[-3000:]
    first = items(storage)
    assert first, 'the parent saved results in the first attempt'
    assert site.stats.snapshot()['distinct'] < site.pages, 'the first attempt stopped early'

    children = {child.name: items(child) for child in (storage / 'parallel-runs').iterdir()}
    assert len(children) == 1

    # Again, as one run, with crawlee's purge-on-start on, as with `python -m src` or `apify run`.
    code, output = await asyncio.to_thread(run_actor, ROOT, storage=storage, actor_input=actor_input)
    assert code == 0, output[-3000:]
    assert f'the {len(first)} results of earlier attempts stay in the dataset' in output
    after = items(storage)
    assert {name: after.get(name) for name in first} == first, 'the earlier results are kept unchanged'
    assert len(after) > len(first), 'new results are added after them'
    assert {name: items(storage / 'parallel-runs' / name) for name in children} == children, 'child results kept'
    stats = site.stats.snapshot()
    assert stats['distinct'] == site.pages
    urls = [json.loads(text)['url'] for text in after.values()]
    assert len(urls) == len(set(urls)) == site.pages, 'the result set: both attempts, every page once'


async def test_a_fresh_crawl_still_starts_with_an_empty_dataset(site: RunningSite, tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    stale = storage / 'datasets' / 'default'
    stale.mkdir(parents=True)
    (stale / '000000001.json').write_text(json.dumps({'url': 'https://old.example/'}))
    actor_input = {'startUrls': [{'url': site.url}], 'sharedStoreName': 'fresh-crawl', 'maxCrawlDepth': 0, **QUICK}
    code, output = await asyncio.to_thread(run_actor, ROOT, storage=storage, actor_input=actor_input)
    assert code == 0, output[-3000:]
    assert [json.loads(text)['url'] for text in items(storage).values()] == [site.url]
    assert 'earlier attempts' not in output


async def test_a_resume_whose_dataset_apify_run_deleted_says_to_use_no_purge(site: RunningSite, tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    actor_input = {'startUrls': [{'url': site.url}], 'sharedStoreName': 'cli-crawl', 'maxCrawlDepth': 1, **QUICK}
    code, output = await asyncio.to_thread(run_actor, ROOT, storage=storage, actor_input=actor_input)
    assert code == 0, output[-3000:]
    # What `apify run` (without --no-purge) does before it starts the actor again: it deletes the default dataset
    # and hands the input over as __CLI_INPUT.
    shutil.rmtree(storage / 'datasets' / 'default')
    code, output = await asyncio.to_thread(
        run_actor, ROOT, storage=storage, actor_input={**actor_input, 'maxCrawlDepth': 2}, input_key='__CLI_INPUT'
    )
    assert code == 0, output[-3000:]
    assert 'Resume with `apify run --no-purge` to keep them.' in output


def test_the_default_store_is_refused_as_shared_store_and_input_survives(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    actor_input = {'startUrls': [{'url': 'http://127.0.0.1:1/'}], 'sharedStoreName': 'default', 'parallelRuns': 2}
    code, output = run_actor(ROOT, storage=storage, actor_input=actor_input)
    assert code != 0
    assert 'Traceback' not in output
    (line,) = error_lines(output)
    assert 'sharedStoreName "default" is not allowed: crawlee purges the default key-value store' in line
    assert json.loads((storage / 'key_value_stores' / 'default' / 'INPUT.json').read_text()) == actor_input
    assert not (storage / 'parallel-runs').exists()


@pytest.mark.parametrize('name', ['default', '__default__'])
async def test_open_store_refuses_the_default_store(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match='crawlee purges the default key-value store'):
        await open_store(name, connection=f'file://{tmp_path}')
    assert not (tmp_path / 'key_value_stores').exists()

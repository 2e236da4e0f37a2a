"""One result set for the whole crawl (`src/results.py`): each page once, after a kill, a resume and an export."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from apify import Actor
from crawlee.storages import Dataset

from src.crawl_identity import CRAWL_RECORD, Crawl, mark_child_folder
from src.demo.site import serve_site
from src.input import CrawlerInput
from src.results import crawl_results, merge_results
from tests.actor.project import (
    ROOT,
    child_pids,
    copy_project,
    dataset_count,
    dataset_items,
    finish,
    run_actor,
    start_actor,
    wait_until,
)


def folder_digest(folder: Path) -> str:
    """Every file's path and bytes under `folder`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob('*') if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b'\0' + path.read_bytes())
    return digest.hexdigest()


def export(storage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, '-m', 'src.results', '--storage', str(storage), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_named_result_set_holds_every_page_once_after_a_kill_and_a_resume(tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    site = serve_site(300, delay_secs=0.03)
    actor_input = {
        'startUrls': [{'url': site.url}],
        'parallelRuns': 3,
        'maxConcurrency': 3,
        # Killed between two syncs, the run has saved pages that the shared map does not know: they are fetched again.
        'syncIntervalSecs': 5,
        'deadRunTimeoutSecs': 10,
        'datasetName': 'crawl-results',
        'maxRequestsPerCrawl': 200,
    }
    try:
        proc = start_actor(project, actor_input, tmp_path / 'first.log')
        wait_until(lambda: len(child_pids(storage)) == 2, 60, 'the child runs to start')
        run_id, pid = sorted(child_pids(storage).items())[-1]
        folder = storage / 'parallel-runs' / run_id
        wait_until(lambda: dataset_count(folder) >= 15, 120, 'the child run to save 15 pages')
        os.kill(pid, signal.SIGKILL)
        code, log = finish(proc, 240, tmp_path / 'first.log')
        assert code == 0, log[-3000:]
        first = site.stats.snapshot()

        # The rest of the crawl: the same input without the limit, without purging (a purging start is a new crawl).
        resumed = {key: value for key, value in actor_input.items() if key != 'maxRequestsPerCrawl'}
        code, log = run_actor(project, resumed, timeout=240, purge=False)
        assert code == 0, log[-3000:]
        stats = site.stats.snapshot()
    finally:
        site.stop()
    assert first['distinct'] < site.pages, 'the first attempt stopped at the limit'
    assert stats['duplicates'] > 0, 'pages the killed run saved were fetched again'
    assert stats['distinct'] == site.pages

    named = [item['url'] for item in named_items(storage, 'crawl-results')]
    assert len(named) == len(set(named)) == site.pages, 'the result set holds every page once'
    own = dataset_items(storage)
    assert len(own) < site.pages, 'with datasetName, the first run keeps only its own pages in its dataset'
    assert f'Results: {site.pages} items in dataset "crawl-results"' in log

    before = folder_digest(storage)
    done = export(storage, '--dataset', 'crawl-results', '--format', 'csv')
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert sorted(row['url'] for row in rows) == sorted(named)
    union = export(storage)  # every run's dataset, the first attempt's killed run too, deduplicated
    assert union.returncode == 0, union.stderr
    urls = [json.loads(line)['url'] for line in union.stdout.splitlines()]
    assert len(urls) == len(set(urls)) == site.pages
    assert folder_digest(storage) == before, 'exporting changed nothing in the storage folder'


def named_items(storage: Path, name: str) -> list[dict[str, str]]:
    folder = storage / 'datasets' / name
    return [json.loads(p.read_text()) for p in sorted(folder.glob('*.json')) if p.name != '__metadata__.json']


def write_items(folder: Path, items: list[object]) -> None:
    dataset = folder / 'datasets' / 'default'
    dataset.mkdir(parents=True, exist_ok=True)
    for index, item in enumerate(items, start=1):
        (dataset / f'{index:09d}.json').write_text(item if isinstance(item, str) else json.dumps(item))


def test_the_export_dedupes_by_page_and_skips_a_broken_item_with_a_warning(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    write_items(storage, [{'url': 'https://example.com/a', 'n': 1}, '{"url": "https://exa', {'note': 'no url'}])
    record = storage / 'key_value_stores' / 'default' / CRAWL_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(Crawl('c1', 'crawl-x', named=False).to_record()))
    write_items(
        storage / 'parallel-runs' / 'run-1',
        [{'url': 'https://EXAMPLE.com/a#top', 'n': 2}, {'url': 'https://example.com/b?utm_source=x', 'n': 3}],
    )
    mark_child_folder(storage / 'parallel-runs' / 'run-1', 'c1')
    write_items(storage / 'parallel-runs' / 'other-crawl-1', [{'url': 'https://example.com/c', 'n': 4}])
    mark_child_folder(storage / 'parallel-runs' / 'other-crawl-1', 'c0')
    assert [item.get('n') for item in crawl_results(storage)] == [1, None, 3], "this crawl's runs only"
    done = export(storage, '--format', 'jsonl')
    assert done.returncode == 0
    assert [json.loads(line).get('n') for line in done.stdout.splitlines()] == [1, None, 3]
    (warning,) = [line for line in done.stderr.splitlines() if 'WARNING' in line]
    assert '000000002.json' in warning
    assert 'Traceback' not in done.stderr


def test_the_export_says_what_to_fix_for_a_folder_without_datasets(tmp_path: Path) -> None:
    nowhere = tmp_path / 'nowhere'
    done = export(nowhere)
    assert done.returncode == 1
    assert done.stderr == f"ERROR {nowhere} holds no datasets: give the crawl's storage folder (--storage-dir).\n"
    (tmp_path / 'datasets').mkdir()
    done = export(tmp_path, '--dataset', 'missing')
    assert done.returncode == 1
    assert done.stderr == f'ERROR {tmp_path} holds no dataset named "missing".\n'


async def test_the_merge_keeps_every_item_once_also_when_a_merge_was_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Path(os.environ['CRAWLEE_STORAGE_DIR'])
    site = 'https://example.com'
    b1, b2 = {'url': f'{site}/b', 'part': 1}, {'url': f'{site}/b', 'part': 2}  # a handler pushed two items for /b
    d1, d2 = {'url': f'{site}/d?id=1&id=2'}, {'url': f'{site}/d?id=2&id=1'}  # order can matter: two pages
    write_items(storage / 'parallel-runs' / 'local-p-1', [b1, b2, {'url': f'{site}/a#x'}, {'note': 'n2'}])
    write_items(storage / 'parallel-runs' / 'local-p-2', [{'url': f'{site}/c'}, {'url': f'{site}/b'}, d1, d2])
    write_items(storage / 'parallel-runs' / 'local-old-1', [{'url': f'{site}/old'}])  # another crawl's run
    for run, crawl_id in (('local-p-1', 'c1'), ('local-p-2', 'c1'), ('local-old-1', 'c0')):
        mark_child_folder(storage / 'parallel-runs' / run, crawl_id)
    crawl_input = dataclasses.replace(CrawlerInput.parse({'startUrls': [site]}), crawl_id='c1')
    pushes = 0
    push_data = Dataset.push_data

    async def push_then_die(self: Dataset, data: Any, **kwargs: Any) -> None:
        nonlocal pushes
        pushes += 1
        if pushes == 3:
            raise RuntimeError('killed during the merge')
        await push_data(self, data, **kwargs)

    async with Actor(exit_process=False):
        await Actor.push_data([{'url': f'{site}/a'}, {'note': 'n1'}])  # the first run's own pages
        store = await Actor.open_key_value_store(name='crawl-test')
        monkeypatch.setattr('src.results.BATCH', 1)
        monkeypatch.setattr(Dataset, 'push_data', push_then_die)
        with pytest.raises(RuntimeError, match='killed during the merge'):
            await merge_results(crawl_input, [], store)
        monkeypatch.setattr(Dataset, 'push_data', push_data)
        resumed = await merge_results(crawl_input, [], store)  # the resume merges again
        again = await merge_results(crawl_input, [], store)
        items = [item async for item in (await Actor.open_dataset()).iterate_items()]
    expected = [{'url': f'{site}/a'}, {'note': 'n1'}, b1, b2, {'note': 'n2'}, {'url': f'{site}/c'}, d1, d2]
    assert sorted(map(json.dumps, items)) == sorted(map(json.dumps, expected)), 'every item once, no other crawl'
    assert (resumed.added, resumed.duplicates) == (4, 2), '/a and /b were fetched by two runs each'
    assert (again.added, again.items, again.duplicates) == (0, 8, 2), 'a merge run again adds nothing'

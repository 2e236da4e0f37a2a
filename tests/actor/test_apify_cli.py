"""`apify run` (the Apify CLI from npm, installed by `make test` into .tools/) in the root of a full project copy.

The copy holds every file git knows (as a fresh clone does: `.actor/`, `src/`, `tests/`, `bench/`, `docs/`, ...),
so the CLI's project checks see the real layout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from src.crawl_identity import local_crawl
from src.demo.site import serve_site
from tests.actor.project import (
    APIFY,
    ROOT,
    child_logs,
    copy_project,
    dataset_urls,
    finish,
    outputs,
    start,
    table_rows,
    wait_until,
    write_input,
)

pytestmark = pytest.mark.skipif(not APIFY.exists(), reason='the Apify CLI is not installed (no npm): `make test` does')


@pytest.mark.parametrize('runs', [1, 3])
def test_apify_run_in_the_project_root(tmp_path: Path, runs: int) -> None:
    project = copy_project(tmp_path / 'project')
    site = serve_site(60)
    try:
        storage = project / 'storage'
        write_input(
            storage,
            {'startUrls': [{'url': site.url}], 'parallelRuns': runs, 'syncIntervalSecs': 0.5, 'deadRunTimeoutSecs': 5},
        )
        # With an input schema, `apify run` gives the actor a copy of INPUT under the key `__CLI_INPUT` (with the
        # schema's defaults): the child runs must still read their own INPUT.
        code, log = finish(start([str(APIFY), 'run'], cwd=project, log=tmp_path / 'out.log'), 300, tmp_path / 'out.log')
        assert code == 0, log[-4000:]
        assert 'Multiple Python packages' not in log
        assert site.stats.snapshot()['distinct'] == 60, 'every page of the site was fetched'
        urls = dataset_urls(storage)
        assert len(urls) == len(set(urls)) == 60, 'every page is in the results exactly once'
        summaries = outputs(storage)
        assert len(summaries) == runs, 'every run wrote its OUTPUT'
        assert sum(summary['pagesProcessed'] for summary in summaries) == 60
        for child_log in child_logs(storage):
            assert 'Invalid input' not in child_log
        if runs > 1:
            rows = table_rows(log)
            assert len(rows) == runs
            assert all(row[1] == 'ok' for row in rows.values()), rows
    finally:
        site.stop()


def test_ctrl_c_under_apify_run_stops_cleanly_and_apify_run_no_purge_resumes(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: the CLI and the actor."""
    project = copy_project(tmp_path / 'project')
    site = serve_site(200, delay_secs=0.03)
    try:
        storage = project / 'storage'
        write_input(storage, {'startUrls': [{'url': site.url}], 'maxConcurrency': 3, 'syncIntervalSecs': 0.5})
        proc = start([str(APIFY), 'run'], cwd=project, log=tmp_path / 'first.log')
        wait_until(lambda: site.stats.snapshot()['fetches'] >= 40, 120, '40 pages fetched')
        crawl = local_crawl(storage)
        assert crawl is not None, 'the run recorded its crawl in its default store'
        reset = subprocess.run(
            [sys.executable, '-m', 'src.shared_map', 'reset', crawl.store_name, '--yes', '--storage-dir', str(storage)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert reset.returncode == 2, reset.stdout + reset.stderr
        assert re.match(rf'error: 1 live run uses the store "{crawl.store_name}": local-\w+ \(last sync ', reset.stderr)
        assert '--force' in reset.stderr
        os.killpg(proc.pid, signal.SIGINT)
        _, log = finish(proc, 60, tmp_path / 'first.log')  # the CLI's own exit code says only that Python was signalled
        assert 'Traceback' not in log
        assert re.search(r"Shared map 'SM' \(run [\w-]+\) closed", log), 'a final sync'
        assert 'Stopped by SIGINT' in log
        assert '"exit_code": 130' in log
        assert 'apify run --no-purge' in log, 'the resume hint'
        first = site.stats.snapshot()
        assert first['distinct'] < site.pages, 'the crawl was stopped before the end'
        urls = dataset_urls(storage)
        assert len(urls) == len(set(urls)) == first['distinct'], 'every page fetched before the stop was saved once'

        code, log = finish(start([str(APIFY), 'run', '--no-purge'], cwd=project, log=tmp_path / 'second.log'), 300,
                           tmp_path / 'second.log')  # fmt: skip
        assert code == 0, log[-4000:]
        assert f'Resuming the crawl in shared store "{crawl.store_name}"' in log, 'the same crawl'
        stats = site.stats.snapshot()
        assert stats['distinct'] == site.pages, 'the resumed crawl fetched every page'
        assert stats['duplicates'] == 0, 'every page once: the refused reset harmed nothing'
        urls = dataset_urls(storage)
        assert len(urls) == len(set(urls)) == site.pages, 'the results of both attempts, each page once'
    finally:
        site.stop()


def test_apify_run_refuses_an_unknown_input_field_before_it_purges(tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    earlier = storage / 'datasets' / 'default' / '000000001.json'
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"url": "http://127.0.0.1:1/", "title": "an earlier result"}')
    write_input(storage, {'startUrls': [{'url': 'http://127.0.0.1:1/'}], 'sharedStoreNme': 'typo'})
    code, log = finish(start([str(APIFY), 'run'], cwd=project, log=tmp_path / 'out.log'), 60, tmp_path / 'out.log')
    assert code != 0
    assert 'Property input.sharedStoreNme is not allowed' in log
    assert earlier.exists(), 'the CLI checked the input against the schema before purging the dataset'

"""How a crawl ends: its exit status and summary say what happened (real processes against a real local site)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from src.demo.site import serve_site
from src.fanout import child_env, status_of
from src.summary import judge
from tests.actor.project import (
    child_pids,
    copy_project,
    dataset_count,
    dataset_urls,
    finish,
    start_actor,
    table_rows,
    wait_until,
)
from tests.conftest import closed_port


@pytest.mark.parametrize('runs', [1, 3])
def test_a_start_url_that_cannot_be_fetched_fails_the_crawl(tmp_path: Path, runs: int) -> None:
    project = copy_project(tmp_path / 'project')
    actor_input = {
        'startUrls': [{'url': f'http://127.0.0.1:{closed_port()}/'}],
        'parallelRuns': runs,
        'maxRequestRetries': 1,
        'syncIntervalSecs': 0.5,
        'deadRunTimeoutSecs': 5,
    }
    code, log = finish(start_actor(project, actor_input, tmp_path / 'out.log'), 180, tmp_path / 'out.log')
    assert code == 1, log[-3000:]
    assert 'No page was fetched (1 failed)' in log
    assert 'ConnectError' in log.rsplit('Run summary', 1)[1], 'the cause is in the parent log, not only a child log'


def test_a_child_killed_mid_crawl_is_a_warning_and_its_saved_pages_are_shown(tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    site = serve_site(300, delay_secs=0.03)
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
        folder = storage / 'parallel-runs' / run_id
        wait_until(lambda: dataset_count(folder) >= 10, 120, 'the child run to save 10 pages')
        os.kill(pid, signal.SIGKILL)
        code, log = finish(proc, 240, tmp_path / 'out.log')
        assert code == 0, 'the other runs covered for it: the crawl succeeded'
        row = table_rows(log)[run_id]
        assert row[1] == 'killed (SIGKILL)'
        assert int(row[2]) == dataset_count(folder) >= 10, 'the pages it saved, counted from its dataset'
        assert f'WARN  Run {run_id} (no summary) ended killed (SIGKILL)' in log
        assert site.stats.snapshot()['distinct'] == site.pages
        urls = dataset_urls(storage)
        assert len(urls) == len(set(urls)) == site.pages, 'the result set: every page once, re-fetched ones too'
    finally:
        site.stop()


def test_status_of_an_ended_run() -> None:
    assert status_of(0) == 'ok'
    assert status_of(-signal.SIGKILL) == 'killed (SIGKILL)'
    assert status_of(128 + signal.SIGTERM) == 'stopped (SIGTERM)'
    assert status_of(128 + signal.SIGINT) == 'stopped (SIGINT)'
    assert status_of(91) == 'failed (exit 91)'
    assert status_of(None, 'SUCCEEDED') == 'ok'
    assert status_of(None, 'FAILED') == 'failed (failed)'
    assert status_of(None, 'ABORTED') == 'stopped (aborted)'


def row(
    run_id: str, status: str, pages: int | None, failed: int | None = 0, error: str | None = None
) -> dict[str, Any]:
    return {'runId': run_id, 'status': status, 'pagesProcessed': pages, 'pagesFailed': failed, 'topError': error}


def test_the_verdict_on_a_crawl() -> None:
    covered = judge([row('a', 'ok', 50), row('b', 'killed (SIGKILL)', 7)], whole_crawl=True, stopped_by=None)
    assert covered.exit_code == 0
    assert covered.warnings == ['Run b ended killed (SIGKILL); the other runs took over its URLs.']
    nothing = judge([row('a', 'ok', 0, 1, 'ConnectError (4x)')], whole_crawl=True, stopped_by=None)
    assert nothing.exit_code == 1
    assert nothing.message.startswith('No page was fetched (1 failed): ConnectError (4x).')
    assert nothing.warnings == [], 'the message says it all'
    some = judge([row('a', 'ok', 10, 2, 'HttpStatusError (2x)')], whole_crawl=True, stopped_by=None)
    assert some.exit_code == 0
    assert some.warnings == ['2 pages failed after all retries: HttpStatusError (2x)']
    every = judge([row('a', 'failed (exit 1)', 3), row('b', 'failed (exit 1)', 4)], whole_crawl=True, stopped_by=None)
    assert every.exit_code == 1
    stopped = judge([row('a', 'stopped (SIGINT)', 3), row('b', 'stopped (SIGTERM)', 4)], whole_crawl=True,
                    stopped_by=signal.SIGINT)  # fmt: skip
    assert stopped.exit_code == 130
    assert 'To resume' in stopped.message
    assert stopped.warnings == [], 'runs stopped with this one are no news'
    child = judge([row('a', 'ok', 0)], whole_crawl=False, stopped_by=None)
    assert child.exit_code == 0, 'a child that fetched nothing is fine: the others may have fetched everything'
    resumed = judge([{**row('a', 'ok', 0), 'processedInCrawl': 8}], whole_crawl=True, stopped_by=None)
    assert resumed.exit_code == 0, 'a resumed crawl with nothing left to fetch succeeded'
    assert resumed.message.startswith('Nothing left to fetch: the 8 pages')


def test_a_child_gets_its_own_input_key_storages_and_run_id(tmp_path: Path) -> None:
    parent = {
        'PATH': '/usr/bin',
        'APIFY_TOKEN': 'token',
        'ACTOR_INPUT_KEY': '__CLI_INPUT',  # what `apify run` sets for an input with schema defaults
        'APIFY_INPUT_KEY': '__CLI_INPUT',
        'CRAWLEE_INPUT_KEY': '__CLI_INPUT',
        'CRAWLEE_PURGE_ON_START': '0',
        'APIFY_LOCAL_STORAGE_DIR': 'storage',
        'CRAWLEE_STORAGE_DIR': 'storage',
        'ACTOR_DEFAULT_DATASET_ID': 'parents',
        'ACTOR_RUN_ID': 'parent',
    }
    env = child_env(parent, storage_dir=tmp_path, run_id='parent-1')
    assert env['ACTOR_INPUT_KEY'] == env['APIFY_INPUT_KEY'] == env['CRAWLEE_INPUT_KEY'] == 'INPUT'
    assert env['CRAWLEE_STORAGE_DIR'] == env['APIFY_LOCAL_STORAGE_DIR'] == str(tmp_path)
    assert env['ACTOR_RUN_ID'] == env['APIFY_ACTOR_RUN_ID'] == 'parent-1'
    assert env['CRAWLEE_PURGE_ON_START'] == '1'
    assert 'ACTOR_DEFAULT_DATASET_ID' not in env
    assert env['PATH'] == '/usr/bin'
    assert env['APIFY_TOKEN'] == 'token'

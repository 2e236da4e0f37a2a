"""Stopping and resuming with real signals to real processes: every run stops cleanly, with a final sync."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from src.demo.site import RunningSite, serve_site
from tests.actor.project import (
    ANSI,
    child_logs,
    child_pids,
    clean_env,
    copy_project,
    dataset_urls,
    finish,
    gone,
    outputs,
    start_actor,
    table_rows,
    wait_until,
)

FINAL_SYNC = re.compile(r"Shared map 'SM' \(run [\w-]+\) closed")


@pytest.fixture
def site() -> Iterator[RunningSite]:
    running = serve_site(300, delay_secs=0.03)
    yield running
    running.stop()


def crawl_input(site: RunningSite, runs: int) -> dict[str, Any]:
    return {
        'startUrls': [{'url': site.url}],
        'parallelRuns': runs,
        'maxConcurrency': 3,
        'syncIntervalSecs': 0.5,
        'deadRunTimeoutSecs': 5,
    }


def assert_clean_stop(text: str, *exit_codes: int) -> None:
    text = ANSI.sub('', text)
    assert 'Traceback' not in text
    assert 'Statistics is not active' not in text
    assert FINAL_SYNC.search(text), 'a final sync'
    exited = re.search(r'Exiting Actor \({"exit_code": (\d+)}\)', text)
    assert exited, 'the run ended through the Actor'
    assert int(exited[1]) in exit_codes


def test_ctrl_c_to_the_process_group_stops_every_run_cleanly(site: RunningSite, tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    proc = start_actor(project, crawl_input(site, 3), tmp_path / 'out.log')
    wait_until(lambda: site.stats.snapshot()['fetches'] >= 60, 120, '60 pages fetched')
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    code, log = finish(proc, 60, tmp_path / 'out.log')
    assert code == 130
    assert_clean_stop(log, 130)
    for child_log in child_logs(storage):
        assert_clean_stop(child_log, 130, 143)  # SIGINT from the terminal, or SIGTERM from the parent if first
    assert 'Stopped by SIGINT' in log
    fetched = site.stats.snapshot()
    assert fetched['distinct'] < site.pages, 'stopped before the end'
    urls = dataset_urls(storage)
    assert len(urls) == len(set(urls)) == fetched['distinct'], 'every page fetched was saved, once'


def test_sigint_to_the_parent_alone_stops_its_children_too(site: RunningSite, tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    proc = start_actor(project, crawl_input(site, 3), tmp_path / 'out.log')
    wait_until(lambda: site.stats.snapshot()['fetches'] >= 60, 120, '60 pages fetched')
    proc.send_signal(signal.SIGINT)
    code, log = finish(proc, 60, tmp_path / 'out.log')  # also waits for the children: bounded
    assert code == 130
    assert_clean_stop(log, 130)
    for child_log in child_logs(storage):
        assert_clean_stop(child_log, 143)
    rows = table_rows(log)
    assert [row[1] for row in rows.values()] == ['stopped (SIGINT)', 'stopped (SIGTERM)', 'stopped (SIGTERM)']
    assert len(outputs(storage)) == 3, 'every run wrote its summary'
    fetched = site.stats.snapshot()
    assert fetched['distinct'] < site.pages, 'stopped before the end'
    urls = dataset_urls(storage)
    assert len(urls) == len(set(urls)) == fetched['distinct'], 'every page fetched was saved, once'


def test_sigterm_to_a_child_ends_it_with_a_final_sync_and_the_others_finish(site: RunningSite, tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    proc = start_actor(project, crawl_input(site, 3), tmp_path / 'out.log')
    wait_until(lambda: len(child_pids(storage)) == 2, 60, 'the child runs to start')
    wait_until(lambda: site.stats.snapshot()['fetches'] >= 60, 120, '60 pages fetched')
    run_id, pid = sorted(child_pids(storage).items())[0]
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 30, 'the child to stop')
    code, log = finish(proc, 240, tmp_path / 'out.log')
    assert code == 0, log[-3000:]
    child_log = (storage / 'parallel-runs' / run_id / 'log.txt').read_text(errors='replace')
    assert_clean_stop(child_log, 143)
    assert table_rows(log)[run_id][1] == 'stopped (SIGTERM)'
    assert f'Run {run_id} ended stopped (SIGTERM); the other runs took over its URLs.' in log
    stats = site.stats.snapshot()
    assert stats['distinct'] == site.pages, 'the other runs finished the crawl'
    assert stats['duplicates'] == 0, 'the stopped run recorded every page it fetched'
    urls = dataset_urls(storage)
    assert len(urls) == len(set(urls)) == site.pages


def test_the_resume_hint_is_a_command_that_resumes(site: RunningSite, tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    proc = start_actor(project, crawl_input(site, 1), tmp_path / 'out.log')
    wait_until(lambda: site.stats.snapshot()['fetches'] >= 40, 120, '40 pages fetched')
    os.killpg(proc.pid, signal.SIGINT)
    code, log = finish(proc, 60, tmp_path / 'out.log')
    assert code == 130
    hint = re.search(r'`(CRAWLEE_PURGE_ON_START=0 \S+ -m src)`', log)
    assert hint, log[-2000:]
    assert 'src/__main__.py' not in log, "crawlee's own hint, which does not work for a package"
    with (tmp_path / 'resumed.log').open('wb') as sink:
        resumed = subprocess.Popen(
            ['bash', '-c', hint[1]], cwd=project, env=clean_env(), stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    code, log = finish(resumed, 240, tmp_path / 'resumed.log')
    assert code == 0, log[-3000:]
    stats = site.stats.snapshot()
    assert stats['distinct'] == site.pages
    assert stats['duplicates'] == 0
    urls = dataset_urls(storage)
    assert len(urls) == len(set(urls)) == site.pages, 'the results of both attempts, each page once'


def test_a_stop_while_waiting_for_the_other_runs_to_start_is_clean(site: RunningSite, tmp_path: Path) -> None:
    project = copy_project(tmp_path / 'project')
    storage = project / 'storage'
    log_path = tmp_path / 'out.log'
    proc = start_actor(project, crawl_input(site, 3), log_path)
    # The parent waits until it sees every run before crawling; the children take a second or two to start.
    wait_until(lambda: 'more local runs as processes' in log_path.read_text(errors='replace'), 60, 'the fan-out')
    proc.send_signal(signal.SIGINT)
    code, log = finish(proc, 60, log_path)  # also waits for the children: bounded
    assert code == 130, log[-3000:]
    assert_clean_stop(log, 130)
    assert 'Stopped by SIGINT' in log
    for child_log in child_logs(storage):  # stopped as they started, or killed before they could listen: no trace
        assert 'Traceback' not in child_log

"""End-to-end on the platform path: real runs of the actor (`python -m src` in a copy of the project, with the
platform's environment) against the local MOCK of the Apify API (`stand_in.py`) and a real local site.

The Apify platform cannot be reached from here; the mock stands in for its API, and for what it does to a run's
process (ABORTING, SIGTERM, SIGKILL; MIGRATING, a kill and a restart under the same run id).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from apify_client import ApifyClient

from src.demo.site import RunningSite, serve_site
from tests.actor.project import clean_env, copy_project, wait_until
from tests.platform.stand_in import PlatformStandIn
from tests.platform.stand_in_runs import ActorRun

PAGE_SIZE = 40  # items per page of a dataset listing: the merge must paginate
GRACE_SECS = 10.0


@pytest.fixture(scope='module')
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp('project'))


@pytest.fixture
def api(project: Path, tmp_path: Path) -> Iterator[PlatformStandIn]:
    with PlatformStandIn(
        folder=tmp_path,
        project=project,
        max_items_per_page=PAGE_SIZE,
        abort_grace_secs=GRACE_SECS,
        migration_grace_secs=2.0,
    ) as running:
        yield running


def crawl_input(site: RunningSite, runs: int) -> dict[str, object]:
    return {'startUrls': [{'url': site.url}], 'parallelRuns': runs, 'syncIntervalSecs': 0.5, 'deadRunTimeoutSecs': 8}


def items(api: PlatformStandIn, run: ActorRun) -> list[dict[str, object]]:
    return api.datasets.by_id[run.default_dataset_id].items


def finish_all(api: PlatformStandIn, first: ActorRun, timeout: float = 120) -> list[ActorRun]:
    api.runs.wait(first.id, timeout)
    runs = list(api.runs.by_id.values())
    for run in runs:
        api.runs.wait(run.id, 30)
    return runs


def logs(runs: list[ActorRun]) -> str:
    return '\n'.join(run.log.read_text(errors='replace') for run in runs)


def assert_each_page_once(result: list[dict[str, object]]) -> None:
    urls = Counter(str(item['url']) for item in result)
    assert [url for url, n in urls.items() if n > 1] == [], 'each page once in the result set'


def test_three_runs_crawl_the_site_once_and_the_merge_reads_every_dataset_page_by_page(api: PlatformStandIn) -> None:
    site = serve_site(200, delay_secs=0.005)
    try:
        first = api.runs.start(crawl_input(site, 3))
        runs = finish_all(api, first)
        stats = site.stats.snapshot()
    finally:
        site.stop()
    assert len(runs) == 3, 'the first run started two more through the API'
    assert [run.status for run in runs] == ['SUCCEEDED'] * 3, logs(runs)[-3000:]
    assert stats['distinct'] == site.pages
    assert stats['duplicates'] == 0, 'every page fetched once'
    result = items(api, first)
    assert_each_page_once(result)
    assert len(result) == site.pages, 'the result set holds every page'
    for child in runs[1:]:
        assert items(api, child), f'run {child.id} crawled too'
        assert child.input_body != first.input_body, 'a child is told it is one (parentRunId)'
    merged = sum(len(items(api, child)) for child in runs[1:])
    assert max(api.datasets.pages_served) == PAGE_SIZE
    assert len(api.datasets.pages_served) >= merged // PAGE_SIZE, 'the merge read the run datasets page by page'
    assert {key for key, _ in api.responses} >= {'actors_post', 'actor-runs_get', 'datasets_get', 'datasets_post'}
    assert api.rejections == []


def test_aborting_the_first_run_aborts_every_run_it_started_within_the_grace_period(api: PlatformStandIn) -> None:
    site = serve_site(3000, delay_secs=0.03)
    try:
        first = api.runs.start(crawl_input(site, 3))
        wait_until(
            lambda: len(api.runs.by_id) == 3 and all(len(items(api, run)) >= 5 for run in api.runs.by_id.values()),
            90,
            'every run crawling',
        )
        aborted_at = time.time()
        ApifyClient(token=api.token, api_url=api.url).run(first.id).abort()  # as Console's Abort does
        runs = finish_all(api, first, timeout=GRACE_SECS + 20)
        fetched = site.stats.snapshot()['fetches']
        time.sleep(1)
        assert site.stats.snapshot()['fetches'] == fetched, 'nothing fetches any more'
    finally:
        site.stop()
    for run in runs:
        assert run.status == 'ABORTED', f'{run.id}: {run.status}\n{logs(runs)[-3000:]}'
        assert not run.killed_after_grace, f'run {run.id} had to be killed'
        assert run.finished_at is not None
        assert run.finished_at - aborted_at < api.runs.abort_signal_delay_secs + GRACE_SECS
        assert 'aborting' in run.events_sent, f'run {run.id} was aborted through the API'
    assert 'aborted through the API' in runs[0].log.read_text()
    assert_each_page_once(items(api, first))
    assert len(items(api, first)) >= sum(len(items(api, run)) for run in runs[1:]), 'the merge still ran'


def test_a_migrated_run_comes_back_under_the_same_run_id_and_loses_nothing(api: PlatformStandIn) -> None:
    site = serve_site(600, delay_secs=0.03)
    try:
        first = api.runs.start(crawl_input(site, 2))
        wait_until(lambda: len(api.runs.by_id) == 2, 60, 'the second run')
        child = next(run for run in api.runs.by_id.values() if run is not first)
        wait_until(lambda: len(items(api, child)) >= 20, 60, 'the second run crawling')
        api.runs.migrate(child.id, at_a_save=True)
        runs = finish_all(api, first)
        stats = site.stats.snapshot()
    finally:
        site.stop()
    assert [run.id for run in runs] == [first.id, child.id], 'no run was added; the migrated one kept its id'
    assert child.migrations == 1
    assert child.processes == 2
    assert [run.status for run in runs] == ['SUCCEEDED'] * 2, logs(runs)[-3000:]
    log = child.log.read_text()
    assert 'saved in this dataset by an earlier attempt are not fetched again' not in log, 'nothing saved unsynced'
    assert 'Migrating: the shared map holds every page saved' in log
    assert stats['distinct'] == site.pages, 'no link was lost'
    assert stats['duplicates'] <= 10, 'at most the pages in flight at the kill are fetched again'
    result = items(api, first)
    assert_each_page_once(result)
    assert len(result) == site.pages


def test_a_migrated_first_run_takes_up_the_runs_it_started_and_goes_on_at_once(api: PlatformStandIn) -> None:
    site = serve_site(200, delay_secs=0.03)
    try:
        first = api.runs.start({**crawl_input(site, 2), 'deadRunTimeoutSecs': 4})
        wait_until(lambda: len(api.runs.by_id) == 2, 60, 'the second run')
        child = next(run for run in api.runs.by_id.values() if run is not first)
        wait_until(lambda: len(items(api, first)) >= 20, 60, 'the first run crawling')
        # While the first run is away, the other takes its URLs over and finishes the crawl.
        api.runs.migrate(first.id, before_restart=lambda: api.runs.wait(child.id, 60))
        restarted_at = time.time()
        runs = finish_all(api, first)
        stats = site.stats.snapshot()
    finally:
        site.stop()
    assert len(runs) == 2, 'the restarted first run started no more runs'
    assert first.migrations == 1
    assert [run.status for run in runs] == ['SUCCEEDED'] * 2, logs(runs)[-3000:]
    assert f'the runs it started before go on: {child.id}' in first.log.read_text()
    assert first.finished_at is not None
    assert first.finished_at - restarted_at < 30, 'it did not wait for runs to join a crawl that had ended'
    assert stats['distinct'] == site.pages, 'no link was lost'
    assert stats['duplicates'] <= 10
    result = items(api, first)
    assert_each_page_once(result)
    assert len(result) == site.pages


def test_make_platform_run_writes_the_result_set_and_says_where_the_storages_are(project: Path, tmp_path: Path) -> None:
    site = serve_site(30, delay_secs=0.005)
    results, folder = tmp_path / 'out.jsonl', tmp_path / 'platform'
    env = clean_env(
        INPUT=json.dumps({'startUrls': [{'url': site.url}], 'datasetName': 'results'}),
        RESULTS=str(results),
        PLATFORM_DIR=str(folder),
    )
    try:
        done = subprocess.run(['make', '-s', 'platform-run'], cwd=project, env=env, capture_output=True, timeout=120)
        stats = site.stats.snapshot()
    finally:
        site.stop()
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert_each_page_once(lines)
    assert len(lines) == site.pages == stats['distinct']
    assert f'the storages of the mock are in {folder}' in out
    assert ': SUCCEEDED (exit 0)' in out
    assert len((folder / 'datasets' / 'results.jsonl').read_text().splitlines()) == site.pages, 'the named result set'
    assert len(list((folder / 'runs').glob('*.log'))) == 1


@pytest.mark.parametrize(
    ('value', 'message'),
    [('', 'ERROR Set INPUT to the actor input as JSON'), ('{"startUrls": ', 'ERROR INPUT is not valid JSON')],
)
def test_make_platform_run_says_what_to_fix_in_its_input(project: Path, value: str, message: str) -> None:
    done = subprocess.run(
        ['make', '-s', 'platform-run'], cwd=project, env=clean_env(INPUT=value), capture_output=True, timeout=60
    )
    assert done.returncode != 0
    errors = done.stderr.decode().splitlines()
    assert errors[0].startswith(message), errors
    assert 'Traceback' not in done.stderr.decode()

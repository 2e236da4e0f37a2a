"""Fan-out: one run starts `parallelRuns - 1` more runs of this actor that share the crawl through the shared map.

On the Apify platform they are new runs of this actor (`Actor.start`), whose ids the first run keeps in its default
key-value store (`PARALLEL-RUNS`): a migrated first run, restarted under the same run id, takes them up again instead
of starting more. Stopping the first run (Console's Abort: the ABORTING event, then SIGTERM) aborts them through the
API. Locally they are child processes (`python -m src`), each with its own storage folder under
`<storage>/parallel-runs/<run id>/` (its own queue, dataset and INPUT, purged only by itself, and a `crawl.json`
naming the crawl it took part in); they share only the named store, opened from the parent's folder. Either way a
child gets the crawl's store in its input (`sharedStoreName`): it joins this crawl, never starts its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apify import Actor, Event

from .crawl_identity import mark_child_folder
from .input import CrawlerInput

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUMMARY_PREFIX = 'RUN-SUMMARY.'
CHILD_RUNS_KEY = 'PARALLEL-RUNS'
"""The first run's record (in its default key-value store, on the platform) of the runs it started."""
ABORT_TIMEOUT_SECS = 30.0

# Variables that describe the parent's own run and storages: a child inheriting them would, e.g., look for its input
# under the temporary key `apify run` gives the parent (`__CLI_INPUT`), a record that is not in the child's folder.
_PER_RUN_VARIABLES = frozenset(
    {
        'ACTOR_DEFAULT_DATASET_ID',
        'ACTOR_DEFAULT_KEY_VALUE_STORE_ID',
        'ACTOR_DEFAULT_REQUEST_QUEUE_ID',
        'APIFY_DEFAULT_DATASET_ID',
        'APIFY_DEFAULT_KEY_VALUE_STORE_ID',
        'APIFY_DEFAULT_REQUEST_QUEUE_ID',
        'ACTOR_STORAGES_JSON',
        'APIFY_ACT_RUN_ID',
        'ACTOR_STARTED_AT',
        'APIFY_STARTED_AT',
        'ACTOR_WEB_SERVER_PORT',
        'ACTOR_WEB_SERVER_URL',
        'APIFY_CONTAINER_PORT',
        'APIFY_CONTAINER_URL',
        'ACTOR_STANDBY_URL',
    }
)
_ANSI = re.compile(r'\x1b\[[0-9;]*m')
OK = 'ok'
_PLATFORM_STATUS = {'SUCCEEDED': OK, 'ABORTED': 'stopped (aborted)', 'TIMED-OUT': 'failed (timed out)'}


@dataclass
class ChildRun:
    """A run started by this one."""

    run_id: str
    process: subprocess.Popen[bytes] | None = None
    storage_dir: Path | None = None
    exit_code: int | None = None
    """Set by `wait()` for a local process: 0, an exit code, or minus the number of the signal that killed it."""
    platform_status: str | None = None
    """Set by `wait()` on the platform: `SUCCEEDED`, `FAILED`, `ABORTED`, `TIMED-OUT`."""
    _aborting: asyncio.Task[None] | None = field(default=None, repr=False)

    def stop_if_running(self) -> None:
        """Terminate a local child process that is still running; on the platform, abort a run not seen finished."""
        self.send_signal(signal.SIGTERM)

    def send_signal(self, signum: int) -> None:
        """Send `signum` to a local child process that is still running.

        On the platform, any signal aborts the run through the API, once, as Console's Abort does (the run gets
        ABORTING, then SIGTERM); `wait()` and `abort_runs()` wait for that call.
        """
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signum)
        elif self.platform_status is None and self._aborting is None:
            self._aborting = asyncio.get_running_loop().create_task(self._abort(), name=f'abort-run-{self.run_id}')

    async def _abort(self) -> None:
        try:
            run = await Actor.apify_client.run(self.run_id).abort()
        except Exception as exc:  # the run may have finished meanwhile; say so, do not fail the stopping run
            Actor.log.warning(f'Could not abort run {self.run_id} ({type(exc).__name__}: {exc}); check it in Console.')
            return
        Actor.log.info(f'Run {self.run_id} aborted through the API (status {run.status}).')

    async def settle(self) -> None:
        """Wait for the abort call `send_signal` made on the platform, if it made one."""
        if self._aborting is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._aborting), ABORT_TIMEOUT_SECS)

    async def wait(self) -> int | None:
        """Wait until the run ends; its exit code (None on the platform, where `platform_status` says more)."""
        if self.process is not None:
            self.exit_code = await asyncio.to_thread(self.process.wait)
            return self.exit_code
        await self.settle()
        run = await Actor.apify_client.run(self.run_id).wait_for_finish()
        self.platform_status = str(run.status) if run else None
        return None

    def dataset_items(self) -> int | None:
        """How many items a local child saved in its dataset (None on the platform)."""
        if self.storage_dir is None:
            return None
        folder = self.storage_dir / 'datasets' / 'default'
        return sum(1 for path in folder.glob('*.json') if path.name != '__metadata__.json')

    def last_error(self) -> str | None:
        """The last error line of a local child's log (its `log.txt`), to say why it failed."""
        if self.storage_dir is None or not (self.storage_dir / 'log.txt').exists():
            return None
        lines = (self.storage_dir / 'log.txt').read_text(errors='replace').splitlines()
        errors = [_ANSI.sub('', line).strip() for line in lines if 'ERROR' in line or 'Error' in line]
        return errors[-1] if errors else None


def status_of(exit_code: int | None, platform_status: str | None = None) -> str:
    """`ok`, `stopped (SIGTERM)`, `killed (SIGKILL)` or `failed (exit N)`, from a process's exit code.

    A run stopped cleanly by a signal exits with 128 + the signal's number (`judge()` in `src/summary.py`); a
    negative code is a process killed by that signal without a chance to clean up.
    """
    if exit_code is None:
        return _PLATFORM_STATUS.get(platform_status or '', f'failed ({(platform_status or "unknown").lower()})')
    if exit_code == 0:
        return OK
    if exit_code < 0:
        return f'killed ({signal_name(-exit_code)})'
    if exit_code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        return f'stopped ({signal_name(exit_code - 128)})'
    return f'failed (exit {exit_code})'


def signal_name(signum: int) -> str:
    """The name of signal `signum` (`SIGTERM`), or `signal N` for a number Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


def child_input(crawl_input: CrawlerInput, parent_run_id: str, local_storage: Path | None) -> dict[str, Any]:
    """The input of a child run: the parent's, marked as a child, with the crawl's store; locally also where it is."""
    raw = {**crawl_input.raw, 'parentRunId': parent_run_id}
    if crawl_input.shared_store_name:
        raw['sharedStoreName'] = crawl_input.shared_store_name
    if local_storage is not None and not crawl_input.shared_storage_connection:
        raw['sharedStorageConnection'] = f'file://{local_storage.resolve()}'
    return raw


async def fan_out(crawl_input: CrawlerInput, run_id: str) -> list[ChildRun]:
    """Start `parallelRuns - 1` more runs with the same input, unless this run is itself a child."""
    count = crawl_input.parallel_runs - 1
    if count <= 0 or crawl_input.is_child:
        return []
    if Actor.is_at_home():
        return await _start_platform_runs(crawl_input, run_id, count)
    storage = _local_storage_dir()
    children = [_start_local_child(crawl_input, run_id, storage, index) for index in range(1, count + 1)]
    Actor.log.info(
        f'Started {count} more local runs as processes; their storages and logs are in {storage / "parallel-runs"}'
    )
    return children


async def _start_platform_runs(crawl_input: CrawlerInput, run_id: str, count: int) -> list[ChildRun]:
    actor_id = Actor.configuration.actor_id
    if not actor_id:
        raise RuntimeError('Cannot fan out: this run does not know its actor id (ACTOR_ID is not set).')
    started = await Actor.get_value(CHILD_RUNS_KEY)
    run_ids = [str(run) for run in started] if isinstance(started, list) else []
    if run_ids:  # this run migrated (or restarted): the runs it started go on
        Actor.log.info(f'This run restarted; the runs it started before go on: {", ".join(run_ids)}')
    while len(run_ids) < count:
        run = await Actor.start(actor_id, run_input=child_input(crawl_input, run_id, None))
        run_ids.append(run.id)
        await Actor.set_value(CHILD_RUNS_KEY, run_ids)  # after each: a migration in between starts no run twice
        Actor.log.info(f'Started run {run.id} ({len(run_ids)} of {count} more runs).')
    return [ChildRun(run_id=run_id) for run_id in run_ids]


async def abort_runs(children: list[ChildRun]) -> None:
    """Stop the children still running (on the platform: abort them through the API) and wait for those calls."""
    for child in children:
        child.stop_if_running()
    await asyncio.gather(*(child.settle() for child in children))


def on_aborting(callback: Callable[[], object]) -> None:
    """On the platform, call `callback` when the run is being aborted (the ABORTING event comes before SIGTERM)."""

    async def listener(_data: object) -> None:  # async: crawlee calls a plain function in another thread
        Actor.log.warning('The platform is aborting this run (ABORTING): it stops, with the runs it started.')
        callback()

    if Actor.is_at_home():
        Actor.on(Event.ABORTING, listener)


def _local_storage_dir() -> Path:
    return Path(Actor.configuration.storage_dir).resolve()


def _start_local_child(crawl_input: CrawlerInput, parent_run_id: str, storage: Path, index: int) -> ChildRun:
    run_id = f'{parent_run_id}-{index}'
    storage_dir = storage / 'parallel-runs' / run_id
    input_dir = storage_dir / 'key_value_stores' / 'default'
    input_dir.mkdir(parents=True, exist_ok=True)
    if crawl_input.crawl_id is not None:
        mark_child_folder(storage_dir, crawl_input.crawl_id)
    (input_dir / 'INPUT.json').write_text(json.dumps(child_input(crawl_input, parent_run_id, storage), indent=2))
    log = (storage_dir / 'log.txt').open('wb')
    # The child starts with SIGINT ignored (an ignored signal stays ignored across exec, and Python then installs no
    # KeyboardInterrupt handler): a Ctrl-C to the process group while it is still importing must not kill it with a
    # traceback. Once running, its own handler takes SIGINT over; before that, the parent's SIGTERM stops it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = subprocess.Popen(
            [sys.executable, '-m', 'src'],
            cwd=PROJECT_ROOT,
            env=child_env(os.environ, storage_dir=storage_dir, run_id=run_id),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    log.close()
    return ChildRun(run_id=run_id, process=process, storage_dir=storage_dir)


def child_env(base: Mapping[str, str], *, storage_dir: Path, run_id: str) -> dict[str, str]:
    """The environment of a local child run: the parent's, with the child's own run id, storages and input.

    The input key is set to `INPUT` explicitly: `apify run` sets `ACTOR_INPUT_KEY` (and its aliases) to `__CLI_INPUT`
    or `INPUT` for the parent, and turns purging off; the child's INPUT is `<storage_dir>/.../default/INPUT.json`.
    """
    env = {key: value for key, value in base.items() if key not in _PER_RUN_VARIABLES}
    env.update(
        {
            'CRAWLEE_STORAGE_DIR': str(storage_dir),
            'APIFY_LOCAL_STORAGE_DIR': str(storage_dir),
            'ACTOR_RUN_ID': run_id,
            'APIFY_ACTOR_RUN_ID': run_id,
            'ACTOR_INPUT_KEY': 'INPUT',
            'APIFY_INPUT_KEY': 'INPUT',
            'CRAWLEE_INPUT_KEY': 'INPUT',
            'CRAWLEE_PURGE_ON_START': '1',  # purges only this child's own default storages
            'APIFY_PURGE_ON_START': '1',
        }
    )
    return env

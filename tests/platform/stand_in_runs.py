"""The actor-run endpoints and platform events of the Apify API MOCK (`stand_in.PlatformStandIn`).

A run of the mock is a real process of the actor (`python -m src` in the project folder) with the environment the
platform gives a run: `APIFY_IS_AT_HOME=1`, its run id, token, API URLs, default storage ids (its input in its
default key-value store) and `ACTOR_EVENTS_WEBSOCKET_URL`, a websocket of this mock that sends it platform events:

    POST /v2/actors/<actor id>/runs        start a run (the body is its input; also /acts/) 201 {"data": run}
    GET  /v2/actor-runs/<id>               the run; ?waitForFinish=<secs> long-polls    200 {"data": run} | 404
    PUT  /v2/actor-runs/<id>               update (the status message)                   200 {"data": run}
    POST /v2/actor-runs/<id>/abort         abort: ABORTING event, SIGTERM `abort_signal_delay_secs` later, SIGKILL
                                           `abort_grace_secs` after that if still running   200 {"data": run}
    /v2/actor-runs/<id>/dataset/...        the run's default dataset (see `stand_in_datasets`)
    /v2/actor-runs/<id>/key-value-store/.. the run's default key-value store
    ws://.../events/<run id>               persistState every `persist_state_interval_secs`; migrating; aborting

`migrate(run_id)` does what a migration does to a run: the MIGRATING event, SIGKILL `migration_grace_secs` later, and
a new process under the same run id with the same default storages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from tests.platform.api_common import ApiError, iso, json_reply

if TYPE_CHECKING:
    from tests.platform.stand_in import PlatformStandIn

__all__ = ['ACTOR_ID', 'ActorRun', 'Runs']

ACTOR_ID = 'standInActor0001'
ROOT = Path(__file__).resolve().parents[2]
FREE_PRICING = {
    'pricingModel': 'FREE',
    'apifyMarginPercentage': 0,
    'createdAt': '2024-01-01T00:00:00.000Z',
    'startedAt': '2024-01-01T00:00:00.000Z',
}
_Answer = tuple[int, dict[str, str], bytes]


@dataclass
class ActorRun:
    """One run of the mock, across its processes (a migration starts a new one)."""

    id: str
    input_body: bytes
    input_content_type: str
    default_key_value_store_id: str
    default_dataset_id: str
    default_request_queue_id: str
    log: Path
    status: str = 'READY'
    status_message: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    exit_code: int | None = None
    """Of the last process: its code, or minus the signal that killed it."""
    process: subprocess.Popen[bytes] | None = None
    processes: int = 0
    migrations: int = 0
    killed_after_grace: bool = False
    """The abort's grace period ran out and the process was killed."""
    events_sent: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    migrating: bool = False


class Runs:
    """The runs of the mock and their events websocket; answers `/v2/acts/...` and `/v2/actor-runs/...`."""

    def __init__(
        self,
        api: PlatformStandIn,
        *,
        project: Path = ROOT,
        log_dir: Path,
        python: str = sys.executable,
        abort_signal_delay_secs: float = 1.0,
        abort_grace_secs: float = 10.0,
        migration_grace_secs: float = 1.0,
        persist_state_interval_secs: float = 60.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self._api = api
        self.project = project
        self.log_dir = log_dir
        self.python = python
        self.abort_signal_delay_secs = abort_signal_delay_secs
        self.abort_grace_secs = abort_grace_secs
        self.migration_grace_secs = migration_grace_secs
        self.persist_state_interval_secs = persist_state_interval_secs
        self.extra_env = dict(extra_env or {})
        self.by_id: dict[str, ActorRun] = {}
        self._connections: dict[str, list[ServerConnection]] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server = serve(self._on_connection, '127.0.0.1', 0)
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name='stand-in-events', daemon=True),
            threading.Thread(target=self._persist_state_loop, name='stand-in-persist-state', daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ what a test or a tool does

    def start(self, run_input: Any, *, content_type: str = 'application/json; charset=utf-8') -> ActorRun:
        """Start a run of the actor, as `POST /v2/acts/<id>/runs` does (a dict is sent as JSON)."""
        body = run_input if isinstance(run_input, bytes) else json.dumps(run_input).encode()
        return self._start(body, content_type)

    def get(self, run_id: str) -> ActorRun:
        """A run by id."""
        with self._lock:
            run = self.by_id.get(run_id)
        if run is None:
            raise ApiError(404, 'record-not-found', f'Actor run {run_id} was not found')
        return run

    def abort(self, run_id: str, *, gracefully: bool = False) -> ActorRun:
        """Abort a run as Console's Abort does: ABORTING, then SIGTERM, then SIGKILL after the grace period.

        Gracefully (the API's `gracefully=true`): the ABORTING and a PERSIST_STATE event, and SIGKILL 30 s later.
        """
        run = self.get(run_id)
        with self._lock:
            if run.status not in ('READY', 'RUNNING'):
                return run
            run.status = 'ABORTING'
        threading.Thread(target=self._abort, args=(run, gracefully), name=f'abort-{run.id}', daemon=True).start()
        return run

    def migrate(
        self, run_id: str, *, at_a_save: bool = False, before_restart: Callable[[], object] | None = None
    ) -> ActorRun:
        """Migrate a running run: MIGRATING, the process killed, a new one under the same run id. Blocks until then.

        Args:
            run_id: The run.
            at_a_save: Kill the process right after it saves an item to its dataset (if it saves one within
                another `migration_grace_secs`), the worst moment for a run that goes on working after MIGRATING.
            before_restart: Called between the kill and the restart (the platform takes a while to restart a run
                on another server: a test can let the other runs go on meanwhile).
        """
        run = self.get(run_id)
        with self._lock:
            if run.status != 'RUNNING' or run.process is None:
                raise RuntimeError(f'Run {run_id} is {run.status}: only a running run migrates.')
            run.migrating = True
            process = run.process
        self.send_event(run, 'migrating', {'timeRemainingSecs': self.migration_grace_secs})
        time.sleep(self.migration_grace_secs)
        if at_a_save:
            dataset = self._api.datasets.by_id[run.default_dataset_id]
            saved, deadline = len(dataset.items), time.monotonic() + self.migration_grace_secs
            while len(dataset.items) == saved and time.monotonic() < deadline:
                time.sleep(0.002)
        process.kill()
        process.wait()
        if before_restart is not None:
            before_restart()
        with self._lock:
            run.migrations += 1
            run.migrating = False
            if run.status == 'RUNNING':
                self._spawn(run)
        return run

    def wait(self, run_id: str, timeout: float | None = None) -> ActorRun:
        """Wait until the run has finished (or `timeout`); the run."""
        run = self.get(run_id)
        run.done.wait(timeout)
        return run

    def send_event(self, run: ActorRun, name: str, data: dict[str, Any]) -> None:
        """Send a platform event to the run's open websocket connections."""
        message = json.dumps({'name': name, 'data': data, 'createdAt': iso(time.time())})
        with self._lock:
            connections = list(self._connections.get(run.id, []))
            run.events_sent.append(name)
        for connection in connections:
            with contextlib.suppress(ConnectionClosed, OSError):
                connection.send(message)

    def close(self) -> None:
        """Kill every process still running and stop the websocket server."""
        self._stopping.set()
        with self._lock:
            runs = list(self.by_id.values())
        for run in runs:
            if run.process is not None and run.process.poll() is None:
                run.process.kill()
                run.process.wait()
        self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ the API (server threads)

    def handle(
        self, method: str, segments: list[str], query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Answer:
        """Answer a request under `/v2/acts` or `/v2/actor-runs` (the runs' storages are routed before this)."""
        if segments[1] in ('acts', 'actors'):
            if len(segments) == 4 and segments[3] == 'runs' and method == 'POST':
                if segments[2] not in (ACTOR_ID, f'~{ACTOR_ID}'):
                    raise ApiError(404, 'record-not-found', f'Actor {segments[2]} was not found')
                content_type = headers.get('content-type') or 'application/json; charset=utf-8'
                return json_reply(201, self.to_json(self._start(body, content_type)))
        elif len(segments) >= 3:
            run = self.get(segments[2])
            if len(segments) == 3 and method == 'GET':
                wait = min(float(query.get('waitForFinish') or 0), 60.0)
                if wait > 0:
                    run.done.wait(wait)
                return json_reply(200, self.to_json(run))
            if len(segments) == 3 and method == 'PUT':
                update = json.loads(body or b'{}')
                if isinstance(update, dict) and 'statusMessage' in update:
                    run.status_message = update['statusMessage']
                return json_reply(200, self.to_json(run))
            if len(segments) == 4 and segments[3] == 'abort' and method == 'POST':
                gracefully = query.get('gracefully', '').lower() in ('1', 'true')
                return json_reply(200, self.to_json(self.abort(run.id, gracefully=gracefully)))
        raise ApiError(404, 'page-not-found', f'The mock does not implement {method} /{"/".join(segments)}')

    def to_json(self, run: ActorRun) -> dict[str, Any]:
        """The run, with the fields apify-client's `Run` model requires."""
        with self._lock:
            finished = run.finished_at
            return {
                'id': run.id,
                'actId': ACTOR_ID,
                'userId': 'standInUser00001',
                'startedAt': iso(run.started_at),
                'finishedAt': iso(finished) if finished else None,
                'status': run.status,
                'statusMessage': run.status_message,
                'meta': {'origin': 'API'},
                'stats': {
                    'migrationCount': run.migrations,
                    'restartCount': 0,
                    'runTimeSecs': round((finished or time.time()) - run.started_at, 3),
                },
                'options': {'build': 'latest', 'timeoutSecs': 0, 'memoryMbytes': 1024, 'diskMbytes': 2048},
                'buildId': 'standInBuild0001',
                'buildNumber': '0.0.1',
                'exitCode': run.exit_code,
                'defaultKeyValueStoreId': run.default_key_value_store_id,
                'defaultDatasetId': run.default_dataset_id,
                'defaultRequestQueueId': run.default_request_queue_id,
            }

    # ------------------------------------------------------------------ processes and events

    def _start(self, body: bytes, content_type: str) -> ActorRun:
        run_id = uuid.uuid4().hex[:17]
        store = self._api.create_store(name=None)
        self._api.put_record(store.id, 'INPUT', body, content_type)
        dataset = self._api.datasets.create(name=None, act_run_id=run_id)
        run = ActorRun(
            id=run_id,
            input_body=body,
            input_content_type=content_type,
            default_key_value_store_id=store.id,
            default_dataset_id=dataset.id,
            default_request_queue_id=uuid.uuid4().hex[:17],
            log=self.log_dir / f'{run_id}.log',
        )
        with self._lock:
            self.by_id[run_id] = run
            run.status = 'RUNNING'
            self._spawn(run)
        return run

    def environment(self, run: ActorRun) -> dict[str, str]:
        """The environment of a run's process: this one's without Apify/crawlee settings, plus the platform's."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(('APIFY_', 'ACTOR_', 'CRAWLEE_'))}
        env.update(
            {
                'APIFY_IS_AT_HOME': '1',
                'ACTOR_ID': ACTOR_ID,
                'ACTOR_RUN_ID': run.id,
                'ACTOR_BUILD_ID': 'standInBuild0001',
                'APIFY_TOKEN': self._api.token,
                'APIFY_API_BASE_URL': self._api.url,
                'APIFY_API_PUBLIC_BASE_URL': self._api.url,
                'ACTOR_DEFAULT_KEY_VALUE_STORE_ID': run.default_key_value_store_id,
                'ACTOR_DEFAULT_DATASET_ID': run.default_dataset_id,
                'ACTOR_DEFAULT_REQUEST_QUEUE_ID': run.default_request_queue_id,
                'ACTOR_INPUT_KEY': 'INPUT',
                'ACTOR_EVENTS_WEBSOCKET_URL': self.events_url(run.id),
                'ACTOR_STARTED_AT': iso(run.started_at),
                'ACTOR_MEMORY_MBYTES': '1024',
                'APIFY_DEDICATED_CPUS': '1',
                'APIFY_ACTOR_PRICING_INFO': json.dumps(FREE_PRICING),
                'APIFY_CHARGED_ACTOR_EVENT_COUNTS': json.dumps({}),
                # Nothing should be written locally on the platform; if something is, it lands here, not in ./storage.
                'CRAWLEE_STORAGE_DIR': str(self.log_dir / 'local' / run.id),
                'PYTHONUNBUFFERED': '1',
                **self.extra_env,
            }
        )
        return env

    def events_url(self, run_id: str) -> str:
        """The run's `ACTOR_EVENTS_WEBSOCKET_URL`."""
        host, port = self._server.socket.getsockname()[:2]
        return f'ws://{host}:{port}/events/{run_id}'

    def _spawn(self, run: ActorRun) -> None:
        """Start a process for `run` (under `self._lock`) and a thread that records how it ends."""
        run.log.parent.mkdir(parents=True, exist_ok=True)
        with run.log.open('ab') as log:
            if run.processes:
                log.write(f'\n--- stand-in: the run migrated; process {run.processes + 1} starts ---\n'.encode())
                log.flush()
            process = subprocess.Popen(
                [self.python, '-m', 'src'],
                cwd=self.project,
                env=self.environment(run),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # like a container: a Ctrl-C in the terminal does not reach it
            )
        run.process = process
        run.processes += 1
        threading.Thread(target=self._reap, args=(run, process), name=f'reap-{run.id}', daemon=True).start()

    def _reap(self, run: ActorRun, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        with self._lock:
            if run.process is not process or run.migrating:
                return  # killed by a migration: the run goes on in a new process
            run.exit_code = code
            run.finished_at = time.time()
            if run.status == 'ABORTING':
                run.status = 'ABORTED'
            else:
                run.status = 'SUCCEEDED' if code == 0 else 'FAILED'
        run.done.set()

    def _abort(self, run: ActorRun, gracefully: bool) -> None:
        self.send_event(run, 'aborting', {})
        if gracefully:
            self.send_event(run, 'persistState', {'isMigrating': False})
            run.done.wait(30.0)
        else:
            if run.done.wait(self.abort_signal_delay_secs):
                return
            process = run.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
            run.done.wait(self.abort_grace_secs)
        process = run.process
        if not run.done.is_set() and process is not None and process.poll() is None:
            run.killed_after_grace = True
            process.kill()

    def _on_connection(self, connection: ServerConnection) -> None:
        run_id = connection.request.path.rsplit('/', 1)[-1] if connection.request else ''
        with self._lock:
            self._connections.setdefault(run_id, []).append(connection)
        try:
            for _message in connection:  # the actor sends nothing; this returns when it disconnects
                pass
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._connections[run_id].remove(connection)

    def _persist_state_loop(self) -> None:
        while not self._stopping.wait(self.persist_state_interval_secs):
            with self._lock:
                running = [run for run in self.by_id.values() if run.status == 'RUNNING']
            for run in running:
                self.send_event(run, 'persistState', {'isMigrating': False})

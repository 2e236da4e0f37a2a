"""`make platform-run`: run the actor as the Apify platform would, against the local MOCK of the API (`stand_in.py`).

Environment:
    INPUT               the first run's input, a JSON string (required)
    RESULTS             write the crawl's result set here as JSON Lines: the named dataset `datasetName` if the
                        input gives one, else the first run's default dataset
    ABORT_AFTER_SECS    abort the first run through the API after this many seconds, as Console's Abort does
    MIGRATE_AFTER_SECS  migrate one run after this many seconds: the last one the first run started (the first run
                        itself if it started none)
    PLATFORM_DIR        where the mock's storages and the runs' logs are written (default: a new temporary folder)

Exits with the first run's exit code. Nothing here talks to the real platform: every run is a process of this
project (`python -m src`) on this machine, and every API call goes to the mock on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from apify_client import ApifyClient

from tests.platform.stand_in import PlatformStandIn
from tests.platform.stand_in_runs import ActorRun

FINISH_TIMEOUT_SECS = 3600.0
ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _number(name: str) -> float | None:
    raw = os.environ.get(name, '').strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f'ERROR {name}={raw!r} is not a number of seconds.') from None
    if value < 0:
        raise SystemExit(f'ERROR {name} must not be negative.')
    return value


def _read_input() -> dict[str, Any]:
    raw = os.environ.get('INPUT', '').strip()
    if not raw:
        raise SystemExit('ERROR Set INPUT to the actor input as JSON, e.g. INPUT=\'{"startUrls": [{"url": "..."}]}\'.')
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SystemExit(f'ERROR INPUT is not valid JSON ({exc}).') from None
    if not isinstance(value, dict):
        raise SystemExit('ERROR INPUT must be a JSON object.')
    return value


def last_error(run: ActorRun) -> str | None:
    """The last ERROR line of the run's log, to say why it failed without opening the log."""
    text = run.log.read_text(errors='replace') if run.log.exists() else ''
    errors = [ANSI.sub('', line).strip() for line in text.splitlines() if 'ERROR' in line]
    return errors[-1] if errors else None


def exit_code(run: ActorRun) -> int:
    """The run's exit code as a shell reports it (128 + the signal for a killed process)."""
    code = run.exit_code if run.exit_code is not None else 1
    return 128 - code if code < 0 else code


def result_items(api: PlatformStandIn, first: ActorRun, actor_input: dict[str, Any]) -> list[dict[str, Any]]:
    """The crawl's result set: the named dataset `datasetName`, else the first run's default dataset."""
    name = actor_input.get('datasetName')
    if isinstance(name, str) and name:
        dataset = next((d for d in api.datasets.by_id.values() if d.name == name), None)
        return list(dataset.items) if dataset else []
    return list(api.datasets.by_id[first.default_dataset_id].items)


def dump(api: PlatformStandIn, folder: Path) -> None:
    """Write the mock's storages to `folder`: one file per record, one JSON Lines file per dataset."""
    for store in list(api.stores.values()):
        target = folder / 'key_value_stores' / (store.name or store.id)
        target.mkdir(parents=True, exist_ok=True)
        for key, record in list(store.records.items()):
            (target / quote(key, safe='')).write_bytes(record.decoded())
    for dataset in list(api.datasets.by_id.values()):
        target = folder / 'datasets' / f'{dataset.name or dataset.id}.jsonl'
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(''.join(json.dumps(item, ensure_ascii=False) + '\n' for item in dataset.items))


def _after(secs: float, action: Any, *args: Any) -> threading.Timer:
    timer = threading.Timer(secs, action, args)
    timer.daemon = True
    timer.start()
    return timer


def _migrate_one(api: PlatformStandIn, first: ActorRun) -> None:
    running = [run for run in api.runs.by_id.values() if run.status == 'RUNNING']
    others = [run for run in running if run is not first]
    target = others[-1] if others else first if first in running else None
    if target is None:
        print('platform-run: nothing to migrate, no run is running.', flush=True)
        return
    print(f'platform-run: migrating run {target.id} (MIGRATING, killed, restarted as the same run).', flush=True)
    api.runs.migrate(target.id)
    print(f'platform-run: run {target.id} restarted after the migration.', flush=True)


def _abort(api: PlatformStandIn, first: ActorRun, aborted_at: list[float]) -> None:
    print(f'platform-run: aborting run {first.id} through the API (POST /v2/actor-runs/{first.id}/abort).', flush=True)
    aborted_at.append(time.time())
    ApifyClient(token=api.token, api_url=api.url).run(first.id).abort()


def main() -> int:
    """Run the actor on the mock as described in the module docstring; the first run's exit code."""
    actor_input = _read_input()
    abort_after, migrate_after = _number('ABORT_AFTER_SECS'), _number('MIGRATE_AFTER_SECS')
    results = os.environ.get('RESULTS', '').strip()
    folder = Path(os.environ.get('PLATFORM_DIR') or tempfile.mkdtemp(prefix='platform-run-')).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with PlatformStandIn(folder=folder) as api:
        first = api.runs.start(actor_input)
        print(f'platform-run: the mock of the Apify API is at {api.url}; run {first.id} started.', flush=True)
        print(f'platform-run: the runs log to {folder / "runs"}/<run id>.log', flush=True)
        timers, aborted_at = [], list[float]()
        if abort_after is not None:
            timers.append(_after(abort_after, _abort, api, first, aborted_at))
        if migrate_after is not None:
            timers.append(_after(migrate_after, _migrate_one, api, first))
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            api.runs.wait(first.id, FINISH_TIMEOUT_SECS)
            deadline = time.monotonic() + 60
            for run in list(api.runs.by_id.values()):
                api.runs.wait(run.id, max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            print('platform-run: interrupted; the runs are killed.', file=sys.stderr)
            return 130
        finally:
            for timer in timers:
                timer.cancel()
            dump(api, folder)
        for run in api.runs.by_id.values():
            killed = ', killed after the grace period' if run.killed_after_grace else ''
            if aborted_at and run.finished_at:
                killed += f', ended {run.finished_at - aborted_at[0]:.1f} s after the abort'
            print(
                f'platform-run: run {run.id}: {run.status} (exit {run.exit_code}), {run.migrations} migrations, '
                f'{len(api.datasets.by_id[run.default_dataset_id].items)} items in its dataset{killed}',
                flush=True,
            )
        items = result_items(api, first, actor_input)
        if results:
            with Path(results).open('w', encoding='utf-8') as out:
                out.writelines(json.dumps(item, ensure_ascii=False) + '\n' for item in items)
            print(f'platform-run: {len(items)} results written to {results}', flush=True)
        print(f'platform-run: the storages of the mock are in {folder}', flush=True)
        if first.status == 'FAILED' and (error := last_error(first)):
            print(f'platform-run: the first run failed: {error}', flush=True)
        return exit_code(first)


if __name__ == '__main__':
    sys.exit(main())

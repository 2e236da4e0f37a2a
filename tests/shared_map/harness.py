"""Real worker processes on a shared map, and how to check what they did: shared by the tests and bench/.

Each worker (`tests/shared_map/worker.py`) journals the operations it synced; `expected_owned` applies the merge rule
to them, so a fresh load of the store can be compared with what must be there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from crawlee import service_locator
from crawlee.storage_clients import SqlStorageClient
from crawlee.storages import KeyValueStore

from src.shared_map import SharedMap, storage_client_for

ROOT = Path(__file__).resolve().parents[2]
ABSENT = object()


def start_worker(
    connection: str, workdir: Path, index: int, count: int, seed: int, *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, '-m', 'tests.shared_map.worker',
            '--connection', connection, '--workdir', str(workdir),
            '--index', str(index), '--count', str(count), '--seed', str(seed), *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f'stderr-{index}.txt').open('ab'),
    )  # fmt: skip


def read_journal(workdir: Path, index: int) -> tuple[list[list[Any]], set[str]]:
    """The operations worker `index` had synced, and the keys of a batch whose sync may or may not have landed."""
    path = workdir / f'journal-{index}.jsonl'
    synced: list[list[Any]] = []
    pending: list[list[Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                break  # a line cut by kill -9
            if 'pending' in entry:
                pending = entry['pending']
            else:
                synced.extend(pending)
                pending = []
    return synced, {op[0] for op in pending}


def synced_ops(workdir: Path, index: int) -> list[list[Any]]:
    return read_journal(workdir, index)[0]


def expected_owned(journals: dict[int, list[list[Any]]]) -> dict[str, Any]:
    """The merge rule applied to `own-*` keys: the owner's last non-`enqueued` operation wins, else `enqueued`."""
    final: dict[str, Any] = {}
    enqueued: set[str] = set()
    for index, ops in journals.items():
        for key, value, is_delete in ops:
            if not key.startswith('own-'):
                continue
            if not key.startswith(f'own-{index}-'):
                if value == 'enqueued':
                    enqueued.add(key)
                continue
            if value == 'enqueued' and not is_delete:
                enqueued.add(key)
            else:
                final[key] = ABSENT if is_delete else value
    for key in enqueued:
        final.setdefault(key, 'enqueued')
    return {key: value for key, value in final.items() if value is not ABSENT}


async def load_fresh(connection: str) -> dict[str, Any]:
    service_locator.storage_instance_manager.clear_cache()
    storage_client, configuration = storage_client_for(connection)
    store = await KeyValueStore.open(name='shared-proc', storage_client=storage_client, configuration=configuration)
    fresh = SharedMap(store, run_id='checker')
    await fresh.initialize()
    state = dict(fresh)
    if isinstance(storage_client, SqlStorageClient):
        await storage_client.close()
    return state


def wait_all(procs: list[subprocess.Popen[bytes]], workdir: Path, timeout: float) -> None:
    for index, proc in enumerate(procs):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert code == 0, (workdir / f'stderr-{index}.txt').read_text()[-3000:]

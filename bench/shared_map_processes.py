"""Real worker processes on a shared map, and how to check what they did: shared by the tests and bench/.

Each worker (`bench/shared_map_worker.py`) journals the operations it synced; `expected_owned` applies the merge rule
to them, so a fresh load of the store can be compared with what must be there.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crawlee import service_locator

from src.shared_map import SharedMap, close_storage_client, open_with_client, storage_client_for

ROOT = Path(__file__).resolve().parents[1]
ABSENT = object()


def start_worker(
    connection: str, workdir: Path, index: int, count: int, seed: int, *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, '-m', 'bench.shared_map_worker',
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
    store = await open_with_client('shared-proc', storage_client=storage_client, configuration=configuration)
    fresh = SharedMap(store, run_id='checker')
    await fresh.initialize()
    state = dict(fresh)
    await close_storage_client(storage_client)
    return state


def wait_all(procs: list[subprocess.Popen[bytes]], workdir: Path, timeout: float) -> None:
    """Wait for every worker. If one fails or the time is up, the others still running dump the stacks of their
    tasks (SIGUSR1) and are killed, and the error shows every worker's stderr: where each one was."""
    deadline = time.monotonic() + timeout
    running = dict(enumerate(procs))
    failed: list[str] = []
    while running and not failed and time.monotonic() < deadline:
        time.sleep(0.05)
        for index, proc in list(running.items()):
            code = proc.poll()
            if code is not None:
                del running[index]
                if code != 0:
                    failed.append(f'worker {index} exited with {code}')
    if not running:
        return
    for proc in running.values():
        proc.send_signal(signal.SIGUSR1)
    time.sleep(2)
    for proc in running.values():
        proc.kill()
        proc.wait()
    why = failed[0] if failed else f'workers {sorted(running)} still running after {timeout} s'
    tails = '\n'.join(f'--- worker {i}:\n{stderr_tail(workdir, i)}' for i in range(len(procs)))
    raise AssertionError(f'{why}\n{tails}')


def stderr_tail(workdir: Path, index: int) -> str:
    path = workdir / f'stderr-{index}.txt'
    return path.read_text(errors='replace')[-3000:] if path.exists() else '(no stderr)'


async def kill_and_restart_rounds(connection: str, workdir: Path, *, seed: int, rounds: int) -> list[dict[str, Any]]:
    """Rounds of 3 workers killed with SIGKILL at random moments and restarted under the same run ids.

    Some start late on a slow store while the others compact; keys are many and distinct, so later rounds rarely
    overwrite what earlier rounds synced. After each round a fresh load must hold every synced entry: each round's
    report lists every one that it does not (`lost`: key, synced value, value found), and how many were `checked`.
    """
    rng = random.Random(seed)
    count = 3
    history: dict[int, list[list[Any]]] = {i: [] for i in range(count)}
    uncertain: set[str] = set()  # keys of batches that may or may not have landed, until a later sync settles them
    reports: list[dict[str, Any]] = []
    for round_ in range(rounds):
        folder = workdir / f'round{round_}'
        folder.mkdir()
        procs = [
            start_worker(
                connection, folder, i, count, rng.randrange(10**6),
                '--ops', '0', '--compact-after', '4', '--own-keys', '100000',
                '--start-delay', f'{rng.choice([0, 0, rng.random() * 1.5]):.2f}',
                '--read-delay-ms', str(rng.choice([0, 0, 20])),
            )
            for i in range(count)
        ]  # fmt: skip
        deadline = time.monotonic() + 60
        # Polls other processes' journal files: no in-process event can tell. A worker that exited (it could not
        # start: see `failed_starts`) will sync nothing more: no use waiting for it.
        while (  # noqa: ASYNC110 - polls files and processes, as above
            time.monotonic() < deadline
            and all(proc.poll() is None for proc in procs)
            and min(len(synced_ops(folder, i)) for i in range(count)) < 200
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.random())
        failed_starts = 0
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            failed_starts += proc.wait() != -signal.SIGKILL
            await asyncio.sleep(rng.random() * 0.3)
        for i in range(count):
            synced, maybe = read_journal(folder, i)
            history[i].extend(synced)
            uncertain -= {key for key, value, _ in synced if key.startswith(f'own-{i}-') and value != 'enqueued'}
            uncertain |= maybe
        fresh = await load_fresh(connection)  # loading never fails, whatever the kills left behind
        lost = []
        checked = 0
        for key, value in expected_owned(history).items():
            if key not in uncertain:
                checked += 1
                if fresh.get(key, ABSENT) != value:
                    lost.append((key, value, fresh.get(key, '<absent>')))
        reports.append(
            {
                'round': round_,
                'checked': checked,
                'lost': lost,
                'restarts': count if round_ else 0,
                'failed_starts': failed_starts,
            }
        )
    return reports

"""A real process that uses a shared map, for the multi-process tests (`python -m bench.shared_map_worker ...`).

Worker `index` of `count` does random operations with random sync timing:
* keys `own-<index>-<n>` get any value or a deletion only from this worker, and `enqueued` from anyone,
  so the final value of each is computable from the operations alone (the lossless check);
* keys `hot-<n>` get anything from anyone (the convergence check).
Before each `sync()` the operations it will publish are appended to a journal as `pending`, and once it returns a
`synced` line follows (both flushed and fsynced), so a test that kills this process knows what had been synced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from bench.scripted_store import ScriptedStore
from src.shared_map import SharedMap, SyncError, close_storage_client, open_with_client, storage_client_for

VALUES: list[Any] = ['processed', 'failed', {'retries': 2}, 7, None, 'enqueued']


def random_op(rng: random.Random, index: int, count: int, own_keys: int, hot_keys: int) -> tuple[str, Any, bool]:
    """(key, value, is_delete)."""
    roll = rng.random()
    if roll < 0.25:
        return f'hot-{rng.randrange(hot_keys)}', rng.choice(VALUES), False
    if roll < 0.5:  # enqueue a key some other worker owns
        return f'own-{rng.randrange(count)}-{rng.randrange(own_keys)}', 'enqueued', False
    key = f'own-{index}-{rng.randrange(own_keys)}'
    if roll < 0.55:
        return key, None, True
    return key, rng.choice(VALUES), False


def write_line(journal: TextIO, line: dict[str, Any]) -> None:
    journal.write(json.dumps(line) + '\n')
    journal.flush()
    os.fsync(journal.fileno())


def dump_tasks() -> None:
    """Where every task is (SIGUSR1 from the harness when this worker seems stuck), to stderr."""
    print(f'--- {len(asyncio.all_tasks())} tasks at SIGUSR1:', file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def main() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    parser = argparse.ArgumentParser()
    parser.add_argument('--connection', required=True)
    parser.add_argument('--index', type=int, required=True)
    parser.add_argument('--count', type=int, required=True)
    parser.add_argument('--seed', type=int, required=True)
    parser.add_argument('--ops', type=int, default=2000, help='operations; 0 runs until killed')
    parser.add_argument('--own-keys', type=int, default=300)
    parser.add_argument('--hot-keys', type=int, default=50)
    parser.add_argument('--max-sleep', type=float, default=0.01)
    parser.add_argument('--seconds', type=float, default=0, help='with --ops 0: stop (cleanly) after this long')
    parser.add_argument('--sync-every', type=float, default=0, help='sync on this period instead of at random')
    parser.add_argument('--compact-after', type=int, default=8)
    parser.add_argument('--lease-ttl', type=float, default=2.0)
    parser.add_argument('--workdir', type=Path, required=True)
    parser.add_argument('--clock-skew-ms', type=int, default=0, help="this process's wall clock is off by this much")
    parser.add_argument('--tolerate-errors', action='store_true', help='a failed sync is retried later, not fatal')
    parser.add_argument('--start-delay', type=float, default=0, help='start this many seconds late')
    parser.add_argument('--read-delay-ms', type=float, default=0, help='a slow store while initializing')
    parser.add_argument('--store-timeout', type=float, default=30, help='longest wait for one store call')
    args = parser.parse_args()
    rng = random.Random(args.seed)
    await asyncio.sleep(args.start_delay)
    storage_client, configuration = storage_client_for(args.connection)
    store = await open_with_client('shared-proc', storage_client=storage_client, configuration=configuration)
    scripted = ScriptedStore(store, read_delay=args.read_delay_ms / 1000)
    shared = SharedMap(
        scripted.as_store(),
        run_id=f'worker{args.index}',
        compact_after_records=args.compact_after,
        lease_ttl_secs=args.lease_ttl,
        orphan_age_secs=max(4 * args.lease_ttl, 8),
        clock=lambda: int(time.time() * 1000) + args.clock_skew_ms,
        store_timeout_secs=args.store_timeout,
    )
    await shared.initialize()
    scripted.read_delay = 0
    journal = (args.workdir / f'journal-{args.index}.jsonl').open('a', encoding='utf-8')
    unsynced: list[list[Any]] = []
    done = 0
    started = last_sync = time.monotonic()
    while (args.ops == 0 and (not args.seconds or time.monotonic() - started < args.seconds)) or done < args.ops:
        for _ in range(rng.randint(1, 40)):
            key, value, is_delete = random_op(rng, args.index, args.count, args.own_keys, args.hot_keys)
            if is_delete:
                if key not in shared:
                    continue
                del shared[key]
            else:
                shared[key] = value
            unsynced.append([key, value, is_delete])
            done += 1
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * args.max_sleep)
        due = time.monotonic() - last_sync >= args.sync_every if args.sync_every else rng.random() < 0.6
        if due:
            last_sync = time.monotonic()
            write_line(journal, {'pending': unsynced})
            sync_started = time.monotonic()
            try:
                await shared.sync()
            except SyncError as exc:  # the store is away: go on with local state, the next sync retries
                if not args.tolerate_errors:
                    raise
                with (args.workdir / f'errors-{args.index}.txt').open('a') as errors:
                    errors.write(f'after {time.monotonic() - sync_started:.1f} s: {exc}\n')
                await asyncio.sleep(0.2)
                continue
            write_line(journal, {'synced': len(unsynced)})
            unsynced = []
    write_line(journal, {'pending': unsynced})
    for attempt in range(100):
        sync_started = time.monotonic()
        try:
            await shared.sync()
            break
        except SyncError as exc:
            if not args.tolerate_errors or attempt == 99:
                raise
            with (args.workdir / f'errors-{args.index}.txt').open('a') as errors:
                errors.write(f'final sync, after {time.monotonic() - sync_started:.1f} s: {exc}\n')
            await asyncio.sleep(0.3)
    write_line(journal, {'synced': len(unsynced)})
    journal.close()

    # Convergence: once every worker has published everything, one more read, then dump the replica.
    (args.workdir / f'done-{args.index}').touch()
    deadline = time.monotonic() + 240  # within the harness's 300 s
    while not all((args.workdir / f'done-{i}').exists() for i in range(args.count)):
        if time.monotonic() > deadline:
            raise SystemExit('timed out waiting for the other workers')
        await asyncio.sleep(0.05)
    await shared.sync()
    (args.workdir / f'replica-{args.index}.json').write_text(json.dumps(dict(shared), sort_keys=True))
    stats = {**shared.stats.to_dict(), 'sync_durations': shared.stats.sync_durations}
    (args.workdir / f'stats-{args.index}.json').write_text(json.dumps(stats))
    await shared.close()
    await close_storage_client(storage_client)


if __name__ == '__main__':
    asyncio.run(main())

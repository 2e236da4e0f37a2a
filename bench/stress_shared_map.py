"""Stress the shared map with real processes: a long load, and kill -9 at random moments.

    python -m bench.stress_shared_map load --backend fs --procs 16 --seconds 60
    scripts/with-services.sh .venv/bin/python -m bench.stress_shared_map load --backend postgres --procs 16
    python -m bench.stress_shared_map kill --backend fs --iterations 20 --seed 1
    python -m bench.stress_shared_map restarts --backend sqlite --seeds 50

`load`: N workers write tens of thousands of entries each and sync every ~100 ms; then it checks that nothing was
lost (a fresh load against the merge rule applied to every synced operation), that all replicas converged, and
reports sync-time percentiles and the records left in the store. `kill`: iterations of 3 workers killed with
SIGKILL at random moments (each iteration's seed is recorded); after each, loading must succeed and hold everything
synced; at the end a new run must win the lease of the dead ones within its TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crawlee import service_locator

from bench.backends import NO_POSTGRES, POSTGRES_URL, connection_for, fresh_database
from bench.shared_map_processes import (
    ABSENT,
    expected_owned,
    kill_and_restart_rounds,
    load_fresh,
    read_journal,
    start_worker,
    wait_all,
)
from src.shared_map import SharedMap, open_store


@contextlib.asynccontextmanager
async def backend_connection(backend: str, workdir: Path) -> AsyncIterator[str]:
    if backend != 'postgres':
        yield connection_for(backend, workdir)
        return
    if not POSTGRES_URL:
        raise SystemExit(f'--backend postgres: {NO_POSTGRES}; run under scripts/with-services.sh')
    async with fresh_database(POSTGRES_URL) as url:
        yield url


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def count_records(connection: str) -> int:
    service_locator.storage_instance_manager.clear_cache()
    store = await open_store('shared-proc', connection=connection)
    return len([meta async for meta in store.iterate_keys() if meta.key.startswith('SM.')])


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix='stress-load-') as tmp:
        workdir = Path(tmp)
        async with backend_connection(args.backend, workdir) as connection:
            started = time.monotonic()
            procs = [
                start_worker(
                    connection,
                    workdir,
                    i,
                    args.procs,
                    args.seed * 1000 + i,
                    '--ops',
                    '0',
                    '--seconds',
                    str(args.seconds),
                    '--sync-every',
                    str(args.sync_every),
                    '--own-keys',
                    str(args.own_keys),
                    '--hot-keys',
                    '500',
                    '--max-sleep',
                    '0.004',
                    '--compact-after',
                    '64',
                    '--lease-ttl',
                    '10',
                )
                for i in range(args.procs)
            ]
            await asyncio.to_thread(wait_all, procs, workdir, args.seconds + 600)
            wall = time.monotonic() - started
            journals = {i: read_journal(workdir, i)[0] for i in range(args.procs)}
            fresh = await load_fresh(connection)
            expected = expected_owned(journals)
            lost = [key for key, value in expected.items() if fresh.get(key, ABSENT) != value]
            owned = {key for key in fresh if key.startswith('own-')}
            replicas = [json.loads((workdir / f'replica-{i}.json').read_text()) for i in range(args.procs)]
            stats = [json.loads((workdir / f'stats-{i}.json').read_text()) for i in range(args.procs)]
            durations = [d for s in stats for d in s['sync_durations']]
            records = await count_records(connection)
    return {
        'backend': args.backend,
        'procs': args.procs,
        'seconds': args.seconds,
        'wall_seconds': round(wall, 1),
        'operations_synced': sum(len(ops) for ops in journals.values()),
        'entries_in_store': len(fresh),
        'expected_owned_entries': len(expected),
        'lost_or_wrong': len(lost),
        'unexpected_keys': len(owned - set(expected)),
        'replicas_converged': all(replica == fresh for replica in replicas),
        'syncs': len(durations),
        'sync_p50_ms': round(1000 * percentile(durations, 0.5), 1),
        'sync_p90_ms': round(1000 * percentile(durations, 0.9), 1),
        'sync_p99_ms': round(1000 * percentile(durations, 0.99), 1),
        'sync_max_ms': round(1000 * max(durations, default=0), 1),
        'sync_median_ms': round(1000 * statistics.median(durations), 1) if durations else 0,
        'compactions': sum(s['compactions'] for s in stats),
        'records_left': records,
        'store_operations': sum(s['store_operations'] for s in stats),
    }


async def run_kill(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    iterations: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='stress-kill-') as tmp:
        base = Path(tmp)
        async with backend_connection(args.backend, base) as connection:
            history: dict[int, list[list[Any]]] = {i: [] for i in range(3)}
            uncertain: set[str] = set()
            for iteration in range(args.iterations):
                seed = rng.randrange(10**9)
                local = random.Random(seed)
                workdir = base / f'iteration-{iteration}'
                workdir.mkdir()
                procs = [
                    start_worker(
                        connection, workdir, i, 3, seed + i, '--ops', '0', '--compact-after', '3', '--own-keys', '3000'
                    )
                    for i in range(3)
                ]
                await asyncio.sleep(3 + local.random() * 3)  # start-up, then a random moment of the sync loop
                for proc in procs:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    await asyncio.sleep(local.random() * 0.2)
                for i in range(3):
                    synced, maybe = read_journal(workdir, i)
                    history[i].extend(synced)
                    uncertain -= {
                        key for key, value, _ in synced if key.startswith(f'own-{i}-') and value != 'enqueued'
                    }
                    uncertain |= maybe
                error = None
                try:
                    fresh = await load_fresh(connection)
                except Exception as exc:  # loading must never fail: record it
                    error = repr(exc)
                    fresh = {}
                expected = expected_owned(history)
                wrong = [k for k, v in expected.items() if k not in uncertain and fresh.get(k, ABSENT) != v]
                iterations.append(
                    {
                        'iteration': iteration,
                        'seed': seed,
                        'load_error': error,
                        'checked': len(expected),
                        'uncertain': len(uncertain),
                        'lost_or_wrong': len(wrong),
                    }
                )
                print(json.dumps(iterations[-1]), flush=True)
            # The dead runs' lease (TTL 2 s in the workers) must not block a new run for longer than that.
            service_locator.storage_instance_manager.clear_cache()
            store = await open_store('shared-proc', connection=connection)
            survivor = SharedMap(store, run_id='survivor', compact_after_records=2, lease_ttl_secs=2)
            await survivor.initialize()
            started = time.monotonic()
            while survivor.stats.compactions == 0 and time.monotonic() - started < 30:
                survivor['tick'] = time.monotonic()
                await survivor.sync()
                await asyncio.sleep(0.1)
            lease_wait = time.monotonic() - started
    return {
        'backend': args.backend,
        'seed': args.seed,
        'iterations': len(iterations),
        'load_errors': sum(1 for it in iterations if it['load_error']),
        'lost_or_wrong': sum(it['lost_or_wrong'] for it in iterations),
        'seconds_until_a_new_run_compacted': round(lease_wait, 2),
        'per_iteration': iterations,
    }


async def run_restarts(args: argparse.Namespace) -> dict[str, Any]:
    """Seeds of `kill_and_restart_rounds` (the test of issue #8), each in a fresh store; every lost entry reported."""
    per_seed: list[dict[str, Any]] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix='stress-restarts-') as tmp:
            async with backend_connection(args.backend, Path(tmp)) as connection:
                try:
                    rounds = await kill_and_restart_rounds(connection, Path(tmp), seed=seed, rounds=args.rounds)
                    error = None
                except Exception as exc:  # loading must never fail: record it
                    rounds, error = [], repr(exc)
        per_seed.append(
            {
                'seed': seed,
                'error': error,
                'rounds': len(rounds),
                'restarts': sum(r['restarts'] for r in rounds),
                'checked': sum(r['checked'] for r in rounds),
                'lost': [entry for r in rounds for entry in r['lost']],
                'seconds': round(time.monotonic() - started, 1),
            }
        )
        print(json.dumps({k: v if k != 'lost' else len(v) for k, v in per_seed[-1].items()}), flush=True)
    return {
        'backend': args.backend,
        'seeds': len(per_seed),
        'rounds_per_seed': args.rounds,
        'restarts': sum(s['restarts'] for s in per_seed),
        'entries_checked': sum(s['checked'] for s in per_seed),
        'lost': sum(len(s['lost']) for s in per_seed),
        'errors': sum(1 for s in per_seed if s['error']),
        'per_iteration': per_seed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    load = sub.add_parser('load')
    load.add_argument('--backend', choices=['fs', 'sqlite', 'postgres'], default='fs')
    load.add_argument('--procs', type=int, default=16)
    load.add_argument('--seconds', type=float, default=60)
    load.add_argument('--sync-every', type=float, default=0.1)
    load.add_argument('--own-keys', type=int, default=40_000)
    load.add_argument('--seed', type=int, default=1)
    kill = sub.add_parser('kill')
    kill.add_argument('--backend', choices=['fs', 'sqlite', 'postgres'], default='fs')
    kill.add_argument('--iterations', type=int, default=20)
    kill.add_argument('--seed', type=int, default=1)
    restarts = sub.add_parser('restarts', help='kill -9 and restart under the same run ids, many seeds (issue #8)')
    restarts.add_argument('--backend', choices=['fs', 'sqlite', 'postgres'], default='fs')
    restarts.add_argument('--seeds', type=int, default=50)
    restarts.add_argument('--first-seed', type=int, default=1)
    restarts.add_argument('--rounds', type=int, default=4)
    for command in (load, kill, restarts):
        command.add_argument('--out', type=Path, help='write the result as JSON here too')
    args = parser.parse_args()
    runner = {'load': run_load, 'kill': run_kill, 'restarts': run_restarts}[args.command]
    result = asyncio.run(runner(args))
    summary = {k: v for k, v in result.items() if k != 'per_iteration'}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()

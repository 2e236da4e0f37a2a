"""Scale benchmark of the shared frontier (issue 16): what a tick, a join, a departure and memory cost at 10^5-10^7.

Run from the repository root:

    .venv/bin/python -m bench.bench_scale --sizes 100000 1000000 --repeat 5 --label new --out bench/results/scale.json

For every size, a fresh store (file system by default; `--backend sqlite` for crawlee's SQL client on SQLite) is
filled by a *builder* subprocess with N URLs of ~60 characters, 70 % `processed` and 30 % `enqueued`, each with a
request-info entry (`<depth>|detail`) in the info map `SMD`; the builder times one compaction of the status map
(seconds, bytes written). Then a *measured* subprocess (fresh, so its RSS is its own) opens the crawl as a run does
(`SharedRequestManager.open_crawl`, both maps) while two other runs heartbeat (log records written from the same
process by maps that hold nothing: they cost the measured run what real runs cost it), and measures, in CPU seconds
of the process (`time.process_time`) and wall seconds:

* `initialize`: opening both maps and the frontier; RSS per entry after it (both maps);
* the first syncs (a joiner may compact), the queue fill after the grace period (RSS after it);
* `take_over()` with nothing changed (a heartbeat sync before each);
* `take_over()` after 1,000 changes from another run (500 waiting URLs processed, 500 new URLs);
* `take_over()` after a run joined, and after that run left (its final record: the live set changes as at a death).

Medians of `--repeat`. The results of each invocation are stored under `--label` in `--out` (other labels kept), so
the code before and after a change sit side by side in one file.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from bench.bench_shared_map import StallProbe
from src.shared_map import SharedMap, SharedRequestManager, SyncResult, open_store

REPO_ROOT = Path(__file__).resolve().parents[1]
STORE_NAME = 'bench-scale'
CHILD_MARKER = 'BENCH-SCALE-RESULT '
WAITING_PER_10 = 3  # URLs i with i % 10 < 3 are waiting, the rest processed
CHANGES = 1_000
OTHERS = ('run-b', 'run-c')

Json = dict[str, Any]


def make_key(i: int) -> str:
    """A unique, 60-character URL (up to 10^9 of them)."""
    return f'https://www.example-shop.com/products/cat-{i % 97:02d}/item-{i:09d}/'


def status_of(i: int) -> str:
    return 'enqueued' if i % 10 < WAITING_PER_10 else 'processed'


def _rss_bytes() -> int:
    gc.collect()
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('VmRSS not found')


def _progress(message: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def connection_for(backend: str, directory: Path) -> str:
    if backend == 'fs':
        return f'file://{directory}'
    if backend == 'sqlite':
        return f'sqlite+aiosqlite:///{directory}/state.db'
    raise ValueError(f'unknown backend {backend!r}')


async def _timed(action: Callable[[], Awaitable[Any]]) -> tuple[Any, Json]:
    cpu, wall = time.process_time(), time.perf_counter()
    value = await action()
    return value, {'cpu': time.process_time() - cpu, 'wall': time.perf_counter() - wall}


def _med(rows: list[Json], field: str) -> float:
    return float(statistics.median(row[field] for row in rows)) if rows else float('nan')


# ---------------------------------------------------------------------------------------------------- builder


async def build(n: int, connection: str) -> Json:
    """Write the store: N statuses and N request infos as one run's log records; time one compaction of the statuses."""
    store = await open_store(STORE_NAME, connection=connection)
    out: Json = {}
    # The statuses, compacted once (timed): the state a crawl reaches after its first compaction.
    statuses = SharedMap(store, run_id='builder', compact_after_records=2, compact_after_bytes=1)
    await statuses.initialize()
    started = time.perf_counter()
    for i in range(n):
        statuses[make_key(i)] = status_of(i)
    out['fill_seconds'] = time.perf_counter() - started
    written = SyncResult()
    await statuses.write_phase(written)
    out['log_records'] = written.records_written
    out['log_bytes'] = written.bytes_written
    (result, cost) = await _timed(statuses.sync)  # nothing to write or read: lists, and compacts
    if not result.compacted:
        raise RuntimeError(f'the builder did not compact: {result}')
    out['compaction'] = cost | {'bytes_written': result.bytes_written, 'records_written': result.records_written}
    await statuses.close()
    del statuses
    gc.collect()
    infos = SharedMap(store, run_id='builder', prefix='SMD', compact_after_records=2**30, compact_after_bytes=2**60)
    await infos.initialize()
    for i in range(n):
        infos[make_key(i)] = f'{i % 5}|detail'
    await infos.close()
    return out


# ---------------------------------------------------------------------------------------------------- measured run


class _Others:
    """Other runs' heartbeats and changes, written by maps that hold nothing (no `initialize`: they only write)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.maps = {run: self._map(run) for run in OTHERS}

    def _map(self, run: str) -> SharedMap:
        return SharedMap(self._store, run_id=run, heartbeat_secs=0.001, compact_after_records=2**30)

    async def beat(self) -> None:
        for shared in self.maps.values():
            await shared.write_phase(SyncResult())

    async def join(self, run: str) -> None:
        self.maps[run] = self._map(run)
        await self.maps[run].write_phase(SyncResult())

    async def leave(self, run: str) -> None:
        await self.maps.pop(run).write_phase(SyncResult(), final=True)


async def measure(n: int, connection: str, repeat: int) -> Json:
    out: Json = {}
    rss_start = _rss_bytes()
    started_cpu, started = time.process_time(), time.perf_counter()
    async with SharedRequestManager.open_crawl(
        STORE_NAME, connection=connection, run_id='run-a', sync_interval_secs=1.0, dead_after_secs=3600
    ) as manager:
        out['initialize'] = {'cpu': time.process_time() - started_cpu, 'wall': time.perf_counter() - started}
        out['rss_per_entry_after_initialize'] = (_rss_bytes() - rss_start) / n
        if len(manager.shared) != n:
            raise RuntimeError(f'loaded {len(manager.shared)} entries, expected {n}')
        others = _Others(manager.shared.store)
        await others.beat()
        first_syncs = []
        for _ in range(2):
            _, cost = await _timed(manager.sync)
            first_syncs.append(cost | {'compacted': bool(manager.last_sync and manager.last_sync.compacted)})
        out['first_syncs'] = first_syncs
        if sorted(manager.live_runs) != ['run-a', *OTHERS]:
            raise RuntimeError(f'live runs: {manager.live_runs}')
        _, out['first_take_over'] = await _timed(manager.take_over)  # within the grace period
        await asyncio.sleep(3.5)  # the grace period: sync interval + 2 idle polls
        await others.beat()
        await manager.sync()
        rss_before_fill = _rss_bytes()
        _, fill = await _timed(manager.take_over)
        out['queue_fill'] = fill | {
            'taken_over': manager.stats.taken_over,
            'rss_added_mib': (_rss_bytes() - rss_before_fill) / 2**20,
            'queue_total': await manager.inner.get_total_count(),
        }
        out['rss_per_entry_after_fill'] = (_rss_bytes() - rss_start) / n
        _progress(f'n={n}: initialize {out["initialize"]["wall"]:.1f} s, fill {fill["wall"]:.2f} s')

        async def sample(prepare: Callable[[], Awaitable[None]]) -> Json:
            await prepare()
            _, sync_cost = await _timed(manager.sync)
            async with StallProbe() as probe:  # how long the event loop went without running other tasks
                _, cost = await _timed(manager.take_over)
            return cost | {'sync_cpu': sync_cost['cpu'], 'sync_wall': sync_cost['wall'], 'max_stall': probe.max_stall}

        rows: dict[str, list[Json]] = {'nothing_changed': [], 'changes_1000': [], 'join': [], 'leave': []}
        changed = 0
        for r in range(repeat):
            rows['nothing_changed'].append(await sample(others.beat))

            async def change(r: int = r) -> None:
                nonlocal changed
                writer = others.maps['run-b']
                for _ in range(CHANGES // 2):  # waiting URLs processed by run-b
                    i = changed * 10 + 1  # i % 10 == 1: waiting
                    changed += 1
                    writer[make_key(i)] = 'processed'
                for j in range(CHANGES // 2):  # new URLs run-b found
                    writer[make_key(n + r * CHANGES + j)] = 'enqueued'
                await others.beat()

            rows['changes_1000'].append(await sample(change))
            rows['join'].append(await sample(functools.partial(others.join, f'run-j{r}')))
            rows['leave'].append(await sample(functools.partial(others.leave, f'run-j{r}')))
            _progress(
                f'n={n}: repeat {r + 1}/{repeat}: ' + ', '.join(f'{k} {v[-1]["cpu"]:.3f}' for k, v in rows.items())
            )
        out['take_over'] = {
            name: {
                'cpu_median': _med(samples, 'cpu'),
                'wall_median': _med(samples, 'wall'),
                'sync_cpu_median': _med(samples, 'sync_cpu'),
                'max_stall_median': _med(samples, 'max_stall'),
                'samples': samples,
            }
            for name, samples in rows.items()
        }
        out['rss_per_entry_end'] = (_rss_bytes() - rss_start) / n
        for shared in others.maps.values():
            await shared.write_phase(SyncResult(), final=True)
    return out


# ---------------------------------------------------------------------------------------------------- parent


def _child(mode: str, n: int, connection: str, repeat: int) -> Json:
    spec = json.dumps({'mode': mode, 'n': n, 'connection': connection, 'repeat': repeat})
    command = [sys.executable, '-m', 'bench.bench_scale', '--child', spec]
    # The child's progress and errors go to this process's stderr as they come; its result to stdout.
    done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return cast(Json, json.loads(line[len(CHILD_MARKER) :]))
    raise RuntimeError(f'{mode} subprocess failed ({done.returncode}); its errors are above')


def _store_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob('*') if path.is_file())


def bench_size(n: int, backend: str, repeat: int) -> Json:
    directory = Path(tempfile.mkdtemp(prefix=f'bench-scale-{n}-'))
    try:
        connection = connection_for(backend, directory)
        _progress(f'n={n} ({backend}): building the store')
        built = _child('build', n, connection, repeat)
        built['store_bytes'] = _store_bytes(directory)
        _progress(f'n={n}: built, compaction {built["compaction"]["wall"]:.2f} s; measuring')
        measured = _child('measure', n, connection, repeat)
        return {'build': built, 'run': measured}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _path(value: Any, path: Sequence[str | int]) -> float:
    for step in path:
        value = value[step]
    return float(value)


TABLE_ROWS: list[tuple[str, tuple[str | int, ...], float, str]] = [
    ('RSS per entry after initialize (both maps)', ('run', 'rss_per_entry_after_initialize'), 1, '{:.0f} B'),
    ('RSS per entry after the queue fill', ('run', 'rss_per_entry_after_fill'), 1, '{:.0f} B'),
    ('initialize (both maps + frontier), wall', ('run', 'initialize', 'wall'), 1, '{:.2f} s'),
    ('initialize, CPU', ('run', 'initialize', 'cpu'), 1, '{:.2f} s'),
    ('first `take_over()` (owners of every waiting URL), CPU', ('run', 'first_take_over', 'cpu'), 1, '{:.2f} s'),
    ('queue fill after the grace period, CPU', ('run', 'queue_fill', 'cpu'), 1, '{:.3f} s'),
    ('queue fill: RSS added', ('run', 'queue_fill', 'rss_added_mib'), 1, '{:.0f} MiB'),
    ('`take_over()`, nothing changed, CPU', ('run', 'take_over', 'nothing_changed', 'cpu_median'), 1, '{:.4f} s'),
    (
        '`take_over()` after 1,000 changes from another run, CPU',
        ('run', 'take_over', 'changes_1000', 'cpu_median'),
        1,
        '{:.4f} s',
    ),
    ('`take_over()` after a run joined, CPU', ('run', 'take_over', 'join', 'cpu_median'), 1, '{:.4f} s'),
    ('`take_over()` after a run left, CPU', ('run', 'take_over', 'leave', 'cpu_median'), 1, '{:.4f} s'),
    (
        'longest event-loop stall in `take_over()` after a join',
        ('run', 'take_over', 'join', 'max_stall_median'),
        1,
        '{:.3f} s',
    ),
    ('first sync of the measured run, wall', ('run', 'first_syncs', 0, 'wall'), 1, '{:.2f} s'),
    ('one compaction (builder), wall', ('build', 'compaction', 'wall'), 1, '{:.2f} s'),
    ('one compaction, bytes written', ('build', 'compaction', 'bytes_written'), 1e-6, '{:.1f} MB'),
]


def table(sizes: Json) -> str:
    def cell(n: str, path: Sequence[str | int], scale: float, fmt: str) -> str:
        try:
            return fmt.format(_path(sizes[n], path) * scale)
        except (KeyError, IndexError, TypeError):
            return '-'

    names = list(sizes)
    lines = ['| Measurement | ' + ' | '.join(f'{int(n):,}' for n in names) + ' |', '|---' * (len(names) + 1) + '|']
    lines += [
        f'| {label} | ' + ' | '.join(cell(n, path, scale, fmt) for n in names) + ' |'
        for label, path, scale, fmt in TABLE_ROWS
    ]
    return '\n'.join(lines)


def compare(results: Json, before: str, after: str) -> str:
    """Side by side: each measurement before and after, per size, with the ratio before / after."""
    sizes = [n for n in results[after]['sizes'] if n in results[before]['sizes']]
    head = ' | '.join(f'{int(n):,}: before | after | ratio' for n in sizes)
    lines = [f'| Measurement | {head} |', '|---' * (3 * len(sizes) + 1) + '|']
    for label, path, scale, fmt in TABLE_ROWS:
        cells = []
        for n in sizes:
            try:
                old, new = (_path(results[k]['sizes'][n], path) * scale for k in (before, after))
            except (KeyError, IndexError, TypeError):
                cells += ['-', '-', '-']
                continue
            ratio = f'{old / new:.1f}x' if new > 0 else ('-' if old == 0 else 'inf')
            cells += [fmt.format(old), fmt.format(new), ratio]
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _git(*args: str) -> str:
    return subprocess.run(['git', *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] if __doc__ else None)
    parser.add_argument('--sizes', type=int, nargs='+', default=[100_000, 1_000_000])
    parser.add_argument('--backend', choices=['fs', 'sqlite'], default='fs')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--label', default='current', help='key of these results in --out (others are kept)')
    parser.add_argument('--out', type=Path, default=REPO_ROOT / 'bench' / 'out' / 'scale.json')
    parser.add_argument(
        '--compare', nargs=2, metavar=('BEFORE', 'AFTER'), help='print two stored labels side by side; run nothing'
    )
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(json.loads(args.out.read_text(encoding='utf-8')), *args.compare))
        return
    if args.child:
        spec = json.loads(args.child)
        if spec['mode'] == 'build':
            result = asyncio.run(build(spec['n'], spec['connection']))
        else:
            result = asyncio.run(measure(spec['n'], spec['connection'], spec['repeat']))
        print(CHILD_MARKER + json.dumps(result), flush=True)
        return
    started_at = datetime.now(UTC).isoformat(timespec='seconds')
    sizes = {str(n): bench_size(n, args.backend, args.repeat) for n in args.sizes}
    results: Json = json.loads(args.out.read_text(encoding='utf-8')) if args.out.exists() else {}
    key = f'{args.label}-{args.backend}'
    previous = results.get(key, {}).get('sizes', {})
    results[key] = {
        'meta': {
            'command': ' '.join([Path(sys.executable).name, '-m', 'bench.bench_scale', *sys.argv[1:]]),
            'started_at': started_at,
            'git_commit': _git('rev-parse', 'HEAD'),
            'src_uncommitted_changes': _git('status', '--porcelain', 'src').splitlines(),
            'python': sys.version,
            'platform': platform.platform(),
            'cpus': os.cpu_count(),
            'loadavg_at_end': os.getloadavg(),
        },
        'sizes': previous | sizes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + '\n', encoding='utf-8')
    print(table(results[key]['sizes']))
    print(f'\nRaw numbers: {args.out} ({key})')


if __name__ == '__main__':
    main()

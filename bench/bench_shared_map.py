"""Benchmark of `SharedMap` on crawlee's file-system key-value store.

Run from the repository root:

    .venv/bin/python -m bench.bench_shared_map [--sizes 100000 1000000] [--repeat 5] [--out bench/out/results.json]

For every size, in a fresh temporary directory (crawlee's storage cache cleared between sizes), it measures:

1. set / `get()` / `m[k]` / `k in m` per operation against a plain `dict` running the same loop. Within each repeat
   the dict, the `SharedMap` and a minimal `dict` subclass (whose `__setitem__` only records the change: the floor of
   any Python-level override) take turns, so every ratio comes from one run; the median ratio is reported.
2. `initialize()` of a fresh map (new run id, crawlee's cache cleared) from a store holding the state as log records
   only (compaction disabled), and after compactions (a snapshot plus a few small log records).
3. `sync()` with 1 % of the entries changed, its `bytes_written` against the bytes of the whole state (the snapshot),
   and a `sync()` with no change.
4. The syncs in which a compaction happens (`result.compacted`), with their bytes.
5. Memory per entry after `initialize()`, in a subprocess: VmRSS before and after, and tracemalloc; the same for a
   plain `dict` of the same keys and values. Bytes per entry include the key.

Besides those: a second log-only store where every key was first 'enqueued', then 'processed' (the history of a
crawl that has not compacted yet; its initialize and memory), the sync of another run that merges the 1 % changes,
the sync that publishes a tenth of the keys as new entries, and the longest event-loop stall of each path (from one
extra run with a probe task, kept out of the timed samples). `--profile` adds a cProfile of the slow paths after the
timings (.prof files next to `--out`); `--no-tracemalloc` skips the tracemalloc subprocesses.

The Markdown table goes to stdout, progress to stderr, the raw numbers to the JSON file (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.metadata
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from crawlee import service_locator
from crawlee.storages import KeyValueStore

from src.shared_map import SharedMap, SyncResult, open_store

REPO_ROOT = Path(__file__).resolve().parents[1]
STORE_NAME = 'bench-store'
PREFIX = 'SM.'
KEY_LENGTH = 60
MiB = 1024 * 1024
NEVER = 10**15
"""`compact_after_records` and `compact_after_bytes` that never trigger a compaction."""
SMALL_CHANGE = 100
"""Entries changed by each sync of the compacting run (a small log record per sync)."""
CHILD_MARKER = 'BENCH-CHILD-RESULT '

TARGET_ENTRIES = 1_000_000
TARGET_RATIO = 1.5
TARGET_INIT_SECONDS = 3.0
TARGET_SYNC_SECONDS = 0.3
TARGET_BYTES_PER_ENTRY = 220.0

# The micro-benchmark loops, in the order they run on the same containers (the first fills empty ones).
LOOPS = {
    'set_enqueued_new': "m[k] = 'enqueued'",
    'get': 'm.get(k)',
    'getitem': 'm[k]',
    'contains': 'k in m',
    'set_processed_existing': "m[k] = 'processed'",
}
LOOP_LABELS = {
    'set_enqueued_new': "set `m[k] = 'enqueued'` (new keys)",
    'get': 'get `m.get(k)`',
    'getitem': 'get `m[k]`',
    'contains': '`k in m`',
    'set_processed_existing': "set `m[k] = 'processed'` (existing keys)",
}
KINDS = ('dict', 'shared_map', 'override_floor')

Loop = Callable[[Any, list[str]], None]
Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- helpers


def make_key(i: int) -> str:
    """A unique, 60-character URL key."""
    return f'https://www.example-shop.com/products/cat-{i % 97:02d}/item-{i:09d}/'


def make_keys(n: int) -> list[str]:
    keys = [make_key(i) for i in range(n)]
    if keys and not len(keys[0]) == len(keys[-1]) == KEY_LENGTH:
        raise RuntimeError(f'keys must be {KEY_LENGTH} characters: {keys[0]!r}, {keys[-1]!r}')
    return keys


class _OverrideFloor(dict[str, Any]):
    """The cheapest `__setitem__` override that still records the change: a floor for any Python-level override."""

    def __init__(self) -> None:
        super().__init__()
        self.dirty: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self.dirty[key] = value


def _compile_loop(statement: str) -> Loop:
    """A fresh function (its own code object, so its own specialisation) running `statement` for every key."""
    source = f'def loop(m, keys):\n    for k in keys:\n        {statement}\n'
    namespace: dict[str, Any] = {}
    exec(compile(source, f'<bench loop: {statement}>', 'exec'), namespace)
    return cast(Loop, namespace['loop'])


def _time_loop(loop: Loop, container: Any, keys: list[str]) -> float:
    """Nanoseconds per key of one run of `loop`, with the garbage collector off (as `timeit` does)."""
    gc.disable()
    try:
        started = time.perf_counter_ns()
        loop(container, keys)
        elapsed = time.perf_counter_ns() - started
    finally:
        gc.enable()
    return elapsed / len(keys)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float('nan')


def _rss_kib(field: str = 'VmRSS') -> int:
    """A memory figure of this process, in KiB, from /proc/self/status."""
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not found in /proc/self/status')


_started = time.perf_counter()


def _progress(message: str) -> None:
    print(f'[{time.perf_counter() - _started:7.1f} s] {message}', file=sys.stderr, flush=True)


async def _open(path: Path) -> KeyValueStore:
    """The benchmark store in `path`, opened afresh (crawlee's storage cache cleared first)."""
    service_locator.storage_instance_manager.clear_cache()
    return await open_store(STORE_NAME, connection=f'file://{path}')


def _new_map(
    store: KeyValueStore, run_id: str, *, compact_after_records: int = NEVER, compact_after_bytes: int = NEVER
) -> SharedMap:
    """A map on `store`; by default one that never compacts."""
    return SharedMap(
        store, run_id=run_id, compact_after_records=compact_after_records, compact_after_bytes=compact_after_bytes
    )


def _sync_row(result: SyncResult, seconds: float) -> Json:
    return {
        'seconds': seconds,
        'sync_seconds': result.seconds,
        'compacted': result.compacted,
        'entries_written': result.entries_written,
        'records_written': result.records_written,
        'bytes_written': result.bytes_written,
        'entries_read': result.entries_read,
        'entries_changed': result.entries_changed,
        'records_read': result.records_read,
        'bytes_read': result.bytes_read,
        'records_deleted': result.records_deleted,
        'lease_won': result.lease_won,
    }


async def _timed_sync(shared: SharedMap) -> Json:
    started = time.perf_counter()
    result = await shared.sync()
    return _sync_row(result, time.perf_counter() - started)


class StallProbe:
    """The longest time the event loop went without running a task that asks to run every millisecond."""

    def __init__(self) -> None:
        self.max_stall = 0.0
        self._task: asyncio.Task[None] | None = None
        self._last = 0.0

    async def _run(self) -> None:
        self._last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_stall = max(self.max_stall, now - self._last)
            self._last = now

    async def __aenter__(self) -> StallProbe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        # The gap since the probe last ran counts too: work that never yields would otherwise show no stall at all.
        self.max_stall = max(self.max_stall, time.perf_counter() - self._last)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _stalled_sync(shared: SharedMap) -> Json:
    """One more sync, with the stall probe running (kept out of the timed samples, which it would slow a little)."""
    async with StallProbe() as probe:
        row = await _timed_sync(shared)
    return row | {'max_event_loop_stall': probe.max_stall}


async def _store_stats(store: KeyValueStore) -> Json:
    """Records and bytes under the map's prefix, by kind (L: log, M: manifest, P: snapshot part, R: run, LEASE)."""
    records: dict[str, int] = {}
    sizes: dict[str, int] = {}
    manifests: list[str] = []
    async for meta in store.iterate_keys():
        if not meta.key.startswith(PREFIX):
            continue
        kind = meta.key[len(PREFIX) :].split('.', 1)[0]
        records[kind] = records.get(kind, 0) + 1
        sizes[kind] = sizes.get(kind, 0) + (meta.size or 0)
        if kind == 'M':
            manifests.append(meta.key)
    return {
        'records': records,
        'bytes': sizes,
        'total_bytes': sum(sizes.values()),
        'snapshot_bytes': sizes.get('M', 0) + sizes.get('P', 0),
        'manifests': manifests,
    }


def _count_not_enqueued(shared: SharedMap) -> int:
    return sum(1 for value in shared.values() if value != 'enqueued')


# ---------------------------------------------------------------------------------------------------- 1. micro


async def bench_operations(keys: list[str], path: Path, repeat: int) -> Json:
    """Per-operation cost of the mapping against a plain dict; the kinds alternate within each repeat."""
    store = await _open(path)
    loops = {kind: {op: _compile_loop(statement) for op, statement in LOOPS.items()} for kind in KINDS}
    ns: dict[str, dict[str, list[float]]] = {kind: {op: [] for op in LOOPS} for kind in KINDS}
    for r in range(-1, repeat):  # Round -1 warms up (page faults of the first growth, specialisation); not kept.
        shared = _new_map(store, f'micro-{r + 1}')
        await shared.initialize()
        containers: dict[str, Any] = {'dict': {}, 'shared_map': shared, 'override_floor': _OverrideFloor()}
        order = KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]  # Who goes first rotates between repeats.
        for op in LOOPS:
            for kind in order:
                elapsed = _time_loop(loops[kind][op], containers[kind], keys)
                if r >= 0:
                    ns[kind][op].append(elapsed)
        for kind, container in containers.items():
            if len(container) != len(keys):
                raise RuntimeError(f'{kind} holds {len(container)} entries, expected {len(keys)}')
        if shared.pending != len(keys):
            raise RuntimeError(f'SharedMap has {shared.pending} pending changes, expected {len(keys)}')
        del containers, shared
        gc.collect()
    result: Json = {}
    for op in LOOPS:
        ratios = [m / d for m, d in zip(ns['shared_map'][op], ns['dict'][op], strict=True)]
        floor = [f / d for f, d in zip(ns['override_floor'][op], ns['dict'][op], strict=True)]
        result[op] = {
            'dict_ns': _median(ns['dict'][op]),
            'shared_map_ns': _median(ns['shared_map'][op]),
            'override_floor_ns': _median(ns['override_floor'][op]),
            'ratio': _median(ratios),
            'override_floor_ratio': _median(floor),
            'samples': {'ratio': ratios, **{f'{kind}_ns': ns[kind][op] for kind in KINDS}},
        }
    return result


# ---------------------------------------------------------------------------------------------------- 2.-4. store


async def write_state(path: Path, keys: list[str], values: Sequence[str], run_id: str, batches: int = 10) -> Json:
    """One run sets every key to each of `values` in turn, in `batches` syncs per value, never compacting.

    The store then holds log records only: `len(values) * len(keys)` log entries.
    """
    store = await _open(path)
    writer = _new_map(store, run_id)
    await writer.initialize()
    step = -(-len(keys) // batches)
    syncs: list[Json] = []
    for phase, value in enumerate(values):
        for start in range(0, len(keys), step):
            for key in keys[start : start + step]:
                writer[key] = value
            last = phase == len(values) - 1 and start + step >= len(keys)
            row = await (_stalled_sync(writer) if last else _timed_sync(writer))  # The last one is probed, not timed.
            if row['compacted']:
                raise RuntimeError('the writer compacted although compaction was disabled')
            syncs.append(row)
    timed = [s for s in syncs if 'max_event_loop_stall' not in s] or syncs
    return {
        'values': list(values),
        'syncs': syncs,
        'sync_seconds_median': _median([s['seconds'] for s in timed]),
        'max_event_loop_stall': syncs[-1]['max_event_loop_stall'],
        'entries_per_sync': step,
        'log_entries': len(values) * len(keys),
        'bytes_written': sum(s['bytes_written'] for s in syncs),
        'store': await _store_stats(store),
    }


async def time_initialize(path: Path, expected: int, expected_not_enqueued: int | None, repeat: int) -> Json:
    """`initialize()` of a fresh map (new run id, fresh store object) from the store in `path`."""
    samples: list[float] = []
    for _ in range(repeat):
        gc.collect()
        store = await _open(path)
        shared = SharedMap(store, run_id=f'reader-{uuid.uuid4().hex[:10]}')
        started = time.perf_counter()
        await shared.initialize()
        samples.append(time.perf_counter() - started)
        if len(shared) != expected:
            raise RuntimeError(f'initialize() loaded {len(shared)} entries, expected {expected}')
        if expected_not_enqueued is not None and (found := _count_not_enqueued(shared)) != expected_not_enqueued:
            raise RuntimeError(f'initialize() loaded {found} non-enqueued values, expected {expected_not_enqueued}')
        del shared, store
    gc.collect()
    async with StallProbe() as probe:
        shared = SharedMap(await _open(path), run_id=f'reader-{uuid.uuid4().hex[:10]}')
        await shared.initialize()
    del shared
    gc.collect()
    return {'seconds': _median(samples), 'samples': samples, 'max_event_loop_stall': probe.max_stall}


async def compact(path: Path, keys: list[str], count: int) -> Json:
    """A run with `compact_after_records=2` changes a few entries and syncs `count` times: each sync compacts.

    After the second compaction, the log records of the first writer (covered by the first snapshot) are deleted,
    so the store holds a snapshot plus the last small log records.
    """
    store = await _open(path)
    compactor = _new_map(store, 'compactor', compact_after_records=2, compact_after_bytes=32 * MiB)
    started = time.perf_counter()
    await compactor.initialize()
    init_seconds = time.perf_counter() - started
    middle = len(keys) // 2
    changed: set[str] = set()
    syncs: list[Json] = []
    for i in range(count + 1):
        batch = keys[middle + i * SMALL_CHANGE : middle + (i + 1) * SMALL_CHANGE]
        for key in batch:
            compactor[key] = 'processed'
        changed.update(batch)
        if i < count:
            syncs.append(await _timed_sync(compactor))
    probed = await _stalled_sync(compactor)  # The last one, probed for event-loop stalls, is not timed.
    stats = await _store_stats(store)
    if not any(key.startswith('SM.M.') for key in stats['manifests']):
        raise RuntimeError(f'no SM.M. manifest in the store after {count} compacting syncs: {stats}')
    compactions = [s for s in syncs if s['compacted']]
    return {
        'initialize_seconds': init_seconds,
        'syncs': syncs,
        'compactions': len(compactions),
        'seconds': _median([s['seconds'] for s in compactions]),
        'bytes_written': _median([s['bytes_written'] for s in compactions]),
        'first_seconds': compactions[0]['seconds'] if compactions else None,
        'probed': probed,
        'max_event_loop_stall': probed['max_event_loop_stall'],
        'processed_entries': len(changed),
        'store': stats,
    }


async def time_sync(path: Path, keys: list[str], repeat: int) -> Json:
    """Per repeat: set 1 % of the keys to 'processed' and sync, then sync with no change (never compacting).

    A second run (`peer`, initialized before) then syncs too: it merges those changes into entries it holds.
    """
    store = await _open(path)
    shared = _new_map(store, 'syncer')
    await shared.initialize()
    peer = _new_map(await _open(path), 'peer')
    await peer.initialize()
    step = max(1, len(keys) // 100)
    changed: list[Json] = []
    unchanged: list[Json] = []
    merged: list[Json] = []
    for r in range(repeat):
        start = (r * step) % len(keys)
        for key in keys[start : start + step]:
            shared[key] = 'processed'
        changed.append(await _timed_sync(shared))
        unchanged.append(await _timed_sync(shared))
        merged.append(await _timed_sync(peer))
        if merged[-1]['entries_changed'] != step:
            raise RuntimeError(f'the peer changed {merged[-1]["entries_changed"]} entries, expected {step}')
    start = (repeat * step) % len(keys)
    for key in keys[start : start + step]:
        shared[key] = 'processed'
    probed = await _stalled_sync(shared)
    return {
        'entries_changed': step,
        'changed': {
            'seconds': _median([s['seconds'] for s in changed]),
            'bytes_written': _median([s['bytes_written'] for s in changed]),
            'samples': changed,
            'probed': probed,
            'max_event_loop_stall': probed['max_event_loop_stall'],
        },
        'unchanged': {
            'seconds': _median([s['seconds'] for s in unchanged]),
            'samples': unchanged,
        },
        'peer_merge': {
            'seconds': _median([s['seconds'] for s in merged]),
            'samples': merged,
        },
        'store': await _store_stats(store),
    }


# ---------------------------------------------------------------------------------------------------- 5. memory


async def _memory_child(spec: Json) -> Json:
    """Runs in a subprocess: memory of a map initialized from the store, or of a plain dict of the same entries."""
    n = int(spec['entries'])
    traced = spec['measure'] == 'tracemalloc'
    holder: Any
    if spec['kind'] == 'shared_map':
        store = await _open(Path(spec['path']))
        holder = SharedMap(store, run_id='memory-probe')
        gc.collect()
        before = _rss_kib()
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        await holder.initialize()
        seconds = time.perf_counter() - started
    else:
        value = str(spec['value'])
        gc.collect()
        before = _rss_kib()
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        holder = {make_key(i): value for i in range(n)}
        seconds = time.perf_counter() - started
    gc.collect()
    after = _rss_kib()
    peak = _rss_kib('VmHWM')
    out: Json = {**spec, 'loaded': len(holder)}
    if traced:
        current, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out |= {
            'traced_bytes_per_entry': current / n,
            'traced_peak_bytes_per_entry': traced_peak / n,
            'traced_seconds': seconds,
        }
    else:
        out |= {
            'rss_before_kib': before,
            'rss_after_kib': after,
            'seconds': seconds,
            'peak_rss_kib': peak,
            'bytes_per_entry': (after - before) * 1024 / n,
            'peak_bytes_per_entry': (peak - before) * 1024 / n,
            'getsizeof_per_entry': _getsizeof_breakdown(holder, n),
            'stamp_key_copies_per_entry': _stamp_key_copies(holder, n),
        }
    return out


def _getsizeof_breakdown(holder: Any, n: int) -> Json:
    """What `sys.getsizeof` accounts for, per entry (pymalloc rounds small objects up to 16 bytes)."""
    key_bytes = sum((sys.getsizeof(key) + 15) // 16 * 16 for key in holder)
    out: Json = {'keys': key_bytes / n, 'table': dict.__sizeof__(holder) / n}
    if isinstance(holder, SharedMap):
        for name, state in holder.merge_state().items():
            out[name] = sys.getsizeof(state) / n
    out['total'] = sum(out.values())
    return out


def _stamp_key_copies(holder: Any, n: int) -> float | None:
    """Keys of the stamps that are not the very string object the map holds (each one a second copy of a key)."""
    if not isinstance(holder, SharedMap):
        return None
    ids = {id(key) for key in holder}
    return sum(id(key) not in ids for key in holder.merge_state()['stamps']) / n


def _run_child(spec: Json) -> Json:
    command = [sys.executable, '-m', 'bench.bench_shared_map', '--child', json.dumps(spec)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return cast(Json, json.loads(line[len(CHILD_MARKER) :]))
    raise RuntimeError(f'memory subprocess failed ({done.returncode}): {done.stderr[-2000:]}')


async def bench_memory(path: Path, n: int, value: str, *, traced: bool) -> Json:
    out: Json = {}
    for kind in ('shared_map', 'dict'):
        spec = {'kind': kind, 'path': str(path), 'entries': n, 'value': value, 'measure': 'rss'}
        rss = await asyncio.to_thread(_run_child, spec)
        if rss['loaded'] != n:
            raise RuntimeError(f'the memory probe loaded {rss["loaded"]} entries, expected {n}')
        out[kind] = rss
        if traced:
            out[kind] |= await asyncio.to_thread(_run_child, spec | {'measure': 'tracemalloc'})
    return out


# ---------------------------------------------------------------------------------------------------- profiling


def _top(profile: cProfile.Profile, sort: str, limit: int = 15) -> list[Json]:
    stats = pstats.Stats(profile)
    rows: list[Json] = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f'{Path(filename).name}:{line}({name})' if line else name
        rows.append({'function': where, 'calls': calls, 'tottime': tottime, 'cumtime': cumtime})
    rows.sort(key=lambda row: -float(row[sort]))
    return rows[:limit]


def _save_profile(profile: cProfile.Profile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile.dump_stats(str(path))


async def _profiled(name: str, action: Callable[[], Awaitable[Any]], out_dir: Path) -> Json:
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    await action()
    profile.disable()
    seconds = time.perf_counter() - started
    await asyncio.to_thread(_save_profile, profile, out_dir / f'profile-{name}.prof')
    return {
        'seconds_under_profile': seconds,
        'by_tottime': _top(profile, 'tottime'),
        'by_cumtime': _top(profile, 'cumtime'),
    }


async def profile_paths(snapshot_path: Path, log_path: Path, keys: list[str], out_dir: Path) -> Json:
    """cProfile of initialize (snapshot and log layouts), syncs (1 % changed; 10 % new) and a compaction."""
    out: Json = {}

    async def init_from(path: Path) -> None:
        shared = SharedMap(await _open(path), run_id=f'profile-{uuid.uuid4().hex[:8]}')
        await shared.initialize()

    out['initialize_snapshot'] = await _profiled('initialize_snapshot', lambda: init_from(snapshot_path), out_dir)
    out['initialize_logs'] = await _profiled('initialize_logs', lambda: init_from(log_path), out_dir)

    syncer = _new_map(await _open(snapshot_path), 'profile-syncer')
    await syncer.initialize()
    for key in keys[-max(1, len(keys) // 100) :]:
        syncer[key] = 'processed'
    out['sync_1pct'] = await _profiled('sync_1pct', syncer.sync, out_dir)
    for i in range(len(keys), len(keys) + max(1, len(keys) // 10)):
        syncer[make_key(i)] = 'enqueued'
    out['sync_publish_10pct_new'] = await _profiled('sync_publish_10pct_new', syncer.sync, out_dir)

    compactor = _new_map(
        await _open(snapshot_path), 'profile-compactor', compact_after_records=2, compact_after_bytes=32 * MiB
    )
    await compactor.initialize()
    for key in keys[:SMALL_CHANGE]:
        compactor[key] = 'processed'
    out['compaction_sync'] = await _profiled('compaction_sync', compactor.sync, out_dir)
    return out


# ---------------------------------------------------------------------------------------------------- driver


async def bench_size(n: int, repeat: int, *, traced: bool, profile_dir: Path | None) -> Json:
    _progress(f'{n:,} entries: generating keys')
    keys = make_keys(n)
    result: Json = {'entries': n, 'key_length': KEY_LENGTH, 'example_key': keys[0]}
    with tempfile.TemporaryDirectory(prefix=f'shared-map-bench-{n}-') as tmp:
        root = Path(tmp)
        result['tmpdir'] = tmp
        main_path, processed_path, micro_path = root / 'main', root / 'processed', root / 'micro'

        _progress(f'{n:,}: set/get against dict ({repeat} repeats)')
        result['operations'] = await bench_operations(keys, micro_path, repeat)

        _progress(f'{n:,}: writing the state as log records (all enqueued)')
        result['write_logs'] = await write_state(main_path, keys, ['enqueued'], 'writer')
        _progress(f'{n:,}: initialize() from log records')
        result['initialize_logs'] = await time_initialize(main_path, n, 0, repeat)
        _progress(f'{n:,}: memory after initialize() from log records (subprocesses)')
        result['memory_enqueued'] = await bench_memory(main_path, n, 'enqueued', traced=traced)

        _progress(f'{n:,}: writing a second state: every entry enqueued, then processed')
        result['write_logs_processed'] = await write_state(processed_path, keys, ['enqueued', 'processed'], 'writer')
        result['initialize_logs_processed'] = await time_initialize(processed_path, n, n, repeat)
        result['memory_processed'] = await bench_memory(processed_path, n, 'processed', traced=traced)

        _progress(f'{n:,}: compacting ({max(2, repeat)} compacting syncs)')
        result['compaction'] = compaction = await compact(main_path, keys, max(2, repeat))
        _progress(f'{n:,}: initialize() from the snapshot')
        result['initialize_snapshot'] = await time_initialize(main_path, n, compaction['processed_entries'], repeat)

        _progress(f'{n:,}: sync() with 1 % changed and with none')
        result['sync'] = await time_sync(main_path, keys, repeat)
        full = compaction['store']['snapshot_bytes']
        result['sync']['full_state_bytes'] = full
        result['sync']['changed']['fraction_of_full_state'] = result['sync']['changed']['bytes_written'] / full

        if profile_dir is not None:
            _progress(f'{n:,}: profiling')
            result['profile'] = await profile_paths(main_path, processed_path, keys, profile_dir / str(n))
    service_locator.storage_instance_manager.clear_cache()
    return result


def _status(value: float, target: float, applies: bool) -> str:
    if not applies:
        return '— (target is at 1M)'
    return 'met' if value <= target else '**NOT met**'


def build_rows(sizes: Json) -> list[list[str]]:
    rows: list[list[str]] = []
    for size in sizes.values():
        n = size['entries']
        at_target = n == TARGET_ENTRIES
        entries = f'{n:,}'
        for op, label in LOOP_LABELS.items():
            o = size['operations'][op]
            rows.append(
                [
                    label,
                    entries,
                    f'{o["ratio"]:.2f}x dict',
                    f'SharedMap {o["shared_map_ns"]:.1f} ns/op, dict {o["dict_ns"]:.1f} ns/op; minimal-override '
                    f'subclass {o["override_floor_ratio"]:.2f}x',
                    f'<= {TARGET_RATIO}x',
                    _status(o['ratio'], TARGET_RATIO, True),
                ]
            )
        for name, label, layout, memory in (
            ('initialize_logs', 'initialize(), log records only', 'write_logs', 'memory_enqueued'),
            ('initialize_snapshot', 'initialize(), after compaction', None, None),
            (
                'initialize_logs_processed',
                "initialize(), log records: all 'enqueued', then all 'processed' (2 log entries per key)",
                'write_logs_processed',
                'memory_processed',
            ),
        ):
            init = size[name]
            seconds = init['seconds']
            store = size[layout]['store'] if layout else size['compaction']['store']
            records = ', '.join(f'{k} {v}' for k, v in sorted(store['records'].items()))
            fresh = f'; in a fresh process {size[memory]["shared_map"]["seconds"]:.3f} s' if memory else ''
            rows.append(
                [
                    label,
                    entries,
                    f'{seconds:.3f} s',
                    f'range {min(init["samples"]):.3f}-{max(init["samples"]):.3f} s{fresh}; store: {records} records, '
                    f'{store["total_bytes"] / 1e6:.1f} MB; longest event-loop stall '
                    f'{init["max_event_loop_stall"]:.3f} s',
                    f'<= {TARGET_INIT_SECONDS:g} s at 1M',
                    _status(seconds, TARGET_INIT_SECONDS, at_target),
                ]
            )
        sync = size['sync']
        changed = sync['changed']
        rows.append(
            [
                f'sync(), 1 % changed ({sync["entries_changed"]:,} entries)',
                entries,
                f'{changed["seconds"]:.3f} s',
                f'wrote {changed["bytes_written"] / 1e6:.2f} MB = {changed["fraction_of_full_state"]:.2%} of the full '
                f'state ({sync["full_state_bytes"] / 1e6:.1f} MB snapshot); longest event-loop stall '
                f'{changed["max_event_loop_stall"]:.3f} s',
                f'<= {TARGET_SYNC_SECONDS:g} s at 1M',
                _status(changed['seconds'], TARGET_SYNC_SECONDS, at_target),
            ]
        )
        rows.append(['sync(), no change', entries, f'{sync["unchanged"]["seconds"]:.3f} s', '', '—', '—'])
        peer = sync['peer_merge']
        rows.append(
            [
                "sync() of another run, merging those 1 % ('enqueued' -> 'processed')",
                entries,
                f'{peer["seconds"]:.3f} s',
                f'{peer["seconds"] / sync["entries_changed"] * 1e9:.0f} ns per merged entry (whole sync / entries)',
                '—',
                '—',
            ]
        )
        c = size['compaction']
        rows.append(
            [
                'sync() that compacts',
                entries,
                f'{c["seconds"]:.3f} s',
                f'{c["compactions"]}/{len(c["syncs"])} syncs compacted; wrote {c["bytes_written"] / 1e6:.1f} MB each; '
                f'first {c["first_seconds"]:.3f} s; longest event-loop stall {c["max_event_loop_stall"]:.3f} s',
                '—',
                '—',
            ]
        )
        write = size['write_logs']
        rows.append(
            [
                f'sync() publishing {write["entries_per_sync"]:,} new entries',
                entries,
                f'{write["sync_seconds_median"]:.3f} s',
                f'{len(write["syncs"])} syncs, {write["bytes_written"] / 1e6:.1f} MB in all; '
                f'{write["sync_seconds_median"] / write["entries_per_sync"] * 1e9:.0f} ns/entry; '
                f'longest event-loop stall {write["max_event_loop_stall"]:.3f} s',
                '—',
                '—',
            ]
        )
        for name, label in (
            ('memory_enqueued', "memory per entry, all 'enqueued'"),
            ('memory_processed', "memory per entry, all 'processed' (logs: 'enqueued', then 'processed')"),
        ):
            memory = size[name]
            m, d = memory['shared_map'], memory['dict']
            traced = ''
            if 'traced_bytes_per_entry' in m:
                traced = (
                    f'; tracemalloc {m["traced_bytes_per_entry"]:.0f} (peak {m["traced_peak_bytes_per_entry"]:.0f})'
                    f' vs dict {d["traced_bytes_per_entry"]:.0f}'
                )
            rows.append(
                [
                    label,
                    entries,
                    f'{m["bytes_per_entry"]:.0f} B',
                    f'RSS; dict {d["bytes_per_entry"]:.0f} B; SharedMap peak during initialize '
                    f'{m["peak_bytes_per_entry"]:.0f} B; getsizeof {m["getsizeof_per_entry"]["total"]:.0f} B'
                    + traced
                    + f'; second copies of keys held by `_stamps`: {m["stamp_key_copies_per_entry"]:.2f} per entry',
                    f'<= {TARGET_BYTES_PER_ENTRY:g} B at 1M',
                    _status(m['bytes_per_entry'], TARGET_BYTES_PER_ENTRY, at_target),
                ]
            )
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    header = ['Metric', 'Entries', 'Measured', 'Details', 'Target', 'Status']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def profile_summary(sizes: Json, limit: int = 8) -> str:
    lines: list[str] = []
    for size in sizes.values():
        for name, prof in size.get('profile', {}).items():
            lines.append(f'\n{name} at {size["entries"]:,} ({prof["seconds_under_profile"]:.2f} s under cProfile):')
            for row in prof['by_tottime'][:limit]:
                lines.append(
                    f'  tottime {row["tottime"]:7.3f} s  cumtime {row["cumtime"]:7.3f} s  '
                    f'{row["calls"]:>9} calls  {row["function"]}'
                )
    return '\n'.join(lines)


def _git(*args: str) -> str:
    done = subprocess.run(['git', *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


async def run(args: argparse.Namespace) -> Json:
    sizes: Json = {}
    for n in args.sizes:
        service_locator.storage_instance_manager.clear_cache()
        sizes[str(n)] = await bench_size(
            n, args.repeat, traced=not args.no_tracemalloc, profile_dir=args.out.parent if args.profile else None
        )
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] if __doc__ else None)
    parser.add_argument('--sizes', type=int, nargs='+', default=[100_000, 1_000_000], help='numbers of entries')
    parser.add_argument('--repeat', type=int, default=5, help='repeats of each measurement (the median is reported)')
    parser.add_argument('--out', type=Path, default=REPO_ROOT / 'bench' / 'out' / 'results.json', help='JSON output')
    parser.add_argument('--no-tracemalloc', action='store_true', help='skip the tracemalloc memory runs')
    parser.add_argument(
        '--profile', action='store_true', help='also cProfile the slow paths (after the timings; .prof files in --out)'
    )
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(n < 100 for n in args.sizes):
        parser.error('--repeat must be at least 1 and every size at least 100')
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child = asyncio.run(_memory_child(json.loads(args.child)))
        print(CHILD_MARKER + json.dumps(child), flush=True)
        return
    started_at = datetime.now(UTC).isoformat(timespec='seconds')
    started = time.perf_counter()
    sizes = asyncio.run(run(args))
    total = time.perf_counter() - started
    rows = build_rows(sizes)
    table = markdown_table(rows)
    results: Json = {
        'meta': {
            'command': ' '.join([Path(sys.executable).name, '-m', 'bench.bench_shared_map', *sys.argv[1:]]),
            'started_at': started_at,
            'total_seconds': total,
            'repeat': args.repeat,
            'python': sys.version,
            'crawlee': importlib.metadata.version('crawlee'),
            'platform': platform.platform(),
            'cpus': os.cpu_count(),
            'tmpdir': tempfile.gettempdir(),
            'git_commit': _git('rev-parse', 'HEAD'),
            'src_uncommitted_changes': _git('status', '--porcelain', 'src').splitlines(),
            'notes': [
                'File-system store (crawlee FileSystemStorageClient) in a fresh temporary directory per size.',
                'Micro-benchmarks run with the garbage collector disabled, like timeit; same key objects for all.',
                'Log layout written with compact_after_records and compact_after_bytes both disabled (the bytes '
                'threshold alone, 32 MiB by default, would compact a 1M-entry log).',
            ],
        },
        'targets': {
            'set_get_ratio': TARGET_RATIO,
            'initialize_seconds_at_1m': TARGET_INIT_SECONDS,
            'sync_1pct_seconds_at_1m': TARGET_SYNC_SECONDS,
            'bytes_per_entry_at_1m': TARGET_BYTES_PER_ENTRY,
        },
        'sizes': sizes,
        'table': rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + '\n', encoding='utf-8')
    print(table)
    if args.profile:
        print(profile_summary(sizes))
    print(f'\nTotal run time: {total:.1f} s. Raw numbers: {args.out}')


if __name__ == '__main__':
    main()

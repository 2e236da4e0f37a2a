"""Restarts under the same run id, and the merge state: forged interleavings that once lost synced updates.

Each interleaving is forced with a real store wrapped in `ScriptedStore` (a hook runs another run's sync in the
middle of a read), never by calling private methods.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from pathlib import Path

import pytest
from crawlee.storage_clients import MemoryStorageClient
from crawlee.storages import KeyValueStore

from bench.scripted_store import ScriptedStore, join_max
from src.shared_map import SharedMap, SyncError
from tests.conftest import WITH_REDIS


async def keys_of(store: KeyValueStore, prefix: str) -> list[str]:
    return [meta.key async for meta in store.iterate_keys() if meta.key.startswith(prefix)]


async def compact_once_more(compactor: SharedMap) -> None:
    """Let `compactor` write and sync until it has compacted once more."""
    target = compactor.stats.compactions + 1
    for i in range(50):
        compactor[f'filler-{compactor.stats.syncs}-{i}'] = 'processed'
        await compactor.sync()
        if compactor.stats.compactions >= target:
            return
    raise AssertionError('the compactor did not compact')


async def killed_run_whose_logs_were_compacted_away(store: KeyValueStore, *, clock_skew_ms: int = 0) -> SharedMap:
    """Run `w1` syncs three logs and dies; run `a` compacts twice, so a snapshot holds them and the logs are gone."""
    w1 = SharedMap(store, run_id='w1', compact_after_records=10**6, clock=lambda: _ms() + clock_skew_ms)
    await w1.initialize()
    for i in range(3):
        w1[f'w1-key-{i}'] = 'processed'
        w1['contested'] = f'w1-{i}'
        await w1.sync()
    # w1 is killed here: no close(), no final record.
    a = SharedMap(store, run_id='a', compact_after_records=2)
    await a.initialize()
    await compact_once_more(a)
    await compact_once_more(a)
    assert not await keys_of(store, 'SM.L.w1.'), 'every log of w1 was folded into a snapshot and deleted'
    return a


def _ms() -> int:
    import time

    return int(time.time() * 1000)


async def restart_while_the_snapshot_is_superseded(store: KeyValueStore, compactor: SharedMap) -> SharedMap:
    """Restart `w1`; just before it reads its first snapshot part, `compactor` compacts again and deletes that part."""
    fired = False

    async def compact_under_the_reader(key: str) -> None:
        nonlocal fired
        if key.startswith('SM.P.') and not fired:
            fired = True
            await compact_once_more(compactor)

    scripted = ScriptedStore(store, before_get=compact_under_the_reader)
    restarted = SharedMap(scripted.as_store(), run_id='w1', compact_after_records=10**6)
    await restarted.initialize()
    assert fired, 'the compaction ran in the middle of the restarted run reading the snapshot'
    return restarted


async def test_a_restarted_run_loads_everything_and_never_reuses_a_log_identity(store: KeyValueStore) -> None:
    a = await killed_run_whose_logs_were_compacted_away(store)
    w1 = await restart_while_the_snapshot_is_superseded(store, a)
    for i in range(3):
        assert w1.get(f'w1-key-{i}') == 'processed', 'initialize() re-read the snapshot that replaced the one it lost'

    w1['after-restart'] = 'processed'
    await w1.sync()
    await a.sync()
    assert a.get('after-restart') == 'processed', "the other run merged the restarted run's new log"
    await compact_once_more(a)
    await compact_once_more(a)  # the log is deleted now, as covered by a snapshot
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert fresh.get('after-restart') == 'processed'
    assert dict(fresh) == dict(a)


async def test_a_restarted_run_on_a_slower_clock_still_wins_over_its_earlier_values(store: KeyValueStore) -> None:
    # Its first incarnation ran on a machine 60 s ahead; it restarts (migrates) onto one with the right time.
    a = await killed_run_whose_logs_were_compacted_away(store, clock_skew_ms=60_000)
    w1 = await restart_while_the_snapshot_is_superseded(store, a)
    w1['contested'] = 'after-restart'
    await w1.sync()
    await a.sync()
    assert w1['contested'] == a['contested'] == 'after-restart', 'the new value is stamped above the earlier ones'


async def test_a_reverted_local_enqueued_keeps_one_authoritative_entry(store: KeyValueStore) -> None:
    """Two readers that merged the same records must agree (once disagreed: None vs {'retries': 2})."""
    late = SharedMap(store, run_id='late', clock=lambda: 2000)  # will publish an entry stamped between the others
    await late.initialize()
    x = SharedMap(store, run_id='x', clock=lambda: 1000)
    await x.initialize()
    x['k'] = 'x'
    await x.sync()
    del x['k']
    await x.sync()  # deleted at stamp ~1001
    reader = SharedMap(store, run_id='reader', clock=lambda: 0)
    await reader.initialize()
    assert 'k' not in reader
    reader['k'] = 'enqueued'  # a local `enqueued` over a deletion: shown until the next sync, not published
    z = SharedMap(store, run_id='z', clock=lambda: 3000)
    await z.initialize()
    z['k'] = {'v': 3}
    await z.sync()  # stamp 3000: the winner
    await reader.sync()
    assert reader['k'] == {'v': 3}
    late['k'] = {'retries': 2}
    await late.sync(mode='write-only')  # stamp 2000: loses to 3000
    await reader.sync()
    other = SharedMap(store, run_id='other')
    await other.initialize()
    assert other['k'] == {'v': 3}
    assert reader['k'] == {'v': 3}, 'the older entry lost to the restored value, not to the stale deletion'


@pytest.mark.parametrize('value', [10**5000, -(2**1024), [1, 2**2000]], ids=['huge', 'negative', 'nested'])
async def test_a_value_that_cannot_be_encoded_is_refused_when_set(store: KeyValueStore, value: object) -> None:
    shared = SharedMap(store, run_id='a')
    await shared.initialize()
    shared['kept'] = 'processed'
    with pytest.raises(ValueError, match='2\\*\\*1024'):
        shared['big'] = value
    assert 'big' not in shared
    assert shared.pending == 1
    await shared.sync()
    assert shared.pending == 0


async def test_a_record_that_fails_to_encode_keeps_every_pending_change(store: KeyValueStore) -> None:
    shared = SharedMap(store, run_id='a')
    await shared.initialize()
    shared['first'] = 'processed'
    mutable: list[object] = []
    shared['mutated'] = mutable
    mutable.append(float('nan'))  # mutated after it was set (values should be treated as immutable)
    shared['last'] = 'failed'
    with pytest.raises(SyncError, match='Out of range float'):
        await shared.sync()
    assert shared.pending == 3, 'nothing pending was dropped'
    mutable.clear()
    await shared.sync()
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == {'first': 'processed', 'mutated': [], 'last': 'failed'}


async def test_a_ghost_manifest_is_reported_once_and_does_not_stop_compaction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kill -9 inside the file-system client's delete (value file gone, metadata file left) leaves a listed key with
    no value, which crawlee can never delete. Forged here by putting that metadata file back."""
    store = await KeyValueStore.open(name='ghosts')
    folder = Path(os.environ['CRAWLEE_STORAGE_DIR']) / 'key_value_stores' / 'ghosts'
    a = SharedMap(store, run_id='a', compact_after_records=2)
    b = SharedMap(store, run_id='b', compact_after_records=2)
    await a.initialize()
    await b.initialize()
    await compact_once_more(a)
    [first_manifest] = await keys_of(store, 'SM.M.')
    metadata_file = next(p for p in folder.iterdir() if p.name.startswith(first_manifest) and 'metadata' in p.name)
    metadata = metadata_file.read_bytes()
    await compact_once_more(a)
    assert first_manifest not in await keys_of(store, 'SM.M.')
    metadata_file.write_bytes(metadata)  # what the kill left: listed, no value
    assert first_manifest in await keys_of(store, 'SM.M.')
    assert await store.get_value(first_manifest) is None

    caplog.set_level(logging.WARNING)
    before = a.stats.compactions + b.stats.compactions
    for i in range(16):
        for run in (a, b):
            run[f'{run.run_id}-{i}'] = 'processed'
            await run.sync()
        await asyncio.sleep(0.1)
    await a.sync()
    assert a.stats.compactions + b.stats.compactions - before >= 4, 'compaction goes on'
    warnings = [r.getMessage() for r in caplog.records if first_manifest in r.getMessage()]
    assert len(warnings) == 2, f'reported once by each run: {warnings}'
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()  # does not hang or fail on the ghost
    assert dict(fresh) == dict(a) == dict(b)
    assert all(fresh.get(f'{run}-15') == 'processed' for run in 'ab')


# More seeds: SHARED_MAP_PROPERTY_SEEDS=2000 (bench/README.md has the figure).
PROPERTY_SEEDS = range(int(os.environ.get('SHARED_MAP_PROPERTY_SEEDS', '20')))


@pytest.mark.parametrize('seed', PROPERTY_SEEDS)
async def test_every_replica_equals_the_plain_maximum_over_all_entries(seed: int) -> None:
    """Random sets, enqueues, deletes, syncs in random orders, restarts and compactions on a scripted memory store."""
    await _property_check(seed, await KeyValueStore.open(name=f'prop-{seed}', storage_client=MemoryStorageClient()))


@pytest.mark.parametrize('connection', WITH_REDIS, indirect=True)
@pytest.mark.parametrize('seed', range(2))
async def test_the_plain_maximum_property_on_every_backend(store: KeyValueStore, seed: int) -> None:
    await _property_check(seed, store)


async def _property_check(seed: int, inner: KeyValueStore) -> None:
    rng = random.Random(seed)
    scripted = ScriptedStore(inner, record=True)
    clocks = {name: rng.randrange(-5000, 5000) for name in ('r0', 'r1', 'r2')}  # skewed clocks, ms

    def open_run(name: str) -> SharedMap:
        skew = clocks[name]
        return SharedMap(scripted.as_store(), run_id=name, compact_after_records=3, clock=lambda: _ms() + skew)

    runs = {name: open_run(name) for name in clocks}
    for shared in runs.values():
        await shared.initialize()
    keys = [f'k{i}' for i in range(5)]  # few keys: more interleavings per key
    values: list[object] = ['processed', 'failed', {'retries': 2}, 7, None, 'enqueued', 'enqueued']
    for _ in range(150):
        name = rng.choice(list(runs))
        shared = runs[name]
        roll = rng.random()
        key = rng.choice(keys)
        if roll < 0.45:
            shared[key] = rng.choice(values)
        elif roll < 0.55:
            if key in shared:
                del shared[key]
        elif roll < 0.9:
            await shared.sync(mode=rng.choice(['full', 'full', 'write-only']))
        elif roll < 0.95:  # killed: unsynced changes are gone, the same run id starts again
            runs[name] = open_run(name)
            await runs[name].initialize()
        else:  # a clean restart
            await shared.close()
            runs[name] = open_run(name)
            await runs[name].initialize()
    for _ in range(2):
        for shared in runs.values():
            await shared.sync()
    expected = join_max(scripted.written_entries())
    for name, shared in runs.items():
        assert dict(shared) == expected, f'seed {seed}: {name} differs: {_diff(dict(shared), expected)}'
    fresh = SharedMap(inner, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == expected


def _diff(got: dict[str, object], want: dict[str, object]) -> str:
    keys = sorted(set(got) | set(want))
    return json.dumps(
        {k: [got.get(k, '<absent>'), want.get(k, '<absent>')] for k in keys if got.get(k, 1) != want.get(k, 1)},
        default=str,
    )

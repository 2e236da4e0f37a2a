"""Compaction: bounded record count, deferred deletion, the lease, orphans of a dead compaction."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from crawlee.storages import KeyValueStore

from bench.scripted_store import ScriptedStore
from src.shared_map import SharedMap


async def keys_of(store: KeyValueStore, prefix: str = 'SM.') -> list[str]:
    return [meta.key async for meta in store.iterate_keys() if meta.key.startswith(prefix)]


async def test_compaction_bounds_the_records_and_loses_nothing(store: KeyValueStore) -> None:
    a = SharedMap(store, run_id='a', compact_after_records=4)
    b = SharedMap(store, run_id='b', compact_after_records=4)
    await a.initialize()
    await b.initialize()
    log_counts = []
    for i in range(30):
        writer = a if i % 2 else b
        writer[f'k{i}'] = 'processed'
        writer[f'shared{i % 5}'] = 'enqueued'
        await writer.sync()
        log_counts.append(len(await keys_of(store, 'SM.L.')))
    await a.sync()
    await b.sync()
    assert a.stats.compactions + b.stats.compactions >= 3
    assert max(log_counts) <= 2 * 4 + 1, log_counts  # deletion is one compaction late
    assert len(await keys_of(store, 'SM.M.')) == 1
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == dict(a) == dict(b)
    assert len(fresh) == 35


async def test_logs_a_snapshot_holds_do_not_trigger_another_compaction(store: KeyValueStore) -> None:
    a = SharedMap(store, run_id='a', compact_after_records=4)
    await a.initialize()
    for i in range(4):
        a[f'k{i}'] = 'processed'
        await a.sync()
    assert a.stats.compactions == 1
    for i in range(3):  # the 4 logs stay until the next compaction, but only new logs count towards it
        a[f'n{i}'] = 'processed'
        await a.sync()
    assert a.stats.compactions == 1, 'no second compaction rewriting the same state'
    joiner = SharedMap(store, run_id='joiner', compact_after_records=4)
    await joiner.initialize()
    await joiner.sync()
    await joiner.sync()
    assert joiner.stats.compactions == 0, 'a run joining a compacted store does not compact it again'
    a['n3'] = 'processed'
    await a.sync()
    assert a.stats.compactions == 2, 'the 4th new log makes the next compaction due'
    assert len(await keys_of(store, 'SM.L.')) <= 5, 'which deleted the logs the first snapshot held'


async def test_readers_that_keep_up_never_reload_a_snapshot(store: KeyValueStore) -> None:
    a = SharedMap(store, run_id='a', compact_after_records=3)
    b = SharedMap(store, run_id='b', compact_after_records=10**6)
    await a.initialize()
    await b.initialize()
    for i in range(20):
        a[f'k{i}'] = 'processed'
        await a.sync()
        await b.sync()
    assert a.stats.compactions >= 3
    assert b.stats.snapshots_loaded == 0
    assert dict(a) == dict(b)


async def test_a_live_lease_blocks_compaction_and_an_expired_one_does_not(store: KeyValueStore) -> None:
    lease = {'format': 'apify-shared-map', 'version': 1, 'kind': 'lease', 'owner': 'other', 'token': 't'}
    live = dict(lease, expiresAt=int(time.time() * 1000) + 60_000)
    await store.set_value('SM.LEASE', json.dumps(live).encode(), content_type='application/octet-stream')
    a = SharedMap(store, run_id='a', compact_after_records=2)
    await a.initialize()
    for i in range(4):
        a[f'k{i}'] = 'processed'
        await a.sync()
    assert a.stats.compactions == 0
    assert a.stats.lease_misses >= 2
    assert a.stats.lease_wins == 0

    dead = dict(lease, expiresAt=int(time.time() * 1000) - 1)  # its holder died: the TTL ran out
    await store.set_value('SM.LEASE', json.dumps(dead).encode(), content_type='application/octet-stream')
    a['more'] = 'processed'
    result = await a.sync()
    assert result.lease_won
    assert result.compacted
    released = json.loads(await store.get_value('SM.LEASE'))
    assert released['owner'] == 'a'
    assert released['expiresAt'] == 0, 'the lease is released after compacting'


async def test_parts_of_a_dead_compaction_are_ignored_then_cleaned(store: KeyValueStore) -> None:
    a = SharedMap(store, run_id='a', compact_after_records=2, lease_ttl_secs=1, orphan_age_secs=4)
    await a.initialize()
    a['x'] = 'processed'
    await a.sync()
    # A compaction that died after writing a part and before its manifest: a stray part, wrong content.
    started = int(time.time() * 1000) - 10_000
    stray = f'SM.P.0000000001.dead.{started:x}beef.00000'
    body = {'format': 'apify-shared-map', 'version': 1, 'kind': 'part', 'groups': [[1, 'poison', ['x']]]}
    await store.set_value(stray, json.dumps(body).encode(), content_type='application/octet-stream')
    young = f'SM.P.0000000001.busy.{int(time.time() * 1000):x}beef.00000'
    await store.set_value(young, json.dumps(body).encode(), content_type='application/octet-stream')
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert fresh['x'] == 'processed', 'parts without a manifest are never loaded'
    for i in range(3):
        a[f'k{i}'] = 'processed'
        await a.sync()
    assert a.stats.compactions >= 1
    remaining = await keys_of(store)
    assert stray not in remaining, 'an old orphan part is cleaned up'
    assert young in remaining, 'a part that may belong to a running compaction is kept'


class PrivateLeaseStore(ScriptedStore):
    """Every run sees only its own writes of the lease record: each one believes it holds the lease."""

    def __init__(self, inner: KeyValueStore) -> None:
        super().__init__(inner)
        self.lease: Any = None

    async def get_value(self, key: str, default_value: Any = None) -> Any:
        return self.lease if key == 'SM.LEASE' else await super().get_value(key, default_value)

    async def set_value(self, key: str, value: Any, content_type: str | None = None) -> None:
        if key == 'SM.LEASE':
            self.lease = value
        else:
            await super().set_value(key, value, content_type)


async def test_two_runs_that_both_believe_they_hold_the_lease(store: KeyValueStore) -> None:
    maps = [SharedMap(PrivateLeaseStore(store).as_store(), run_id=f'r{i}', compact_after_records=2) for i in range(3)]
    for shared in maps:
        await shared.initialize()
    rng = random.Random(3)
    expected: dict[str, str] = {}
    for step in range(25):
        for i, shared in enumerate(maps):
            key = f'k{step}-{i}'
            shared[key] = rng.choice(['processed', 'failed'])
            expected[key] = shared[key]
        await asyncio.gather(*(shared.sync() for shared in maps))
    assert sum(shared.stats.compactions for shared in maps) >= 10
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == expected


async def test_a_stalled_compactor_that_wakes_up_late_loses_nothing(store: KeyValueStore) -> None:
    wake_up = asyncio.Event()
    stall = False

    async def stall_before_the_manifest(key: str) -> None:
        if stall and key.startswith('SM.M.'):
            await wake_up.wait()  # stalls between writing its parts and writing its manifest

    stalling_store = ScriptedStore(store, before_set=stall_before_the_manifest).as_store()
    slow = SharedMap(stalling_store, run_id='slow', compact_after_records=2, lease_ttl_secs=0.2, orphan_age_secs=60)
    fast = SharedMap(store, run_id='fast', compact_after_records=3, lease_ttl_secs=0.2, orphan_age_secs=60)
    await slow.initialize()
    await fast.initialize()
    for i in range(3):
        fast[f'early{i}'] = 'processed'
        await fast.sync()  # the first compaction: a snapshot to supersede later

    slow['stale'] = 'failed'
    for i in range(3):
        slow[f'slow{i}'] = 'processed'
        await slow.sync()
    stall = True
    slow['slow3'] = 'processed'
    stalled = asyncio.create_task(slow.sync())
    for _ in range(100):  # until the slow run is stuck inside its compaction
        if any(key.startswith('SM.P.') and '.slow.' in key for key in await keys_of(store)):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # its lease expires

    fast['stale'] = 'processed'  # newer than what the stalled snapshot holds
    for i in range(8):
        fast[f'late{i}'] = 'processed'
        await fast.sync()
    assert fast.stats.compactions >= 2, 'the other run compacted while the slow one stalled'
    assert fast.stats.records_deleted > 0, 'and deleted records'
    assert not stalled.done()
    wake_up.set()
    stall = False
    result = await stalled
    assert result.compacted, 'the stalled compaction published its (stale) snapshot'
    await slow.sync()
    await fast.sync()

    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert fresh['stale'] == 'processed'
    assert all(fresh[f'late{i}'] == 'processed' for i in range(8))
    assert all(fresh[f'slow{i}'] == 'processed' for i in range(4))
    assert dict(fresh) == dict(fast) == dict(slow)

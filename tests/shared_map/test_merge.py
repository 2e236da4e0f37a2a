"""Merge rules and convergence of replicas in one process (the multi-process proofs are in test_processes.py)."""

from __future__ import annotations

import random

import pytest
from crawlee.storages import KeyValueStore

from src.shared_map import SharedMap


async def open_maps(store: KeyValueStore, *names: str, **options: int) -> list[SharedMap]:
    maps = [SharedMap(store, run_id=name, **options) for name in names]  # type: ignore[arg-type]
    for shared in maps:
        await shared.initialize()
    return maps


async def test_enqueued_never_replaces_a_present_value(store: KeyValueStore) -> None:
    a, b = await open_maps(store, 'a', 'b')
    a['u'] = 'processed'
    await a.sync()
    b['u'] = 'enqueued'  # b does not know u yet: a local set takes effect locally
    assert b['u'] == 'enqueued'
    await b.sync()
    assert b['u'] == 'processed'  # a's processed wins across runs
    await a.sync()
    assert a['u'] == 'processed'


async def test_processed_replaces_enqueued_from_any_run(store: KeyValueStore) -> None:
    a, b = await open_maps(store, 'a', 'b')
    a['u'] = 'enqueued'
    await a.sync()
    await b.sync()
    assert b['u'] == 'enqueued'
    b['u'] = 'processed'
    await b.sync()
    await a.sync()
    assert a['u'] == 'processed'


async def test_latest_non_enqueued_value_wins(store: KeyValueStore) -> None:
    a, b = await open_maps(store, 'a', 'b')
    a['u'] = 'failed'
    await a.sync()
    await b.sync()
    b['u'] = 'processed'  # b saw a's value, so its later value wins (hybrid logical clock)
    await b.sync()
    await a.sync()
    assert a['u'] == b['u'] == 'processed'


async def test_local_enqueued_over_processed_reverts_at_next_sync(store: KeyValueStore) -> None:
    (a,) = await open_maps(store, 'a')
    a['u'] = 'processed'
    await a.sync()
    a['u'] = 'enqueued'
    assert a['u'] == 'enqueued'  # takes effect locally
    result = await a.sync()
    assert result.entries_written == 0  # nothing to publish: it could not win anywhere
    assert a['u'] == 'processed'


async def test_deletion_propagates_and_beats_enqueued(store: KeyValueStore) -> None:
    a, b = await open_maps(store, 'a', 'b')
    a['u'] = 'processed'
    a['v'] = 'enqueued'
    await a.sync()
    await b.sync()
    del b['u']
    assert b.pop('v') == 'enqueued'
    assert 'u' not in b
    await b.sync()
    await a.sync()
    assert 'u' not in a
    assert 'v' not in a
    a['v'] = 'enqueued'  # a deletion is final like `processed`: enqueued does not bring it back
    await a.sync()
    assert 'v' not in a
    a['v'] = 'retry'  # another value does
    await a.sync()
    await b.sync()
    assert b['v'] == 'retry'


async def test_dict_api(store: KeyValueStore) -> None:
    (a,) = await open_maps(store, 'a')
    a.update({'x': 1}, y=[1, {'z': None}])
    assert a.setdefault('x', 5) == 1
    assert a.setdefault('w', 'enqueued') == 'enqueued'
    a |= {'v': 2.5}
    assert sorted(a.items()) == [('v', 2.5), ('w', 'enqueued'), ('x', 1), ('y', [1, {'z': None}])]
    assert a.pending == 4
    key, _ = a.popitem()
    assert key not in a
    a.clear()
    assert len(a) == 0
    await a.sync()
    assert a.pending == 0
    assert repr(a).startswith('<SharedMap')
    with pytest.raises(KeyError):
        del a['nope']
    with pytest.raises(TypeError, match='fromkeys'):
        SharedMap.fromkeys(['a'])


@pytest.mark.parametrize('key', [1, None, b'bytes', ('t',)])
async def test_non_string_keys_raise_type_error(store: KeyValueStore, key: object) -> None:
    (a,) = await open_maps(store, 'a')
    with pytest.raises(TypeError, match='keys must be strings'):
        a[key] = 'enqueued'  # type: ignore[index]
    assert len(a) == 0


@pytest.mark.parametrize('value', [{1, 2}, ('a', 'b'), float('nan'), object(), {'k': b'x'}, {1: 'int key'}])
async def test_unserialisable_values_are_refused_at_set_time(store: KeyValueStore, value: object) -> None:
    (a,) = await open_maps(store, 'a')
    with pytest.raises(TypeError, match='JSON-serialisable'):
        a['u'] = value
    assert 'u' not in a
    assert a.pending == 0


async def test_oversized_entries_are_refused(store: KeyValueStore) -> None:
    (a,) = await open_maps(store, 'a')
    with pytest.raises(ValueError, match='characters'):
        a['u' * 400_000] = 'enqueued'
    with pytest.raises(ValueError, match='characters'):
        a['u'] = 'x' * 400_000
    assert len(a) == 0


async def test_replicas_converge_whatever_the_order(store: KeyValueStore) -> None:
    rng = random.Random(7)
    maps = await open_maps(store, 'a', 'b', 'c', compact_after_records=6)
    values = ['enqueued', 'processed', 'failed', {'retries': 1}, 3, None]
    for _ in range(40):
        shared = rng.choice(maps)
        for _ in range(rng.randint(1, 20)):
            key = f'k{rng.randint(0, 60)}'
            if rng.random() < 0.1 and key in shared:
                del shared[key]
            else:
                shared[key] = rng.choice(values)
        if rng.random() < 0.5:
            await rng.choice(maps).sync()
    for shared in maps:
        await shared.sync()
    for shared in maps:
        await shared.sync()
    assert dict(maps[0]) == dict(maps[1]) == dict(maps[2])
    assert sum(shared.stats.compactions for shared in maps) >= 1
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == dict(maps[0])

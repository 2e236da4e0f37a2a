"""The frontier's counters and owner sets, kept up to date per change, equal a full recount whatever happens.

Real runs (`SharedRequestManager` over `SharedMap`s on one crawlee key-value store) do random local sets and
deletions, admit and fetch requests, sync (merging each other's records), join, die (go silent past the dead-run
timeout), leave (close) and restart under the same run id; after every step each run's kept state is compared with
a recount from its map. `SHARED_MAP_PROPERTY_SEEDS` runs more seeds.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter

from crawlee import RequestState
from crawlee.storage_clients import MemoryStorageClient
from crawlee.storages import KeyValueStore, RequestQueue

from src.shared_map import ENQUEUED, FAILED, PROCESSED, SKIPPED, SharedMap, SharedRequestManager
from src.shared_map._frontier import QUEUE_BATCH
from src.shared_map._urls import rendezvous

SEEDS = int(os.environ.get('SHARED_MAP_PROPERTY_SEEDS', '8'))
STEPS = 70
KEYS = [f'https://example.com/p{i}' for i in range(40)]
DEAD_AFTER = 0.25


async def _open(store: KeyValueStore, run_id: str) -> SharedRequestManager:
    shared = SharedMap(store, run_id=run_id, heartbeat_secs=0.01)
    await shared.initialize()
    queue = await RequestQueue.open(storage_client=MemoryStorageClient())
    return SharedRequestManager(queue, shared, sync_interval_secs=0.05, dead_after_secs=DEAD_AFTER)


async def _check(manager: SharedRequestManager, context: str) -> None:
    state = manager.frontier.state
    await state.settle(chunk=7)  # small chunks: the yields between them are exercised too
    shared = manager.shared
    me = shared.run_id
    live = state.live
    waiting = {key for key, value in shared.items() if value == ENQUEUED}
    done = {key for key, value in shared.items() if value in (PROCESSED, FAILED)}
    assert state.waiting_urls() == waiting, context
    assert state.waiting == len(waiting), context
    assert state.done == len(done), context
    assert state.mine_done == len(state.started & done), context
    owners = {url: rendezvous(live, url) for url in waiting}
    assert all(manager.owner(url) == owner for url, owner in owners.items()), context
    expected_counts = Counter(owners.values())
    assert state.waiting_for() == {run: expected_counts.get(run, 0) for run in live}, context
    mine = {url for url, owner in owners.items() if owner == me}
    ready = set(state.ready)
    assert ready <= mine - state.queued, f'{context}: ready URLs are waiting, this run owns them, not queued'
    assert mine - state.queued <= ready | state.held, f'{context}: every owned waiting URL is ready, queued or held'


async def _fetch_some(manager: SharedRequestManager, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 4)):
        request = await manager.fetch_next_request()
        if request is None:
            return
        roll = rng.random()
        if roll < 0.15:
            await manager.reclaim_request(request)
            return
        request.state = RequestState.DONE if roll < 0.8 else RequestState.ERROR
        await manager.mark_request_as_handled(request)


async def _one_seed(seed: int) -> Counter[str]:
    rng = random.Random(seed)
    store = await KeyValueStore.open(name=f'prop-{seed}', storage_client=MemoryStorageClient())
    runs = {run_id: await _open(store, run_id) for run_id in ('run-a', 'run-b')}
    dead: dict[str, SharedRequestManager] = {}
    done_ops: Counter[str] = Counter()
    next_id = 0
    for step in range(STEPS):
        run_id = rng.choice(sorted(runs))
        manager = runs[run_id]
        op = rng.choices(
            ['add', 'set', 'delete', 'fetch', 'sync', 'take_over', 'join', 'die', 'leave', 'restart', 'wait'],
            weights=[5, 4, 1, 4, 8, 4, 1, 1, 1, 1, 1],
        )[0]
        if op == 'add':
            await manager.add_requests(rng.sample(KEYS, rng.randint(1, 6)))
        elif op == 'set':
            manager.shared[rng.choice(KEYS)] = rng.choice([ENQUEUED, PROCESSED, FAILED, SKIPPED])
        elif op == 'delete':
            key = rng.choice(KEYS)
            if key in manager.shared:
                del manager.shared[key]
        elif op == 'fetch':
            await _fetch_some(manager, rng)
        elif op == 'sync':
            await manager.sync()
        elif op == 'take_over':
            await manager.take_over()
        elif op == 'join' and len(runs) < 4:
            next_id += 1
            runs[f'run-j{next_id}'] = await _open(store, f'run-j{next_id}')
        elif op == 'die' and len(runs) > 1:
            dead[run_id] = runs.pop(run_id)  # silent from now on: the others see it dead after DEAD_AFTER
        elif op == 'leave' and len(runs) > 1:
            await runs.pop(run_id).shared.close()
        elif op == 'restart':
            runs[run_id] = await _open(store, run_id)  # the old incarnation's unsynced changes are lost
        elif op == 'wait':
            await asyncio.sleep(DEAD_AFTER)
        else:
            continue
        done_ops[op] += 1
        for other_id, other in runs.items():
            await _check(other, f'seed {seed}, step {step} ({op} by {run_id}), checking {other_id}')
    for manager in runs.values():
        await manager.sync()
        await _check(manager, f'seed {seed}, after a last sync')
    return done_ops


async def test_kept_counters_and_owners_equal_a_full_recount() -> None:
    ops: Counter[str] = Counter()
    for seed in range(SEEDS):
        ops += await _one_seed(seed)
    # Every kind of step happened (the test is not vacuous): joins, deaths, leaves and restarts included.
    assert all(ops[op] > 0 for op in ('add', 'set', 'fetch', 'sync', 'join', 'die', 'leave', 'restart', 'wait')), ops


async def test_a_change_of_the_live_runs_moves_owners_in_chunks_that_yield() -> None:
    store = await KeyValueStore.open(name='chunks', storage_client=MemoryStorageClient())
    a = await _open(store, 'run-a')
    await a.wait_for_runs(timeout_secs=0.1)
    a.shared.update({f'https://example.com/w{i}': ENQUEUED for i in range(5_000)})
    b = await _open(store, 'run-b')
    await b.sync()
    await a.sync()
    assert a.live_runs == ['run-a', 'run-b']
    ticks = 0

    async def count_ticks() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(count_ticks())
    await a.frontier.state.settle(chunk=500)
    ticker.cancel()
    assert ticks >= 5, 'the event loop ran other tasks while 5,000 owners moved'
    await _check(a, 'after the join')
    assert 2_000 < a.frontier.state.waiting_for()['run-b'] < 3_000


async def test_the_queue_gets_a_bounded_batch_of_taken_over_urls_refilled_as_it_drains() -> None:
    store = await KeyValueStore.open(name='batches', storage_client=MemoryStorageClient())
    earlier = SharedMap(store, run_id='earlier')
    await earlier.initialize()
    urls = [f'https://example.com/left-{i}' for i in range(QUEUE_BATCH + 500)]
    earlier.update(dict.fromkeys(urls, ENQUEUED))
    await earlier.close()  # an earlier attempt left these waiting
    manager = await _open(store, 'run-a')
    await manager.wait_for_runs(timeout_secs=0.1)
    await manager.take_over()
    assert await manager.inner.get_total_count() == QUEUE_BATCH, 'one batch in the queue, not every owned URL'
    fetched = []
    while (request := await manager.fetch_next_request()) is not None:
        fetched.append(request.url)
        request.state = RequestState.DONE
        await manager.mark_request_as_handled(request)
    assert sorted(fetched) == sorted(urls), 'refilled as it drained, without a sync: every URL fetched once'
    assert manager.stats.taken_over == len(urls)
    assert await manager.tick(), 'nothing waits any more: the crawl is done'


async def test_a_value_that_is_not_a_status_is_counted_as_neither_waiting_nor_done() -> None:
    store = await KeyValueStore.open(name='odd', storage_client=MemoryStorageClient())
    shared = SharedMap(store, run_id='run-a')
    await shared.initialize()
    shared.update({'https://example.com/odd': {'not': 'a status'}, 'https://example.com/done': PROCESSED})
    manager = SharedRequestManager(await RequestQueue.open(storage_client=MemoryStorageClient()), shared)
    assert (manager.frontier.state.done, manager.frontier.state.waiting) == (1, 0)

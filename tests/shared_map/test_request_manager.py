"""SharedRequestManager on the real file-system request queue and shared map (no HTTP: requests are not fetched)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from crawlee import Request, RequestState
from crawlee.storage_clients import MemoryStorageClient
from crawlee.storages import KeyValueStore, RequestQueue

from bench.scripted_store import ScriptedStore
from src.shared_map import SharedMap, SharedRequestManager, map_key


async def open_run(
    store: KeyValueStore, run_id: str, queue_name: str, *, dead_after_secs: float = 5
) -> tuple[SharedMap, SharedRequestManager]:
    shared = SharedMap(store, run_id=run_id, heartbeat_secs=0.01)
    await shared.initialize()
    queue = await RequestQueue.open(name=queue_name)
    manager = SharedRequestManager(
        queue, shared, sync_interval_secs=0.05, dead_after_secs=dead_after_secs, expected_runs=2
    )
    return shared, manager


async def drain(manager: SharedRequestManager) -> list[str]:
    fetched = []
    while (request := await manager.fetch_next_request()) is not None:
        fetched.append(request.url)
        request.state = RequestState.DONE
        await manager.mark_request_as_handled(request)
    return fetched


async def test_each_url_has_one_owner_and_is_handed_over(store: KeyValueStore) -> None:
    a_map, a = await open_run(store, 'run-a', 'queue-a')
    _b_map, b = await open_run(store, 'run-b', 'queue-b')
    seen = await asyncio.gather(a.wait_for_runs(timeout_secs=5), b.wait_for_runs(timeout_secs=5))
    assert list(seen) == [['run-a', 'run-b'], ['run-a', 'run-b']]
    urls = [f'https://example.com/page-{i}' for i in range(200)]
    await a.add_requests(urls[:150])
    await b.add_requests(urls[50:])  # 100 of these a knows only after a sync
    await a.sync()
    await b.sync()
    await a.add_requests(urls)  # all known now: nothing new
    await a.take_over()
    await b.take_over()
    fetched = await drain(a) + await drain(b)
    counts = Counter(fetched)
    assert set(counts) == set(urls), 'every URL was fetched'
    duplicates = sum(count - 1 for count in counts.values())
    assert duplicates == 0, 'both discovered 100 URLs before syncing, yet only their owner queued each'
    assert a.stats.handed_over > 30
    assert b.stats.taken_over > 10, 'b queued URLs only a had discovered and handed over to it'
    assert all(a.owner(url) == b.owner(url) for url in urls), 'both runs agree on every owner'
    owners = Counter(a.owner(url) for url in urls)
    assert min(owners.values()) > 60, f'ownership is balanced: {owners}'
    await b.sync()
    await a.sync()
    assert all(a_map[map_key(url)] == 'processed' for url in urls)


async def test_a_url_another_run_processed_is_skipped_before_the_fetch(store: KeyValueStore) -> None:
    a_map, a = await open_run(store, 'run-a', 'queue-a')
    b_map, _ = await open_run(store, 'run-b', 'queue-b')
    await a.add_requests(['https://example.com/x', 'https://example.com/y'])  # a is alone: it owns both
    b_map['https://example.com/x'] = 'processed'  # b fetched x meanwhile (e.g. it took x over from a dead run)
    await b_map.sync()
    await a_map.sync()
    assert await drain(a) == ['https://example.com/y']
    assert a.stats.skipped_before_fetch == 1
    assert await a.is_finished()


async def test_urls_of_a_run_that_died_are_taken_over(store: KeyValueStore) -> None:
    dead_map, dead = await open_run(store, 'dead', 'queue-dead')
    await dead.wait_for_runs(timeout_secs=0.1)
    await dead.add_requests([f'https://example.com/{i}' for i in range(50)])
    await dead_map.sync()  # then it dies: no more heartbeats, no final record
    _alive_map, alive = await open_run(store, 'alive', 'queue-alive', dead_after_secs=0.3)
    await alive.sync()
    assert 'dead' in alive.live_runs
    assert not await alive.take_over()
    assert alive.stats.taken_over == 0, 'the dead run still counts as alive'
    await asyncio.sleep(0.4)
    await alive.sync()
    assert alive.live_runs == ['alive']
    assert not await alive.take_over()
    assert alive.stats.taken_over == 50
    assert len(await drain(alive)) == 50
    assert await alive.tick(), 'nothing is waiting any more: the crawl is done'


def test_map_keys_are_fetchable_urls() -> None:
    assert map_key('HTTP://Example.COM/Dir/?b=2&utm_source=x&a=1#frag') == 'http://example.com/Dir/?a=1&b=2'
    assert map_key('https://example.com') == 'https://example.com/'
    assert map_key('https://example.com/?id=2&b=1&id=1') == 'https://example.com/?b=1&id=2&id=1', 'order kept'
    assert map_key('https://example.com/?id=1&id=2') != map_key('https://example.com/?id=2&id=1')
    assert map_key('https://example.com/%C5%A1/Page.html?q=%20x') == 'https://example.com/%C5%A1/Page.html?q=%20x'


async def test_urls_left_by_an_earlier_attempt_are_fetched_once_by_the_new_runs(store: KeyValueStore) -> None:
    # An earlier attempt (two runs) was stopped with 60 URLs still waiting; its queues are gone.
    old_a_map, old_a = await open_run(store, 'old-a', 'queue-old-a')
    _old_b_map, old_b = await open_run(store, 'old-b', 'queue-old-b')
    await asyncio.gather(old_a.wait_for_runs(timeout_secs=5), old_b.wait_for_runs(timeout_secs=5))
    urls = [f'https://example.com/left-{i}' for i in range(60)]
    await old_a.add_requests(urls)
    await old_a_map.close()
    await _old_b_map.close()
    # The same command again: the new parent syncs first, alone; its child joins and sees the parent live.
    _parent_map, parent = await open_run(store, 'new-parent', 'queue-parent')
    await parent.wait_for_runs(timeout_secs=0.1)
    _child_map, child = await open_run(store, 'new-child', 'queue-child')
    await child.wait_for_runs(timeout_secs=5)
    await parent.sync()
    assert parent.live_runs == child.live_runs == ['new-child', 'new-parent']
    fetched: list[str] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(fetched) < len(urls) and asyncio.get_running_loop().time() < deadline:
        for manager in (parent, child):
            await manager.tick()
            fetched += await drain(manager)
        await asyncio.sleep(0.05)
    assert sorted(fetched) == sorted(urls), 'every waiting URL was fetched, each once'
    assert parent.stats.taken_over > 10
    assert child.stats.taken_over > 10, 'the child did not wait forever for URLs the parent never queued'


async def test_a_queued_url_another_run_owns_now_is_left_to_it_and_comes_back(store: KeyValueStore) -> None:
    a_map, a = await open_run(store, 'run-a', 'queue-a')
    await a.wait_for_runs(timeout_secs=0.1)  # alone: it owns and queues every URL
    urls = [f'https://example.com/{i}' for i in range(40)]
    await a.add_requests(urls)
    await a_map.sync()
    b_map, b = await open_run(store, 'run-b', 'queue-b')
    await b.wait_for_runs(timeout_secs=5)
    await a.sync()
    assert a.live_runs == ['run-a', 'run-b']
    fetched_by_a = await drain(a)
    assert 0 < len(fetched_by_a) < len(urls), 'a fetched only the URLs it still owns'
    assert a.stats.left_to_owner == len(urls) - len(fetched_by_a)
    await b_map.close()  # b ends before fetching what it owns now: those URLs go back to a
    await a.sync()
    assert a.live_runs == ['run-a']
    await a.take_over()
    fetched_by_a += await drain(a)
    assert sorted(fetched_by_a) == sorted(urls), 'a fetched the URLs it had let go, under fresh queue keys'
    await a.sync()
    assert all(a_map[url] == 'processed' for url in urls)


async def test_one_run_hands_out_exactly_the_limit(store: KeyValueStore) -> None:
    shared = SharedMap(store, run_id='solo', heartbeat_secs=0.01)
    await shared.initialize()
    manager = SharedRequestManager(await RequestQueue.open(name='solo'), shared, max_processed=12)
    await manager.wait_for_runs(timeout_secs=0.1)
    await manager.add_requests([f'https://example.com/{i}' for i in range(30)])
    assert len(await drain(manager)) == 12
    assert await manager.is_empty(), 'nothing more to fetch: the limit holds between syncs'
    assert manager.started == 12


async def test_a_run_learns_within_a_second_that_the_crawl_is_over(store: KeyValueStore) -> None:
    shared = SharedMap(store, run_id='solo', heartbeat_secs=1)
    await shared.initialize()
    manager = SharedRequestManager(await RequestQueue.open(name='solo'), shared, sync_interval_secs=10)
    await manager.wait_for_runs(timeout_secs=0.1)
    done = asyncio.Event()
    manager.start(on_done=done.set)
    try:
        await manager.add_requests(['https://example.com/only'])
        assert len(await drain(manager)) == 1
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(done.wait(), timeout=3)  # not the 10 s sync interval
        assert asyncio.get_running_loop().time() - started < 1.5
    finally:
        await manager.close()


async def test_a_url_the_kept_queue_had_handled_but_the_map_still_waits_for_is_fetched(store: KeyValueStore) -> None:
    # An interrupted attempt fetched `late` but was stopped before it synced: the map still has it waiting, while
    # the run's queue (kept: CRAWLEE_PURGE_ON_START=0) has it handled.
    old_map = SharedMap(store, run_id='old', heartbeat_secs=0.01)
    await old_map.initialize()
    old_map.update({'https://example.com/late': 'enqueued', 'https://example.com/other': 'enqueued'})
    await old_map.close()
    queue = await RequestQueue.open(name='kept')
    await queue.add_request(Request.from_url('https://example.com/late', unique_key='https://example.com/late'))
    request = await queue.fetch_next_request()
    assert request is not None
    await queue.mark_request_as_handled(request)
    shared = SharedMap(store, run_id='new', heartbeat_secs=0.01)
    await shared.initialize()
    manager = SharedRequestManager(queue, shared)
    await manager.wait_for_runs(timeout_secs=0.1)
    await manager.take_over()
    assert sorted(await drain(manager)) == ['https://example.com/late', 'https://example.com/other']


async def open_crawl_run(
    store: KeyValueStore, run_id: str, *, info_store: KeyValueStore | None = None
) -> tuple[SharedMap, SharedMap, SharedRequestManager]:
    """A run as `open_crawl` builds it: a queue in memory, the statuses, and the request info beside them."""
    shared = SharedMap(store, run_id=run_id, heartbeat_secs=0.01)
    info = SharedMap(info_store or store, run_id=run_id, prefix='SMD')
    await shared.initialize()
    await info.initialize()
    # A new process's memory: a queue of its own (crawlee caches storages by name).
    queue = await RequestQueue.open(
        name=f'memory-{run_id}-{uuid.uuid4().hex[:6]}', storage_client=MemoryStorageClient()
    )
    manager = SharedRequestManager(
        queue, shared, sync_interval_secs=0.05, dead_after_secs=5, expected_runs=2, info=info, keep_depths=True
    )
    return shared, info, manager


def labelled(url: str, depth: int) -> Request:
    request = Request.from_url(url, label='DETAIL' if 'detail' in url else None, user_data={'source': 'test'})
    request.crawl_depth = depth
    return request


async def test_a_handed_over_url_keeps_its_label_user_data_and_depth(store: KeyValueStore) -> None:
    _a_map, _a_info, a = await open_crawl_run(store, 'run-a')
    _b_map, _b_info, b = await open_crawl_run(store, 'run-b')
    await asyncio.gather(a.wait_for_runs(timeout_secs=5), b.wait_for_runs(timeout_secs=5))
    urls = [f'https://example.com/{"detail" if i % 2 else "list"}-{i}' for i in range(60)]
    await a.add_requests([labelled(url, depth=3) for url in urls])
    assert a.stats.handed_over > 10
    await a.tick()
    await b.tick()
    fetched: list[Request] = []
    while (request := await b.fetch_next_request()) is not None:
        fetched.append(request)
        request.state = RequestState.DONE
        await b.mark_request_as_handled(request)
    assert len(fetched) == a.stats.handed_over, 'b fetched what a handed over to it'
    for request in fetched:
        assert request.label == ('DETAIL' if 'detail' in request.url else None), request.url
        assert request.user_data.get('source') == 'test'
        assert request.crawl_depth == 3


async def test_a_restarted_run_rebuilds_its_queue_from_the_map_with_labels(store: KeyValueStore) -> None:
    _a_map, _a_info, a = await open_crawl_run(store, 'run-a')
    await a.wait_for_runs(timeout_secs=0.1)
    urls = [f'https://example.com/detail-{i}' for i in range(20)]
    await a.add_requests([labelled(url, depth=1) for url in urls])
    first = await a.fetch_next_request()
    assert first is not None
    first.state = RequestState.DONE
    await a.mark_request_as_handled(first)
    await a.tick()  # synced; then the run is killed: its queue was in memory only
    _a2_map, _a2_info, restarted = await open_crawl_run(store, 'run-a')  # the same run id, an empty queue
    await restarted.wait_for_runs(timeout_secs=0.1)
    assert await restarted.is_empty()
    await restarted.tick()
    rebuilt = []
    while (request := await restarted.fetch_next_request()) is not None:
        rebuilt.append(request)
        request.state = RequestState.DONE
        await restarted.mark_request_as_handled(request)
    assert sorted(r.url for r in rebuilt) == sorted(set(urls) - {first.url}), 'no URL lost, none fetched twice'
    assert all(r.label == 'DETAIL' and r.crawl_depth == 1 for r in rebuilt)


async def test_a_refill_while_the_request_info_is_read_waits_for_it(store: KeyValueStore) -> None:
    """The crawler asks for more work (`is_empty` refills the queue) while `take_over()` is still reading the
    others' request info (a slow store): no request may be built before the info is read, or it loses its label."""
    _a_map, _a_info, a = await open_crawl_run(store, 'run-a')
    slow = ScriptedStore(store, read_delay=0.05)
    _b_map, _b_info, b = await open_crawl_run(store, 'run-b', info_store=slow.as_store())
    await asyncio.gather(a.wait_for_runs(timeout_secs=5), b.wait_for_runs(timeout_secs=5))
    urls = [f'https://example.com/detail-{i}' for i in range(60)]
    await a.add_requests([labelled(url, depth=2) for url in urls])
    await a.tick()  # the info, then the statuses
    await b.sync()
    taking_over = asyncio.create_task(b.take_over())
    await asyncio.sleep(0.02)  # take_over() is reading the info now
    assert not taking_over.done()
    await b.is_empty()  # the crawler asks meanwhile
    await taking_over
    fetched = []
    while (request := await b.fetch_next_request()) is not None:
        fetched.append(request)
        request.state = RequestState.DONE
        await b.mark_request_as_handled(request)
    assert len(fetched) == a.stats.handed_over > 10
    assert [r.url for r in fetched if r.label != 'DETAIL' or r.crawl_depth != 2] == []

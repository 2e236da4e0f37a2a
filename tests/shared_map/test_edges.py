"""The edges of a crawl's sync: the Actor's events publish the request info with the statuses, and shutdown is bounded
whatever the store does (a real PostgreSQL table locked by another client)."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest
from apify import Actor, Event
from crawlee import Request, RequestState
from crawlee.events import EventMigratingData, EventPersistStateData
from crawlee.storages import KeyValueStore

from bench.scripted_store import ScriptedStore
from src.shared_map import ENQUEUED, SharedMap, SharedRequestManager, SyncError, open_store
from tests.conftest import fresh_database


def labelled(url: str) -> Request:
    request = Request.from_url(url, label='DETAIL', user_data={'source': 'test'})
    request.crawl_depth = 2
    return request


async def published(connection: str, name: str) -> tuple[dict[str, object], dict[str, object]]:
    """What a run starting now reads from the store: the statuses and the request info."""
    store = await open_store(name, connection=connection)
    statuses = SharedMap(store, run_id='reader')
    info = SharedMap(store, run_id='reader', prefix='SMD')
    await statuses.initialize()
    await info.initialize()
    return dict(statuses), dict(info)


@pytest.mark.parametrize('event', [Event.PERSIST_STATE, Event.MIGRATING])
async def test_an_actor_event_publishes_the_request_info_with_the_statuses(connection: str, event: Event) -> None:
    data = EventPersistStateData(is_migrating=False) if event == Event.PERSIST_STATE else EventMigratingData()
    urls = [f'https://example.com/detail-{i}' for i in range(30)]
    async with (
        Actor(exit_process=False),
        SharedRequestManager.open_crawl(
            'events-crawl', connection=connection, run_id='run-a', sync_interval_secs=3600, with_depths=True
        ) as manager,
    ):
        await manager.add_requests([labelled(url) for url in urls])  # the loop is not started: no sync of its own
        Actor.event_manager.emit(event=event, event_data=data)
        await Actor.event_manager.wait_for_all_listeners_to_complete()
        statuses, info = await published(connection, 'events-crawl')
        assert {url: statuses.get(url) for url in urls} == dict.fromkeys(urls, ENQUEUED), 'the event synced'
        missing = [url for url in urls if info.get(url) is None]
        assert not missing, f'{len(missing)} URLs published as waiting without their label and depth'
        assert all(info[url] == {'u': {'source': 'test'}, 'd': 2, 'l': 'DETAIL'} for url in urls)


async def test_close_honours_a_caller_s_deadline_while_a_sync_hangs(store: KeyValueStore) -> None:
    hanging = ScriptedStore(store)
    shared = SharedMap(hanging.as_store(), run_id='stuck', store_timeout_secs=60)
    await shared.initialize()
    shared['kept'] = 'processed'
    hanging.hang_writes()
    shared.start_background_sync(0.01)  # its next sync hangs on the write, holding the sync lock
    await asyncio.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(shared.close(), 1)
    assert time.monotonic() - started < 3, 'the caller waited for the hanging store instead of its own deadline'
    assert not shared.background_sync_running
    assert shared.pending == 1, 'the change is kept'


async def test_close_is_bounded_by_the_store_timeout_and_says_what_was_lost(store: KeyValueStore) -> None:
    hanging = ScriptedStore(store)
    shared = SharedMap(hanging.as_store(), run_id='stuck', store_timeout_secs=0.5)
    await shared.initialize()
    shared['lost-1'] = 'processed'
    shared['lost-2'] = 'enqueued'
    hanging.hang_writes()  # every write hangs: the final sync, the lease and the run record
    started = time.monotonic()
    with pytest.raises(SyncError, match=r'did not take the final state at close .*; 2 changes of this run were not'):
        await shared.close()
    assert time.monotonic() - started < 1.5, 'one store timeout, not one per call'


async def test_a_crawl_closing_on_a_locked_table_exits_in_bounded_time_and_a_resume_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another PostgreSQL client holds a lock the store's writes wait for, as the crawl closes: the crawl's close
    (both maps) ends within 2 x store_timeout_secs with one line saying what was not saved; a run started later
    still finds every URL that was not published as done waiting in the store."""
    async with fresh_database() as connection:
        async with SharedRequestManager.open_crawl(
            'locked-crawl', connection=connection, run_id='run-a', store_timeout_secs=2, with_depths=True
        ) as manager:
            await manager.add_requests([labelled('https://example.com/a'), labelled('https://example.com/b')])
            await manager.sync()  # both published as waiting
            request = await manager.fetch_next_request()
            assert request is not None
            await manager.add_requests([labelled('https://example.com/found-on-a')])  # a link it found
            request.state = RequestState.DONE
            await manager.mark_request_as_handled(request)
            locker = await asyncpg.connect(connection.replace('postgresql+asyncpg://', 'postgresql://'))
            locking = locker.transaction()
            await locking.start()
            await locker.execute('LOCK TABLE key_value_store_records IN EXCLUSIVE MODE')
            started = time.monotonic()
            caplog.set_level(logging.ERROR)
        seconds = time.monotonic() - started
        await locking.rollback()
        await locker.close()
        assert seconds < 2 * 2 + 1.5, f'closing took {seconds:.1f} s'
        assert manager.unsaved_changes >= 2
        lines = [r.getMessage() for r in caplog.records if 'did not take the final state' in r.getMessage()]
        assert lines, 'the user is told what was not saved'
        assert all('\n' not in line for line in lines)
        statuses, _info = await published(connection, 'locked-crawl')
        assert statuses[request.url] == ENQUEUED, 'the page whose links were not saved waits to be fetched again'

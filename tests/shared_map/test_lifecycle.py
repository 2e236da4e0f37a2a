"""Opening, background sync, closing, and the Actor events (emitted through the SDK's real event manager)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import asyncpg
import pytest
from apify import Actor, Event
from crawlee import service_locator
from crawlee.events import EventMigratingData, EventPersistStateData
from crawlee.storage_clients import SqlStorageClient
from crawlee.storages import KeyValueStore

from bench.backends import POSTGRES_URL
from bench.scripted_store import ScriptedStore
from src.shared_map import InvalidOptionError, SharedMap, SharedMapError, StoreUnavailableError, SyncError
from tests.conftest import closed_port, fresh_database


async def run_record(store: KeyValueStore, run_id: str) -> dict[str, object]:
    raw = await store.get_value(f'SM.R.{run_id}')
    assert isinstance(raw, bytes)
    body: dict[str, object] = json.loads(raw)
    return body


async def test_context_manager_and_run_record(store: KeyValueStore) -> None:
    async with SharedMap(store, run_id='ctx') as shared:
        shared['a'] = 'processed'
        assert shared.pending == 1
    assert shared.pending == 0, 'close() synced'
    record = await run_record(store, 'ctx')
    assert record['finished'] is True
    assert record['entries'] == 1
    stats = record['stats']
    assert isinstance(stats, dict)
    assert stats['entries_written'] == 1
    assert stats['syncs'] == 1


async def test_background_sync_publishes_without_being_asked(store: KeyValueStore) -> None:
    writer = SharedMap(store, run_id='writer')
    reader = SharedMap(store, run_id='reader')
    await writer.initialize()
    await reader.initialize()
    writer.start_background_sync(0.05)
    reader.start_background_sync(0.05)
    with pytest.raises(SharedMapError, match='already running'):
        writer.start_background_sync(0.05)
    writer['u'] = 'processed'
    for _ in range(100):
        if reader.get('u') == 'processed':
            break
        await asyncio.sleep(0.02)
    assert reader.get('u') == 'processed'
    writer['v'] = 'processed'
    await writer.close()  # stops the task, final sync
    await reader.stop_background_sync()
    assert reader.get('v') == 'processed'
    assert writer.stats.syncs >= 2
    await reader.close()


async def test_a_store_that_stops_answering_fails_the_sync_instead_of_stalling_it(store: KeyValueStore) -> None:
    hanging = ScriptedStore(store)
    shared = SharedMap(hanging.as_store(), run_id='stalled', store_timeout_secs=0.3)
    await shared.initialize()
    shared['kept'] = 'processed'
    hanging.hang_writes()
    started = time.monotonic()
    with pytest.raises(SyncError, match=r'did not answer a write \(SM\.L\..*\) within 0\.3 s'):
        await shared.sync()
    assert time.monotonic() - started < 5
    assert shared.pending == 1, 'the change is kept for the next sync'
    hanging.before_set = None
    await shared.sync()
    fresh = SharedMap(store, run_id='reader')
    await fresh.initialize()
    assert fresh['kept'] == 'processed'
    with pytest.raises(InvalidOptionError, match='store_timeout_secs must be positive'):
        SharedMap(store, store_timeout_secs=0)


@pytest.mark.skipif(not POSTGRES_URL, reason='needs the test PostgreSQL server (make test)')
async def test_a_table_locked_by_another_client_fails_the_sync_and_the_next_one_recovers() -> None:
    """A real hanging call: another PostgreSQL client holds a lock the store's writes wait for, with no error and
    no reply. The sync gives up after `store_timeout_secs`; its cancelled write leaves no broken connection behind."""
    async with fresh_database() as connection:
        storage_client = SqlStorageClient(connection_string=connection)
        store = await KeyValueStore.open(name='locked', storage_client=storage_client)
        shared = SharedMap(store, run_id='writer', store_timeout_secs=1)
        await shared.initialize()
        shared['first'] = 'processed'
        await shared.sync()
        locker = await asyncpg.connect(connection.replace('postgresql+asyncpg://', 'postgresql://'))
        try:
            locking = locker.transaction()
            await locking.start()
            await locker.execute('LOCK TABLE key_value_store_records IN EXCLUSIVE MODE')
            shared['second'] = 'processed'
            started = time.monotonic()
            with pytest.raises(SyncError, match='did not answer'):
                await shared.sync()
            assert time.monotonic() - started < 10
            assert shared.pending == 1
            await locking.rollback()
        finally:
            await locker.close()
        for _ in range(3):  # the same pool, after a cancelled statement
            await shared.sync()
        shared['third'] = 'processed'
        await shared.sync()
        await shared.close()
        fresh = SharedMap(store, run_id='reader')
        await fresh.initialize()
        assert {key: fresh.get(key) for key in ('first', 'second', 'third')} == dict.fromkeys(
            ('first', 'second', 'third'), 'processed'
        )
        await storage_client.close()


async def test_background_sync_survives_store_errors(
    store: KeyValueStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shared = SharedMap(store, run_id='flaky')
    await shared.initialize()
    real_set_value = store.set_value
    failures = 3

    async def flaky_set_value(*args: object, **kwargs: object) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError('No space left on device')
        await real_set_value(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, 'set_value', flaky_set_value)
    shared['kept'] = 'processed'
    with pytest.raises(SyncError, match='No space left'):
        await shared.sync()
    assert shared.pending == 1, 'the change is kept for the next sync'
    with caplog.at_level(logging.WARNING):
        shared.start_background_sync(0.02)
        for _ in range(200):
            if shared.pending == 0:
                break
            await asyncio.sleep(0.02)
    assert shared.pending == 0
    assert 'will retry' in caplog.text
    await shared.close()
    other = SharedMap(store, run_id='other')
    await other.initialize()
    assert other['kept'] == 'processed'


async def test_invalid_options_are_clear_errors(store: KeyValueStore) -> None:
    with pytest.raises(InvalidOptionError, match='run_id'):
        SharedMap(store, run_id='has.dots')
    with pytest.raises(InvalidOptionError, match='max_record_bytes'):
        SharedMap(store, max_record_bytes=10 * 1024 * 1024)
    with pytest.raises(SharedMapError, match='initialize'):
        await SharedMap(store).sync()


async def test_run_id_defaults_to_the_platform_run_id(store: KeyValueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('ACTOR_RUN_ID', 'HG7ML7M8z78YcAPEB')
    assert SharedMap(store).run_id == 'HG7ML7M8z78YcAPEB'
    monkeypatch.delenv('ACTOR_RUN_ID')
    monkeypatch.delenv('APIFY_ACTOR_RUN_ID', raising=False)
    assert SharedMap(store).run_id != SharedMap(store).run_id


async def test_open_outside_an_actor(tmp_path: Path) -> None:
    shared = await SharedMap.open('plain-store', run_id='plain', sync_interval_secs=0.05)
    assert shared.background_sync_running
    shared['a'] = 'processed'
    await shared.close()
    assert not shared.background_sync_running
    # A fresh process-wide view of the same folder: the entry was written to the named store on disk.
    service_locator.storage_instance_manager.clear_cache()
    again = await SharedMap.open('plain-store', run_id='reader')
    assert dict(again) == {'a': 'processed'}
    assert (tmp_path / 'default-storage' / 'key_value_stores' / 'plain-store').is_dir()
    await again.close()


async def test_open_inside_an_actor_follows_its_events(tmp_path: Path) -> None:
    async with Actor(exit_process=False):
        shared = await SharedMap.open('actor-store', run_id='in-actor', sync_interval_secs=3600)
        shared['a'] = 'processed'
        Actor.event_manager.emit(event=Event.PERSIST_STATE, event_data=EventPersistStateData(is_migrating=False))
        await Actor.event_manager.wait_for_all_listeners_to_complete()
        assert shared.pending == 0, 'PERSIST_STATE synced'

        shared['b'] = 'processed'
        Actor.event_manager.emit(event=Event.MIGRATING, event_data=EventMigratingData())
        await Actor.event_manager.wait_for_all_listeners_to_complete()
        assert shared.pending == 0, 'MIGRATING did a final sync'
        assert not shared.background_sync_running, 'and stopped the background sync'
        store = shared.store
        record = await run_record(store, 'in-actor')
        assert record['finished'] is False
        await shared.close()
        assert (await run_record(store, 'in-actor'))['finished'] is True


async def test_live_runs_from_heartbeats_and_final_records(store: KeyValueStore) -> None:
    a = SharedMap(store, run_id='a', heartbeat_secs=0.05)
    b = SharedMap(store, run_id='b', heartbeat_secs=0.05)
    c = SharedMap(store, run_id='c', heartbeat_secs=0.05)
    for shared in (a, b, c):
        await shared.initialize()
    for shared in (a, b, c):
        await shared.sync()  # nothing to publish, but a heartbeat record
    await a.sync()
    assert a.live_runs(dead_after_secs=5) == ['a', 'b', 'c']
    await b.close()  # a final record
    for _ in range(6):  # c goes silent (as if killed); a keeps syncing
        await asyncio.sleep(0.25)
        await a.sync()
    assert a.finished_runs == ['b']
    assert a.live_runs(dead_after_secs=30) == ['a', 'c']
    assert a.live_runs(dead_after_secs=1) == ['a'], 'c missed its heartbeats'
    await c.sync()
    await a.sync()
    assert a.live_runs(dead_after_secs=1) == ['a', 'c'], 'c is back'
    newcomer = SharedMap(store, run_id='d')
    await newcomer.initialize()
    assert newcomer.live_runs(dead_after_secs=5) == ['a', 'c', 'd']
    assert newcomer.finished_runs == ['b']


async def test_a_sync_cancelled_mid_write_keeps_the_changes(
    store: KeyValueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = SharedMap(store, run_id='cancelled')
    await shared.initialize()
    real_set_value = store.set_value
    slow = True
    writing = asyncio.Event()

    async def slow_set_value(*args: object, **kwargs: object) -> None:
        if slow:
            writing.set()
            await asyncio.sleep(3600)  # a write that hangs until cancelled
        await real_set_value(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, 'set_value', slow_set_value)
    shared['kept'] = 'processed'
    task = asyncio.create_task(shared.sync())
    await asyncio.wait_for(writing.wait(), timeout=10)  # the sync is inside its write
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert shared.pending == 1, 'the change is still pending'
    slow = False
    shared.start_background_sync(0.01)
    await shared.close()  # stopping the background task while it syncs must not drop anything either
    other = SharedMap(store, run_id='other')
    await other.initialize()
    assert other['kept'] == 'processed'


@pytest.mark.parametrize('name', ['default', 'DEFAULT', '__default__'])
async def test_open_refuses_the_default_store_which_crawlee_purges(name: str) -> None:
    with pytest.raises(InvalidOptionError, match='cannot be'):
        await SharedMap.open(name, run_id='a', in_actor=False)


async def test_open_says_in_one_line_which_database_it_cannot_reach_without_the_password() -> None:
    port = closed_port()
    connection = f'postgresql+asyncpg://crawler:pw-s3cret-42@127.0.0.1:{port}/crawl'
    with pytest.raises(StoreUnavailableError) as info:
        await SharedMap.open('unreachable', connection=connection, run_id='a', in_actor=False)
    message = str(info.value)
    assert message.startswith('Cannot open the shared store at ')
    assert '\n' not in message
    assert f'host 127.0.0.1, port {port}' in message
    assert 'pw-s3cret-42' not in message

"""What the map writes to and reads from the store: incremental syncs, record keys and sizes, bad records."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from crawlee.storages import KeyValueStore

from src.shared_map import SharedMap, UnsupportedFormatError

PLATFORM_KEY = re.compile(r"^[a-zA-Z0-9!\-_.'()]{1,256}$")


async def keys_of(store: KeyValueStore) -> list[str]:
    return [meta.key async for meta in store.iterate_keys()]


async def test_sync_writes_only_changes_and_reads_only_new_records(store: KeyValueStore) -> None:
    a = SharedMap(store, run_id='a')
    b = SharedMap(store, run_id='b')
    await a.initialize()
    await b.initialize()
    for i in range(1000):
        a[f'https://example.com/{i}'] = 'enqueued'
    first = await a.sync()
    assert first.entries_written == 1000
    assert first.records_read == 0  # its own record is not read back

    idle = await a.sync()
    assert (idle.entries_written, idle.bytes_written, idle.records_read) == (0, 0, 0)

    got = await b.sync()
    assert (got.records_read, got.entries_read) == (1, 1000)
    assert (await b.sync()).records_read == 0  # nothing new: nothing read

    for i in range(10):
        a[f'https://example.com/{i}'] = 'processed'
    small = await a.sync()
    assert small.entries_written == 10
    assert small.bytes_written < first.bytes_written / 20
    got = await b.sync()
    assert (got.records_read, got.entries_read, got.entries_changed) == (1, 10, 10)


async def test_record_keys_are_platform_valid_and_records_bounded(store: KeyValueStore) -> None:
    shared = SharedMap(
        store, run_id='Run_with-odd-ID', record_size=500, max_record_bytes=64 * 1024, compact_after_records=3
    )
    await shared.initialize()
    odd = 'https://example.com/ünïcode/?q="quoted"&x=\\back\\slash#frag\u2028' + '\U0001f600' * 50
    for round_ in range(4):
        for i in range(2000):
            shared[f'{odd}{round_}-{i}'] = {'status': 'processed', 'title': 'é' * 20} if i % 7 == 0 else 'enqueued'
        await shared.sync()
    keys = await keys_of(store)
    assert any(key.startswith('SM.M.') for key in keys), 'a compaction ran'
    for key in keys:
        assert PLATFORM_KEY.match(key), key
        assert len(key) < 120, key
    for key in keys:
        raw = await store.get_value(key)
        assert isinstance(raw, bytes)
        assert len(raw) <= 64 * 1024, (key, len(raw))
        body = json.loads(raw)
        for group in body.get('groups', []):
            assert len(group[2]) <= 500
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == dict(shared)


async def test_corrupt_and_foreign_records_are_skipped_and_kept(
    store: KeyValueStore, caplog: pytest.LogCaptureFixture
) -> None:
    a = SharedMap(store, run_id='a')
    await a.initialize()
    a['good'] = 'processed'
    await a.sync()
    bad = {
        'SM.L.x.0000000001': b'{"format": "apify-shared-map", "version": 1, "kind": "log", "gro',  # truncated
        'SM.L.y.0000000001': b'{"hello": "world"}',  # foreign
        'SM.L.z.0000000001': b'\xff\xfe not json',
        'SM.L.w.0000000001': b'{"format":"apify-shared-map","version":1,"kind":"log","groups":[[1,"x",[2]]]}',
        'SM.M.0000000009.q.abc': b'{"format":"apify-shared-map","version":1,"kind":"manifest"}',
    }
    for key, raw in bad.items():
        await store.set_value(key, raw, content_type='application/octet-stream')
    await store.set_value('unrelated-record', {'mine': True})

    b = SharedMap(store, run_id='b')
    with caplog.at_level(logging.WARNING):
        await b.initialize()
        result = await b.sync()
    assert dict(b) == {'good': 'processed'}
    for key in bad:
        assert key in caplog.text, f'{key} is named in the log'
        assert await store.record_exists(key), f'{key} is never deleted'
    assert result.records_skipped == 0  # logged once, then skipped quietly
    assert b.stats.records_skipped == len(bad)


async def test_newer_format_version_is_an_error_naming_the_record(store: KeyValueStore) -> None:
    a = SharedMap(store, run_id='a')
    await a.initialize()
    body = {'format': 'apify-shared-map', 'version': 99, 'kind': 'log', 'groups': []}
    await store.set_value('SM.L.future.0000000001', json.dumps(body).encode(), content_type='application/octet-stream')
    with pytest.raises(UnsupportedFormatError, match=r'SM\.L\.future\.0000000001.*version 99'):
        await a.sync()
    with pytest.raises(UnsupportedFormatError, match='future'):
        await SharedMap(store, run_id='b').initialize()


async def test_initial_records_in_every_form(store: KeyValueStore) -> None:
    await store.set_value('INITIAL-KEYS', ['a', 'b'])
    await store.set_value('INITIAL-PAIRS', [['c', 'processed'], ['a', 'processed']])
    await store.set_value('MY-INITIAL-OBJECT', {'d': {'depth': 1}})
    await store.set_value('INITIAL-BROKEN', 'not a list')
    shared = SharedMap(store, run_id='a')
    await shared.initialize()
    assert dict(shared) == {'a': 'processed', 'b': 'enqueued', 'c': 'processed', 'd': {'depth': 1}}
    await shared.sync()
    assert await store.get_value('INITIAL-KEYS') == ['a', 'b'], 'seed records are left as they are'


async def test_adopts_a_store_written_by_the_js_package(store: KeyValueStore) -> None:
    # apify-shared-map (JS) saved its state as STATE-<i> slices of [key, value] pairs.
    await store.set_value('STATE-0', [['https://a.com/', 'processed'], ['https://b.com/', 'enqueued']])
    await store.set_value('STATE-1', [['https://c.com/', {'depth': 2}]])
    shared = SharedMap(store, run_id='a')
    await shared.initialize()
    assert dict(shared) == {'https://a.com/': 'processed', 'https://b.com/': 'enqueued', 'https://c.com/': {'depth': 2}}
    shared['https://b.com/'] = 'processed'
    await shared.sync()
    other = SharedMap(store, run_id='b')
    await other.initialize()
    assert other['https://b.com/'] == 'processed', 'later syncs win over the adopted state'


async def test_restarted_run_continues_its_records(store: KeyValueStore) -> None:
    first = SharedMap(store, run_id='same-run')
    await first.initialize()
    first['a'] = 'processed'
    await first.sync()
    # A migrated run restarts with the same run id and an empty memory.
    again = SharedMap(store, run_id='same-run')
    await again.initialize()
    assert again['a'] == 'processed'
    again['b'] = 'processed'
    await again.sync()
    log_keys = [key for key in await keys_of(store) if key.startswith('SM.L.same-run.')]
    assert len(log_keys) == 2, 'the restarted run did not overwrite its earlier record'
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == {'a': 'processed', 'b': 'processed'}


async def test_map_and_stamps_share_one_key_string(store: KeyValueStore) -> None:
    # Keys arriving as 'enqueued' then as 'processed' (a crawl) must not be stored twice (~110 bytes per URL).
    writer = SharedMap(store, run_id='writer')
    reader = SharedMap(store, run_id='reader')
    await writer.initialize()
    await reader.initialize()
    urls = [f'https://example.com/page-{i:06d}' for i in range(2000)]
    for url in urls:
        writer[url] = 'enqueued'
    await writer.sync()
    await reader.sync()
    for url in urls[:1500]:
        writer[''.join(url)] = 'processed'  # an equal string, another object
    reader[urls[1600]] = 'failed'
    await writer.sync()
    await reader.sync()
    for shared in (writer, reader):
        data_ids = {id(key) for key in shared}
        stamp_ids = {id(key) for key in shared.merge_state()['stamps']}
        assert len(stamp_ids) >= 1500
        assert stamp_ids <= data_ids, f'{len(stamp_ids - data_ids)} keys stored twice in {shared.run_id}'


async def test_the_largest_allowed_entry_fits_one_record(store: KeyValueStore) -> None:
    limit = 64 * 1024
    shared = SharedMap(store, run_id='big', max_record_bytes=limit)
    await shared.initialize()
    chars = limit // 32
    shared['\U0001f600' * chars] = '\U0001f601' * chars  # 12 bytes per character once escaped
    shared['"\\' * (chars // 2)] = {'nested': ['\x00' * (limit // 4 // 8)]}
    with pytest.raises(ValueError, match='characters'):
        shared['k' * (chars + 1)] = 'processed'
    result = await shared.sync()
    assert result.records_written == 2
    fresh = SharedMap(store, run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == dict(shared)


class CallCountingStore:
    """Forwards every call to a real store and counts the calls by kind, as the platform would bill them."""

    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def get_value(self, key: str, default_value: Any = None) -> Any:
        self.calls['reads'] += 1
        return await self.inner.get_value(key, default_value)

    async def record_exists(self, key: str) -> bool:
        self.calls['reads'] += 1
        return await self.inner.record_exists(key)

    async def set_value(self, key: str, value: Any, content_type: str | None = None) -> None:
        self.calls['writes'] += 1
        await self.inner.set_value(key, value, content_type=content_type)

    async def delete_value(self, key: str) -> None:
        self.calls['deletes'] += 1
        await self.inner.delete_value(key)

    async def iterate_keys(
        self, exclusive_start_key: str | None = None, limit: int | None = None
    ) -> AsyncIterator[Any]:
        self.calls['lists'] += 1
        async for meta in self.inner.iterate_keys(exclusive_start_key=exclusive_start_key, limit=limit):
            yield meta


async def test_store_operations_are_counted_by_kind_exactly(store: KeyValueStore) -> None:
    # The run summary's storeReads/Writes/Deletes/Lists price a crawl: they must be the calls the store really got.
    proxies = [CallCountingStore(store) for _ in range(2)]
    maps = [
        SharedMap(cast('KeyValueStore', proxy), run_id=f'run-{i}', compact_after_records=3, run_record_interval_secs=0)
        for i, proxy in enumerate(proxies)
    ]
    for shared in maps:
        await shared.initialize()
    for round_ in range(6):
        for i, shared in enumerate(maps):
            shared[f'https://example.com/{round_}-{i}'] = 'processed'
            await shared.sync()
    for shared in maps:
        await shared.close()
    for shared, proxy in zip(maps, proxies, strict=True):
        counted = {
            'reads': shared.stats.store_reads,
            'writes': shared.stats.store_writes,
            'deletes': shared.stats.store_deletes,
            'lists': shared.stats.store_lists,
        }
        assert counted == dict(proxy.calls), shared.run_id
        assert shared.stats.store_operations == sum(proxy.calls.values())
    assert sum(proxy.calls['deletes'] for proxy in proxies) > 0, 'a compaction deleted records'
    assert all(proxy.calls['reads'] and proxy.calls['lists'] and proxy.calls['writes'] for proxy in proxies)

"""The shared map on the platform path: the Apify SDK's `ApifyStorageClient` against a local STAND-IN of the API.

The Apify platform cannot be reached here. `tests/platform/stand_in.py` is a MOCK of the platform API's key-value-store
endpoints, served on 127.0.0.1, that enforces what the local backends do not: at most 1000 keys per listing page,
the record-key alphabet, 9 MiB records, and 429 rate limiting. Everything between the map and that HTTP server is
the real SDK (apify, apify-client, impit) with the configuration it reads on the platform.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from apify import Actor, Configuration
from apify.storage_clients import ApifyStorageClient
from apify.storage_clients._apify import _api_client_creation
from apify_client import ApifyClientAsync
from apify_client.errors import ApifyApiError, InvalidRequestError
from crawlee import service_locator
from crawlee.storages import KeyValueStore

from src.shared_map import SharedMap, SyncError

from .stand_in import KEY_PATTERN, MAX_LIST_LIMIT, MAX_RECORD_BYTES, PlatformStandIn

MiB = 1024 * 1024
STORE = 'crawl-state'
# Run ids as the platform makes them (ACTOR_RUN_ID).
RUN_A, RUN_B, RUN_C = 'HG7ML7M8z78YcAPEB', 'JgwXN9BdwxGcu9MMF', 'zRLp8SDOZz2NyLg7K'
NO_COMPACTION = 10**6


@pytest.fixture
def api() -> Iterator[PlatformStandIn]:
    with PlatformStandIn(seed=7) as stand_in:
        yield stand_in


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's API client with its retry backoff cut from 500 ms to 5 ms: same retry logic, same 8 retries."""

    def quick_client(*args: Any, **kwargs: Any) -> ApifyClientAsync:
        return ApifyClientAsync(*args, **{**kwargs, 'min_delay_between_retries': timedelta(milliseconds=5)})

    monkeypatch.setattr(_api_client_creation, 'ApifyClientAsync', quick_client)


def configuration_for(api: PlatformStandIn) -> Configuration:
    """What the SDK reads from APIFY_TOKEN, APIFY_API_BASE_URL and APIFY_API_PUBLIC_BASE_URL on the platform."""
    return Configuration(token=api.token, api_base_url=api.url, api_public_base_url=api.url)


async def open_store(api: PlatformStandIn, name: str = STORE) -> KeyValueStore:
    """Open the named store as a new run would, with its own API client (crawlee caches the stores it opened)."""
    service_locator.storage_instance_manager.clear_cache()
    return await KeyValueStore.open(
        name=name, storage_client=ApifyStorageClient(), configuration=configuration_for(api)
    )


def assert_nothing_refused(api: PlatformStandIn) -> None:
    assert api.requests['other'] == 0, 'the SDK called an endpoint the stand-in does not implement'
    assert api.rejections == [], api.rejections[:3]
    assert max(api.list_pages, default=0) <= MAX_LIST_LIMIT
    assert api.largest_record <= MAX_RECORD_BYTES


def map_records(api: PlatformStandIn, name: str = STORE) -> dict[str, Any]:
    return {key: record for key, record in api.store_named(name).records.items() if key.startswith('SM.')}


async def test_two_runs_converge_through_the_platform_api(api: PlatformStandIn) -> None:
    a = SharedMap(await open_store(api), run_id=RUN_A, compact_after_records=4)
    b = SharedMap(await open_store(api), run_id=RUN_B, compact_after_records=4)
    await a.initialize()
    await b.initialize()
    expected: dict[str, Any] = {}

    def put(shared: SharedMap, key: str, value: Any) -> None:
        shared[key] = value
        expected[key] = value

    for r in range(10):
        for i in range(40):
            put(a, f'https://example.com/{r}/{i}?q=ü&emoji=\U0001f600', 'enqueued')
        if r:
            for i in range(10):  # b crawls what a enqueued in the previous round: 'processed' beats 'enqueued'
                put(b, f'https://example.com/{r - 1}/{i}?q=ü&emoji=\U0001f600', 'processed')
            put(b, f'https://b.example.com/{r}', {'status': 'failed', 'error': 'HTTP 503 «retry»', 'depth': r})
        if r >= 2:
            key = f'https://example.com/{r - 2}/39?q=ü&emoji=\U0001f600'
            del a[key]
            del expected[key]
        await a.sync()
        await b.sync()
    await a.close()
    await b.close()

    assert dict(a) == dict(b) == expected
    assert a.stats.compactions + b.stats.compactions >= 2
    assert api.count('record_delete', 204) > 0, 'compactions deleted folded records through the API'
    fresh = SharedMap(await open_store(api), run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == expected
    records = map_records(api)
    for run in (RUN_A, RUN_B):
        assert json.loads(records[f'SM.R.{run}'].decoded())['finished'] is True
    assert any(key.startswith('SM.M.') for key in records)
    for key, record in records.items():
        assert KEY_PATTERN.match(key), key
        assert record.content_type == 'application/octet-stream', key
    assert_nothing_refused(api)


async def test_more_than_1000_records_are_listed_page_by_page(api: PlatformStandIn) -> None:
    writer = SharedMap(await open_store(api), run_id=RUN_A, record_size=1, compact_after_records=NO_COMPACTION)
    await writer.initialize()
    for i in range(2100):
        writer[f'https://example.com/{i}'] = 'processed' if i % 3 else 'enqueued'
    result = await writer.sync()
    assert result.records_written == 2100
    assert len(map_records(api)) > 2 * MAX_LIST_LIMIT

    pages_before = len(api.list_pages)
    reader = SharedMap(await open_store(api), run_id=RUN_B, compact_after_records=NO_COMPACTION)
    await reader.initialize()
    pages = api.list_pages[pages_before:]
    assert len(pages) >= 3, f'one listing of {len(map_records(api))} keys took pages {pages}'
    assert pages[0] == MAX_LIST_LIMIT
    assert reader.stats.records_read == 2100
    assert dict(reader) == dict(writer)
    assert len(reader) == 2100
    assert_nothing_refused(api)


async def test_a_listing_paged_across_a_compaction_loses_nothing(api: PlatformStandIn) -> None:
    # The protocol's claim for a paginated store: a reader whose listing straddles a compaction that deletes the
    # logs it listed on its first page still finds the new manifest (manifests sort after logs) and loses nothing.
    reader = SharedMap(await open_store(api), run_id=RUN_C, compact_after_records=NO_COMPACTION)
    await reader.initialize()  # before anything is written: it has merged nothing
    writer = SharedMap(await open_store(api), run_id=RUN_A, record_size=1, compact_after_records=NO_COMPACTION)
    await writer.initialize()
    for i in range(1100):
        writer[f'https://example.com/{i}'] = 'processed'
    await writer.sync()
    compactor = SharedMap(await open_store(api), run_id=RUN_B)
    await compactor.initialize()
    first = await compactor.sync()
    assert first.compacted, 'the first snapshot covers the 1100 logs; deleting them waits for the next one'
    assert first.records_deleted == 0
    for i in range(1100, 1170):  # logs the snapshot does not hold: the next compaction is due (and deletes the 1100)
        writer[f'https://example.com/{i}'] = 'processed'
    await writer.sync()

    hold = api.hold_next('list_keys', lambda query: bool(query.get('exclusiveStartKey')))
    reading = asyncio.create_task(reader.sync())
    assert await asyncio.to_thread(hold.reached.wait, 10), 'the reader asked for a second page'
    second = await compactor.sync()  # meanwhile: a new snapshot, and the logs the reader listed are deleted
    hold.release()
    result = await reading

    assert second.compacted
    assert second.records_deleted >= 1100
    assert api.count('record_get', 404) >= MAX_LIST_LIMIT, 'the reader did list logs that were deleted under it'
    assert result.records_missing == 0, 'the re-listing found the new snapshot'
    assert reader.stats.snapshots_loaded >= 1
    assert dict(reader) == dict(writer)
    assert len(reader) == 1170
    assert_nothing_refused(api)


async def test_the_longest_keys_the_map_writes_are_platform_keys(api: PlatformStandIn) -> None:
    prefix, run_id = 'P' * 20, 'r' * 64  # the longest prefix and run id the map accepts
    shared = SharedMap(await open_store(api), run_id=run_id, prefix=prefix, record_size=5, compact_after_records=2)
    await shared.initialize()
    for r in range(3):
        for i in range(12):
            shared[f'https://example.com/{r}/{i}'] = 'processed'
        await shared.sync()
    await shared.close()
    keys = list(api.store_named(STORE).records)
    assert {key.split('.')[1] for key in keys} >= {'L', 'M', 'P', 'R', 'LEASE'}, keys
    assert max(len(key) for key in keys) <= 256
    assert_nothing_refused(api)


async def test_big_syncs_split_into_records_under_the_9_mib_limit(api: PlatformStandIn) -> None:
    shared = SharedMap(
        await open_store(api), run_id=RUN_A, record_size=10**6, max_record_bytes=9 * MiB, compact_after_records=2
    )
    await shared.initialize()
    for i in range(100_000):
        shared[f'https://example.com/catalogue/category-{i % 97}/product-{i:07d}?ref=listing&page={i % 13}'] = (
            'processed'
        )
    for i in range(25_000):
        shared[f'https://example.com/ünïcödé/straße/{i:06d}'] = 'enqueued'
    for i in range(3_000):
        shared[f'https://example.com/detail/{i}'] = {'status': 'failed', 'error': 'x' * 200, 'retries': i % 5}
    first = await shared.sync()
    assert first.records_written >= 2, 'more than 9 MiB of changes: several log records'
    shared['https://example.com/one-more'] = 'processed'
    second = await shared.sync()
    assert first.compacted or second.compacted, 'the snapshot of the whole state is split into parts too'

    assert api.largest_record > 5 * MiB, 'records got near the limit (the default max is 5 MiB)'
    assert api.count('record_put', 413) == 0
    assert_nothing_refused(api)
    for key in map_records(api):
        assert KEY_PATTERN.match(key), key
    fresh = SharedMap(await open_store(api), run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == dict(shared)


@pytest.mark.parametrize('case', ['astral-keys', 'non-ascii-values'])
async def test_records_stay_under_max_record_bytes_whatever_the_characters(api: PlatformStandIn, case: str) -> None:
    limit = 64 * 1024
    shared = SharedMap(await open_store(api), run_id=RUN_A, max_record_bytes=limit)
    await shared.initialize()
    if case == 'astral-keys':
        for i in range(400):
            shared[f'{i}' + '\U0001f600' * 40] = 'processed'
    else:
        for i in range(6):
            shared[f'k{i}'] = 'é' * (limit // 32 - 1) + str(i)  # the longest value allowed
    await shared.sync()
    assert 0 < api.largest_record <= limit
    fresh = SharedMap(await open_store(api), run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == dict(shared)


async def test_syncs_survive_rate_limiting(api: PlatformStandIn, quick_retries: None) -> None:
    api.rate_limit_fraction = 0.2
    runs = [SharedMap(await open_store(api), run_id=run, compact_after_records=3) for run in (RUN_A, RUN_B, RUN_C)]
    for shared in runs:
        await shared.initialize()
    expected: dict[str, Any] = {}
    for r in range(12):
        for n, shared in enumerate(runs):
            for i in range(25):
                key = f'https://example.com/{n}/{r}/{i}'
                shared[key] = 'enqueued'
                expected[key] = 'enqueued'
            if r:
                other = (n + 1) % len(runs)
                for i in range(5):  # crawl what the next run enqueued last round
                    key = f'https://example.com/{other}/{r - 1}/{i}'
                    shared[key] = 'processed'
                    expected[key] = 'processed'
        await asyncio.gather(*(shared.sync() for shared in runs))  # concurrent requests, as parallel runs make
    for shared in runs:
        await shared.close()

    assert api.count(status=429) >= 20, f'the stand-in rate-limited only {api.count(status=429)} requests'
    assert {kind for kind, status in api.responses if status == 429} >= {'record_put', 'list_keys', 'record_get'}
    assert sum(shared.stats.sync_errors for shared in runs) == 0, 'the client retried every 429'
    assert sum(shared.stats.compactions for shared in runs) >= 2
    for shared in runs:
        assert dict(shared) == expected
    api.rate_limit_fraction = 0.0
    fresh = SharedMap(await open_store(api), run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == expected
    assert_nothing_refused(api)


async def test_the_sdk_retries_429_with_its_own_backoff(api: PlatformStandIn) -> None:
    # No `quick_retries`: the client exactly as the SDK configures it (8 retries, 500 ms doubling backoff).
    shared = SharedMap(await open_store(api), run_id=RUN_A)
    await shared.initialize()
    shared['https://example.com/'] = 'processed'
    api.rate_limit_next(2)
    result = await shared.sync()
    assert result.records_written == 1
    assert api.count(status=429) == 2
    assert api.count('record_put', 429) == 2, 'the log record write was refused twice, then retried'
    fresh = SharedMap(await open_store(api), run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == {'https://example.com/': 'processed'}


@pytest.mark.parametrize(
    'key',
    ['https://example.com/page', 'with space', 'a' * 257, 'ключ', 'a/b', 'a:b', 'emoji-\U0001f600', 'tab\tkey'],
)
async def test_a_key_outside_the_platform_alphabet_is_refused(api: PlatformStandIn, key: str) -> None:
    store = await open_store(api)
    with pytest.raises(InvalidRequestError) as refused:
        await store.set_value(key, b'x', content_type='application/octet-stream')
    assert refused.value.status_code == 400
    assert refused.value.type == 'invalid-record-key'
    assert [(r.key, r.status) for r in api.rejections] == [(key, 400)]
    assert api.store_named(STORE).records == {}


async def test_the_whole_platform_alphabet_round_trips(api: PlatformStandIn) -> None:
    store = await open_store(api)
    key = "aZ09!-_.'()" + 'x' * 245  # every special character, 256 characters: the longest key
    await store.set_value(key, b'body', content_type='application/octet-stream')
    assert await store.get_value(key) == b'body'
    assert await store.record_exists(key)
    assert [meta.key async for meta in store.iterate_keys()] == [key]
    await store.delete_value(key)
    assert not await store.record_exists(key)
    assert_nothing_refused(api)


async def test_a_record_over_9_mib_is_refused(api: PlatformStandIn) -> None:
    store = await open_store(api)
    body = os.urandom(MAX_RECORD_BYTES)  # incompressible: the upload is as large as the record
    await store.set_value('at-the-limit', body, content_type='application/octet-stream')
    assert await store.get_value('at-the-limit') == body
    with pytest.raises(ApifyApiError) as refused:
        await store.set_value('over-the-limit', body + b'x', content_type='application/octet-stream')
    assert refused.value.status_code == 413
    assert refused.value.type == 'record-too-large'
    assert not await store.record_exists('over-the-limit')


async def test_a_write_the_platform_refuses_keeps_the_changes(api: PlatformStandIn) -> None:
    shared = SharedMap(await open_store(api), run_id=RUN_A, max_record_bytes=1 * MiB)
    await shared.initialize()
    for i in range(5000):
        shared[f'https://example.com/{i:05d}/{"p" * 60}'] = 'processed'
    api.max_record_bytes = 100_000  # a platform stricter than the map's max_record_bytes
    with pytest.raises(
        SyncError, match=r'ApifyApiError: The record is \d+ bytes; the maximum record size is 100000 bytes'
    ):
        await shared.sync()
    assert shared.pending == 5000, 'the refused changes are still pending'
    assert api.count('record_put', 413) == 1
    api.max_record_bytes = MAX_RECORD_BYTES
    result = await shared.sync()
    assert result.entries_written == 5000
    fresh = SharedMap(await open_store(api), run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == dict(shared)
    assert len(fresh) == 5000


def platform_environment(api: PlatformStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a run on the platform gets (pricing info included, so the SDK does not fetch the run)."""
    pricing = {
        'pricingModel': 'FREE',
        'apifyMarginPercentage': 0,
        'createdAt': '2024-01-01T00:00:00.000Z',
        'startedAt': '2024-01-01T00:00:00.000Z',
    }
    for name, value in {
        'APIFY_IS_AT_HOME': '1',
        'APIFY_TOKEN': api.token,
        'APIFY_API_BASE_URL': api.url,
        'APIFY_API_PUBLIC_BASE_URL': api.url,
        'ACTOR_RUN_ID': RUN_A,
        'APIFY_ACTOR_PRICING_INFO': json.dumps(pricing),
        'APIFY_CHARGED_ACTOR_EVENT_COUNTS': json.dumps({'none': 0}),
    }.items():
        monkeypatch.setenv(name, value)


async def test_shared_map_open_inside_an_actor_on_the_platform(
    api: PlatformStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform_environment(api, monkeypatch)
    async with Actor(exit_process=False):
        shared = await SharedMap.open(STORE)
        assert shared.run_id == RUN_A, 'the run id comes from ACTOR_RUN_ID'
        shared['https://example.com/'] = 'processed'
        await shared.sync()
        await shared.close()
    assert any(key.startswith(f'SM.L.{RUN_A}.') for key in map_records(api)), 'written to the platform store'
    fresh = SharedMap(await open_store(api), run_id='fresh')
    await fresh.initialize()
    assert dict(fresh) == {'https://example.com/': 'processed'}
    assert fresh.finished_runs == [RUN_A]
    assert_nothing_refused(api)


def client_environment(api: PlatformStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('APIFY_TOKEN', api.token)
    monkeypatch.setenv('APIFY_API_BASE_URL', api.url)
    monkeypatch.setenv('APIFY_API_PUBLIC_BASE_URL', api.url)


async def test_shared_map_open_with_the_apify_client_outside_an_actor(
    api: PlatformStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_environment(api, monkeypatch)
    # `ApifyStorageClient` needs an `apify.Configuration`; `SharedMap.open` takes none, so set the global one.
    service_locator.set_configuration(Configuration())
    shared = await SharedMap.open(STORE, storage_client=ApifyStorageClient(), run_id=RUN_B)
    shared['https://example.com/'] = 'processed'
    await shared.close()
    assert any(key.startswith(f'SM.L.{RUN_B}.') for key in map_records(api))


async def test_shared_map_open_with_the_apify_client_and_only_environment_variables(
    api: PlatformStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_environment(api, monkeypatch)
    shared = await SharedMap.open(
        STORE, storage_client=ApifyStorageClient(), configuration=Configuration(), run_id=RUN_B
    )
    shared['https://example.com/'] = 'processed'
    await shared.close()
    assert any(key.startswith(f'SM.L.{RUN_B}.') for key in map_records(api))

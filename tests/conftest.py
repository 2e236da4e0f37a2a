from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from crawlee import service_locator
from crawlee.storages import KeyValueStore

from bench.backends import NO_POSTGRES, POSTGRES_URL, connection_for
from bench.backends import fresh_database as fresh_postgres_database
from src.shared_map import close_storage_client, storage_client_for

BACKENDS = ['fs', 'sqlite', 'postgres']
# Redis runs the property and crash tests only (`@pytest.mark.parametrize('connection', WITH_REDIS, indirect=True)`):
# the time `make test` may take.
WITH_REDIS = [*BACKENDS, 'redis']
REDIS_URL = os.environ.get('TEST_REDIS_URL')


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database on the test PostgreSQL server (`make test` starts one), dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    async with fresh_postgres_database(POSTGRES_URL) as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_redis() -> AsyncIterator[str]:
    """The test Redis server (`make test` starts one, with RedisJSON), its database emptied before and after."""
    if not REDIS_URL:
        pytest.skip('no Redis server with RedisJSON: TEST_REDIS_URL is not set (make test starts one when it can)')
    from redis.asyncio import Redis

    admin = Redis.from_url(REDIS_URL)
    try:
        await admin.flushdb()
        yield REDIS_URL
        await admin.flushdb()
    finally:
        await admin.aclose()


@pytest.fixture(autouse=True)
def _isolated_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own default storage folder and a fresh crawlee storage cache."""
    monkeypatch.setenv('CRAWLEE_STORAGE_DIR', str(tmp_path / 'default-storage'))
    monkeypatch.setenv('APIFY_LOCAL_STORAGE_DIR', str(tmp_path / 'default-storage'))
    _reset_service_locator()
    yield
    _reset_service_locator()


def _reset_service_locator() -> None:
    # crawlee keeps its configuration, storage client and storages process-wide; its own test suite resets the
    # same private fields between tests, since there is no public reset.
    service_locator._configuration = None
    service_locator._event_manager = None
    service_locator._storage_client = None
    service_locator.storage_instance_manager.clear_cache()


@pytest.fixture(params=BACKENDS)
async def connection(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """One connection string per storage backend: every test that uses it runs on each backend."""
    if request.param == 'postgres':
        async with fresh_database() as url:
            yield url
    elif request.param == 'redis':
        async with fresh_redis() as url:
            yield url
    else:
        yield connection_for(str(request.param), tmp_path)


@pytest.fixture
async def store(connection: str) -> AsyncIterator[KeyValueStore]:
    storage_client, configuration = storage_client_for(connection)
    kvs = await KeyValueStore.open(name='shared-test', storage_client=storage_client, configuration=configuration)
    yield kvs
    await close_storage_client(storage_client)

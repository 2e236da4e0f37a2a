from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from crawlee import service_locator
from crawlee.storage_clients import SqlStorageClient
from crawlee.storages import KeyValueStore

from src.shared_map import storage_client_for

BACKENDS = ['fs', 'sqlite']


def connection_for(backend: str, tmp_path: Path) -> str:
    """A connection string for a fresh store of `backend` under `tmp_path`."""
    if backend == 'fs':
        return f'file://{tmp_path}/storage'
    if backend == 'sqlite':
        return f'sqlite+aiosqlite:///{tmp_path}/state.db'
    if backend == 'postgres':
        return os.environ['TEST_POSTGRES_URL']
    raise ValueError(backend)


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
def connection(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One connection string per storage backend: every test that uses it runs on each backend."""
    return connection_for(str(request.param), tmp_path)


@pytest.fixture
async def store(connection: str) -> AsyncIterator[KeyValueStore]:
    storage_client, configuration = storage_client_for(connection)
    kvs = await KeyValueStore.open(name='shared-test', storage_client=storage_client, configuration=configuration)
    yield kvs
    if isinstance(storage_client, SqlStorageClient):
        await storage_client.close()

"""Fresh stores on each storage backend (file system, SQLite, PostgreSQL), for the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

POSTGRES_URL = os.environ.get('TEST_POSTGRES_URL')
"""The PostgreSQL server `scripts/with-services.sh` starts (`make test` does), as a SQLAlchemy URL; None without."""
NO_POSTGRES = 'no PostgreSQL server: TEST_POSTGRES_URL is not set (make test starts one when it can)'


def connection_for(backend: str, folder: Path) -> str:
    """A connection string for a fresh store of `backend` under `folder` (PostgreSQL: see `fresh_database`)."""
    if backend == 'fs':
        return f'file://{folder}/storage'
    if backend == 'sqlite':
        return f'sqlite+aiosqlite:///{folder}/state.db'
    raise ValueError(backend)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A new, empty database on the PostgreSQL server at `server_url`, dropped afterwards; its URL."""
    admin_dsn = server_url.replace('postgresql+asyncpg://', 'postgresql://')
    name = f'test_{uuid.uuid4().hex[:16]}'
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE {name}')
    finally:
        await admin.close()
    yield server_url.rsplit('/', 1)[0] + f'/{name}'
    admin = await asyncpg.connect(admin_dsn)  # a new connection: the caller may have restarted the server
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')
    finally:
        await admin.close()

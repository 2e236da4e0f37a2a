from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import InvalidOptionError

if TYPE_CHECKING:
    from crawlee.configuration import Configuration
    from crawlee.storage_clients import StorageClient
    from crawlee.storages import KeyValueStore

CONNECTION_HELP = (
    'use file:///absolute/path, sqlite+aiosqlite:///file.db or postgresql+asyncpg://user:password@host/database'
)


def storage_client_for(connection: str | None) -> tuple[StorageClient | None, Configuration | None]:
    """The crawlee storage client (and configuration) that a connection string names; (None, None) for the default.

    Args:
        connection: None for the default storage client (the local `./storage` folder, or the Apify platform inside
            an actor run there); `file:///abs/path` for the file-system client on another folder (e.g. a shared
            mount); a SQLAlchemy URL (`sqlite+aiosqlite:///state.db`, `postgresql+asyncpg://user@host/db`) for
            crawlee's SQL client, so runs on several machines can share one database.

    Raises:
        InvalidOptionError: for a connection string of an unknown kind.
    """
    if connection is None:
        return None, None
    if connection.startswith('file://'):
        from crawlee.configuration import Configuration
        from crawlee.storage_clients import FileSystemStorageClient

        path = Path(connection.removeprefix('file://'))
        if not path.is_absolute():
            raise InvalidOptionError(f'Storage connection {connection!r} needs an absolute path; {CONNECTION_HELP}.')
        return FileSystemStorageClient(), Configuration(storage_dir=str(path))
    if connection.startswith(('sqlite+aiosqlite://', 'postgresql+asyncpg://')):
        from crawlee.storage_clients import SqlStorageClient

        return SqlStorageClient(connection_string=connection), None
    raise InvalidOptionError(f'Unknown storage connection {connection!r}: {CONNECTION_HELP}.')


async def open_store(name: str, *, connection: str | None = None) -> KeyValueStore:
    """Open the named key-value store on the backend that `connection` names (see `storage_client_for`).

    Args:
        name: Store name: `a-z`, `0-9` and inner hyphens (crawlee's rule for named storages).
        connection: Where the store lives; None for the default storage client.
    """
    from crawlee.storages import KeyValueStore

    storage_client, configuration = storage_client_for(connection)
    return await KeyValueStore.open(name=name, storage_client=storage_client, configuration=configuration)

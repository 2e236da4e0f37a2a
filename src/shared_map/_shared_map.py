"""The shared map: a `dict` of URL -> status that parallel runs keep in memory and sync through a key-value store.

The sync protocol is explained, with diagrams and the safety argument, in `docs/sync-protocol.md`. In short:

* each run appends its local changes since its last sync as a new, immutable *log* record under its own run id
  (`SM.L.<run>.<seq>`); no record is ever read-modified-written by two runs, so no update can be lost;
* readers merge every record they have not read yet; the merge is a join (`enqueued` < any other value, then a
  hybrid-logical-clock stamp, then the canonical JSON of the value), so all replicas converge whatever the order;
* one run at a time (under a lease) folds the logs into a *snapshot* (parts + a manifest that names the log
  records it covers) and deletes only records already contained in a complete snapshot it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, Literal

from ._backends import check_store_name, storage_client_for
from ._errors import InvalidOptionError, SharedMapError, SyncError
from ._records import (
    CONTENT_TYPE,
    ENQUEUED,
    NAME_PATTERN,
    CorruptRecordError,
    Covers,
    Group,
    Keys,
    Lease,
    Manifest,
    SeqSet,
    check_groups,
    covers_subset,
    covers_union,
    dumps,
    envelope,
    loads,
    manifest_time_ms,
    run_of,
    writer_id,
)
from ._stats import RunStats, SyncResult

if TYPE_CHECKING:
    from types import TracebackType

    from crawlee.configuration import Configuration
    from crawlee.storage_clients import StorageClient
    from crawlee.storages import KeyValueStore

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
_READ_RETRIES = 3
# initialize() re-reads this often (with growing pauses, ~7 s in all) before it gives up on a store that keeps
# changing under it; a map must never start from a partial read.
_INIT_ATTEMPTS = 9
# A record listed but missing this many times, over at least this long, is a ghost: a delete interrupted by a crash
# (crawlee's file-system client removes the value file, then the metadata file). See docs/sync-protocol.md.
_GHOST_AFTER_MISSES = 3
_GHOST_AFTER_SECS = 1.0
# Integers beyond this do not survive JSON in JavaScript (and above 4,300 digits not even in Python).
_MAX_INT = 2**1024


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


_MISSING: Any = _Sentinel('MISSING')
_DELETED: Any = _Sentinel('DELETED')
"""Marks a deleted key (a tombstone) in pending changes and snapshots."""
_PENDING: Any = _Sentinel('PENDING')
"""In `_reverts`: the key's winning value is the pending local change, known once it is written."""

_SCALAR_TYPES = (str, int, bool, type(None))


def _is_enqueued(value: Any) -> bool:
    return value.__class__ is str and value == ENQUEUED


def _canon(value: Any) -> str:
    """Canonical JSON of a value; breaks ties between two values with the same stamp. Tombstones lose ties."""
    return '' if value is _DELETED else json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(',', ':'))


def _wins(value: Any, stamp: int, other: Any, other_stamp: int) -> bool:
    """Whether (value, stamp) beats (other, other_stamp); both are non-`enqueued`."""
    if stamp != other_stamp:
        return stamp > other_stamp
    return _canon(value) > _canon(other)


def _check_value(value: Any, depth: int = 0) -> None:
    """Refuse, at set time, a value that would not round-trip through JSON unchanged."""
    cls = value.__class__
    if cls in _SCALAR_TYPES:
        if cls is int and not -_MAX_INT < value < _MAX_INT:
            raise ValueError(
                f'Shared-map integers must be below 2**1024 in size; got one of {value.bit_length()} bits.'
            )
        return
    if cls is float:
        if not math.isfinite(value):
            raise TypeError(
                f'Shared-map values must be JSON-serialisable; {value!r} is not (NaN and infinity are not).'
            )
        return
    if depth > 64:
        raise TypeError('Shared-map values may nest at most 64 levels deep.')
    if cls is list:
        for item in value:
            _check_value(item, depth + 1)
        return
    if cls is dict:
        for k, item in value.items():
            if k.__class__ is not str:
                raise TypeError(f'Shared-map values must be JSON-serialisable; dict key {k!r} is not a string.')
            _check_value(item, depth + 1)
        return
    raise TypeError(
        f'Shared-map values must be JSON-serialisable (str, int, float, bool, None, list, dict); '
        f'got {cls.__name__}: {value!r:.80}'
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _encoded_len(text: str) -> int:
    """The exact length of `text` in our JSON (ASCII-only: escapes count), cheaply for the usual plain URL."""
    if text.isascii() and text.isprintable() and '"' not in text and '\\' not in text:
        return len(text) + 2
    return len(json.dumps(text, ensure_ascii=True))


@dataclass
class _Chunk:
    """The entries of one record being built."""

    keys: list[str] = field(default_factory=list)
    groups: dict[tuple[int, type, Any], Group] = field(default_factory=dict)
    singles: list[Group] = field(default_factory=list)
    deleted: dict[int, Group] = field(default_factory=dict)
    size: int = 0

    def cost(self, key: str, value: Any, stamp: int) -> int:
        """How many bytes adding this entry adds to the record (exact for strings, generous for the rest)."""
        key_size = _encoded_len(key) + 1
        if value is _DELETED:
            return key_size + (0 if stamp in self.deleted else 32)
        if value.__class__ in _SCALAR_TYPES:
            if (stamp, value.__class__, value) in self.groups:
                return key_size
            return key_size + 32 + (_encoded_len(value) if value.__class__ is str else 24)
        return key_size + 32 + len(json.dumps(value, ensure_ascii=True))

    def add(self, key: str, value: Any, stamp: int, cost: int) -> None:
        self.keys.append(key)
        self.size += cost
        if value is _DELETED:
            self.deleted.setdefault(stamp, [stamp, []])[1].append(key)
        elif value.__class__ in _SCALAR_TYPES:
            group = self.groups.get((stamp, value.__class__, value))
            if group is None:
                group = self.groups[(stamp, value.__class__, value)] = [stamp, value, []]
            group[2].append(key)
        else:
            self.singles.append([stamp, value, [key]])

    def restamp(self, stamp: int) -> None:
        """Give every entry of the record the same stamp (log records: the stamp of the write)."""
        for group in (*self.groups.values(), *self.singles, *self.deleted.values()):
            group[0] = stamp

    def body_fields(self) -> dict[str, Any]:
        return {'groups': [*self.groups.values(), *self.singles], 'deleted': list(self.deleted.values())}


class _CountedStore:
    """The store, counting every call: on the platform each one is a billed operation."""

    def __init__(self, store: KeyValueStore, stats: RunStats) -> None:
        self.inner = store
        self._stats = stats

    async def get_value(self, key: str) -> Any:
        self._stats.store_reads += 1
        return await self.inner.get_value(key)

    async def set_value(self, key: str, value: Any, content_type: str | None = None) -> None:
        self._stats.store_writes += 1
        await self.inner.set_value(key, value, content_type=content_type)

    async def delete_value(self, key: str) -> None:
        self._stats.store_deletes += 1
        await self.inner.delete_value(key)

    async def record_exists(self, key: str) -> bool:
        self._stats.store_reads += 1
        return await self.inner.record_exists(key)

    async def iterate_keys(self) -> AsyncIterator[Any]:
        self._stats.store_lists += 1
        async for meta in self.inner.iterate_keys():
            yield meta


@dataclass
class _Listing:
    """What one pass over the store's keys found under the map's prefix."""

    logs: dict[str, tuple[str, int]] = field(default_factory=dict)
    log_bytes: int = 0
    manifests: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    initial: list[str] = field(default_factory=list)
    legacy_state: list[str] = field(default_factory=list)


SyncMode = Literal['full', 'write-only']


class SharedMap(dict[str, Any]):
    """A `dict` of string keys (URLs) to JSON values (`'enqueued'`, `'processed'`, ...) shared by parallel runs.

    Every run keeps the whole map in memory, so reads are as fast as a `dict`'s. `sync()` publishes this run's
    changes since its last sync and merges what other runs published since this run last looked; it never waits
    for another run, never loses an update, and all runs converge to the same map. Call it from a background task
    (`start_background_sync()`), as the JS `apify-shared-map` package recommended.

    Merge rule (from `apify-shared-map`): `'enqueued'` coming from another run never replaces a value already
    present; any other value replaces an older one (the latest sync wins, ties broken deterministically). A local
    set always takes effect locally; setting `'enqueued'` over another value is overridden again at the next sync
    by the value that wins across runs. Treat values as immutable: assign a new value instead of mutating one.

    Usage:
        ```python
        store = await KeyValueStore.open(name='crawl-state')
        async with SharedMap(store, run_id='run-a') as shared:  # initialize() ... close()
            shared['https://example.com/'] = 'enqueued'
            result = await shared.sync()
            print(shared.get('https://example.com/'), result.entries_written)
        ```

        Inside an actor, `shared = await SharedMap.open(name='crawl-state')` also syncs on `PERSIST_STATE` and
        does a final sync on `MIGRATING` and `ABORTING`.
    """

    def __init__(
        self,
        store: KeyValueStore,
        *,
        run_id: str | None = None,
        prefix: str = 'SM',
        record_size: int = 100_000,
        max_record_bytes: int = 5 * MiB,
        compact_after_records: int = 64,
        compact_after_bytes: int = 32 * MiB,
        lease_ttl_secs: float = 60.0,
        run_record_interval_secs: float = 30.0,
        orphan_age_secs: float = 3600.0,
        heartbeat_secs: float | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """Create a map on `store`; call `initialize()` (or use `async with`) before using it.

        Args:
            store: The (named) key-value store the runs share. Any crawlee storage client works.
            run_id: This run's id, unique among the runs that share the store. Defaults to the Apify run id
                (`ACTOR_RUN_ID`), else a random id. A restarted (migrated) run with the same id continues its records.
            prefix: Prefix of the map's record keys, so several maps can share one store.
            record_size: Most entries in one record (`storeRecordSize` of the JS package).
            max_record_bytes: Most bytes in one record; the platform's limit is 9 MiB.
            compact_after_records: Fold the log records into a snapshot once there are this many.
            compact_after_bytes: ... or once they hold this many bytes.
            lease_ttl_secs: How long the compaction lease lasts if its holder dies.
            run_record_interval_secs: How often the run's statistics record is rewritten (also at close).
            orphan_age_secs: Snapshot parts with no manifest are deleted once this old (a compaction that died).
            heartbeat_secs: If set, a sync with nothing to publish still writes an (empty) record this often, so
                other runs can tell this run is alive (`live_runs()`).
            clock: The wall clock, in milliseconds since the epoch, that stamps and lease expiries come from
                (default: `time.time()`); tests inject a skewed one.
        """
        super().__init__()
        run_id = (
            run_id or os.environ.get('ACTOR_RUN_ID') or os.environ.get('APIFY_ACTOR_RUN_ID') or uuid.uuid4().hex[:12]
        )
        if not NAME_PATTERN.match(run_id):
            raise InvalidOptionError(f'run_id {run_id!r} must be 1-64 characters from A-Z, a-z, 0-9, "_" and "-".')
        if not NAME_PATTERN.match(prefix) or len(prefix) > 20:
            raise InvalidOptionError(f'prefix {prefix!r} must be 1-20 characters from A-Z, a-z, 0-9, "_" and "-".')
        if record_size < 1:
            raise InvalidOptionError(f'record_size must be at least 1, got {record_size}.')
        if not 64 * 1024 <= max_record_bytes <= 9 * MiB:
            raise InvalidOptionError(f'max_record_bytes must be between 64 KiB and 9 MiB, got {max_record_bytes}.')
        if compact_after_records < 2:
            raise InvalidOptionError(f'compact_after_records must be at least 2, got {compact_after_records}.')
        if lease_ttl_secs <= 0 or orphan_age_secs < 4 * lease_ttl_secs:
            raise InvalidOptionError('lease_ttl_secs must be positive and orphan_age_secs at least 4 x lease_ttl_secs.')

        self.stats = RunStats()
        self._store = _CountedStore(store, self.stats)
        self._now = clock or _now_ms
        self.run_id = run_id
        # Drawn at every start: a restarted run (same run id) writes logs under a new identity, so it can never
        # reuse a log key whatever it managed to read, and readers never mistake a new log for one they merged.
        self.incarnation = f'{self._now():x}{secrets.token_hex(3)}'
        self._writer = writer_id(run_id, self.incarnation)
        self._keys = Keys(prefix)
        self._record_size = record_size
        self._max_record_bytes = max_record_bytes
        self._max_entry_chars = max_record_bytes // 32  # a key and a value, escaped (up to 12x), fit one record
        self._compact_after_records = compact_after_records
        self._compact_after_bytes = compact_after_bytes
        self._lease_ttl_ms = int(lease_ttl_secs * 1000)
        self._run_record_interval = run_record_interval_secs
        self._orphan_age_ms = int(orphan_age_secs * 1000)
        if heartbeat_secs is not None and heartbeat_secs <= 0:
            raise InvalidOptionError(f'heartbeat_secs must be positive, got {heartbeat_secs}.')
        self._heartbeat_secs = heartbeat_secs
        self._last_log_written = float('-inf')
        # Other runs as seen through their log records: run -> (last seen, on this run's monotonic clock; finished).
        self._runs_seen: dict[str, tuple[float, bool]] = {}

        # Merge state. Values live in the dict itself; these hold what the merge needs besides them.
        self._stamps: dict[str, int] = {}  # stamp of each synced non-`enqueued` value (absent means 0)
        self._tombstones: dict[str, int] = {}  # deleted key -> stamp of the deletion
        self._dirty: dict[str, Any] = {}  # local changes since the last sync (value or _DELETED)
        self._reverts: dict[str, tuple[Any, int] | Any] = {}  # local `enqueued` over a winning value -> that value
        self._clock = 0  # hybrid logical clock: stamps of new records exceed every stamp seen

        # What this run has merged: log records (run -> seqs) and manifests (parsed, by key).
        self._had: Covers = {}
        self._manifests: dict[str, Manifest] = {}
        self._bad: set[str] = set()
        self._next_seq = 1
        # Listed records found missing: key -> (first miss, on the monotonic clock; misses). Ghosts are ignored.
        self._misses: dict[str, tuple[float, int]] = {}
        self._ghosts: set[str] = set()

        self._started_at = self._now()
        self._last_run_record = 0.0
        self._initialized = False
        self._closed = False
        self._sync_lock = asyncio.Lock()
        self._sync_task: asyncio.Task[None] | None = None
        self._actor_listeners: list[tuple[Any, Any]] = []
        _install_race_filter()

    # ------------------------------------------------------------------ factory and lifecycle

    @classmethod
    async def open(
        cls,
        name: str,
        *,
        connection: str | None = None,
        storage_client: StorageClient | None = None,
        configuration: Configuration | None = None,
        in_actor: bool | None = None,
        sync_interval_secs: float | None = None,
        **options: Any,
    ) -> SharedMap:
        """Open the named store, create the map on it and initialize it.

        Args:
            name: Name of the shared key-value store (named stores outlive runs). Not the default store, which crawlee
                purges when a run starts (`InvalidOptionError`).
            connection: Where the store lives, as for `open_store()`: `file:///path`, a SQLAlchemy URL, or None.
            storage_client: A crawlee storage client for the store (e.g. `SqlStorageClient(...)`); default: the
                global one (inside an actor, the Apify one).
            configuration: The configuration for `storage_client` (e.g. an `apify.Configuration` with a token for
                `ApifyStorageClient` outside an actor).
            in_actor: Whether to open the store through `Actor` and follow its events (PERSIST_STATE: sync;
                MIGRATING and ABORTING: final sync and release). Default: whether an `Actor` context is active.
            sync_interval_secs: If set, start a background task that syncs this often.
            options: Keyword options of `SharedMap()`.
        """
        from crawlee.storages import KeyValueStore

        name = check_store_name(name)
        if in_actor is None:
            in_actor = _actor_is_active()
        if connection is not None:
            if storage_client is not None:
                raise InvalidOptionError('Pass either connection or storage_client, not both.')
            storage_client, configuration = storage_client_for(connection)
        if in_actor and storage_client is None:
            from apify import Actor

            store = await Actor.open_key_value_store(name=name)
        else:
            store = await KeyValueStore.open(name=name, storage_client=storage_client, configuration=configuration)
        shared = cls(store, **options)
        await shared.initialize()
        if in_actor:
            shared._follow_actor_events()
        if sync_interval_secs is not None:
            shared.start_background_sync(sync_interval_secs)
        return shared

    async def initialize(self) -> None:
        """Load the shared state: `INITIAL` records, a store written by the JS package, snapshots and logs.

        Records whose key contains `INITIAL` may hold a list of keys (each becomes `enqueued`), a list of
        `[key, value]` pairs, or an object. `STATE-<i>` records of the JS `apify-shared-map` are adopted as they are.
        These are read once here and never modified or deleted.
        """
        if self._initialized:
            return
        listing = await self._list()
        for key in listing.initial:
            await self._load_seed_record(key, initial=True)
        for key in listing.legacy_state:
            await self._load_seed_record(key, initial=False)
        result = SyncResult()
        for attempt in range(_INIT_ATTEMPTS):
            await self._read_phase(listing, result)
            if self._caught_up(result):
                break
            # A record vanished under the read (a compaction superseded it): re-list until the state is whole, so the
            # map never starts partial (it would re-crawl what others did, and its clock could lag its own stamps).
            result.records_missing = 0
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
            listing = await self._list()
        else:
            self.stats.add(result, is_sync=False)
            raise SyncError(
                f'Shared map {self._keys.prefix!r}: the store kept changing under the initial read '
                f'({_INIT_ATTEMPTS} attempts); nothing was changed. Try again.'
            )
        self.stats.add(result, is_sync=False)
        self._initialized = True
        logger.info(
            'Shared map %r (run %s): loaded %d entries from %d records and %d snapshots.',
            self._keys.prefix,
            self.run_id,
            len(self),
            result.records_read,
            result.snapshots_loaded,
        )

    async def close(self) -> None:
        """Stop the background sync, do a final sync, release the lease, and mark this run finished in the store."""
        if self._closed:
            return
        await self.stop_background_sync(final_sync=False)
        self._unfollow_actor_events()
        try:
            await self._sync(final=True)
        finally:
            self._closed = True
            await self._release_lease()
            await self._write_run_record(finished=True)
        logger.info('Shared map %r (run %s) closed: %s', self._keys.prefix, self.run_id, self.stats.to_dict())

    async def __aenter__(self) -> SharedMap:
        await self.initialize()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ background sync

    def start_background_sync(self, interval_secs: float = 10.0) -> asyncio.Task[None]:
        """Sync every `interval_secs` in a background task until `stop_background_sync()` or `close()`.

        A failing sync is logged and retried at the next tick; local state is never lost.
        """
        if interval_secs <= 0:
            raise InvalidOptionError(f'interval_secs must be positive, got {interval_secs}.')
        if self._sync_task is not None and not self._sync_task.done():
            raise SharedMapError('A background sync is already running; stop it first.')
        self._sync_task = asyncio.create_task(self._sync_forever(interval_secs), name=f'shared-map-sync-{self.run_id}')
        return self._sync_task

    async def stop_background_sync(self, *, final_sync: bool = True) -> None:
        """Stop the background task (waiting for a sync in progress) and, by default, sync once more."""
        task, self._sync_task = self._sync_task, None
        if task is not None:
            async with self._sync_lock:  # never cancel a sync half-way: let the one in progress finish
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if final_sync and not self._closed:
            await self.sync()

    async def _sync_forever(self, interval_secs: float) -> None:
        while True:
            await asyncio.sleep(interval_secs)
            try:
                await self.sync()
            except (SharedMapError, OSError, RuntimeError, ValueError) as exc:
                logger.warning('Shared map sync failed, will retry in %.1f s: %s', interval_secs, exc)
            except Exception:
                logger.exception('Shared map sync failed unexpectedly, will retry in %.1f s', interval_secs)

    # ------------------------------------------------------------------ Actor events

    def _follow_actor_events(self) -> None:
        from apify import Actor, Event

        for event, listener in (
            (Event.PERSIST_STATE, self._on_persist_state),
            (Event.MIGRATING, self._on_migrating),
            (Event.ABORTING, self._on_migrating),
        ):
            Actor.on(event, listener)
            self._actor_listeners.append((event, listener))

    def _unfollow_actor_events(self) -> None:
        if not self._actor_listeners:
            return
        from apify import Actor

        for event, listener in self._actor_listeners:
            with contextlib.suppress(Exception):
                Actor.off(event, listener)
        self._actor_listeners.clear()

    async def _on_persist_state(self, _data: object = None) -> None:
        if self._closed:
            return
        try:
            await self.sync()
        except (SharedMapError, OSError) as exc:
            logger.warning('Shared map sync on PERSIST_STATE failed: %s', exc)

    async def _on_migrating(self, _data: object = None) -> None:
        """The run is about to migrate or abort: publish everything and release the lease, but keep the map usable."""
        logger.info('Shared map %r: run %s is migrating or aborting; final sync.', self._keys.prefix, self.run_id)
        await self.stop_background_sync(final_sync=True)
        await self._release_lease()
        await self._write_run_record(finished=False)

    # ------------------------------------------------------------------ the mapping

    def __setitem__(self, key: str, value: Any) -> None:
        if key.__class__ is not str:
            key = self._check_key(key)
        elif len(key) > self._max_entry_chars:
            self._check_key(key)
        if value.__class__ is str:
            if len(value) > self._max_entry_chars:
                raise ValueError(f'Value of {key!r:.80} is {len(value)} characters; at most {self._max_entry_chars}.')
            if value == ENQUEUED and self._set_enqueued_over_existing(key):
                return
        else:
            _check_value(value)
            if value.__class__ in (list, dict) and len(json.dumps(value)) > self._max_record_bytes // 4:
                raise ValueError(f'Value of {key!r:.80} is too large for one record.')
        if self._reverts:
            self._reverts.pop(key, None)
        dict.__setitem__(self, key, value)
        self._dirty[key] = value

    def _check_key(self, key: object) -> str:
        if not isinstance(key, str):
            raise TypeError(f'Shared-map keys must be strings, got {type(key).__name__}: {key!r:.80}')
        if len(key) > self._max_entry_chars:
            raise ValueError(f'Key {key!r:.80}... is {len(key)} characters; at most {self._max_entry_chars}.')
        return str(key)

    def _set_enqueued_over_existing(self, key: str) -> bool:
        """Handle a local `enqueued` over a present value; False when it is an ordinary change to publish."""
        current = dict.get(self, key, _MISSING)
        if current is _MISSING:
            if key in self._dirty:  # A pending local deletion: it still wins at the next sync.
                self._reverts.setdefault(key, _PENDING)
            elif key in self._tombstones:
                self._reverts.setdefault(key, (_DELETED, self._tombstones[key]))
            else:
                return False
        elif _is_enqueued(current):
            return True  # Nothing changes.
        elif key in self._dirty:
            self._reverts.setdefault(key, _PENDING)
        else:
            self._reverts.setdefault(key, (current, self._stamps.get(key, 0)))
        # Shown locally until the next sync, where the value that wins across runs comes back; not published,
        # since `enqueued` never replaces a present value anywhere.
        dict.__setitem__(self, key, ENQUEUED)
        return True

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        if self._reverts:
            self._reverts.pop(key, None)
        self._dirty[key] = _DELETED

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many entries, as `dict.update` (each goes through the shared-map rules)."""
        items: Iterable[tuple[str, Any]] = other.items() if hasattr(other, 'items') else other
        for key, value in items:
            self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def __ior__(self, other: Any) -> SharedMap:  # type: ignore[override,misc]
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return the value of `key`, setting it to `default` first if absent."""
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove `key` (publishing the deletion) and return its value."""
        if key in self:
            value = dict.__getitem__(self, key)
            del self[key]
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last inserted entry (publishing the deletion)."""
        key, value = next(reversed(dict.items(self)))
        del self[key]
        return key, value

    def clear(self) -> None:
        """Delete every entry (publishing the deletions)."""
        for key in list(self):
            del self[key]

    @classmethod
    def fromkeys(cls, *_args: Any, **_kwargs: Any) -> Any:
        """Not supported: a shared map needs a store."""
        raise TypeError('SharedMap.fromkeys() is not supported; create the map on a store, then update() it.')

    def __repr__(self) -> str:
        return f'<SharedMap run_id={self.run_id!r} prefix={self._keys.prefix!r} entries={len(self)}>'

    def __reduce__(self) -> Any:
        raise TypeError('A SharedMap cannot be pickled; use dict(shared_map) for a plain copy.')

    @property
    def pending(self) -> int:
        """Number of local changes not yet published."""
        return len(self._dirty)

    @property
    def store(self) -> KeyValueStore:
        """The key-value store the map syncs through."""
        return self._store.inner

    def live_runs(self, dead_after_secs: float) -> list[str]:
        """The runs that published a record within `dead_after_secs` and did not finish, this one included.

        Seen through the log records this run has read (writers with `heartbeat_secs` write one at least that
        often), timed on this run's own clock, so clock skew between machines does not matter.
        """
        now = time.monotonic()
        live = {run for run, (seen, done) in self._runs_seen.items() if not done and now - seen < dead_after_secs}
        if not self._closed:
            live.add(self.run_id)
        return sorted(live)

    @property
    def finished_runs(self) -> list[str]:
        """The runs whose final record (written by `close()`) this run has read."""
        return sorted(run for run, (_, finished) in self._runs_seen.items() if finished)

    def _saw_run(self, run: str, body: dict[str, Any]) -> None:
        if run == self.run_id:
            return  # A record of an earlier incarnation of this run (before a migration).
        now = time.monotonic()
        written = body.get('writtenAt')
        # An old record (e.g. read at initialize) means an older sighting; clocks differ, so never in the future.
        age = max(0.0, (self._now() - written) / 1000) if isinstance(written, int) else 0.0
        seen = now - age
        previous = self._runs_seen.get(run)
        finished = body.get('final') is True or (previous is not None and previous[1] and previous[0] >= seen)
        if previous is None or seen >= previous[0]:
            self._runs_seen[run] = (seen, finished)

    # ------------------------------------------------------------------ sync

    async def sync(self, *, mode: SyncMode = 'full') -> SyncResult:
        """Publish local changes, merge other runs' new records, and compact if due.

        Never waits for another run. Returns what it did; the totals are in `stats`.

        Args:
            mode: `'write-only'` only publishes local changes (cheapest; e.g. right before exiting).

        Raises:
            SyncError: the store failed; local changes are kept and the next sync retries them.
            UnsupportedFormatError: the store holds a record of a newer format version.
        """
        return await self._sync(mode=mode)

    async def _sync(self, *, mode: SyncMode = 'full', final: bool = False) -> SyncResult:
        if not self._initialized:
            raise SharedMapError('Call `await shared.initialize()` (or use `async with`) before syncing.')
        async with self._sync_lock:
            started = time.perf_counter()
            result = SyncResult()
            try:
                await self._write_phase(result, final=final)
                if mode == 'full':
                    listing = await self._list()
                    await self._read_phase(listing, result)
                    for _ in range(_READ_RETRIES):
                        # A record vanished between listing and reading: a compaction folded it into a snapshot
                        # written before the deletion, so a new listing finds it.
                        missing, result.records_missing = result.records_missing, 0
                        if not missing:
                            break
                        listing = await self._list()
                        await self._read_phase(listing, result)
                    self._apply_reverts()
                    await self._maybe_compact(listing, result)
            except SharedMapError:
                self.stats.sync_errors += 1
                raise
            except Exception as exc:
                self.stats.sync_errors += 1
                raise SyncError(f'Shared map sync failed: {type(exc).__name__}: {exc}') from exc
            finally:
                result.seconds = time.perf_counter() - started
            self.stats.add(result)
            logger.debug('Shared map sync (run %s): %s', self.run_id, result)
            if time.monotonic() - self._last_run_record >= self._run_record_interval:
                await self._write_run_record(finished=False)
            return result

    def _tick(self) -> int:
        """A stamp for a new record: the wall clock, but above every stamp seen (hybrid logical clock)."""
        self._clock = max(self._now(), self._clock + 1)
        return self._clock

    def _caught_up(self, result: SyncResult) -> bool:
        """Whether the last read saw every record it listed, and every readable snapshot it lacks is loaded."""
        return not result.records_missing and all(
            covers_subset(m.covers, self._had) for m in self._manifests.values() if m.key not in self._bad
        )

    async def _write_phase(self, result: SyncResult, *, final: bool = False) -> None:
        heartbeat_due = (
            self._heartbeat_secs is not None and time.monotonic() - self._last_log_written >= self._heartbeat_secs
        )
        if not self._dirty and not heartbeat_due and not final:
            return
        pending, self._dirty = self._dirty, {}
        written: set[str] = set()
        try:
            # An empty record still says "this run is alive" (or, with `final`, "this run is done") to the others.
            chunks = list(self._chunks((key, value, 0) for key, value in pending.items())) or [_Chunk()]
            for index, chunk in enumerate(chunks):
                # Each record gets its own, larger stamp: a reader then merges each one wholesale (the "newest" path).
                stamp = self._tick()
                chunk.restamp(stamp)
                seq = self._next_seq
                # Never reuse a key: a failed write may still have landed, and records are immutable.
                self._next_seq += 1
                is_final = final and index == len(chunks) - 1
                fields = chunk.body_fields()
                body = dumps(
                    envelope('log', run=self.run_id, seq=seq, writtenAt=self._now(), final=is_final, **fields),
                )
                body = await self._put(self._keys.log(self._writer, seq), body)
                self._had.setdefault(self._writer, SeqSet()).add(seq)
                self._last_log_written = time.monotonic()
                for key in chunk.keys:
                    self._mark_published(key, pending[key], stamp)
                written.update(chunk.keys)
                result.records_written += 1
                result.bytes_written += len(body)
                result.entries_written += len(chunk.keys)
        except BaseException:
            # Whatever failed (the store, encoding, a cancellation), every change not written stays pending; a newer
            # local change made meanwhile wins over the one that was being written.
            for key, value in pending.items():
                if key not in written:
                    self._dirty.setdefault(key, value)
            raise

    def _mark_published(self, key: str, value: Any, stamp: int) -> None:
        if value is _DELETED:
            self._tombstones[key] = stamp
            self._stamps.pop(key, None)
        elif _is_enqueued(value):
            self._stamps.pop(key, None)
        else:
            if key not in self._stamps:
                current = dict.pop(self, key, _MISSING)  # share one key string between the map and `_stamps`
                if current is not _MISSING:
                    dict.__setitem__(self, key, current)
            self._stamps[key] = stamp
            self._tombstones.pop(key, None)
        if self._reverts and self._reverts.get(key) is _PENDING:
            self._reverts[key] = (value, stamp)

    def _chunks(self, entries: Iterable[tuple[str, Any, int]]) -> Iterator[_Chunk]:
        """Split entries into records of at most `record_size` entries and (estimated) `max_record_bytes`."""
        budget = self._max_record_bytes - 4096  # room for the envelope
        chunk = _Chunk()
        for key, value, stamp in entries:
            cost = chunk.cost(key, value, stamp)
            if chunk.keys and (len(chunk.keys) >= self._record_size or chunk.size + cost > budget):
                yield chunk
                chunk = _Chunk()
                cost = chunk.cost(key, value, stamp)
            chunk.add(key, value, stamp, cost)
        if chunk.keys:
            yield chunk

    async def _put(self, key: str, body: bytes) -> bytes:
        if len(body) > self._max_record_bytes:  # The estimate was off (escaped characters): a bug, not bad input.
            raise SharedMapError(f'Record {key} would be {len(body)} bytes, over max_record_bytes; not written.')
        await self._store.set_value(key, body, content_type=CONTENT_TYPE)
        return body

    # ------------------------------------------------------------------ reading

    async def _list(self) -> _Listing:
        listing = _Listing()
        async for meta in self._store.iterate_keys():
            key = meta.key
            parsed = self._keys.classify(key)
            if parsed is None:
                if 'INITIAL' in key:
                    listing.initial.append(key)
                elif key.startswith('STATE-') and key[6:].isdigit():
                    listing.legacy_state.append(key)
                continue
            kind, fields = parsed
            if key in self._ghosts:
                continue
            if kind == 'L':
                listing.logs[key] = self._keys.log_writer(fields)
                listing.log_bytes += meta.size or 0
            elif kind == 'M':
                listing.manifests.append(key)
            elif kind == 'P':
                listing.parts.append(key)
            elif kind == 'R':
                listing.runs.append(key)
        return listing

    async def _fetch(self, key: str, kind: Literal['log', 'part', 'manifest', 'lease'], result: SyncResult) -> Any:
        """Read and decode one record; None if it is gone or bad (bad ones are logged once and skipped for good)."""
        if key in self._bad:
            return None
        raw = await self._store.get_value(key)
        if raw is None:
            if await self._store.record_exists(key):
                self._skip_bad(key, 'the storage client could not decode it', result)
            elif kind == 'lease' or not self._is_ghost(key):
                result.records_missing += 1
            return None
        try:
            body = loads(key, raw, kind)
            if kind in ('log', 'part'):
                check_groups(body)
        except CorruptRecordError as exc:
            self._skip_bad(key, str(exc), result)
            return None
        result.records_read += 1
        result.bytes_read += len(raw) if isinstance(raw, (bytes, bytearray)) else 0
        return body

    def _is_ghost(self, key: str) -> bool:
        """Count a listed record found missing; once it stays missing, it is a ghost and ignored from then on.

        A record is deleted only once a complete snapshot holds its content (logs) or supersedes it (manifests,
        parts), so a delete that a crash left half done loses nothing by being ignored.
        """
        now = time.monotonic()
        first, misses = self._misses.get(key, (now, 0))
        if misses + 1 >= _GHOST_AFTER_MISSES and now - first >= _GHOST_AFTER_SECS:
            del self._misses[key]
            self._ghosts.add(key)
            logger.warning(
                'Shared map: record %r is listed but has had no value for %.1f s (a delete interrupted by a crash?). '
                'It is ignored; nothing it held is lost.',
                key,
                now - first,
            )
            return True
        self._misses[key] = (first, misses + 1)
        return False

    def _skip_bad(self, key: str, reason: str, result: SyncResult) -> None:
        self._bad.add(key)
        result.records_skipped += 1
        logger.warning('Shared map: skipping record %r: %s. It is left in the store untouched.', key, reason)

    async def _read_phase(self, listing: _Listing, result: SyncResult) -> None:
        # 1. Log records not merged yet (in key order: each run's in the order it wrote them).
        for key in sorted(listing.logs):
            writer, seq = listing.logs[key]
            had = self._had.get(writer)
            if had is not None and seq in had:
                continue
            body = await self._fetch(key, 'log', result)
            if body is None:
                continue
            self._merge_body(body, result)
            self._had.setdefault(writer, SeqSet()).add(seq)
            self._saw_run(run_of(writer), body)

        # 2. Snapshots: load one only if it covers log records this run has not merged (deleted before it read them).
        listed = set(listing.manifests)
        for key in list(self._manifests):
            if key not in listed:
                del self._manifests[key]
        for key in listing.manifests:
            if key not in self._manifests and key not in self._bad:
                body = await self._fetch(key, 'manifest', result)
                if body is not None:
                    try:
                        self._manifests[key] = Manifest.from_body(key, body)
                    except CorruptRecordError as exc:
                        self._skip_bad(key, str(exc), result)
        by_coverage = sorted(self._manifests.values(), key=lambda m: -sum(len(s) for s in m.covers.values()))
        for manifest in by_coverage:
            if not covers_subset(manifest.covers, self._had):
                await self._load_snapshot(manifest, result)

    async def _load_snapshot(self, manifest: Manifest, result: SyncResult) -> None:
        for part in manifest.parts:
            body = await self._fetch(part, 'part', result)
            if body is None:
                if part in self._bad or part in self._ghosts:
                    self._skip_bad(manifest.key, f'its part {part} is unreadable', result)
                # A missing part: a newer snapshot superseded this one meanwhile; a new listing finds that one.
                # What was merged from the other parts stays: every entry in them is a valid entry.
                return
            self._merge_body(body, result)
        covers_union(self._had, manifest.covers)
        result.snapshots_loaded += 1

    async def _load_seed_record(self, key: str, *, initial: bool) -> None:
        """Merge an `INITIAL` record or a JS `STATE-<i>` record (stamp 0: anything synced later wins)."""
        value = await self._store.get_value(key)
        if isinstance(value, (bytes, bytearray, str)):
            try:
                value = json.loads(value)
            except ValueError:
                logger.warning('Shared map: skipping record %r: not JSON. It is left in the store untouched.', key)
                return
        if isinstance(value, dict):
            pairs: Iterable[Any] = value.items()
        elif isinstance(value, list):
            pairs = ([item, ENQUEUED] if isinstance(item, str) and initial else item for item in value)
        else:
            logger.warning('Shared map: skipping record %r: expected a list or an object, got %s.', key, type(value))
            return
        count = 0
        for pair in pairs:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
                logger.warning(
                    'Shared map: skipping an entry of %r: %r is not a key or a [key, value] pair.', key, pair
                )
                continue
            try:
                _check_value(pair[1])
            except TypeError as exc:
                logger.warning('Shared map: skipping an entry of %r: %s', key, exc)
                continue
            self._merge_one(pair[0], pair[1], 0)
            count += 1
        logger.info('Shared map: loaded %d entries from %r.', count, key)

    # ------------------------------------------------------------------ merging

    def _merge_body(self, body: dict[str, Any], result: SyncResult) -> None:
        """Merge a log or part body that `_fetch` has validated."""
        for stamp, value, keys in body.get('groups', []):
            result.entries_changed += self._merge_group(stamp, value, keys)
            result.entries_read += len(keys)
        for stamp, keys in body.get('deleted', []):
            result.entries_changed += self._merge_group(stamp, _DELETED, keys)
            result.entries_read += len(keys)

    def _merge_group(self, stamp: int, value: Any, keys: list[str]) -> int:
        """Merge `keys` -> `value` at `stamp`; return how many visible values changed (or may have)."""
        newest = stamp > self._clock  # then it beats every non-`enqueued` entry this map holds
        self._clock = max(self._clock, stamp)
        data_keys = self.keys()
        special = self._dirty or self._reverts or self._tombstones
        if not special or (
            self._dirty.keys().isdisjoint(keys)
            and self._reverts.keys().isdisjoint(keys)
            and self._tombstones.keys().isdisjoint(keys)
        ):
            # Fast paths, in C: no key of the group is pending, reverted or deleted here.
            if _is_enqueued(value):
                if data_keys.isdisjoint(keys):
                    dict.update(self, dict.fromkeys(keys, ENQUEUED))
                    return len(keys)
                new = [key for key in keys if key not in data_keys]
                dict.update(self, dict.fromkeys(new, ENQUEUED))
                return len(new)
            if value is not _DELETED and value.__class__ in _SCALAR_TYPES:
                if data_keys.isdisjoint(keys):
                    dict.update(self, dict.fromkeys(keys, value))
                    self._stamps.update(dict.fromkeys(keys, stamp))
                    return len(keys)
                if newest:
                    # Every key takes the new value. Re-insert the keys so the map and `_stamps` hold one shared key
                    # string, not two equal ones (~110 bytes per URL).
                    deque(map(dict.pop, repeat(self), keys, repeat(None)), maxlen=0)
                    deque(map(self._stamps.pop, keys, repeat(None)), maxlen=0)
                    dict.update(self, dict.fromkeys(keys, value))
                    self._stamps.update(dict.fromkeys(keys, stamp))
                    return len(keys)
        return sum(self._merge_one(key, value, stamp) for key in keys)

    def _merge_one(self, key: str, value: Any, stamp: int) -> bool:
        """Merge one incoming entry (value may be _DELETED); return whether the visible value changed."""
        incoming_enqueued = _is_enqueued(value)
        if key in self._dirty:
            # A pending local change will be published with a newer stamp and win, unless it is `enqueued`.
            if incoming_enqueued or not _is_enqueued(self._dirty[key]):
                return False
            del self._dirty[key]
            return self._apply(key, value, stamp)
        if key in self._reverts:
            if not incoming_enqueued:
                old = self._reverts[key]
                if old is not _PENDING and _wins(value, stamp, old[0], old[1]):
                    self._reverts[key] = (value, stamp)
            return False
        if key in self._tombstones:
            if incoming_enqueued or not _wins(value, stamp, _DELETED, self._tombstones[key]):
                return False
            return self._apply(key, value, stamp)
        current = dict.get(self, key, _MISSING)
        if current is _MISSING or (
            not incoming_enqueued and (_is_enqueued(current) or _wins(value, stamp, current, self._stamps.get(key, 0)))
        ):
            return self._apply(key, value, stamp)
        return False

    def _apply(self, key: str, value: Any, stamp: int) -> bool:
        if value is _DELETED:
            self._tombstones[key] = stamp
            self._stamps.pop(key, None)
            return dict.pop(self, key, _MISSING) is not _MISSING
        self._tombstones.pop(key, None)
        if _is_enqueued(value):
            self._stamps.pop(key, None)
        else:
            if key not in self._stamps:
                dict.pop(self, key, None)  # re-inserted below with this key object, which `_stamps` shares
            self._stamps[key] = stamp
        dict.__setitem__(self, key, value)
        return True

    def _apply_reverts(self) -> None:
        """Bring back the winning value of keys set to `enqueued` locally over it."""
        for key, entry in list(self._reverts.items()):
            if entry is _PENDING:
                continue  # Its pending change was not written yet (a failed write); keep it for the next sync.
            del self._reverts[key]
            if dict.get(self, key, _MISSING) == ENQUEUED and key not in self._dirty:
                value, stamp = entry
                if value is _DELETED:
                    dict.pop(self, key, None)
                    self._tombstones[key] = stamp
                else:
                    self._tombstones.pop(key, None)  # the restored value is the key's one authoritative entry
                    dict.__setitem__(self, key, value)
                    self._stamps[key] = stamp

    # ------------------------------------------------------------------ compaction

    async def _maybe_compact(self, listing: _Listing, result: SyncResult) -> None:
        due = len(listing.logs) >= self._compact_after_records or listing.log_bytes >= self._compact_after_bytes
        if not due or not self._caught_up(result):
            return  # Not due, or this run is not caught up (its snapshot would cover less than the store holds).
        lease = await self._acquire_lease()
        result.lease_won = lease is not None
        if lease is None:
            return
        try:
            await self._compact(listing, result, lease)
        finally:
            await self._release_lease(lease)

    async def _compact(self, listing: _Listing, result: SyncResult, lease: Lease) -> None:
        started = time.monotonic()
        superseded = [m for m in self._manifests.values() if covers_subset(m.covers, self._had)]
        covers: Covers = {}
        covers_union(covers, self._had)
        gen = max((m.gen for m in self._manifests.values()), default=0) + 1
        nonce = f'{self._now():x}{secrets.token_hex(2)}'
        manifest_key = self._keys.manifest(gen, self.run_id, nonce)
        capture_stamp = self._tick()  # Pending local changes go in with a stamp below their coming log record's.

        parts: list[str] = []
        entries = total_bytes = 0
        async for chunk in self._snapshot_chunks(capture_stamp):
            part_key = self._keys.part(manifest_key, len(parts))
            body = dumps(envelope('part', manifest=manifest_key, index=len(parts), **chunk.body_fields()))
            await self._put(part_key, body)
            parts.append(part_key)
            entries += len(chunk.keys)
            total_bytes += len(body)
            result.records_written += 1
            result.bytes_written += len(body)
            lease = await self._renew_lease(lease)
        # A compaction that stalled for a long time must not publish: its parts may count as orphans by now.
        if (time.monotonic() - started) * 1000 > self._orphan_age_ms / 2:
            logger.warning('Shared map: compaction took too long; its snapshot %s is abandoned.', manifest_key)
            return
        manifest = Manifest(
            key=manifest_key,
            gen=gen,
            run=self.run_id,
            parts=parts,
            covers=covers,
            entries=entries,
            bytes=total_bytes,
            written_at=self._now(),
            supersedes=[m.key for m in superseded],
        )
        await self._put(manifest_key, dumps(manifest.to_body()))
        result.records_written += 1
        self._manifests[manifest_key] = manifest
        result.compacted = True

        # Delete nothing unless the snapshot is complete in the store now.
        for part_key in parts:
            if not await self._store.record_exists(part_key):
                logger.error('Shared map: part %s of the new snapshot is missing; nothing is deleted.', part_key)
                return
        # Logs are deleted one compaction late (those a superseded snapshot already covered), so runs that sync
        # more often than compactions happen read them as logs and never need to reload a whole snapshot.
        doomed = [
            key
            for key, (run, seq) in listing.logs.items()
            if any(run in m.covers and seq in m.covers[run] for m in superseded)
        ]
        for old in superseded:
            doomed.append(old.key)  # The manifest goes before its parts, so no reader finds one with parts missing.
            doomed.extend(old.parts)
            self._manifests.pop(old.key, None)
        listed_manifests = set(listing.manifests) | {manifest_key}
        now = self._now()
        for part_key in listing.parts:
            owner = self._keys.part_manifest(part_key)
            born = manifest_time_ms(owner)
            if owner not in listed_manifests and born is not None and now - born > self._orphan_age_ms:
                doomed.append(part_key)
        for key in doomed:
            await self._store.delete_value(key)
            result.records_deleted += 1
        logger.info(
            'Shared map: run %s compacted %d entries into %d parts (%.1f MB), deleted %d records.',
            self.run_id,
            entries,
            len(parts),
            total_bytes / 1e6,
            result.records_deleted,
        )

    async def _snapshot_chunks(self, capture_stamp: int) -> AsyncIterator[_Chunk]:
        """Yield the whole state in record-sized chunks, letting other tasks run between chunks."""

        def entries() -> Iterator[tuple[str, Any, int]]:
            for key in list(self):
                value = dict.get(self, key, _MISSING)
                if value is _MISSING:
                    continue  # Deleted meanwhile: its tombstone is pending and will be published.
                revert = self._reverts.get(key, _MISSING)
                if revert is not _MISSING and revert is not _PENDING:
                    yield key, revert[0], revert[1]
                elif key in self._dirty or revert is _PENDING:
                    pending = self._dirty.get(key, value)
                    yield key, pending, capture_stamp
                elif _is_enqueued(value):
                    yield key, value, 0
                else:
                    yield key, value, self._stamps.get(key, 0)
            for key, stamp in list(self._tombstones.items()):
                if key not in self:
                    yield key, _DELETED, stamp
            for key, value in list(self._dirty.items()):
                if value is _DELETED:
                    yield key, _DELETED, capture_stamp

        for chunk in self._chunks(entries()):
            yield chunk
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ lease and run record

    async def _acquire_lease(self) -> Lease | None:
        """Try to take the compaction lease; None if another live run holds it. Never waits for it."""
        current = await self._read_lease()
        now = self._now()
        if current is not None and current.owner != self.run_id and current.expires_at > now:
            return None
        lease = Lease(owner=self.run_id, token=secrets.token_hex(8), expires_at=now + self._lease_ttl_ms)
        await self._store.set_value(self._keys.lease, dumps(lease.to_body()), content_type=CONTENT_TYPE)
        # Writes are not conditional: let a concurrent taker's write land, then see whose write stuck. Two runs
        # may still both believe they hold it; the protocol is safe then too (docs/sync-protocol.md).
        await asyncio.sleep(0.05)
        current = await self._read_lease()
        return lease if current is not None and current.token == lease.token else None

    async def _renew_lease(self, lease: Lease) -> Lease:
        if lease.expires_at - self._now() > self._lease_ttl_ms / 2:
            return lease
        renewed = Lease(owner=lease.owner, token=lease.token, expires_at=self._now() + self._lease_ttl_ms)
        await self._store.set_value(self._keys.lease, dumps(renewed.to_body()), content_type=CONTENT_TYPE)
        return renewed

    async def _read_lease(self) -> Lease | None:
        try:
            body = await self._fetch(self._keys.lease, 'lease', SyncResult())
            return None if body is None else Lease.from_body(body)
        except CorruptRecordError:
            return None  # An unreadable lease binds nobody; the next acquirer overwrites it.
        finally:
            self._bad.discard(self._keys.lease)

    async def _release_lease(self, lease: Lease | None = None) -> None:
        """Give up the lease if this run holds it (`lease` or any token of ours)."""
        with contextlib.suppress(Exception):
            current = await self._read_lease()
            if current is not None and current.owner == self.run_id and (lease is None or current.token == lease.token):
                released = Lease(owner=self.run_id, token=current.token, expires_at=0)
                await self._store.set_value(self._keys.lease, dumps(released.to_body()), content_type=CONTENT_TYPE)

    async def _write_run_record(self, *, finished: bool) -> None:
        """This run's statistics and heartbeat, in a record only this run writes."""
        self._last_run_record = time.monotonic()
        body = envelope(
            'run',
            run=self.run_id,
            startedAt=self._started_at,
            lastSyncAt=self._now(),
            finished=finished,
            entries=len(self),
            pending=len(self._dirty),
            stats=self.stats.to_dict(),
        )
        try:
            await self._store.set_value(self._keys.run(self.run_id), dumps(body), content_type=CONTENT_TYPE)
        except Exception as exc:  # Statistics are best effort; the data path reports its own errors.
            logger.warning('Shared map: could not write the run record: %s', exc)


class _ExpectedRaceFilter(logging.Filter):
    """Drop crawlee's file-system warnings about records that vanished while it listed them.

    Compaction deletes folded records while other runs list the store; the protocol expects that (readers catch
    up through the snapshot), so the warning would only worry users. Other keys' warnings pass.
    """

    pattern = re.compile(r'^(Metadata|Value) file disappeared for key "[A-Za-z0-9_-]+\.[LMP]\.')

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def _install_race_filter() -> None:
    fs_logger = logging.getLogger('crawlee.storage_clients._file_system._key_value_store_client')
    if not any(isinstance(f, _ExpectedRaceFilter) for f in fs_logger.filters):
        fs_logger.addFilter(_ExpectedRaceFilter())


def _actor_is_active() -> bool:
    try:
        from apify import Actor
    except ImportError:
        return False
    # The SDK has no public "is initialized" flag; `_active` is what its own `_ensure_context` checks.
    return bool(getattr(Actor, '_active', False))

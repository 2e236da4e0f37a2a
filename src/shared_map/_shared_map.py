"""The shared map: a `dict` of URL -> status that parallel runs keep in memory and sync through a key-value store.

The sync protocol is explained, with diagrams and the safety argument, in `docs/sync-protocol.md`. In short:

* each run appends its local changes since its last sync as a new, immutable *log* record under its own writer id
  (`SM.L.<run>.<incarnation>.<seq>`); no record is ever read-modified-written by two runs, so no update is lost;
* readers merge every record they have not read yet; the merge is a join (`_values.py`), so all replicas converge
  whatever the order;
* one run at a time (under a lease) folds the logs into a *snapshot* and deletes only records already contained in
  a complete snapshot it wrote (`_compaction.py`).

This module is the table of contents of one sync; each step lives in its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ._actor_events import ActorEvents, actor_is_active
from ._backends import check_store_name, open_store
from ._compaction import Compactor
from ._errors import InvalidOptionError, SharedMapError, SyncError
from ._liveness import RunRecord, RunsSeen
from ._options import MiB, check_options
from ._periodic import RecurringTask
from ._records import Keys
from ._replica import Replica
from ._seeds import load_seed_record
from ._stats import RunStats, SyncResult
from ._store import CountedStore, RecordStore, quiet_expected_races
from ._values import HybridClock, now_ms

if TYPE_CHECKING:
    from types import TracebackType

    from crawlee.configuration import Configuration
    from crawlee.storage_clients import StorageClient
    from crawlee.storages import KeyValueStore

logger = logging.getLogger(__name__)

_READ_RETRIES = 3
# initialize() re-reads this often (with growing pauses, ~7 s in all) before it gives up on a store that keeps
# changing under it; a map must never start from a partial read.
_INIT_ATTEMPTS = 9

SyncMode = Literal['full', 'write-only']


class SharedMap(Replica):
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
        store_timeout_secs: float = 300.0,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """Create a map on `store`; call `initialize()` (or use `async with`) before using it.

        Args:
            store: The (named) key-value store the runs share. Any crawlee storage client works.
            run_id: This run's id, unique among the runs that share the store. Defaults to the Apify run id
                (`ACTOR_RUN_ID`), else a random id. A restarted (migrated) run keeps its id and writes as a new
                incarnation of it.
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
            store_timeout_secs: Longest wait for one store call; a call that takes longer fails the sync
                (`SyncError`), which the next sync retries. Generous, since the platform's API client retries a
                rate-limited call for up to about two minutes.
            clock: The wall clock, in milliseconds since the epoch, that stamps and lease expiries come from
                (default: `time.time()`); tests inject a skewed one.
        """
        run_id = check_options(
            run_id=run_id,
            prefix=prefix,
            record_size=record_size,
            max_record_bytes=max_record_bytes,
            compact_after_records=compact_after_records,
            lease_ttl_secs=lease_ttl_secs,
            orphan_age_secs=orphan_age_secs,
            heartbeat_secs=heartbeat_secs,
            store_timeout_secs=store_timeout_secs,
        )
        wall = clock or now_ms
        # Drawn at every start: a restarted run (same run id) writes logs under a new identity, so it can never
        # reuse a log key whatever it managed to read, and readers never mistake a new log for one they merged.
        incarnation = f'{wall():x}{secrets.token_hex(3)}'
        self.stats = RunStats()
        self._keys = Keys(prefix)
        records = RecordStore(
            CountedStore(store, self.stats, timeout_secs=store_timeout_secs),
            self._keys,
            max_record_bytes=max_record_bytes,
        )
        hybrid_clock = HybridClock(wall)
        super().__init__(
            records,
            run_id=run_id,
            incarnation=incarnation,
            clock=hybrid_clock,
            runs=RunsSeen(run_id, wall),
            record_size=record_size,
            heartbeat_secs=heartbeat_secs,
        )
        self._compactor = Compactor(
            records,
            run_id=run_id,
            clock=hybrid_clock,
            record_size=record_size,
            compact_after_records=compact_after_records,
            compact_after_bytes=compact_after_bytes,
            lease_ttl_ms=int(lease_ttl_secs * 1000),
            orphan_age_ms=int(orphan_age_secs * 1000),
        )
        self._run_record = RunRecord(
            records, run_id=run_id, interval_secs=run_record_interval_secs, wall_ms=wall, stats=self.stats
        )
        self._initialized = False
        self._closed = False
        self._sync_lock = asyncio.Lock()
        self._background_sync: RecurringTask | None = None
        self._actor_events = ActorEvents()
        self._store_timeout = store_timeout_secs
        self._publish_first: SharedMap | None = None

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

        Raises:
            InvalidOptionError: a name crawlee purges, a bad connection string, or both `connection` and
                `storage_client`.
            StoreUnavailableError: the store at `connection` cannot be reached within `open_store()`'s timeout (the
                message names host and port, never the password).
        """
        from crawlee.storages import KeyValueStore

        name = check_store_name(name)
        if in_actor is None:
            in_actor = actor_is_active()
        if storage_client is None:  # with open_store's timeout and its one-line errors
            store = await open_store(name, connection=connection, configuration=configuration, in_actor=in_actor)
        elif connection is not None:
            raise InvalidOptionError('Pass either connection or storage_client, not both.')
        else:
            store = await KeyValueStore.open(name=name, storage_client=storage_client, configuration=configuration)
        shared = cls(store, **options)
        await shared.initialize()
        if in_actor:
            shared._actor_events.follow(on_persist_state=shared._on_persist_state, on_migrating=shared._on_migrating)
        if sync_interval_secs is not None:
            shared.start_background_sync(sync_interval_secs)
        return shared

    async def initialize(self) -> None:
        """Load the shared state: `INITIAL` records, a store written by the JS package, snapshots and logs.

        Records whose key contains `INITIAL` may hold a list of keys (each becomes `enqueued`), a list of
        `[key, value]` pairs, or an object. `STATE-<i>` records of the JS `apify-shared-map` are adopted as they are.
        These are read once here and never modified or deleted.

        Raises:
            SyncError: the store kept changing under the read for ~7 s; the map is not initialized.
        """
        if self._initialized:
            return
        quiet_expected_races()
        listing = await self.records.list()
        for key in listing.initial:
            await load_seed_record(self.records.store, key, initial=True, merge_one=self.merge_one)
        for key in listing.legacy_state:
            await load_seed_record(self.records.store, key, initial=False, merge_one=self.merge_one)
        result = SyncResult()
        if not await self.read_whole(listing, result, attempts=_INIT_ATTEMPTS):
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

    async def close(self, *, timeout_secs: float | None = None) -> None:
        """Stop the background sync, do a final sync, release the lease, and mark this run finished in the store.

        Bounded in time whatever the store does: after `timeout_secs` (default: `store_timeout_secs`) it gives up.

        Raises:
            SyncError: the final state could not be saved; the message says how many changes were lost. A run
                started later still finds every URL this run did not publish as done waiting in the store.
        """
        if self._closed:
            return
        self._actor_events.unfollow()
        self._closed = True
        timeout = self._store_timeout if timeout_secs is None else timeout_secs
        deadline = asyncio.get_running_loop().time() + timeout
        failure: BaseException | None = None
        try:
            async with asyncio.timeout_at(deadline):
                await self.stop_background_sync(final_sync=False)  # waits for a sync in progress, within the bound
                await self._sync(final=True)
        except (TimeoutError, SharedMapError) as exc:
            failure = exc
        with contextlib.suppress(TimeoutError, SharedMapError):  # after a hang, the deadline has passed: skipped
            async with asyncio.timeout_at(deadline):
                await self._compactor.release_lease()
                await self._write_run_record(finished=True)
        if failure is not None:
            reason = f'no answer within {timeout:g} s' if isinstance(failure, TimeoutError) else str(failure)
            raise SyncError(
                f'Shared map {self._keys.prefix!r} (run {self.run_id}): the store did not take the final state at '
                f'close ({reason}); {self.pending} changes of this run were not saved.'
            )
        logger.info('Shared map %r (run %s) closed: %s', self._keys.prefix, self.run_id, self.stats.to_dict())

    def publish_after(self, first: SharedMap) -> None:
        """Publish `first`'s pending changes before each of this map's writes, whatever starts the sync.

        The crawl's request-info map goes before the statuses: whoever sees a URL waiting finds its label and depth,
        whether the sync came from the loop, an Actor event (PERSIST_STATE, MIGRATING, ABORTING) or `close()`.
        """
        self._publish_first = first

    async def __aenter__(self) -> SharedMap:
        await self.initialize()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def start_background_sync(self, interval_secs: float = 10.0) -> RecurringTask:
        """Sync every `interval_secs` in a background task until `stop_background_sync()` or `close()`.

        A failing sync is logged and retried at the next tick; local state is never lost (`RecurringTask`).
        """
        if interval_secs <= 0:
            raise InvalidOptionError(f'interval_secs must be positive, got {interval_secs}.')
        if self.background_sync_running:
            raise SharedMapError('A background sync is already running; stop it first.')
        self._background_sync = RecurringTask(
            self.sync, interval_secs=interval_secs, name=f'shared-map-sync-{self.run_id}', what='Shared map sync'
        )
        self._background_sync.start()
        return self._background_sync

    @property
    def background_sync_running(self) -> bool:
        """Whether the background sync task is running."""
        return self._background_sync is not None and self._background_sync.running

    async def stop_background_sync(self, *, final_sync: bool = True) -> None:
        """Stop the background task (waiting for a sync in progress) and, by default, sync once more."""
        background, self._background_sync = self._background_sync, None
        if background is not None:
            await background.stop()  # never cancels a sync half-way: the one in progress finishes
        if final_sync and not self._closed:
            await self.sync()

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
        await self._compactor.release_lease()
        await self._write_run_record(finished=False)

    # ------------------------------------------------------------------ what other code asks of the map

    @property
    def prefix(self) -> str:
        """Prefix of this map's record keys."""
        return self._keys.prefix

    def __repr__(self) -> str:
        return f'<SharedMap run_id={self.run_id!r} prefix={self._keys.prefix!r} entries={len(self)}>'

    @property
    def store(self) -> KeyValueStore:
        """The key-value store the map syncs through."""
        return self.records.store.inner

    def live_runs(self, dead_after_secs: float) -> list[str]:
        """The runs that published a record within `dead_after_secs` and did not finish, this one included.

        Seen through the log records this run has read (writers with `heartbeat_secs` write one at least that
        often), timed on this run's own clock, so clock skew between machines does not matter.
        """
        live = self.runs_seen.live(dead_after_secs)
        if not self._closed:
            live.add(self.run_id)
        return sorted(live)

    @property
    def finished_runs(self) -> list[str]:
        """The runs whose final record (written by `close()`) this run has read."""
        return self.runs_seen.finished()

    # ------------------------------------------------------------------ one sync

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
                await self._publish_first_pending()
                await self.write_phase(result, final=final)  # 1. publish this run's changes
                if mode == 'full':
                    listing = await self.records.list()  # 2. read what others published
                    await self.read_phase(listing, result)
                    for _ in range(_READ_RETRIES):
                        # A record vanished between listing and reading: a compaction folded it into a snapshot
                        # written before the deletion, so a new listing finds it.
                        missing, result.records_missing = result.records_missing, 0
                        if not missing:
                            break
                        listing = await self.records.list()
                        await self.read_phase(listing, result)
                    self.apply_reverts()
                    # 3. fold logs into a snapshot
                    if self._compactor.due(listing, self.known_manifests()) and self.caught_up(result):
                        await self.compact(self._compactor, listing, result)
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
            if self._run_record.due():
                await self._write_run_record(finished=False)
            return result

    async def _publish_first_pending(self) -> None:
        """Publish the pending changes of the map set with `publish_after`; returns with none pending.

        Changes made there during its write are written again, until none came in meanwhile: from then to this map's
        write phase taking its own changes, nothing awaits, so no change can slip in between.
        """
        first = self._publish_first
        for _ in range(8):
            if first is None or not first.pending:
                return
            await first.sync(mode='write-only')

    async def _write_run_record(self, *, finished: bool) -> None:
        await self._run_record.write(finished=finished, entries=len(self), pending=self.pending)

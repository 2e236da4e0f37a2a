"""A crawlee request manager that shares URL state between parallel runs through a `SharedMap`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from crawlee import Request, RequestState
from crawlee.storage_clients import MemoryStorageClient
from crawlee.storage_clients.models import ProcessedRequest
from crawlee.storages import RequestQueue
from typing_extensions import override

from ._errors import SharedMapError
from ._forwarding import ForwardingRequestManager
from ._frontier import SharedFrontier
from ._shared_map import SharedMap
from ._urls import DONE, FAILED, PROCESSED, SKIPPED, info_prefix, map_key, map_key_of, request_info, with_map_key
from ._values import ENQUEUED

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import timedelta

    from crawlee.crawlers import BasicCrawler
    from crawlee.request_loaders import RequestManager

    from ._stats import SharingStats, SyncResult


logger = logging.getLogger(__name__)


async def _close_maps(maps: Iterable[SharedMap]) -> int:
    """Close each map, each within its store timeout; how many changes were not saved (each failure logged once)."""
    unsaved = 0
    for shared in maps:
        try:
            await shared.close()
        except SharedMapError as exc:
            unsaved += shared.pending
            logger.error(
                '%s Nothing discovered is lost: the pages this run processed since its last sync still wait in the '
                'store, and a run started later fetches them again.',
                exc,
            )
    return unsaved


class SharedRequestManager(ForwardingRequestManager):
    """Wraps a run's request queue so that parallel runs crawl each URL about once.

    * Adding a request: a URL any run already knows is dropped; a new URL is marked `enqueued` in the shared map, and
      queued here only if this run *owns* it: each URL has one owner among the live runs (rendezvous hashing over
      the runs seen in the store). Otherwise it is handed over through the map.
    * A background loop syncs the map and queues the `enqueued` URLs this run owns and has not queued yet (handed
      over to it, or left by a run that died or finished: ownership moves when the set of live runs changes), a
      batch of `QUEUE_BATCH` at a time, refilled as the crawler drains the queue. It calls `on_done` once nothing is
      queued here and no URL in the map is waiting, or once the limit is reached.
      It syncs every `sync_interval_secs` while busy, at once when the queue runs empty, and about once a second
      while idle, so the end of the crawl is noticed quickly.
    * Fetching: a request whose URL another run has processed meanwhile is skipped before the HTTP request; so is one
      that another live run owns now (a run joined): that run fetches it. So a waiting URL is fetched by its current
      owner only, whatever was queued where before (e.g. the queue of an interrupted attempt).
    * Limit: with `max_processed`, a request is handed out only while this run's own started requests plus the
      pages the other runs processed (as of the last sync) stay under the limit, and only this run's share of what
      is left (what is left / live runs) between two syncs.
    * Handled requests are marked `processed`, `failed` (retries exhausted) or `skipped`.

    The map's keys are URLs without their fragment and `utm_` parameters, with the query sorted (`map_key`): unlike
    crawlee's default unique keys, they keep the path's case and trailing slash, so another run can fetch them as
    they are. Requests are queued with that key as their unique key, so the queue dedupes exactly as the map does.

    Usage:
        ```python
        async with SharedRequestManager.open_crawl('crawl-state', expected_runs=3) as manager:
            crawler = BeautifulSoupCrawler(request_handler=router, request_manager=manager, keep_alive=True)
            await manager.wait_for_runs()
            await manager.run(crawler, start_urls)
        ```

        `open_crawl` opens the shared maps and the run's queue, and on any exit (an error included) stops the
        loop, does a final sync, releases the lease and marks this run finished, so the others never wait for it.
        For finer control: `SharedRequestManager.open(shared)`, `start(on_done=...)`, `tick()`, `close()`.
    """

    def __init__(self, inner: RequestManager, shared: SharedMap, **options: Any) -> None:
        """Wrap `inner` (the run's own request queue); `options` are those of `SharedFrontier`."""
        super().__init__(inner)
        self._frontier = SharedFrontier(inner, shared, **options)

    @classmethod
    async def open(
        cls, shared: SharedMap, *, queue: RequestManager | None = None, **options: Any
    ) -> SharedRequestManager:
        """Wrap `queue` (default: the run's default request queue)."""
        if queue is None:
            from crawlee.storages import RequestQueue

            queue = await RequestQueue.open()
        return cls(queue, shared, **options)

    @classmethod
    @contextlib.asynccontextmanager
    async def open_crawl(
        cls,
        store_name: str,
        *,
        connection: str | None = None,
        run_id: str | None = None,
        sync_interval_secs: float = 10.0,
        dead_after_secs: float = 120.0,
        expected_runs: int = 1,
        with_depths: bool = False,
        queue: RequestManager | None = None,
        max_processed: int | None = None,
        store_timeout_secs: float = 300.0,
    ) -> AsyncIterator[SharedRequestManager]:
        """Share a crawl through the named store: the maps, the run's queue behind them, and their whole lifecycle.

        Args:
            store_name: The shared key-value store (not `default`).
            connection: Where it lives (`file:///...`, a SQLAlchemy URL); default: the Actor's storage.
            run_id: This run's id (default: the Apify run id, else random).
            sync_interval_secs: How often a busy run syncs.
            dead_after_secs: Silence after which a run's URLs move to the others; heartbeats are written well
                within it.
            expected_runs: Runs taking part: the crawl starts once this run sees them (or after a timeout).
            with_depths: Keep each URL's crawl depth in the store too (needed with a maximum crawl depth).
            queue: The run's own request queue. Default: one in memory, so the crawl costs no request-queue
                operations; what a run must not lose is in the shared map (`enqueued`), and a restarted run rebuilds
                its queue from there.
            max_processed: The crawl-wide page limit.
            store_timeout_secs: Longest wait for one store call. Closing takes at most twice this long whatever the
                store does (`unsaved_changes` then says what was not saved).
        """
        heartbeat = min(sync_interval_secs, dead_after_secs / 4)
        maps = [
            await SharedMap.open(
                store_name,
                connection=connection,
                run_id=run_id,
                heartbeat_secs=heartbeat,
                store_timeout_secs=store_timeout_secs,
            )
        ]
        manager: SharedRequestManager | None = None
        try:
            # Label, user data and depth of each URL, so that a URL handed over keeps them.
            info = SharedMap(
                maps[0].store,
                run_id=maps[0].run_id,
                prefix=info_prefix(maps[0].prefix),
                store_timeout_secs=store_timeout_secs,
            )
            maps.append(info)
            await info.initialize()
            if queue is None:
                queue = await RequestQueue.open(storage_client=MemoryStorageClient())
            manager = cls(
                queue,
                maps[0],
                sync_interval_secs=sync_interval_secs,
                dead_after_secs=dead_after_secs,
                expected_runs=expected_runs,
                info=maps[1],
                keep_depths=with_depths,
                max_processed=max_processed,
            )
            try:
                yield manager
            finally:
                await manager.close()
        finally:
            unsaved = await _close_maps(reversed(maps))
            if manager is not None:
                manager.unsaved_changes = unsaved

    async def run(self, crawler: BasicCrawler[Any, Any], requests: Sequence[str | Request]) -> None:
        """Run `crawler` (built with this request manager and `keep_alive=True`) until the whole crawl is done.

        Call `wait_for_runs()` first, so that ownership is stable from the start.
        """
        self.start(on_done=crawler.stop)
        await crawler.run(requests)

    # ------------------------------------------------------------------ the frontier's controls

    @property
    def frontier(self) -> SharedFrontier:
        """The sharing state and background loop behind this manager."""
        return self._frontier

    @property
    def shared(self) -> SharedMap:
        """The shared map of URL -> status."""
        return self._frontier.shared

    @property
    def info(self) -> SharedMap | None:
        """The shared map of URL -> request info (label, user data, depth), if kept."""
        return self._frontier.info

    @property
    def stats(self) -> SharingStats:
        """What the sharing saved and cost, for this run."""
        return self._frontier.stats

    @property
    def last_sync(self) -> SyncResult | None:
        """What the last sync of the status map did."""
        return self._frontier.last_sync

    @property
    def live_runs(self) -> list[str]:
        """The runs that currently share the crawl, as of the last sync."""
        return self._frontier.live_runs

    @property
    def started(self) -> int:
        """Requests this run handed out to the crawler (each URL once, retries not counted)."""
        return self._frontier.started

    def owner(self, url: str) -> str:
        """The live run that should fetch `url` (rendezvous hashing over the live runs)."""
        return self._frontier.owner(url)

    async def wait_for_runs(self, timeout_secs: float | None = None) -> list[str]:
        """Sync until `expected_runs` runs are seen (see `SharedFrontier.wait_for_runs`)."""
        return await self._frontier.wait_for_runs(timeout_secs)

    def start(self, *, on_done: Callable[[], Any]) -> None:
        """Start the background loop; `on_done` is called once the whole crawl is done (e.g. `crawler.stop`)."""
        self._frontier.start(on_done=on_done)

    async def close(self) -> None:
        """Stop the background loop."""
        await self._frontier.close()

    async def sync(self) -> None:
        """Sync the shared maps and learn which runs are live (hence who owns what)."""
        await self._frontier.sync()

    async def take_over(self) -> bool:
        """Queue the waiting URLs this run owns and has not queued; whether the whole crawl is done."""
        return await self._frontier.take_over()

    async def tick(self) -> bool:
        """One round of the loop: sync, queue the URLs this run owns, and check whether the crawl is done."""
        return await self._frontier.tick()

    def is_known(self, url: str) -> bool:
        """Whether the shared map already has `url` (any status), counted as a known link skipped if so.

        A link to a known URL need not become a `Request` at all: `enqueue_links(transform_request_function=...)` can
        drop it before crawlee builds one, which `add_requests` would then skip anyway.
        """
        if map_key(url) in self.shared:
            self.stats.known_skipped += 1
            return True
        return False

    unsaved_changes = 0
    """Changes the store did not take when the crawl was closed (see `open_crawl`); 0 when all were saved."""

    # ------------------------------------------------------------------ RequestManager

    @override
    async def add_request(self, request: str | Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Queue `request` here if it is new and this run owns it; record it in the shared map either way."""
        request = with_map_key(self._transform_request(request))
        if not self._admit(request):
            return ProcessedRequest(unique_key=request.unique_key, was_already_present=True, was_already_handled=False)
        return await self.inner.add_request(request, forefront=forefront)

    @override
    async def add_requests(
        self,
        requests: Sequence[str | Request],
        *,
        forefront: bool = False,
        batch_size: int = 1000,
        wait_time_between_batches: timedelta | None = None,
        wait_for_all_requests_to_be_added: bool = False,
        wait_for_all_requests_to_be_added_timeout: timedelta | None = None,
    ) -> None:
        """Queue the new requests this run owns; record all new ones in the shared map."""
        keyed = [with_map_key(self._transform_request(request)) for request in requests]
        admitted = [request for request in keyed if self._admit(request)]
        if admitted:
            await super().add_requests(
                admitted,
                forefront=forefront,
                batch_size=batch_size,
                wait_time_between_batches=wait_time_between_batches,
                wait_for_all_requests_to_be_added=wait_for_all_requests_to_be_added,
                wait_for_all_requests_to_be_added_timeout=wait_for_all_requests_to_be_added_timeout,
            )

    def _admit(self, request: Request) -> bool:
        url = request.unique_key  # the map key (see `map_key`), which the queue dedupes on too
        frontier, shared, info = self._frontier, self.shared, self.info
        if url in shared:
            self.stats.known_skipped += 1
            return False
        shared[url] = ENQUEUED
        if request.method != 'GET':
            frontier.state.mark_queued(url)
            return True  # only GET requests can be rebuilt from their key by another run
        if info is not None:  # so that whoever fetches it, now or after a restart, routes it the same way
            request_data = request_info(request, keep_depth=frontier.keep_depths)
            if request_data is not None:
                try:
                    info[url] = request_data
                except (TypeError, ValueError) as exc:  # user data that is not JSON: keep the label and depth
                    logger.warning('The user data of %s cannot be shared (%s); only its label and depth are.', url, exc)
                    info[url] = request_info(request.model_copy(update={'user_data': {}}), keep_depth=True)
        if frontier.owner(url) != shared.run_id:
            frontier.note_handed_over()
            return False
        frontier.state.mark_queued(url)
        return True

    @override
    async def fetch_next_request(self) -> Request | None:
        """The next request to fetch: none beyond the limit, none another run processed or owns now."""
        frontier, shared = self._frontier, self.shared
        while True:
            if frontier.held_back():
                frontier.note_idle()  # the limit, or this run's share of what is left before the next sync
                return None
            request = await self.inner.fetch_next_request()
            if request is None and await frontier.refill():
                request = await self.inner.fetch_next_request()
            if request is None:
                frontier.note_idle()
                return None
            key = map_key_of(request)
            status = shared.get(key)
            let_go = False
            if status is not None and status != ENQUEUED:
                self.stats.skipped_before_fetch += 1
            elif request.method == 'GET' and frontier.owner(key) != shared.run_id:
                self.stats.left_to_owner += 1  # its owner queues it from the map; this run may get it back later
                let_go = True
            else:
                frontier.note_started(key, done=status in DONE)
                return request
            frontier.state.mark_unqueued(key, let_go=let_go)
            frontier.note_marked_handled()
            await self.inner.mark_request_as_handled(request)

    @override
    async def mark_request_as_handled(self, request: Request) -> ProcessedRequest | None:
        """Record the outcome in the shared map, then in the queue."""
        frontier = self._frontier
        state = request.state
        key = map_key_of(request)
        self.shared[key] = (
            PROCESSED if state == RequestState.DONE else SKIPPED if state == RequestState.SKIPPED else FAILED
        )
        frontier.state.mark_unqueued(key)
        frontier.note_ended()
        frontier.note_marked_handled()
        result = await self.inner.mark_request_as_handled(request)
        if frontier.in_flight == 0 and await self.is_empty():
            frontier.sync_soon()  # this run's last request ended: sync now, not at the next interval
        return result

    @override
    async def reclaim_request(self, request: Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Give a failed request back to the queue for a retry."""
        self._frontier.note_ended()
        return await self.inner.reclaim_request(request, forefront=forefront)

    @override
    async def is_empty(self) -> bool:
        """Whether this run has nothing to fetch now (its queue is empty, or the limit holds it back)."""
        return await self._frontier.is_empty()

    @override
    async def is_finished(self) -> bool:
        """Whether this run has nothing to fetch and nothing in progress."""
        if self._frontier.in_flight:
            return False
        return self._frontier.held_back() or await self.inner.is_finished()

"""A crawlee request manager that shares URL state between parallel runs through a `SharedMap`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from crawlee import Request, RequestState
from crawlee.request_loaders import RequestManager
from crawlee.storage_clients.models import ProcessedRequest

from ._values import ENQUEUED

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import timedelta

    from ._shared_map import SharedMap
    from ._stats import SyncResult

logger = logging.getLogger(__name__)

PROCESSED = 'processed'
FAILED = 'failed'
SKIPPED = 'skipped'
_DEPTH_KEY = 'crawl_depth'


@dataclass
class SharingStats:
    """What the sharing saved and cost, for this run."""

    known_skipped: int = 0
    """Discovered URLs dropped because some run already knew them."""
    handed_over: int = 0
    """Discovered URLs left in the map for the run that owns them."""
    taken_over: int = 0
    """URLs this run queued from the map (handed over to it, or left by a run that died or finished)."""
    skipped_before_fetch: int = 0
    """Queued requests not fetched because another run had processed them meanwhile."""
    owner_changes: int = 0
    """Times the set of live runs (hence URL ownership) changed."""
    syncs: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class SharedRequestManager(RequestManager):
    """Wraps a run's request queue so that parallel runs crawl each URL about once.

    * Adding a request: a URL any run already knows is dropped; a new URL is marked `enqueued` in the shared map, and
      queued here only if this run *owns* it: each URL has one owner among the live runs (rendezvous hashing over
      the runs seen in the store). Otherwise it is handed over through the map.
    * A background loop syncs the map, queues the `enqueued` URLs this run owns (handed over to it, or left by a
      run that died or finished: ownership moves when the set of live runs changes), and calls `on_done` once
      nothing is queued here and no URL in the map is waiting.
    * Fetching: a request whose URL another run has processed meanwhile is skipped before the HTTP request.
    * Handled requests are marked `processed`, `failed` (retries exhausted) or `skipped`.

    The map's keys are URLs without their fragment and `utm_` parameters, with the query sorted (`map_key`): unlike
    crawlee's default unique keys, they keep the path's case and trailing slash, so another run can fetch them as
    they are. Requests are queued with that key as their unique key, so the queue dedupes exactly as the map does.

    Usage:
        ```python
        shared = await SharedMap.open(name='crawl-state', heartbeat_secs=5)
        manager = await SharedRequestManager.open(shared, sync_interval_secs=5, expected_runs=3)
        crawler = BeautifulSoupCrawler(request_handler=router, request_manager=manager, keep_alive=True)
        manager.start(on_done=crawler.stop)
        await crawler.run(start_urls)
        await manager.close()
        ```
    """

    def __init__(
        self,
        inner: RequestManager,
        shared: SharedMap,
        *,
        sync_interval_secs: float = 10.0,
        dead_after_secs: float = 60.0,
        expected_runs: int = 1,
        depths: SharedMap | None = None,
        max_processed: int | None = None,
    ) -> None:
        """Wrap `inner` (the run's own request queue).

        Args:
            inner: The run's request queue.
            shared: The shared map of URL -> status (create it with `heartbeat_secs` below `dead_after_secs`).
            sync_interval_secs: How often the background loop syncs.
            dead_after_secs: A run silent for this long is taken for dead: its URLs move to the live runs.
            expected_runs: How many runs take part; `wait_for_runs()` waits until it sees them.
            depths: A second shared map of URL -> crawl depth, so a URL handed over keeps its depth (only needed
                with a maximum crawl depth).
            max_processed: Stop once this many URLs are processed by all runs together (approximate).
        """
        self._inner = inner
        self._shared = shared
        self._depths = depths
        self._sync_interval = sync_interval_secs
        self._dead_after = dead_after_secs
        self._expected_runs = expected_runs
        self._max_processed = max_processed
        self._live: list[str] = shared.live_runs(dead_after_secs)
        self._previous_live: list[str] = []
        # URLs already waiting when this run joined runs that were crawling: their owner before it joined may have
        # queued them already, so this run takes one over only once that owner is gone.
        self._inherited: set[str] | None = None
        self._join_others: list[str] = []
        self._queued: set[str] = set()
        self._owner_cache: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._on_done: Callable[[], Any] | None = None
        self._done = False
        self._rescan = True
        self.stats = SharingStats()
        self.last_sync: SyncResult | None = None

    @classmethod
    async def open(
        cls, shared: SharedMap, *, queue: RequestManager | None = None, **options: Any
    ) -> SharedRequestManager:
        """Wrap `queue` (default: the run's default request queue)."""
        if queue is None:
            from crawlee.storages import RequestQueue

            queue = await RequestQueue.open()
        return cls(queue, shared, **options)

    @property
    def inner(self) -> RequestManager:
        """The wrapped request queue."""
        return self._inner

    @property
    def live_runs(self) -> list[str]:
        """The runs that currently share the crawl, as of the last sync."""
        return list(self._live)

    # ------------------------------------------------------------------ ownership

    def owner(self, url: str) -> str:
        """The live run that should fetch `url`: the highest hash of (run, url) wins (rendezvous hashing)."""
        runs = self._live
        if len(runs) == 1:
            return runs[0]
        owner = self._owner_cache.get(url)
        if owner is None:
            owner = _rendezvous(runs, url)
            if len(self._owner_cache) > 200_000:
                self._owner_cache.clear()
            self._owner_cache[url] = owner
        return owner

    def _refresh_live_runs(self) -> None:
        live = self._shared.live_runs(self._dead_after)
        if live != self._live:
            logger.info('Runs sharing the crawl: %s (was %s).', ', '.join(live), ', '.join(self._live))
            self._previous_live = self._live
            self._live = live
            self._owner_cache.clear()
            self.stats.owner_changes += 1
            self._rescan = True

    # ------------------------------------------------------------------ RequestManager

    async def add_request(self, request: str | Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Queue `request` here if it is new and this run owns it; record it in the shared map either way."""
        request = _with_map_key(self._transform_request(request))
        if not self._admit(request):
            return ProcessedRequest(unique_key=request.unique_key, was_already_present=True, was_already_handled=False)
        return await self._inner.add_request(request, forefront=forefront)

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
        keyed = [_with_map_key(self._transform_request(request)) for request in requests]
        admitted = [request for request in keyed if self._admit(request)]
        if admitted:
            options: dict[str, Any] = {
                'forefront': forefront,
                'batch_size': batch_size,
                'wait_for_all_requests_to_be_added': wait_for_all_requests_to_be_added,
                'wait_for_all_requests_to_be_added_timeout': wait_for_all_requests_to_be_added_timeout,
            }
            if wait_time_between_batches is not None:
                options['wait_time_between_batches'] = wait_time_between_batches
            await self._inner.add_requests(admitted, **options)

    def _admit(self, request: Request) -> bool:
        url = request.unique_key  # the map key (see `map_key`), which the queue dedupes on too
        if url in self._shared:
            self.stats.known_skipped += 1
            return False
        self._shared[url] = ENQUEUED
        if request.method != 'GET':
            self._queued.add(url)
            return True  # only GET requests can be rebuilt from their key by another run
        if self.owner(url) != self._shared.run_id:
            if self._depths is not None:
                self._depths[url] = request.crawl_depth
            self.stats.handed_over += 1
            return False
        self._queued.add(url)
        return True

    async def fetch_next_request(self) -> Request | None:
        """The next request to fetch, skipping those another run has processed meanwhile."""
        while True:
            request = await self._inner.fetch_next_request()
            if request is None:
                return None
            status = self._shared.get(request.unique_key)
            if status is None or status == ENQUEUED:
                return request
            self.stats.skipped_before_fetch += 1
            await self._inner.mark_request_as_handled(request)

    async def mark_request_as_handled(self, request: Request) -> ProcessedRequest | None:
        """Record the outcome in the shared map, then in the queue."""
        state = request.state
        self._shared[request.unique_key] = (
            PROCESSED if state == RequestState.DONE else SKIPPED if state == RequestState.SKIPPED else FAILED
        )
        return await self._inner.mark_request_as_handled(request)

    async def reclaim_request(self, request: Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Give a failed request back to the queue for a retry."""
        return await self._inner.reclaim_request(request, forefront=forefront)

    async def get_handled_count(self) -> int:
        """Requests this run handled."""
        return await self._inner.get_handled_count()

    async def get_total_count(self) -> int:
        """Requests in this run's queue."""
        return await self._inner.get_total_count()

    async def is_empty(self) -> bool:
        """Whether this run's queue has nothing left to fetch."""
        return await self._inner.is_empty()

    async def is_finished(self) -> bool:
        """Whether this run's queue is empty and nothing is in progress."""
        return await self._inner.is_finished()

    async def drop(self) -> None:
        """Drop the wrapped queue."""
        await self._inner.drop()

    # ------------------------------------------------------------------ the loop

    async def wait_for_runs(self, timeout_secs: float) -> list[str]:
        """Sync until `expected_runs` runs are seen (or the timeout passes), so ownership is stable from the start."""
        deadline = time.monotonic() + timeout_secs
        while True:
            await self._sync()
            if len(self._live) >= self._expected_runs or time.monotonic() >= deadline:
                return self.live_runs
            await asyncio.sleep(min(1.0, self._sync_interval))

    def start(self, *, on_done: Callable[[], Any]) -> None:
        """Start the background loop; `on_done` is called once the whole crawl is done (e.g. `crawler.stop`)."""
        self._on_done = on_done
        self._task = asyncio.create_task(self._loop(), name='shared-request-manager')

    async def close(self) -> None:
        """Stop the background loop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while not self._done:
            await asyncio.sleep(self._sync_interval)
            try:
                await self._sync()
                await self._take_over_and_check_done()
            except Exception as exc:  # The crawl goes on with local state; the next round retries.
                logger.warning('Sharing the crawl state failed, will retry in %.1f s: %s', self._sync_interval, exc)

    async def _sync(self) -> None:
        result = await self._shared.sync()
        if self._depths is not None:
            await self._depths.sync()
        self.stats.syncs += 1
        self.last_sync = result
        if result.entries_changed:
            self._rescan = True
        self._refresh_live_runs()
        if self._inherited is None:
            self._join_others = [run for run in self._live if run != self._shared.run_id]
            waiting = {url for url, status in self._shared.items() if status == ENQUEUED}
            self._inherited = waiting if self._join_others else set()

    async def _take_over_and_check_done(self) -> None:
        me = self._shared.run_id
        waiting = processed = 0
        mine: list[str] = []
        # A URL that a run still alive owned before the last change of runs is likely in that run's queue already.
        live = set(self._live)
        still_here = live & set(self._previous_live) - {me} if len(self._previous_live) > 1 else set()
        inherited = self._inherited or set()
        for url, status in self._shared.items():  # Synchronous: the map cannot change during the scan.
            if status == ENQUEUED:
                waiting += 1
                if (
                    self._rescan
                    and url not in self._queued
                    and self.owner(url) == me
                    and (not still_here or _rendezvous(self._previous_live, url) not in still_here)
                    and not (url in inherited and _rendezvous(self._join_others, url) in live)
                ):
                    mine.append(url)
            elif status == PROCESSED:
                processed += 1
        self._rescan = False
        if mine:
            requests = [self._request_from_map(url) for url in mine]
            await self._inner.add_requests(requests)
            self._queued.update(mine)
            self.stats.taken_over += len(mine)
            logger.info('Took over %d URLs from the shared map.', len(mine))
        sync = self.last_sync
        logger.info(
            'Shared map: %d URLs known, %d processed, %d waiting; %d runs live, %d owner changes; duplicates avoided: '
            '%d known links, %d processed elsewhere; sync %.2f s, %d records read.',
            len(self._shared),
            processed,
            waiting,
            len(self._live),
            self.stats.owner_changes,
            self.stats.known_skipped,
            self.stats.skipped_before_fetch,
            sync.seconds if sync else 0.0,
            sync.records_read if sync else 0,
        )
        limit_reached = self._max_processed is not None and processed >= self._max_processed
        if limit_reached or (waiting == 0 and await self._inner.is_finished()):
            self._done = True
            reason = 'the limit of processed pages was reached' if limit_reached else 'no URL is waiting in any run'
            logger.info('The shared crawl is done: %s (%d processed).', reason, processed)
            if self._on_done is not None:
                self._on_done()

    def _request_from_map(self, url: str) -> Request:
        request = Request.from_url(url, unique_key=url)
        depth = self._depths.get(url) if self._depths is not None else None
        if isinstance(depth, int):
            request.crawl_depth = depth
        return request


def _rendezvous(runs: list[str], url: str) -> str:
    return max(runs, key=lambda run: hashlib.blake2b(f'{run}\n{url}'.encode(), digest_size=8).digest())


def map_key(url: str) -> str:
    """The shared-map key of a URL: no fragment, no `utm_` parameters, sorted query, lower-case scheme and host.

    The path and the query's encoding are kept as they are, so the key is a URL that fetches the same page.
    """
    parts = urlsplit(url.strip())
    pairs = sorted(pair for pair in parts.query.split('&') if pair and not pair.startswith('utm_'))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or '/', '&'.join(pairs), ''))


def _with_map_key(request: Request) -> Request:
    if request.method != 'GET':
        return request
    key = map_key(request.url)
    return request if request.unique_key == key else request.model_copy(update={'unique_key': key})

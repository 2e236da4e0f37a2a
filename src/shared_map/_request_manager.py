"""A crawlee request manager that shares URL state between parallel runs through a `SharedMap`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
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
_DONE = (PROCESSED, FAILED)
"""Statuses that count towards `max_processed` (crawlee counts failed requests towards its limit too)."""
_MAP_KEY_FIELD = '__sharedMapKey'
"""`user_data` field of a request queued again under a fresh unique key: the map key it stands for."""
IDLE_POLL_SECS = 1.0
"""How often a run with nothing to fetch syncs, so it learns of new work or of the end of the crawl quickly."""
_MIN_SYNC_GAP_SECS = 0.2
"""Least time between two syncs that a change of state (not the clock) asks for."""
HUNGRY_BELOW = 20
"""A run with fewer URLs waiting for it than this is about to run out of work: others publish their handovers sooner."""
_CAREFUL_PER_RUN = 10
"""With several runs, the last `10 x runs` pages of the limit are started one per sync per run."""
_FAST_PACE = 50.0
"""Pages per second a run is assumed to fetch when guessing when it runs out of work (a guess on the early side)."""


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
    left_to_owner: int = 0
    """Queued requests not fetched because another live run owns them now (it queues and fetches them)."""
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
    * A background loop syncs the map and queues every `enqueued` URL this run owns and has not queued yet (handed
      over to it, or left by a run that died or finished: ownership moves when the set of live runs changes). It
      calls `on_done` once nothing is queued here and no URL in the map is waiting, or once the limit is reached.
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
            sync_interval_secs: How often the background loop syncs while this run has requests to fetch.
            dead_after_secs: A run silent for this long is taken for dead: its URLs move to the live runs.
            expected_runs: How many runs take part; `wait_for_runs()` waits until it sees them.
            depths: A second shared map of URL -> crawl depth, so a URL handed over keeps its depth (only needed
                with a maximum crawl depth).
            max_processed: Stop once this many URLs are processed (or failed) by all runs together: exact with one
                run; with several, exceeded by at most what the other runs started but had not synced yet.
        """
        self._inner = inner
        self._shared = shared
        self._depths = depths
        self._sync_interval = sync_interval_secs
        self._idle_poll = min(IDLE_POLL_SECS, sync_interval_secs)
        self._dead_after = dead_after_secs
        self._expected_runs = expected_runs
        self._max_processed = max_processed
        self._live: list[str] = shared.live_runs(dead_after_secs)
        # URLs already waiting when this run joined runs that were crawling: their owner before it joined may still
        # fetch them from its queue until it sees this run, so this run leaves them alone for a grace period.
        self._inherited: set[str] | None = None
        self._join_others: list[str] = []
        self._grace_until = 0.0
        # Map keys in this run's queue (queued or in flight) and not handled yet.
        self._queued: set[str] = set()
        # Map keys whose queued request was marked handled unfetched (another run owned it): the queue would ignore
        # the same unique key again, so taking such a URL over again queues it under a fresh one.
        self._let_go: set[str] = set()
        self._requeues = 0
        # Whether this run's queue held handled requests before this run (kept from an interrupted attempt).
        self._queue_had_history: bool | None = None
        self._handled = 0  # requests this run marked handled in its queue
        self._started: set[str] = set()  # map keys handed out to the crawler by this run
        self._in_flight = 0
        self._others_done = 0  # pages the other runs processed or failed, as of the last scan
        self._allowance: int | None = None  # requests this run may start before its next sync (with a limit)
        self._owner_cache: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._on_done: Callable[[], Any] | None = None
        self._done = False
        self._rescan = True
        self._wake = asyncio.Event()  # set when the loop should re-consider when to sync
        self._sync_now = False  # this run ran out of work, used up its share of the limit, or ended its last request
        self._idle = False
        self._handed_since_sync = 0
        # When another live run is expected to run out of work (from what waited for it at the last scan): from then
        # on, this run publishes the URLs it hands over about once a second.
        self._others_hungry_at = float('inf')
        self._last_sync_at = float('-inf')
        self._last_report: tuple[int, int, int, int] | None = None
        self._last_report_at = float('-inf')
        self.stats = SharingStats()
        self.last_sync: SyncResult | None = None
        if max_processed is not None:  # pages processed before this run started (e.g. an earlier attempt) count
            self._others_done = sum(1 for status in shared.values() if status in _DONE)
            self._update_allowance()

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

    @property
    def started(self) -> int:
        """Requests this run handed out to the crawler (each URL once, retries not counted)."""
        return len(self._started)

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
            self._handed_since_sync += 1
            if self._handed_since_sync == 1 and time.monotonic() >= self._others_hungry_at:
                self._wake.set()  # another run is running out of work: publish sooner
            return False
        self._queued.add(url)
        return True

    async def fetch_next_request(self) -> Request | None:
        """The next request to fetch: none beyond the limit, none another run processed or owns now."""
        while True:
            if self._held_back():
                self._note_idle()  # the limit, or this run's share of what is left before the next sync
                return None
            request = await self._inner.fetch_next_request()
            if request is None:
                self._note_idle()
                return None
            key = _map_key_of(request)
            status = self._shared.get(key)
            if status is not None and status != ENQUEUED:
                self.stats.skipped_before_fetch += 1
            elif request.method == 'GET' and self.owner(key) != self._shared.run_id:
                self.stats.left_to_owner += 1  # its owner queues it from the map; this run may get it back later
                self._let_go.add(key)
            else:
                if key not in self._started:
                    self._started.add(key)
                    if self._allowance is not None:
                        self._allowance -= 1
                self._in_flight += 1
                return request
            self._queued.discard(key)
            self._handled += 1
            await self._inner.mark_request_as_handled(request)

    async def mark_request_as_handled(self, request: Request) -> ProcessedRequest | None:
        """Record the outcome in the shared map, then in the queue."""
        state = request.state
        key = _map_key_of(request)
        self._shared[key] = (
            PROCESSED if state == RequestState.DONE else SKIPPED if state == RequestState.SKIPPED else FAILED
        )
        self._queued.discard(key)
        self._in_flight = max(0, self._in_flight - 1)
        self._handled += 1
        result = await self._inner.mark_request_as_handled(request)
        if self._in_flight == 0 and await self.is_empty():
            self._sync_soon()  # this run's last request ended: sync now, not at the next interval
        return result

    async def reclaim_request(self, request: Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Give a failed request back to the queue for a retry."""
        self._in_flight = max(0, self._in_flight - 1)
        return await self._inner.reclaim_request(request, forefront=forefront)

    async def get_handled_count(self) -> int:
        """Requests this run handled."""
        return await self._inner.get_handled_count()

    async def get_total_count(self) -> int:
        """Requests in this run's queue."""
        return await self._inner.get_total_count()

    async def is_empty(self) -> bool:
        """Whether this run has nothing to fetch now (its queue is empty, or the limit holds it back)."""
        if self._held_back() or await self._inner.is_empty():
            self._note_idle()
            return True
        self._idle = False
        return False

    async def is_finished(self) -> bool:
        """Whether this run has nothing to fetch and nothing in progress."""
        if self._in_flight:
            return False
        return self._held_back() or await self._inner.is_finished()

    async def drop(self) -> None:
        """Drop the wrapped queue."""
        await self._inner.drop()

    def _held_back(self) -> bool:
        """Whether the limit (or this run's share of what is left of it) keeps this run from starting requests."""
        return self._allowance is not None and self._allowance <= 0

    def _note_idle(self) -> None:
        """Sync when this run runs out of work, so its handovers and the end of the crawl are not delayed."""
        if not self._idle:
            self._idle = True
            self._sync_soon()

    def _sync_soon(self) -> None:
        self._sync_now = True
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def wait_for_runs(self, timeout_secs: float) -> list[str]:
        """Sync until `expected_runs` runs are seen (or the timeout passes), so ownership is stable from the start."""
        deadline = time.monotonic() + timeout_secs
        while True:
            await self._sync()
            if len(self._live) >= self._expected_runs or time.monotonic() >= deadline:
                return self.live_runs
            await asyncio.sleep(min(0.25, self._idle_poll))  # a short phase: the crawl starts once all are seen

    def start(self, *, on_done: Callable[[], Any]) -> None:
        """Start the background loop; `on_done` is called once the whole crawl is done (e.g. `crawler.stop`)."""
        self._on_done = on_done
        self._sync_soon()  # a first round at once: queue the URLs this run owns (e.g. when resuming a crawl)
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
            self._wake.clear()
            delay = await self._next_sync_delay()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue  # woken or due: decide again
            self._sync_now = False
            try:
                await self._sync()
                await self._take_over_and_check_done()
            except Exception as exc:  # The crawl goes on with local state; the next round retries.
                logger.warning('Sharing the crawl state failed, will retry in %.1f s: %s', self._idle_poll, exc)
                await asyncio.sleep(self._idle_poll)

    async def _next_sync_delay(self) -> float:
        """Seconds until the next sync: soon when this run ran out of work, ~1 s while idle or others starve."""
        idle = await self.is_empty()  # may find that this run just ran out of work
        now = time.monotonic()
        hungry_in = self._others_hungry_at - now if self._handed_since_sync else float('inf')
        if self._sync_now:
            interval = _MIN_SYNC_GAP_SECS
        elif idle or hungry_in <= 0:
            interval = self._idle_poll
        else:
            interval = self._sync_interval
        delay = self._last_sync_at + interval - now
        if hungry_in > 0:
            delay = min(delay, hungry_in)  # then decide again: with others hungry, sync about once a second
        if self._grace_until:
            delay = min(delay, self._grace_until - now)
        return delay

    async def _sync(self) -> None:
        self._last_sync_at = time.monotonic()
        self._handed_since_sync = 0
        result = await self._shared.sync()
        if self._depths is not None:
            await self._depths.sync()
        self.stats.syncs += 1
        self.last_sync = result
        if result.entries_changed:
            self._rescan = True
        self._refresh_live_runs()
        self._update_allowance()
        if self._inherited is None:
            self._join_others = [run for run in self._live if run != self._shared.run_id]
            waiting = {url for url, status in self._shared.items() if status == ENQUEUED}
            self._inherited = waiting if self._join_others else set()
            if self._inherited:
                # The others see this run within their sync interval, then leave these URLs to their new owner.
                self._grace_until = time.monotonic() + self._sync_interval + 2 * self._idle_poll

    async def _take_over_and_check_done(self) -> None:
        me = self._shared.run_id
        waiting = done = mine_done = 0
        mine: list[str] = []
        if self._grace_until and time.monotonic() >= self._grace_until:
            self._inherited, self._grace_until, self._rescan = set(), 0.0, True
        live = set(self._live)
        inherited = self._inherited or set()
        rescan = self._rescan
        waiting_for: dict[str, int] = dict.fromkeys(live - {me}, 0)  # URLs waiting for each other run
        for url, status in self._shared.items():  # Synchronous: the map cannot change during the scan.
            if status == ENQUEUED:
                waiting += 1
                if not rescan or url in self._queued:
                    continue
                owner = self.owner(url)
                if owner != me:
                    waiting_for[owner] = waiting_for.get(owner, 0) + 1
                elif not (url in inherited and _rendezvous(self._join_others, url) in live):
                    mine.append(url)
            elif status in _DONE:
                done += 1
                if url in self._started:
                    mine_done += 1
        if rescan:
            self._expect_hunger(waiting_for)
        self._rescan = False
        self._others_done = done - mine_done
        if mine:
            await self._queue_taken_over(mine)
        self._update_allowance()
        self._report(waiting, done)
        known = len(self._started) + self._others_done
        limit_reached = self._max_processed is not None and known >= self._max_processed
        if self._in_flight == 0 and (limit_reached or (waiting == 0 and await self._inner.is_finished())):
            self._done = True
            reason = 'the limit of processed pages was reached' if limit_reached else 'no URL is waiting in any run'
            logger.info('The shared crawl is done: %s (%d processed or failed).', reason, max(done, known))
            if self._on_done is not None:
                self._on_done()

    def _expect_hunger(self, waiting_for: dict[str, int]) -> None:
        """Guess when the first other live run runs out of work, from what waits for it now."""
        least = min(waiting_for.values(), default=None)
        self._others_hungry_at = (
            float('inf') if least is None else time.monotonic() + max(0, least - HUNGRY_BELOW) / _FAST_PACE
        )

    async def _queue_taken_over(self, urls: list[str]) -> None:
        fresh = [url for url in urls if url not in self._let_go]
        again = [url for url in urls if url in self._let_go]
        if self._queue_had_history is None:
            self._queue_had_history = await self._inner.get_handled_count() > self._handled
        if self._queue_had_history:
            for url in fresh:  # one by one, to learn which ones the queue had handled already
                result = await self._inner.add_request(self._request_from_map(url))
                if result is not None and result.was_already_handled:
                    # Handled in this queue by an interrupted attempt, yet still waiting in the map: fetch it again.
                    again.append(url)
        elif fresh:
            await self._inner.add_requests([self._request_from_map(url) for url in fresh])
        if again:
            await self._inner.add_requests([self._request_from_map(url, fresh_key=True) for url in again])
            self._let_go.difference_update(again)
        self._queued.update(urls)
        self._idle = False
        self.stats.taken_over += len(urls)
        logger.info('Took over %d URLs from the shared map.', len(urls))

    def _update_allowance(self) -> None:
        """How many requests this run may start before its next sync, so that all runs together keep the limit.

        A run sees its own starts at once but the others' only as the pages they processed and synced. One run may
        take all that is left. Several each take their share of what is left above a reserve, then sync again; within
        the reserve, each starts one request per sync, so what the others started unseen is about what they have in
        flight.
        """
        if self._max_processed is None:
            return
        left = self._max_processed - len(self._started) - self._others_done
        runs = len(self._live)
        reserve = _CAREFUL_PER_RUN * runs if runs > 1 else 0
        if left > reserve:
            self._allowance = math.ceil((left - reserve) / runs)
        else:
            self._allowance = 1 if left > 0 else 0

    def _report(self, waiting: int, done: int) -> None:
        """Log the state of the crawl when it changed, at most once per sync interval."""
        now = time.monotonic()
        report = (len(self._shared), done, waiting, len(self._live))
        if report == self._last_report or now - self._last_report_at < self._sync_interval:
            return
        self._last_report, self._last_report_at = report, now
        sync = self.last_sync
        logger.info(
            'Shared map: %d URLs known, %d processed or failed, %d waiting; %d runs live, %d owner changes; '
            'duplicates avoided: %d known links, %d processed elsewhere; sync %.2f s, %d records read.',
            *report,
            self.stats.owner_changes,
            self.stats.known_skipped,
            self.stats.skipped_before_fetch,
            sync.seconds if sync else 0.0,
            sync.records_read if sync else 0,
        )

    def _request_from_map(self, url: str, *, fresh_key: bool = False) -> Request:
        if fresh_key:
            self._requeues += 1
            request = Request.from_url(url, unique_key=f'{url}#again-{self._shared.run_id}-{self._requeues}')
            request.user_data[_MAP_KEY_FIELD] = url
        else:
            request = Request.from_url(url, unique_key=url)
        depth = self._depths.get(url) if self._depths is not None else None
        if isinstance(depth, int):
            request.crawl_depth = depth
        return request


def _rendezvous(runs: list[str], url: str) -> str:
    return max(runs, key=lambda run: hashlib.blake2b(f'{run}\n{url}'.encode(), digest_size=8).digest())


def _map_key_of(request: Request) -> str:
    key = request.user_data.get(_MAP_KEY_FIELD)
    return key if isinstance(key, str) else request.unique_key


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

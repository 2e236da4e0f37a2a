"""The crawl's frontier as one run sees it: who owns which URL, when to sync, what to take over, when it is done.

`SharedRequestManager` (`_request_manager.py`) puts crawlee's `RequestManager` interface on top of this; the per-URL
state lives in `FrontierState` (`_frontier_state.py`), kept up to date on every change of the map.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from crawlee import Request

from ._frontier_state import FrontierState
from ._periodic import stop_task
from ._stats import SharingStats
from ._urls import MAP_KEY_FIELD, request_from_map

if TYPE_CHECKING:
    from collections.abc import Callable

    from crawlee.request_loaders import RequestManager

    from ._shared_map import SharedMap
    from ._stats import SyncResult

logger = logging.getLogger(__name__)

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
QUEUE_BATCH = 2_000
"""Most URLs taken over from the map that wait in this run's queue at once; refilled as the crawler drains it."""


class SharedFrontier:
    """The sharing state and the background loop behind a `SharedRequestManager` (see its docstring)."""

    def __init__(
        self,
        inner: RequestManager,
        shared: SharedMap,
        *,
        sync_interval_secs: float = 10.0,
        dead_after_secs: float = 60.0,
        expected_runs: int = 1,
        info: SharedMap | None = None,
        keep_depths: bool = False,
        max_processed: int | None = None,
    ) -> None:
        """Take over URLs from `shared` into `inner` (the run's own request queue).

        Args:
            inner: The run's request queue.
            shared: The shared map of URL -> status (create it with `heartbeat_secs` below `dead_after_secs`).
            sync_interval_secs: How often the background loop syncs while this run has requests to fetch.
            dead_after_secs: A run silent for this long is taken for dead: its URLs move to the live runs.
            expected_runs: How many runs take part; `wait_for_runs()` waits until it sees them.
            info: A second shared map of URL -> request info (label, user data, depth: see `request_info`), so a URL
                handed over, taken over, or rebuilt after a restart is routed and limited like the original.
            keep_depths: Keep each URL's crawl depth in `info` (needed with a maximum crawl depth).
            max_processed: Stop once this many URLs are processed (or failed) by all runs together: exact with one
                run; with several, exceeded by at most what the other runs started but had not synced yet.
        """
        self._inner = inner
        self._shared = shared
        self._info = info
        if info is not None:  # on every path that publishes statuses: the loop, the Actor's events, close
            shared.publish_after(info)
        self.keep_depths = keep_depths
        self._sync_interval = sync_interval_secs
        self._idle_poll = min(IDLE_POLL_SECS, sync_interval_secs)
        self._dead_after = dead_after_secs
        self._expected_runs = expected_runs
        self._max_processed = max_processed
        self.state = FrontierState(shared.run_id, shared.live_runs(dead_after_secs), shared)
        shared.listen(self.state)
        # Whether the first sync happened: a run joining runs that were crawling leaves the URLs waiting then to
        # their earlier owner for a grace period (it may still fetch them from its queue until it sees this run).
        self._joined = False
        self._grace_until = 0.0
        self._info_read_for = 0  # `state.readied` when the request info was last read for the ready URLs
        self._requeues = 0
        # Whether this run's queue held handled requests before this run (kept from an interrupted attempt).
        self._queue_had_history: bool | None = None
        self._handled = 0  # requests this run marked handled in its queue
        self.in_flight = 0
        self._allowance: int | None = None  # requests this run may start before its next sync (with a limit)
        self._task: asyncio.Task[None] | None = None
        self._on_done: Callable[[], Any] | None = None
        self._done = False
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
        self._update_allowance()

    @property
    def live_runs(self) -> list[str]:
        """The runs that currently share the crawl, as of the last sync."""
        return self.state.live

    @property
    def started(self) -> int:
        """Requests this run handed out to the crawler (each URL once, retries not counted)."""
        return len(self.state.started)

    @property
    def shared(self) -> SharedMap:
        """The shared map of URL -> status."""
        return self._shared

    @property
    def info(self) -> SharedMap | None:
        """The shared map of URL -> request info (label, user data, depth), if kept."""
        return self._info

    # ------------------------------------------------------------------ ownership

    def owner(self, url: str) -> str:
        """The live run that should fetch `url`: the highest hash of (run, url) wins (rendezvous hashing)."""
        return self.state.owner(url)

    def _refresh_live_runs(self) -> None:
        live = self._shared.live_runs(self._dead_after)
        if live != self.state.live:
            logger.info('Runs sharing the crawl: %s (was %s).', ', '.join(live), ', '.join(self.state.live))
            self.state.set_live(live)
            self.stats.owner_changes += 1

    def held_back(self) -> bool:
        """Whether the limit (or this run's share of what is left of it) keeps this run from starting requests."""
        return self._allowance is not None and self._allowance <= 0

    def note_idle(self) -> None:
        """Sync when this run runs out of work, so its handovers and the end of the crawl are not delayed."""
        if not self._idle:
            self._idle = True
            self.sync_soon()

    def sync_soon(self) -> None:
        """Sync as soon as the least gap between syncs allows."""
        self._sync_now = True
        self._wake.set()

    def note_handed_over(self) -> None:
        """A URL this run found went to its owner through the map: publish it sooner if others are hungry."""
        self.stats.handed_over += 1
        self._handed_since_sync += 1
        if self._handed_since_sync == 1 and time.monotonic() >= self._others_hungry_at:
            self._wake.set()  # another run is running out of work: publish sooner

    def note_started(self, key: str, *, done: bool) -> None:
        """The crawler got the request for `key` (each URL counts once towards this run's starts)."""
        if self.state.mark_started(key, done=done) and self._allowance is not None:
            self._allowance -= 1
        self.in_flight += 1

    def note_ended(self) -> None:
        """A started request was handled or given back for a retry."""
        self.in_flight = max(0, self.in_flight - 1)

    def note_marked_handled(self) -> None:
        """This run marked a request handled in its queue."""
        self._handled += 1

    async def is_empty(self) -> bool:
        """Whether this run has nothing to fetch now (its queue empty, nothing ready; or the limit holds it back)."""
        if self.held_back() or (await self._inner.is_empty() and not await self.refill()):
            self.note_idle()
            return True
        self._idle = False
        return False

    async def refill(self) -> bool:
        """Queue more of the URLs this run owns, up to `QUEUE_BATCH` waiting in its queue; whether it queued any.

        Not while URLs became ready whose request info `take_over()` has not read yet (its read may be under way:
        a request built now would lose its label and depth).
        """
        if not self.state.ready or (self._info is not None and self.state.readied != self._info_read_for):
            return False
        return await self._queue_ready()

    # ------------------------------------------------------------------ the loop
    # ------------------------------------------------------------------ the loop

    async def wait_for_runs(self, timeout_secs: float | None = None) -> list[str]:
        """Sync until `expected_runs` runs are seen, so ownership is stable from the start.

        Args:
            timeout_secs: Give up waiting after this long (default: 3 sync intervals, at least 60 s).
        """
        if timeout_secs is None:
            timeout_secs = max(60.0, 3 * self._sync_interval)
        deadline = time.monotonic() + timeout_secs
        while True:
            await self.sync()
            if len(self.state.live) >= self._expected_runs or time.monotonic() >= deadline:
                return self.live_runs
            await asyncio.sleep(min(0.25, self._idle_poll))  # a short phase: the crawl starts once all are seen

    def start(self, *, on_done: Callable[[], Any]) -> None:
        """Start the background loop; `on_done` is called once the whole crawl is done (e.g. `crawler.stop`)."""
        self._on_done = on_done
        self.sync_soon()  # a first round at once: queue the URLs this run owns (e.g. when resuming a crawl)
        self._task = asyncio.create_task(self._loop(), name='shared-request-manager')

    async def close(self) -> None:
        """Stop the background loop."""
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

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
                await self.tick()
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

    async def tick(self) -> bool:
        """One round of the loop: sync, queue the URLs this run owns, and check whether the crawl is done."""
        await self.sync()
        return await self.take_over()

    async def sync(self) -> None:
        """Sync the shared maps and learn which runs are live (hence who owns what)."""
        self._last_sync_at = time.monotonic()
        self._handed_since_sync = 0
        result = await self._shared.sync()  # the request info first (`SharedMap.publish_after`), then the statuses
        self.stats.syncs += 1
        self.last_sync = result
        self._refresh_live_runs()
        self._update_allowance()
        if not self._joined:
            self._joined = True
            join_others = [run for run in self.state.live if run != self._shared.run_id]
            if join_others and self.state.waiting:
                self.state.begin_grace(join_others)
                # The others see this run within their sync interval, then leave these URLs to their new owner.
                self._grace_until = time.monotonic() + self._sync_interval + 2 * self._idle_poll

    async def take_over(self) -> bool:
        """Queue the waiting URLs this run owns and has not queued (a batch at a time); whether the crawl is done.

        Costs what changed since the last call: owners are computed for the URLs that started waiting, and, after
        a change of the live runs, for the waiting URLs it can move (in chunks that let other tasks run).
        Once the crawl is done, `on_done` (given to `start()`) is called.
        """
        state = self.state
        if self._grace_until and time.monotonic() >= self._grace_until:
            self._grace_until = 0.0
            state.end_grace()
        await state.settle()
        others = {run: count for run, count in state.waiting_for().items() if run != state.me}
        self._expect_hunger(others)
        if self._info is not None and state.ready and state.readied != self._info_read_for:
            readied = state.readied
            await self._info.sync()  # the others' request info, read only when there is something to take over
            self._info_read_for = readied  # URLs made ready meanwhile wait for the next read
        if state.ready:
            await self._queue_ready()
        self._update_allowance()
        waiting, done = state.waiting, state.done
        self._report(waiting, done)
        known = len(state.started) + state.others_done
        limit_reached = self._max_processed is not None and known >= self._max_processed
        if self.in_flight == 0 and (limit_reached or (waiting == 0 and await self._inner.is_finished())):
            self._done = True
            reason = 'the limit of processed pages was reached' if limit_reached else 'no URL is waiting in any run'
            logger.info('The shared crawl is done: %s (%d processed or failed).', reason, max(done, known))
            if self._on_done is not None:
                self._on_done()
        return self._done

    def _expect_hunger(self, waiting_for: dict[str, int]) -> None:
        """Guess when the first other live run runs out of work, from what waits for it now."""
        least = min(waiting_for.values(), default=None)
        self._others_hungry_at = (
            float('inf') if least is None else time.monotonic() + max(0, least - HUNGRY_BELOW) / _FAST_PACE
        )

    async def _queue_ready(self) -> bool:
        """Queue ready URLs until `QUEUE_BATCH` wait in this run's queue; whether it queued any."""
        urls = self.state.take_ready(QUEUE_BATCH - len(self.state.queued))
        if not urls:
            return False
        let_go = self.state.let_go
        fresh = [url for url in urls if url not in let_go]
        again = [url for url in urls if url in let_go]
        if self._queue_had_history is None:
            self._queue_had_history = await self._inner.get_handled_count() > self._handled
        if self._queue_had_history:
            for url in fresh:  # one by one, to learn which ones the queue had handled already
                result = await self._inner.add_request(self._request_from_map(url))
                if result is not None and result.was_already_handled:
                    # Handled in this queue by an interrupted attempt, yet still waiting in the map: fetch it again.
                    again.append(url)
        elif fresh:  # all in the queue before this returns (crawlee adds beyond its first 1,000 in the background)
            await self._inner.add_requests(
                [self._request_from_map(url) for url in fresh], wait_for_all_requests_to_be_added=True
            )
        if again:
            await self._inner.add_requests(
                [self._request_from_map(url, fresh_key=True) for url in again], wait_for_all_requests_to_be_added=True
            )
            let_go.difference_update(again)
        self._idle = False
        self.stats.taken_over += len(urls)
        logger.info('Took over %d URLs from the shared map (%d more ready).', len(urls), len(self.state.ready))
        return True

    def _update_allowance(self) -> None:
        """How many requests this run may start before its next sync, so that all runs together keep the limit.

        A run sees its own starts at once but the others' only as the pages they processed and synced. One run may
        take all that is left. Several each take their share of what is left above a reserve, then sync again; within
        the reserve, each starts one request per sync, so what the others started unseen is about what they have in
        flight.
        """
        if self._max_processed is None:
            return
        left = self._max_processed - len(self.state.started) - self.state.others_done
        runs = len(self.state.live)
        reserve = _CAREFUL_PER_RUN * runs if runs > 1 else 0
        if left > reserve:
            self._allowance = math.ceil((left - reserve) / runs)
        else:
            self._allowance = 1 if left > 0 else 0

    def _report(self, waiting: int, done: int) -> None:
        """Log the state of the crawl when it changed, at most once per sync interval."""
        now = time.monotonic()
        report = (len(self._shared), done, waiting, len(self.state.live))
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
        info = self._info.get(url) if self._info is not None else None
        if not fresh_key:
            return request_from_map(url, info)
        self._requeues += 1
        request = request_from_map(url, info, unique_key=f'{url}#again-{self._shared.run_id}-{self._requeues}')
        request.user_data[MAP_KEY_FIELD] = url
        return request

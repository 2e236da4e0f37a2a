"""A thin request manager around the shared one: it skips excluded URLs before they are fetched, and paces the rest.

Pacing makes `maxRequestsPerMinute` a budget for the whole crawl: each run takes its share, the budget divided by
the live runs its shared map sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from crawlee import Request, RequestState
from typing_extensions import override

from .shared_map import ForwardingRequestManager

if TYPE_CHECKING:
    from collections.abc import Callable

    from crawlee.request_loaders import RequestManager

logger = logging.getLogger(__name__)

MAX_PACE_WAIT_SECS = 2.0
"""Longest a crawler task waits for this run's next turn before it returns no request (crawlee then starts another
task): no task waits anywhere near crawlee's timeout for fetching a request, and a stopping crawler is not held up."""


class Pacer:
    """Spaces this run's fetches so that all live runs together fetch at most `per_minute` requests a minute.

    Each run takes `per_minute / live runs`, the live runs as the shared map last saw them: when a run joins or ends,
    the others' share follows at their next sync. Turns are taken one at a time, `60 * live runs / per_minute`
    seconds apart; a turn that finds no request to fetch is given back.
    """

    def __init__(self, per_minute: int, *, live_runs: Callable[[], int]) -> None:
        """Pace to `per_minute` for all the runs `live_runs()` counts."""
        self._per_minute = per_minute
        self._live_runs = live_runs
        self._next_at = 0.0  # time.monotonic() of this run's next turn
        self._runs_logged = 0

    def interval(self) -> float:
        """Seconds between two fetches of this run."""
        runs = max(1, self._live_runs())
        if runs != self._runs_logged:
            self._runs_logged = runs
            logger.info(
                'maxRequestsPerMinute %d shared by %d runs: this run fetches at most %.1f pages a minute.',
                self._per_minute,
                runs,
                self._per_minute / runs,
            )
        return 60.0 * runs / self._per_minute

    async def take_turn(self) -> float | None:
        """Wait for this run's next turn and take it; None if it is more than `MAX_PACE_WAIT_SECS` away.

        Returns:
            The time of the turn before this one, to `give_back()` if the turn is not used.
        """
        deadline = time.monotonic() + MAX_PACE_WAIT_SECS
        while True:
            now = time.monotonic()
            if now >= self._next_at:
                previous, interval = self._next_at, self.interval()
                # While busy, keep the cadence (a late wake-up does not slow the pace); after an idle spell, no burst.
                self._next_at = previous + interval if now - previous < interval else now + interval
                return previous
            if self._next_at > deadline:
                await asyncio.sleep(max(0.0, deadline - now))
                return None
            await asyncio.sleep(self._next_at - now)

    def give_back(self, previous: float) -> None:
        """Undo the last `take_turn()` (no request was fetched in it)."""
        self._next_at = min(self._next_at, previous)


class PacedRequestManager(ForwardingRequestManager):
    """A request manager that skips, before fetching, the requests the crawl options exclude, and paces the rest.

    A skipped request is marked handled with the state `SKIPPED` (the shared map records it as `skipped`), as
    crawlee does with a URL that robots.txt disallows.
    """

    def __init__(self, inner: RequestManager, *, allows: Callable[[str], bool], pacer: Pacer | None = None) -> None:
        """Wrap `inner` (the run's shared request manager): fetch only URLs `allows()`, at the `pacer`'s pace."""
        super().__init__(inner)
        self._allows = allows
        self._pacer = pacer

    @override
    async def fetch_next_request(self) -> Request | None:
        """The next request the options allow, once it is this run's turn (with `maxRequestsPerMinute`)."""
        while True:
            turn = None
            if self._pacer is not None and (turn := await self._pacer.take_turn()) is None:
                return None  # not this run's turn yet: crawlee asks again
            request = await self.inner.fetch_next_request()
            if request is not None and self._allows(request.url):
                return request
            if self._pacer is not None and turn is not None:
                self._pacer.give_back(turn)  # nothing fetched in this turn
            if request is None:
                return None
            logger.info('Skipping %s: excluded by the globs of the input.', request.url)
            request.state = RequestState.SKIPPED
            await self.inner.mark_request_as_handled(request)

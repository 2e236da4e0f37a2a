"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM, and keeping an eye on the runs this one started.

A signal stops the crawler gracefully (`crawler.stop()`: the pages in flight finish and are recorded), forwards
SIGTERM to the local child runs so they do the same, and lets `main` do the final sync of the shared map and write
the summary. A second Ctrl-C, a second or more after the first, stops at once.

Crawlee's own Ctrl-C handler is not used: it cancels the crawl abruptly (requests in flight then fail with
`RuntimeError: The Statistics is not active` tracebacks) and prints a resume command (`python .../src/__main__.py`)
that does not work for a package run with `python -m src`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from crawlee.crawlers import BasicCrawler

from .fanout import OK, ChildRun, abort_runs, fan_out, on_aborting, status_of
from .input import CrawlerInput
from .shared_map import RecurringTask

logger = logging.getLogger(__name__)
T = TypeVar('T')

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Ctrl-C reaches every process of the terminal's process group, and `apify run` forwards it once more: a second
# SIGINT this soon after the first is the same keypress.
FORCE_AFTER_SECS = 1.0
WATCH_INTERVAL_SECS = 0.5


class Supervisor:
    """This run's stop signals and its local child runs."""

    def __init__(self, children: list[ChildRun]) -> None:
        """Supervise this run, which started `children` (an empty list for a child or a single run)."""
        self._children = children
        self._callbacks: list[Callable[[], Any]] = []
        self._first_signal_at = 0.0
        self._stop_requested = asyncio.Event()
        self._child_exited = asyncio.Event()
        self._reported: set[str] = set()
        self._watcher: RecurringTask | None = None
        self.stop_signal: int | None = None
        """The signal that stopped this run, if one did."""

    @classmethod
    @contextlib.asynccontextmanager
    async def fan_out(cls, crawl_input: CrawlerInput, run_id: str) -> AsyncIterator[Supervisor]:
        """Start the other runs (`parallelRuns`), handle stop signals for all; on any exit, stop leftover children."""
        children = await fan_out(crawl_input, run_id)
        supervisor = cls(children)
        supervisor.install()
        on_aborting(lambda: supervisor._on_signal(signal.SIGTERM))  # on the platform, Abort: stop this run and its runs
        try:
            yield supervisor
        finally:
            await supervisor.close()
            await abort_runs(children)  # a failed parent must not leave child processes or platform runs behind

    def install(self) -> None:
        """Handle SIGINT and SIGTERM from now on, and start watching the local child runs."""
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        if self._watcher is None and any(child.process is not None for child in self._children):
            self._watcher = RecurringTask(
                self._check_children,
                interval_secs=WATCH_INTERVAL_SECS,
                name='watch-child-runs',
                what='Watching the child runs',
            )
            self._watcher.start()

    async def close(self) -> None:
        """Stop watching the children (the signal handlers stay until the process exits)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.stop()

    @property
    def children(self) -> list[ChildRun]:
        """The runs this one started."""
        return self._children

    @property
    def stop_requested(self) -> bool:
        """Whether a signal asked this run to stop."""
        return self.stop_signal is not None

    def on_stop(self, callback: Callable[[], Any]) -> None:
        """Call `callback` when a stop signal arrives (at once if one already did)."""
        self._callbacks.append(callback)
        if self.stop_requested:
            callback()

    async def run_crawler(self, crawler: BasicCrawler[Any, Any], run: Awaitable[object]) -> None:
        """Await `run` (which runs `crawler`) with this supervisor's signal handlers in force instead of crawlee's.

        If a stop was requested already, the crawler still runs, stopped from the start: it then ends at once with
        its statistics loaded, for the summary.
        """
        self.on_stop(crawler.stop)
        reclaim = asyncio.create_task(self._reclaim_signals(crawler), name='reclaim-stop-signals')
        try:
            await run
        finally:
            reclaim.cancel()
            self.install()  # on its way out, crawlee removes its SIGINT handler, which by then is ours

    async def wait_unless_stopped(self, awaitable: Awaitable[T]) -> T | None:
        """Await `awaitable`, unless a stop signal arrives or a child run exits first (then None)."""
        task = asyncio.ensure_future(awaitable)
        interrupts = [asyncio.create_task(self._stop_requested.wait()), asyncio.create_task(self._child_exited.wait())]
        try:
            await asyncio.wait([task, *interrupts], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for interrupt in interrupts:
                interrupt.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def _reclaim_signals(self, crawler: BasicCrawler[Any, Any]) -> None:
        # `crawler.run()` installs crawlee's SIGINT handler before its crawl task starts, and the crawl task
        # activates the statistics: once they are active, installing ours again replaces crawlee's.
        while not crawler.statistics.active:  # noqa: ASYNC110 - crawlee has no "crawl started" hook
            await asyncio.sleep(0.01)
        self.install()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is None:
            self.stop_signal = signum
            self._first_signal_at = time.monotonic()
            others = ' and the runs it started' if self._children else ''
            logger.warning(
                f'{name} received: stopping this run{others}. The pages in flight finish, then a final sync '
                'records everything done; press Ctrl-C again to stop at once.'
            )
            for child in self._children:
                child.send_signal(signal.SIGTERM)
            self._stop_requested.set()
            for callback in self._callbacks:
                callback()
            return
        if signum == signal.SIGINT and time.monotonic() - self._first_signal_at >= FORCE_AFTER_SECS:
            logger.error('Ctrl-C again: stopping at once, without a final sync; pages in flight will be fetched again.')
            for child in self._children:
                child.send_signal(signal.SIGKILL)
            logging.shutdown()
            os._exit(128 + signum)
        logger.info(f'{name} received: already stopping.')

    async def _check_children(self) -> None:
        # Say at once when a child run ends early, with the reason from its log, instead of only in the final table.
        for child in self._children:
            code = child.process.poll() if child.process is not None else None
            if code is None or child.run_id in self._reported:
                continue
            self._reported.add(child.run_id)
            self._child_exited.set()
            status = status_of(code)
            if status != OK and not self.stop_requested:
                error = child.last_error()
                logger.warning(
                    f'Run {child.run_id} ended early: {status}' + (f' ({error})' if error else '') + '. '
                    f'Its log: {child.storage_dir}/log.txt. The other runs take over its URLs.'
                )

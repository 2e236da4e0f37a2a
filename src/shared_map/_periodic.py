"""One helper for recurring background work, with one policy for errors and cancellation.

Used by `SharedMap.start_background_sync()` and by the actor's `Supervisor` (`src/supervisor.py`), which watches its
child runs. Like crawlee's `RecurringTask` (`crawlee._utils.recurring_task`, private to crawlee), but it pauses
before each call, tells expected failures from bugs, and never cancels a call half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ._errors import SharedMapError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

logger = logging.getLogger(__name__)

# Failures a store can cause; logged as a warning and retried at the next call. Anything else is logged in full.
EXPECTED_ERRORS = (SharedMapError, OSError, RuntimeError, ValueError)


class RecurringTask:
    """Calls `action` again and again in a background task, pausing `interval_secs` before each call.

    Pauses: `interval_secs` is a number of seconds from the end of one call (or the start) to the next, or an async
    function that says how long to wait still (0 or less: call now). The function is asked again whenever the pause
    it gave ends or `wake()` is called, so it can shorten or lengthen the pause as things change.

    Errors: an exception `action` raises never ends the task. An expected one (`EXPECTED_ERRORS`: a store that
    failed) is logged as a warning, anything else with its traceback; the next call comes after the pause.

    Cancellation: `stop()` (or leaving `async with`) ends the task during a pause at once; a call in progress is
    never cancelled half-way: `stop()` waits for it to finish, then the task ends. Cancelling the task that awaits
    `stop()` still cancels everything.

    Usage:
        ```python
        async with RecurringTask(shared.sync, interval_secs=10, name='sync', what='Shared map sync'):
            ...  # the map syncs every 10 s meanwhile
        ```
    """

    def __init__(
        self,
        action: Callable[[], Awaitable[object]],
        *,
        interval_secs: float | Callable[[], Awaitable[float]],
        name: str,
        what: str,
    ) -> None:
        """Prepare the task; `start()` starts it.

        Args:
            action: The work.
            interval_secs: Pause before each call, or an async function of the seconds still to wait.
            name: The asyncio task's name.
            what: What the action is, for log messages (e.g. "Shared map sync").
        """
        self._action = action
        self._interval_secs = interval_secs
        self._name = name
        self._what = what
        self._task: asyncio.Task[None] | None = None
        self._calling = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._last_call_at = 0.0

    @property
    def running(self) -> bool:
        """Whether the task was started and has not ended."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background task."""
        if self.running:
            raise RuntimeError(f'{self._what}: the recurring task is already running.')
        self._stopping = False
        self._last_call_at = time.monotonic()
        self._task = asyncio.create_task(self._loop(), name=self._name)

    def wake(self) -> None:
        """Decide again now how long the pause in progress lasts (with a fixed interval: as long as it was)."""
        self._wake.set()

    async def stop(self) -> None:
        """End the task: at once during a pause, else once the call in progress finishes."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if task is asyncio.current_task():
            return  # called by the action itself: the loop ends when the action returns
        if not self._calling:
            await stop_task(task)
            return
        try:
            await asyncio.wait([task])  # the call in progress finishes; then the loop ends
        except asyncio.CancelledError:
            await stop_task(task)  # the caller was cancelled (e.g. its time is up): so is the call in progress
            raise

    async def __aenter__(self) -> RecurringTask:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _loop(self) -> None:
        while not self._stopping:
            await self._pause()
            self._calling = True
            try:
                await self._action()
            except EXPECTED_ERRORS as exc:
                logger.warning('%s failed, will retry%s: %s', self._what, self._retry_in(), exc)
            except Exception:
                logger.exception('%s failed unexpectedly, will retry%s', self._what, self._retry_in())
            finally:
                self._calling = False
                self._last_call_at = time.monotonic()

    async def _pause(self) -> None:
        while True:
            self._wake.clear()  # before deciding: a wake-up while the delay is computed is kept
            if callable(self._interval_secs):
                delay = await self._interval_secs()
            else:
                delay = self._last_call_at + self._interval_secs - time.monotonic()
            if delay <= 0:
                await asyncio.sleep(0)  # let others run even if the function keeps saying "now"
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _retry_in(self) -> str:
        return '' if callable(self._interval_secs) else f' in {self._interval_secs:.1f} s'


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended. A cancellation of the caller still reaches the caller.

    (`with suppress(CancelledError): await task` would swallow it: a caller bounded by `asyncio.timeout` or
    `wait_for` would then wait as long as the task takes.)
    """
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.warning('Background task %s ended with an error: %r', task.get_name(), error)

"""One helper for periodic background work (the map's background sync, the request manager's loop)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._errors import SharedMapError

logger = logging.getLogger(__name__)

# Failures a store can cause; logged as a warning and retried at the next tick. Anything else is logged in full.
EXPECTED_ERRORS = (SharedMapError, OSError, RuntimeError, ValueError)


def start_periodic(
    interval_secs: float, action: Callable[[], Awaitable[object]], *, name: str, what: str
) -> asyncio.Task[None]:
    """Run `action` every `interval_secs` in a task until it is cancelled; a failure is logged and retried.

    Args:
        interval_secs: Pause before each call.
        action: The work; an exception it raises never ends the loop.
        name: The task's name.
        what: What the action is, for log messages (e.g. "Shared map sync").
    """

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_secs)
            try:
                await action()
            except EXPECTED_ERRORS as exc:
                logger.warning('%s failed, will retry in %.1f s: %s', what, interval_secs, exc)
            except Exception:
                logger.exception('%s failed unexpectedly, will retry in %.1f s', what, interval_secs)

    return asyncio.create_task(loop(), name=name)


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended. A cancellation of the caller still reaches the caller.

    (`with suppress(CancelledError): await task` would swallow it: a caller bounded by `asyncio.timeout` or
    `wait_for` would then wait as long as the task takes.)
    """
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.warning('Background task %s ended with an error: %r', task.get_name(), error)

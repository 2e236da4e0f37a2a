"""Following the Apify Actor's events: sync on PERSIST_STATE; final sync and release on MIGRATING and ABORTING."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

Handler = Callable[..., Any]
"""An async function taking the event's data (or nothing)."""


def actor_is_active() -> bool:
    """Whether an `async with Actor:` context is active in this process."""
    try:
        from apify import Actor
    except ImportError:
        return False
    # The SDK has no public "is initialized" flag; `_active` is what its own `_ensure_context` checks.
    return bool(getattr(Actor, '_active', False))


class ActorEvents:
    """Subscriptions to the Actor's events, undone together."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Any, Any]] = []

    def follow(self, *, on_persist_state: Handler, on_migrating: Handler) -> None:
        """Call `on_persist_state` on PERSIST_STATE, and `on_migrating` on MIGRATING and ABORTING."""
        from apify import Actor, Event

        for event, listener in (
            (Event.PERSIST_STATE, on_persist_state),
            (Event.MIGRATING, on_migrating),
            (Event.ABORTING, on_migrating),
        ):
            Actor.on(event, listener)
            self._listeners.append((event, listener))

    def unfollow(self) -> None:
        """Remove every subscription (safe to call twice, or when the Actor has exited)."""
        if not self._listeners:
            return
        from apify import Actor

        for event, listener in self._listeners:
            with contextlib.suppress(Exception):
                Actor.off(event, listener)
        self._listeners.clear()

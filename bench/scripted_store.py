"""A real key-value store with injected pauses and hooks, to forge interleavings deterministically.

It wraps a real crawlee `KeyValueStore` (any backend) and forwards every call; before a call it can run a hook
(e.g. let another run compact) or sleep (a slow store). The shared map takes it like any store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from crawlee.storages import KeyValueStore

Hook = Callable[[str], Awaitable[None]]


class ScriptedStore:
    """Forwards to `inner`; `before_get(key)` / `before_set(key)` run before each read / write, `read_delay` slows
    every read down.

    With `record=True` it keeps every value written, for `written_entries()`.
    """

    def __init__(
        self,
        inner: KeyValueStore,
        *,
        before_get: Hook | None = None,
        before_set: Hook | None = None,
        read_delay: float = 0.0,
        record: bool = False,
    ) -> None:
        self.inner = inner
        self.before_get = before_get
        self.before_set = before_set
        self.read_delay = read_delay
        self.record = record
        self.written: list[tuple[str, Any]] = []

    def hang_writes(self) -> asyncio.Event:
        """From now on every write waits, with no error and no reply (a connection left hanging), until the event
        returned is set."""
        answer = asyncio.Event()

        async def no_answer(_key: str) -> None:
            await answer.wait()

        self.before_set = no_answer
        return answer

    def as_store(self) -> KeyValueStore:
        return cast('KeyValueStore', self)

    async def get_value(self, key: str, default_value: Any = None) -> Any:
        if self.before_get is not None:
            await self.before_get(key)
        if self.read_delay:
            await asyncio.sleep(self.read_delay)
        return await self.inner.get_value(key, default_value)

    async def set_value(self, key: str, value: Any, content_type: str | None = None) -> None:
        if self.before_set is not None:
            await self.before_set(key)
        await self.inner.set_value(key, value, content_type=content_type)
        if self.record:
            self.written.append((key, value))

    async def delete_value(self, key: str) -> None:
        await self.inner.delete_value(key)

    async def record_exists(self, key: str) -> bool:
        return await self.inner.record_exists(key)

    async def iterate_keys(
        self, exclusive_start_key: str | None = None, limit: int | None = None
    ) -> AsyncIterator[Any]:
        async for meta in self.inner.iterate_keys(exclusive_start_key=exclusive_start_key, limit=limit):
            yield meta

    def written_entries(self, prefix: str = 'SM') -> list[tuple[str, Any, int]]:
        """Every (key, value, stamp) in the log and snapshot records written here (value `DELETED`: a deletion)."""
        entries: list[tuple[str, Any, int]] = []
        for key, raw in self.written:
            if not key.startswith((f'{prefix}.L.', f'{prefix}.P.')):
                continue
            body = json.loads(raw)
            for stamp, value, keys in body.get('groups', []):
                entries.extend((k, value, stamp) for k in keys)
            for stamp, keys in body.get('deleted', []):
                entries.extend((k, DELETED, stamp) for k in keys)
        return entries


DELETED: Any = object()


def join_max(entries: list[tuple[str, Any, int]]) -> dict[str, Any]:
    """The merge rule as a plain maximum over all entries: `enqueued` lowest, then stamp, then canonical JSON."""

    def rank(value: Any, stamp: int) -> tuple[int, int, str]:
        if value == 'enqueued':
            return (0, 0, '')
        canon = '' if value is DELETED else json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(',', ':'))
        return (1, stamp, canon)

    best: dict[str, tuple[tuple[int, int, str], Any]] = {}
    for key, value, stamp in entries:
        candidate = (rank(value, stamp), value)
        if key not in best or candidate[0] > best[key][0]:
            best[key] = candidate
    return {key: value for key, (_, value) in best.items() if value is not DELETED}

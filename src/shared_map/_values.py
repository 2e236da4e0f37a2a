"""The merge rule and the clock, with no I/O: what makes every replica converge.

Entry `a` beats entry `b` when `a` is not `enqueued` and `b` is; else the larger stamp wins; else the larger
canonical JSON of the value. Stamps come from a hybrid logical clock. See `docs/sync-protocol.md`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

#: The value that "enqueued" entries carry; it never replaces a value already present when merging.
ENQUEUED = 'enqueued'

# Integers beyond this do not survive JSON in JavaScript (and above 4,300 digits not even in Python).
MAX_INT = 2**1024


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


MISSING: Any = _Sentinel('MISSING')
DELETED: Any = _Sentinel('DELETED')
"""Marks a deleted key (a tombstone) in pending changes and snapshots."""
PENDING: Any = _Sentinel('PENDING')
"""Set aside for a key shown as a local `enqueued`: its winning value is the pending local change (once written)."""

SCALAR_TYPES = (str, int, bool, type(None))


def is_enqueued(value: Any) -> bool:
    """Whether a value is the `enqueued` status (which never replaces a present value)."""
    return value.__class__ is str and value == ENQUEUED


def canon(value: Any) -> str:
    """Canonical JSON of a value; breaks ties between two values with the same stamp. Tombstones lose ties."""
    return '' if value is DELETED else json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(',', ':'))


def wins(value: Any, stamp: int, other: Any, other_stamp: int) -> bool:
    """Whether (value, stamp) beats (other, other_stamp); both are non-`enqueued`."""
    if stamp != other_stamp:
        return stamp > other_stamp
    return canon(value) > canon(other)


def check_value(value: Any, depth: int = 0) -> None:
    """Refuse, at set time, a value that would not round-trip through JSON unchanged.

    Raises:
        TypeError: not JSON (a set, bytes, NaN, a non-string dict key, nesting over 64 levels).
        ValueError: an integer of 2**1024 or more in size.
    """
    cls = value.__class__
    if cls in SCALAR_TYPES:
        if cls is int and not -MAX_INT < value < MAX_INT:
            raise ValueError(
                f'Shared-map integers must be below 2**1024 in size; got one of {value.bit_length()} bits.'
            )
        return
    if cls is float:
        if not math.isfinite(value):
            raise TypeError(
                f'Shared-map values must be JSON-serialisable; {value!r} is not (NaN and infinity are not).'
            )
        return
    if depth > 64:
        raise TypeError('Shared-map values may nest at most 64 levels deep.')
    if cls is list:
        for item in value:
            check_value(item, depth + 1)
        return
    if cls is dict:
        for k, item in value.items():
            if k.__class__ is not str:
                raise TypeError(f'Shared-map values must be JSON-serialisable; dict key {k!r} is not a string.')
            check_value(item, depth + 1)
        return
    raise TypeError(
        f'Shared-map values must be JSON-serialisable (str, int, float, bool, None, list, dict); '
        f'got {cls.__name__}: {value!r:.80}'
    )


def now_ms() -> int:
    """The wall clock in milliseconds since the epoch."""
    return int(time.time() * 1000)


class HybridClock:
    """Stamps for new records: the wall clock, but above every stamp seen (a hybrid logical clock).

    Usage:
        ```python
        clock = HybridClock(now_ms)
        clock.observe(stamp_read_from_another_run)
        stamp = clock.tick()  # > every stamp observed, and >= the wall clock
        ```
    """

    __slots__ = ('latest', 'wall')

    def __init__(self, wall: Callable[[], int]) -> None:
        self.wall = wall
        self.latest = 0

    def tick(self) -> int:
        """A new stamp, larger than every stamp seen or given so far."""
        self.latest = max(self.wall(), self.latest + 1)
        return self.latest

    def observe(self, stamp: int) -> bool:
        """Take a stamp read from the store into account; whether it is the largest seen so far."""
        if stamp > self.latest:
            self.latest = stamp
            return True
        return False

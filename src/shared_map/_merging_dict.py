"""The map's merge state: one authoritative (value, stamp) per key, local changes, and the join that merges entries.

A `dict` subclass, so reads (`get`, `in`, `[]`) run at C speed; the rule itself is in `_values.py`. What a key shows
locally can differ from its authoritative entry in one case: a local `enqueued` over a present value, which is
never published (it cannot win anywhere); its authoritative entry is set aside in `_reverts` and comes back at the
next sync. See `docs/sync-protocol.md`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol, Self

from typing_extensions import override

from ._records import body_groups
from ._values import (
    DELETED,
    ENQUEUED,
    MISSING,
    PENDING,
    SCALAR_TYPES,
    HybridClock,
    check_value,
    is_enqueued,
    wins,
)

if TYPE_CHECKING:
    from ._stats import SyncResult


class ChangeListener(Protocol):
    """Told of every change of a visible value (a local set or deletion, a merged entry, a revert), as it happens.

    `old` and `new` are `MISSING` for an absent key. Called synchronously, so it sees every change in order.
    """

    def changed(self, key: str, old: Any, new: Any) -> None:
        """One key changed from `old` to `new`."""

    def changed_many(self, keys: list[str], olds: list[Any] | None, new: Any) -> None:
        """Every key of `keys` took `new`; `olds` are their earlier values, None when all were absent."""


class MergingDict(dict[str, Any]):
    """A `dict` of string keys to JSON values that records local changes and merges entries read from other runs."""

    def __init__(self, *, clock: HybridClock, max_record_bytes: int) -> None:
        super().__init__()
        self._clock = clock
        self._max_record_bytes = max_record_bytes
        self._max_entry_chars = max_record_bytes // 32  # a key and a value, escaped (up to 12x), fit one record
        self._stamps: dict[str, int] = {}  # stamp of each synced non-`enqueued` value (absent means 0)
        self._tombstones: dict[str, int] = {}  # deleted key -> stamp of the deletion
        self._dirty: dict[str, Any] = {}  # local changes since the last sync (value or DELETED)
        self._reverts: dict[str, tuple[Any, int] | Any] = {}  # local `enqueued` over a winning value -> that value
        self._listener: ChangeListener | None = None

    def listen(self, listener: ChangeListener | None) -> None:
        """Tell `listener` of every change of a visible value from now on (one listener; None stops it)."""
        self._listener = listener

    @property
    def clock(self) -> HybridClock:
        """The clock that stamps this map's changes and observes the stamps it merges."""
        return self._clock

    @property
    def pending(self) -> int:
        """Number of local changes not yet published."""
        return len(self._dirty)

    def merge_state(self) -> dict[str, Mapping[str, Any]]:
        """The merge bookkeeping beside the entries, by name (`stamps`, `tombstones`, `dirty`, `reverts`); read-only.

        For memory accounting in tests and benchmarks: e.g. whether `stamps` shares its key strings with the map.
        """
        return {'stamps': self._stamps, 'tombstones': self._tombstones, 'dirty': self._dirty, 'reverts': self._reverts}

    # ------------------------------------------------------------------ the mapping

    @override
    def __setitem__(self, key: str, value: Any) -> None:
        if key.__class__ is not str:
            key = self._check_key(key)
        elif len(key) > self._max_entry_chars:
            self._check_key(key)
        if value.__class__ is str:
            if len(value) > self._max_entry_chars:
                raise ValueError(f'Value of {key!r:.80} is {len(value)} characters; at most {self._max_entry_chars}.')
            if value == ENQUEUED and self._set_enqueued_over_existing(key):
                return
        else:
            check_value(value)
            if value.__class__ in (list, dict) and len(json.dumps(value)) > self._max_record_bytes // 4:
                raise ValueError(f'Value of {key!r:.80} is too large for one record.')
        if self._reverts:
            self._reverts.pop(key, None)
        if self._listener is not None:
            old = dict.get(self, key, MISSING)
            dict.__setitem__(self, key, value)
            self._dirty[key] = value
            self._listener.changed(key, old, value)
            return
        dict.__setitem__(self, key, value)
        self._dirty[key] = value

    def _check_key(self, key: object) -> str:
        if not isinstance(key, str):
            raise TypeError(f'Shared-map keys must be strings, got {type(key).__name__}: {key!r:.80}')
        if len(key) > self._max_entry_chars:
            raise ValueError(f'Key {key!r:.80}... is {len(key)} characters; at most {self._max_entry_chars}.')
        return str(key)

    def _set_enqueued_over_existing(self, key: str) -> bool:
        """Handle a local `enqueued` over a present value; False when it is an ordinary change to publish."""
        current = dict.get(self, key, MISSING)
        if current is MISSING:
            if key in self._dirty:  # A pending local deletion: it still wins at the next sync.
                self._reverts.setdefault(key, PENDING)
            elif key in self._tombstones:
                self._reverts.setdefault(key, (DELETED, self._tombstones[key]))
            else:
                return False
        elif is_enqueued(current):
            return True  # Nothing changes.
        elif key in self._dirty:
            self._reverts.setdefault(key, PENDING)
        else:
            self._reverts.setdefault(key, (current, self._stamps.get(key, 0)))
        # Shown locally until the next sync, where the value that wins across runs comes back; not published,
        # since `enqueued` never replaces a present value anywhere.
        dict.__setitem__(self, key, ENQUEUED)
        if self._listener is not None:
            self._listener.changed(key, current, ENQUEUED)
        return True

    @override
    def __delitem__(self, key: str) -> None:
        old = dict.pop(self, key)
        if self._reverts:
            self._reverts.pop(key, None)
        self._dirty[key] = DELETED
        if self._listener is not None:
            self._listener.changed(key, old, MISSING)

    @override
    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many entries, as `dict.update` (each goes through the shared-map rules)."""
        items: Iterable[tuple[str, Any]] = other.items() if hasattr(other, 'items') else other
        for key, value in items:
            self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def take_pending(self) -> dict[str, Any]:
        """The local changes since the last sync (value or DELETED), handed over for writing; the map forgets them."""
        pending, self._dirty = self._dirty, {}
        return pending

    def restore_pending(self, unwritten: dict[str, Any]) -> None:
        """Put back changes that could not be written; a newer local change made meanwhile wins."""
        for key, value in unwritten.items():
            self._dirty.setdefault(key, value)

    @override
    def __ior__(self, other: Any) -> Self:  # type: ignore[override]
        self.update(other)
        return self

    @override
    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return the value of `key`, setting it to `default` first if absent."""
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    @override
    def pop(self, key: str, default: Any = MISSING) -> Any:
        """Remove `key` (publishing the deletion) and return its value."""
        if key in self:
            value = dict.__getitem__(self, key)
            del self[key]
            return value
        if default is MISSING:
            raise KeyError(key)
        return default

    @override
    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last inserted entry (publishing the deletion)."""
        key, value = next(reversed(dict.items(self)))
        del self[key]
        return key, value

    @override
    def clear(self) -> None:
        """Delete every entry (publishing the deletions)."""
        for key in list(self):
            del self[key]

    @classmethod
    def fromkeys(cls, *_args: Any, **_kwargs: Any) -> Any:
        """Not supported: a shared map needs a store."""
        raise TypeError('SharedMap.fromkeys() is not supported; create the map on a store, then update() it.')

    @override
    def __reduce__(self) -> Any:
        raise TypeError('A SharedMap cannot be pickled; use dict(shared_map) for a plain copy.')

    def mark_published(self, key: str, value: Any, stamp: int) -> None:
        """A local change was written in a record stamped `stamp`: it is now the key's authoritative entry."""
        if value is DELETED:
            self._tombstones[key] = stamp
            self._stamps.pop(key, None)
        elif is_enqueued(value):
            self._stamps.pop(key, None)
        else:
            if key not in self._stamps:
                current = dict.pop(self, key, MISSING)  # share one key string between the map and `_stamps`
                if current is not MISSING:
                    dict.__setitem__(self, key, current)
            self._stamps[key] = stamp
            self._tombstones.pop(key, None)
        if self._reverts and self._reverts.get(key) is PENDING:
            self._reverts[key] = (value, stamp)

    def merge_body(self, body: dict[str, Any], result: SyncResult) -> None:
        """Merge a log or part body that was read and checked."""
        for stamp, value, keys in body_groups(body):
            result.entries_changed += self.merge_group(stamp, value, keys)
            result.entries_read += len(keys)

    def merge_group(self, stamp: int, value: Any, keys: list[str]) -> int:
        """Merge `keys` -> `value` at `stamp`; return how many visible values changed (or may have)."""
        newest = self._clock.observe(stamp)  # then it beats every non-`enqueued` entry this map holds
        data_keys = self.keys()
        special = self._dirty or self._reverts or self._tombstones
        if not special or (
            self._dirty.keys().isdisjoint(keys)
            and self._reverts.keys().isdisjoint(keys)
            and self._tombstones.keys().isdisjoint(keys)
        ):
            # Fast paths, in C: no key of the group is pending, reverted or deleted here.
            listener = self._listener
            if is_enqueued(value):
                if data_keys.isdisjoint(keys):
                    dict.update(self, dict.fromkeys(keys, ENQUEUED))
                    if listener is not None:
                        listener.changed_many(keys, None, ENQUEUED)
                    return len(keys)
                new = [key for key in keys if key not in data_keys]
                dict.update(self, dict.fromkeys(new, ENQUEUED))
                if listener is not None:
                    listener.changed_many(new, None, ENQUEUED)
                return len(new)
            if value is not DELETED and value.__class__ in SCALAR_TYPES:
                if data_keys.isdisjoint(keys):
                    dict.update(self, dict.fromkeys(keys, value))
                    self._stamps.update(dict.fromkeys(keys, stamp))
                    if listener is not None:
                        listener.changed_many(keys, None, value)
                    return len(keys)
                if newest:
                    # Every key takes the new value. Re-insert the keys so the map and `_stamps` hold one shared key
                    # string, not two equal ones (~110 bytes per URL).
                    if listener is not None:
                        olds = list(map(dict.pop, repeat(self), keys, repeat(MISSING)))
                    else:
                        deque(map(dict.pop, repeat(self), keys, repeat(None)), maxlen=0)
                    deque(map(self._stamps.pop, keys, repeat(None)), maxlen=0)
                    dict.update(self, dict.fromkeys(keys, value))
                    self._stamps.update(dict.fromkeys(keys, stamp))
                    if listener is not None:
                        listener.changed_many(keys, olds, value)
                    return len(keys)
        return sum(self.merge_one(key, value, stamp) for key in keys)

    def merge_one(self, key: str, value: Any, stamp: int) -> bool:
        """Merge one incoming entry (value may be DELETED); return whether the visible value changed."""
        incoming_enqueued = is_enqueued(value)
        if key in self._dirty:
            # A pending local change will be published with a newer stamp and win, unless it is `enqueued`.
            if incoming_enqueued or not is_enqueued(self._dirty[key]):
                return False
            del self._dirty[key]
            return self._apply(key, value, stamp)
        if key in self._reverts:
            if not incoming_enqueued:
                old = self._reverts[key]
                if old is not PENDING and wins(value, stamp, old[0], old[1]):
                    self._reverts[key] = (value, stamp)
            return False
        if key in self._tombstones:
            if incoming_enqueued or not wins(value, stamp, DELETED, self._tombstones[key]):
                return False
            return self._apply(key, value, stamp)
        current = dict.get(self, key, MISSING)
        if current is MISSING or (
            not incoming_enqueued and (is_enqueued(current) or wins(value, stamp, current, self._stamps.get(key, 0)))
        ):
            return self._apply(key, value, stamp)
        return False

    def _apply(self, key: str, value: Any, stamp: int) -> bool:
        if value is DELETED:
            self._tombstones[key] = stamp
            self._stamps.pop(key, None)
            old = dict.pop(self, key, MISSING)
            if old is MISSING:
                return False
            if self._listener is not None:
                self._listener.changed(key, old, MISSING)
            return True
        self._tombstones.pop(key, None)
        old = dict.get(self, key, MISSING)
        if is_enqueued(value):
            self._stamps.pop(key, None)
        else:
            if key not in self._stamps:
                dict.pop(self, key, None)  # re-inserted below with this key object, which `_stamps` shares
            self._stamps[key] = stamp
        dict.__setitem__(self, key, value)
        if self._listener is not None:
            self._listener.changed(key, old, value)
        return True

    def apply_reverts(self) -> None:
        """Bring back the winning value of keys set to `enqueued` locally over it."""
        for key, entry in list(self._reverts.items()):
            if entry is PENDING:
                continue  # Its pending change was not written yet (a failed write); keep it for the next sync.
            del self._reverts[key]
            if dict.get(self, key, MISSING) == ENQUEUED and key not in self._dirty:
                value, stamp = entry
                if value is DELETED:
                    dict.pop(self, key, None)
                    self._tombstones[key] = stamp
                else:
                    self._tombstones.pop(key, None)  # the restored value is the key's one authoritative entry
                    dict.__setitem__(self, key, value)
                    self._stamps[key] = stamp
                if self._listener is not None:
                    self._listener.changed(key, ENQUEUED, MISSING if value is DELETED else value)

    def snapshot_entries(self, capture_stamp: int) -> Iterator[tuple[str, Any, int]]:
        """Every key's authoritative entry, for a snapshot; pending local changes at `capture_stamp`."""
        for key in list(self):
            value = dict.get(self, key, MISSING)
            if value is MISSING:
                continue  # Deleted meanwhile: its tombstone is pending and will be published.
            revert = self._reverts.get(key, MISSING)
            if revert is not MISSING and revert is not PENDING:
                yield key, revert[0], revert[1]
            elif key in self._dirty or revert is PENDING:
                pending = self._dirty.get(key, value)
                yield key, pending, capture_stamp
            elif is_enqueued(value):
                yield key, value, 0
            else:
                yield key, value, self._stamps.get(key, 0)
        for key, stamp in list(self._tombstones.items()):
            if key not in self:
                yield key, DELETED, stamp
        for key, value in list(self._dirty.items()):
            if value is DELETED:
                yield key, DELETED, capture_stamp

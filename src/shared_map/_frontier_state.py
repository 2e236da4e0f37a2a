"""The frontier's per-URL state in one place, kept up to date on every change of the map (no walk of it per tick).

The status map tells it of each change (`MergingDict.listen`): a URL that starts waiting gets its owner computed
once, lazily and in chunks that yield to the event loop (`settle()`); when the live runs change, only the waiting
URLs are looked at, and only those whose owner can change are hashed again (a run that joined can only win URLs
from their current owner; a run that left only loses its own).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

from ._urls import DONE, rendezvous, run_hash
from ._values import MISSING, is_enqueued

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

SETTLE_CHUNK = 5_000
"""Waiting URLs whose owner is (re)computed between two yields to the event loop."""


class FrontierState:
    """What one run knows of every URL of the crawl: waiting or done, whose it is, queued or started here.

    Counters and sets, changed O(1) per changed URL:

    * `waiting` (status `enqueued`) and `done` (processed or failed) over the whole map;
    * each waiting URL's owner among the live runs, and how many wait for each run (`waiting_for`);
    * `ready`: the waiting URLs this run owns, has not queued, and is not holding back (see `begin_grace`);
    * `queued` (in this run's queue, not handled yet), `started` (handed to the crawler by this run, once each),
      `let_go` (queued here, then marked handled unfetched because another run owned it), and how many of the
      started ones are done (`mine_done`), so the pages the other runs did are `done - mine_done`.
    """

    def __init__(self, me: str, live: list[str], statuses: Mapping[str, Any]) -> None:
        """Count `statuses` (the status map, read once here); owners are computed by the first `settle()`."""
        self.me = me
        self._live: list[str] = list(live)
        self._live_set = frozenset(live)
        try:
            counts = Counter(statuses.values())  # counted in C
            self.done = sum(counts.get(status, 0) for status in DONE)
        except TypeError:  # a value that is not a status (a list or dict) cannot be counted that way
            self.done = sum(1 for value in statuses.values() if value in DONE)
        self._owners: dict[str, str | None] = dict.fromkeys(
            key for key, value in statuses.items() if is_enqueued(value)
        )
        self._waiting_for: Counter[str] = Counter()
        self._todo: list[str] = list(self._owners)  # waiting URLs whose owner is not computed yet (or stale)
        # A change of the live runs being applied by `settle()`: (URLs to look at, runs added, runs removed).
        self._moves: tuple[list[str], frozenset[str], frozenset[str]] | None = None
        self.ready: dict[str, None] = {}  # an ordered set: queued in the order the URLs became ready
        self.readied = 0  # counts URLs made ready: the frontier reads the request info again when it moved
        self.queued: set[str] = set()
        self.started: set[str] = set()
        self.let_go: set[str] = set()
        self.mine_done = 0
        # URLs waiting when this run joined runs that were crawling: held back while their earlier owner is live.
        self._inherited: set[str] | None = None
        self._join_others: list[str] = []
        self._held: set[str] = set()

    # ------------------------------------------------------------------ counters

    @property
    def waiting(self) -> int:
        """URLs waiting (status `enqueued`) in the whole map."""
        return len(self._owners)

    @property
    def others_done(self) -> int:
        """Done URLs this run did not start (the other runs' pages, and earlier attempts')."""
        return self.done - self.mine_done

    @property
    def settled(self) -> bool:
        """Whether every waiting URL's owner is known for the current live runs."""
        return not self._todo and self._moves is None

    def waiting_for(self) -> dict[str, int]:
        """How many URLs wait for each live run (owners computed so far; exact once `settled`)."""
        return {run: self._waiting_for.get(run, 0) for run in self._live}

    def waiting_urls(self) -> set[str]:
        """The waiting URLs (a copy)."""
        return set(self._owners)

    @property
    def held(self) -> frozenset[str]:
        """URLs this run owns but holds back during its grace period."""
        return frozenset(self._held)

    # ------------------------------------------------------------------ the map's changes (ChangeListener)

    def changed(self, key: str, old: Any, new: Any) -> None:
        """One status changed (`MISSING` for an absent key)."""
        was_waiting, now_waiting = is_enqueued(old), is_enqueued(new)
        if now_waiting and not was_waiting:
            self._owners[key] = None
            self._todo.append(key)
        elif was_waiting and not now_waiting:
            self._forget(key)
        was_done, now_done = old in DONE, new in DONE
        if was_done != now_done:
            step = 1 if now_done else -1
            self.done += step
            if key in self.started:
                self.mine_done += step

    def changed_many(self, keys: list[str], olds: list[Any] | None, new: Any) -> None:
        """Every key of `keys` took `new` (a merged group); `olds` None when all were absent."""
        if olds is not None:
            for key, old in zip(keys, olds, strict=True):
                self.changed(key, old, new)
            return
        if is_enqueued(new):
            self._owners.update(dict.fromkeys(keys))
            self._todo.extend(keys)
        elif new in DONE:
            self.done += len(keys)
            if self.started:
                self.mine_done += len(self.started.intersection(keys))

    def _forget(self, key: str) -> None:
        owner = self._owners.pop(key, None)
        if owner is not None:
            self._waiting_for[owner] -= 1
        self.ready.pop(key, None)
        self._held.discard(key)

    # ------------------------------------------------------------------ ownership

    @property
    def live(self) -> list[str]:
        """The live runs, sorted."""
        return list(self._live)

    def owner(self, url: str) -> str:
        """The live run that should fetch `url` (rendezvous hashing); recorded if `url` waits and had none yet."""
        if len(self._live) == 1:
            owner = self._live[0]
        else:
            known = self._owners.get(url)
            if known is not None and self._moves is None:
                return known
            owner = rendezvous(self._live, url)
        if url in self._owners and self._owners[url] is None:
            self._assign(url, owner)
        return owner

    def set_live(self, live: list[str]) -> None:
        """The live runs changed: owners are moved by the next `settle()`."""
        added = frozenset(live) - self._live_set
        removed = self._live_set - frozenset(live)
        self._live, self._live_set = list(live), frozenset(live)
        if self._moves is not None:  # two changes before one was applied: compute every owner afresh
            self._owners = dict.fromkeys(self._owners)
            self._waiting_for.clear()
            self.ready.clear()
            self._held.clear()
            self._moves = None
            self._todo = list(self._owners)
        elif self._owners:
            self._moves = (list(self._owners), added, removed)

    def _assign(self, url: str, owner: str) -> None:
        previous = self._owners[url]
        if previous == owner:
            return
        if previous is not None:
            self._waiting_for[previous] -= 1
        self._owners[url] = owner
        self._waiting_for[owner] += 1
        if owner != self.me:
            self.ready.pop(url, None)
            self._held.discard(url)
        elif url not in self.queued:
            self._make_ready(url)

    def _make_ready(self, url: str) -> None:
        if (
            self._inherited is not None
            and url in self._inherited
            and rendezvous(self._join_others, url) in self._live_set
        ):
            self._held.add(url)  # its owner before this run joined may still fetch it from its queue
        else:
            self.ready[url] = None
            self.readied += 1

    async def settle(self, chunk: int = SETTLE_CHUNK) -> None:
        """Compute the owners not known yet, and move those a change of the live runs moves, yielding between chunks."""
        while self._moves is not None:
            urls, added, removed = self._moves
            for start in range(0, len(urls), chunk):
                if self._moves is None or self._moves[0] is not urls:
                    break  # another change of the live runs restarted the work
                self._move(urls[start : start + chunk], added, removed)
                await asyncio.sleep(0)
            else:
                self._moves = None
        done = 0
        while done < len(self._todo):
            for url in self._todo[done : done + chunk]:
                if url in self._owners and self._owners[url] is None:
                    self._assign(url, rendezvous(self._live, url) if len(self._live) > 1 else self._live[0])
            done += chunk
            if done < len(self._todo):
                await asyncio.sleep(0)
        self._todo.clear()

    def _move(self, urls: list[str], added: frozenset[str], removed: frozenset[str]) -> None:
        owners = self._owners
        live = self._live
        joined = sorted(added)
        for url in urls:
            current = owners.get(url, MISSING)
            if current is MISSING or (current is not None and current not in removed and not joined):
                continue  # no longer waiting, or its owner is still live and no run joined
            if current is None or current in removed:
                self._assign(url, rendezvous(live, url) if len(live) > 1 else live[0])
                continue
            # The owner is still the highest of the runs that were live: only a run that joined can beat it, so
            # two hashes per URL whatever the number of runs.
            owner, best = current, run_hash(current, url)
            for run in joined:
                digest = run_hash(run, url)
                if digest > best:
                    owner, best = run, digest
            if owner != current:
                self._assign(url, owner)

    # ------------------------------------------------------------------ this run's queue

    def take_ready(self, limit: int) -> list[str]:
        """Up to `limit` ready URLs, now counted as queued."""
        taken: list[str] = []
        for url in self.ready:
            if len(taken) >= limit:
                break
            taken.append(url)
        for url in taken:
            del self.ready[url]
        self.queued.update(taken)
        return taken

    def mark_queued(self, url: str) -> None:
        """`url` went into this run's queue (a link it found and owns)."""
        self.queued.add(url)
        self.ready.pop(url, None)

    def mark_unqueued(self, url: str, *, let_go: bool = False) -> None:
        """`url` left this run's queue (handled, or `let_go`: left to its owner unfetched)."""
        self.queued.discard(url)
        if let_go:
            self.let_go.add(url)

    def mark_started(self, url: str, *, done: bool) -> bool:
        """The crawler got `url` (its status: `done` or not); whether it is the first time."""
        if url in self.started:
            return False
        self.started.add(url)
        if done:
            self.mine_done += 1
        return True

    # ------------------------------------------------------------------ the grace period of a joining run

    def begin_grace(self, join_others: list[str]) -> None:
        """This run joined `join_others` as they crawled: hold back the URLs waiting now while their owner is live."""
        self._inherited = set(self._owners)
        self._join_others = list(join_others)
        for url in [url for url in self.ready if url in self._inherited]:
            del self.ready[url]
            self._make_ready(url)

    def end_grace(self) -> None:
        """The earlier owners have seen this run by now: every held URL is ready."""
        self._inherited = None
        held, self._held = self._held, set()
        for url in held:
            if self._owners.get(url) == self.me and url not in self.queued:
                self.ready[url] = None
                self.readied += 1

    def is_let_go(self, urls: Iterable[str]) -> list[str]:
        """Those of `urls` that were let go here before (their unique key is used up in this run's queue)."""
        return [url for url in urls if url in self.let_go]

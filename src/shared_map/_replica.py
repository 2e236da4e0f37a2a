"""One replica's side of a sync: publish its changes as a log record, and merge what the others published.

`SharedMap` (in `_shared_map.py`) orders these steps and adds the lifecycle; the merge rule is in `_merging_dict.py`
and `_values.py`; records are built and checked in `_records.py`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ._covers import Covers, SeqSet, covers_subset, covers_union, run_of, writer_id
from ._merging_dict import MergingDict
from ._records import Chunk, CorruptRecordError, Manifest, split_entries

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._compaction import Compactor
    from ._liveness import RunsSeen
    from ._stats import SyncResult
    from ._store import Listing, RecordStore
    from ._values import HybridClock


class Replica(MergingDict):
    """The merge state plus what this replica has read (`had`, `manifests`) and written (its log seqs)."""

    def __init__(
        self,
        records: RecordStore,
        *,
        run_id: str,
        incarnation: str,
        clock: HybridClock,
        runs: RunsSeen,
        record_size: int,
        heartbeat_secs: float | None,
    ) -> None:
        super().__init__(clock=clock, max_record_bytes=records.max_record_bytes)
        self.run_id = run_id
        self.incarnation = incarnation
        self._writer = writer_id(run_id, incarnation)
        self._records = records
        self._runs = runs
        self._record_size = record_size
        self._heartbeat_secs = heartbeat_secs
        # What this replica has merged: log records (writer -> seqs) and manifests (parsed, by key).
        self._had: Covers = {}
        self._manifests: dict[str, Manifest] = {}
        self._next_seq = 1
        self._last_log_written = float('-inf')

    @property
    def records(self) -> RecordStore:
        """The records this replica reads and writes."""
        return self._records

    @property
    def runs_seen(self) -> RunsSeen:
        """The runs this replica has seen in the records it read."""
        return self._runs

    def caught_up(self, result: SyncResult) -> bool:
        """Whether the last read saw every record it listed, and every readable snapshot it lacks is loaded.

        Only then may this run compact (its snapshot would otherwise cover less than the store holds), and only
        then is `initialize()` done.
        """
        return not result.records_missing and all(
            covers_subset(m.covers, self._had) for m in self._manifests.values() if m.key not in self._records.bad
        )

    async def write_phase(self, result: SyncResult, *, final: bool = False) -> None:
        heartbeat_due = (
            self._heartbeat_secs is not None and time.monotonic() - self._last_log_written >= self._heartbeat_secs
        )
        if not self.pending and not heartbeat_due and not final:
            return
        pending = self.take_pending()
        written: set[str] = set()
        try:
            # An empty record still says "this run is alive" (or, with `final`, "this run is done") to the others.
            entries = ((key, value, 0) for key, value in pending.items())
            split = split_entries(
                entries, record_size=self._record_size, max_record_bytes=self._records.max_record_bytes
            )
            chunks = list(split) or [Chunk()]
            for index, chunk in enumerate(chunks):
                # Each record gets its own, larger stamp: a reader then merges each one wholesale (the "newest" path).
                stamp = self.clock.tick()
                chunk.restamp(stamp)
                seq = self._next_seq
                self._next_seq += 1  # Never reuse a key: a failed write may still have landed; records are immutable.
                final_record = final and index == len(chunks) - 1
                body = chunk.log_body(run=self.run_id, seq=seq, written_at=self.clock.wall(), final=final_record)
                await self._records.put(self._records.keys.log(self._writer, seq), body)
                self._had.setdefault(self._writer, SeqSet()).add(seq)
                self._last_log_written = time.monotonic()
                for key in chunk.keys:
                    self.mark_published(key, pending[key], stamp)
                written.update(chunk.keys)
                result.records_written += 1
                result.bytes_written += len(body)
                result.entries_written += len(chunk.keys)
        except BaseException:
            # Whatever failed (the store, encoding, a cancellation), every change not written stays pending.
            self.restore_pending({key: value for key, value in pending.items() if key not in written})
            raise

    async def read_phase(self, listing: Listing, result: SyncResult) -> None:
        # 1. Log records not merged yet (in key order: each writer's in the order it wrote them).
        for key in sorted(listing.logs):
            writer, seq = listing.logs[key]
            had = self._had.get(writer)
            if had is not None and seq in had:
                continue
            body = await self._records.fetch(key, 'log', result)
            if body is None:
                continue
            self.merge_body(body, result)
            self._had.setdefault(writer, SeqSet()).add(seq)
            self._runs.saw(run_of(writer), body)

        # 2. Snapshots: load one only if it covers log records this run has not merged (deleted before it read them).
        listed = set(listing.manifests)
        for key in list(self._manifests):
            if key not in listed:
                del self._manifests[key]
        for key in listing.manifests:
            if key not in self._manifests and key not in self._records.bad:
                body = await self._records.fetch(key, 'manifest', result)
                if body is not None:
                    try:
                        self._manifests[key] = Manifest.from_body(key, body)
                    except CorruptRecordError as exc:
                        self._records.skip_bad(key, str(exc), result)
        by_coverage = sorted(self._manifests.values(), key=lambda m: -sum(len(s) for s in m.covers.values()))
        for manifest in by_coverage:
            if not covers_subset(manifest.covers, self._had):
                await self._load_snapshot(manifest, result)

    async def read_whole(self, listing: Listing, result: SyncResult, *, attempts: int) -> bool:
        """Read until caught up (`caught_up`), re-listing with growing pauses; whether it was within `attempts`.

        A record that vanished under the read was superseded by a compaction: a new listing finds what replaced it.
        A map must never start from a partial read (it would re-crawl what others did, and its clock could lag its
        own earlier stamps).
        """
        for attempt in range(attempts):
            await self.read_phase(listing, result)
            if self.caught_up(result):
                return True
            result.records_missing = 0
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
            listing = await self._records.list()
        return False

    def known_manifests(self) -> Iterable[Manifest]:
        """The snapshot manifests this replica has read (logs they hold do not make a compaction due)."""
        return self._manifests.values()

    async def compact(self, compactor: Compactor, listing: Listing, result: SyncResult) -> None:
        """Let `compactor` fold the logs into a snapshot of what this replica merged, beside the snapshots it knows."""
        await compactor.compact(
            listing, result, had=self._had, manifests=self._manifests, entries=self.snapshot_entries
        )

    async def _load_snapshot(self, manifest: Manifest, result: SyncResult) -> None:
        for part in manifest.parts:
            body = await self._records.fetch(part, 'part', result)
            if body is None:
                if part in self._records.bad or part in self._records.ghosts:
                    self._records.skip_bad(manifest.key, f'its part {part} is unreadable', result)
                # A missing part: a newer snapshot superseded this one meanwhile; a new listing finds that one.
                # What was merged from the other parts stays: every entry in them is a valid entry.
                return
            self.merge_body(body, result)
        covers_union(self._had, manifest.covers)
        result.snapshots_loaded += 1

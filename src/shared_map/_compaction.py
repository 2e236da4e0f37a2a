"""Compaction under a lease: fold the log records into a snapshot, and delete only what a complete snapshot holds.

The safety argument (double lease holders, a stalled compactor, a kill at any moment) is in `docs/sync-protocol.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._covers import Covers, covers_subset, covers_union
from ._records import CONTENT_TYPE, Chunk, CorruptRecordError, Lease, Manifest, dumps, manifest_time_ms, split_entries
from ._stats import SyncResult

if TYPE_CHECKING:
    from ._store import Listing, RecordStore
    from ._values import HybridClock

logger = logging.getLogger(__name__)

SnapshotEntries = Callable[[int], Iterator[tuple[str, Any, int]]]
"""Given the capture stamp, every key's authoritative `(key, value, stamp)` entry."""


class Compactor:
    """One run's side of compaction: the lease, the snapshot it writes, and the deletions it may do."""

    def __init__(
        self,
        records: RecordStore,
        *,
        run_id: str,
        clock: HybridClock,
        record_size: int,
        compact_after_records: int,
        compact_after_bytes: int,
        lease_ttl_ms: int,
        orphan_age_ms: int,
    ) -> None:
        self._records = records
        self._keys = records.keys
        self._run_id = run_id
        self._clock = clock
        self._record_size = record_size
        self._compact_after_records = compact_after_records
        self._compact_after_bytes = compact_after_bytes
        self._lease_ttl_ms = lease_ttl_ms
        self._orphan_age_ms = orphan_age_ms

    def due(self, listing: Listing, manifests: Iterable[Manifest] = ()) -> bool:
        """Whether the log records listed are many or big enough to fold into a snapshot.

        Logs that a known snapshot (`manifests`) already holds do not count: they are deleted by the next
        compaction anyway, and counting them made every compaction be followed by a second one at the next sync
        (and a run joining a store with many logs compact twice), each rewriting the whole state.
        """
        covering = [m.covers for m in manifests]
        fresh = [
            key
            for key, (writer, seq) in listing.logs.items()
            if not any(writer in covers and seq in covers[writer] for covers in covering)
        ]
        fresh_bytes = sum(listing.log_sizes.get(key, 0) for key in fresh)
        return len(fresh) >= self._compact_after_records or fresh_bytes >= self._compact_after_bytes

    async def compact(
        self,
        listing: Listing,
        result: SyncResult,
        *,
        had: Covers,
        manifests: dict[str, Manifest],
        entries: SnapshotEntries,
    ) -> None:
        """Compact if this run wins the lease: `had` is what it merged, `manifests` the snapshots it knows."""
        lease = await self.acquire_lease()
        result.lease_won = lease is not None
        if lease is None:
            return
        try:
            await self._compact(listing, result, lease, had=had, manifests=manifests, entries=entries)
        finally:
            await self.release_lease(lease)

    async def _compact(
        self,
        listing: Listing,
        result: SyncResult,
        lease: Lease,
        *,
        had: Covers,
        manifests: dict[str, Manifest],
        entries: SnapshotEntries,
    ) -> None:
        started = time.monotonic()
        superseded = [m for m in manifests.values() if covers_subset(m.covers, had)]
        covers: Covers = {}
        covers_union(covers, had)
        gen = max((m.gen for m in manifests.values()), default=0) + 1
        nonce = f'{self._clock.wall():x}{secrets.token_hex(2)}'
        manifest_key = self._keys.manifest(gen, self._run_id, nonce)
        capture_stamp = self._clock.tick()  # Pending local changes go in with a stamp below their coming log record's.

        parts: list[str] = []
        count = total_bytes = 0
        async for chunk in self._snapshot_chunks(entries(capture_stamp)):
            part_key = self._keys.part(manifest_key, len(parts))
            body = await self._records.put(part_key, chunk.part_body(manifest=manifest_key, index=len(parts)))
            parts.append(part_key)
            count += len(chunk.keys)
            total_bytes += len(body)
            result.records_written += 1
            result.bytes_written += len(body)
            lease = await self._renew_lease(lease)
        # A compaction that stalled for a long time must not publish: its parts may count as orphans by now.
        if (time.monotonic() - started) * 1000 > self._orphan_age_ms / 2:
            logger.warning('Shared map: compaction took too long; its snapshot %s is abandoned.', manifest_key)
            return
        manifest = Manifest(
            key=manifest_key,
            gen=gen,
            run=self._run_id,
            parts=parts,
            covers=covers,
            entries=count,
            bytes=total_bytes,
            written_at=self._clock.wall(),
            supersedes=[m.key for m in superseded],
        )
        await self._records.put(manifest_key, dumps(manifest.to_body()))
        result.records_written += 1
        manifests[manifest_key] = manifest
        result.compacted = True

        # Delete nothing unless the snapshot is complete in the store now.
        for part_key in parts:
            if not await self._records.store.record_exists(part_key):
                logger.error('Shared map: part %s of the new snapshot is missing; nothing is deleted.', part_key)
                return
        # Logs are deleted one compaction late (those a superseded snapshot already covered), so runs that sync
        # more often than compactions happen read them as logs and never need to reload a whole snapshot.
        doomed = [
            key
            for key, (writer, seq) in listing.logs.items()
            if any(writer in m.covers and seq in m.covers[writer] for m in superseded)
        ]
        for old in superseded:
            doomed.append(old.key)  # The manifest goes before its parts, so no reader finds one with parts missing.
            doomed.extend(old.parts)
            manifests.pop(old.key, None)
        listed_manifests = set(listing.manifests) | {manifest_key}
        now = self._clock.wall()
        for part_key in listing.parts:
            owner = self._keys.part_manifest(part_key)
            born = manifest_time_ms(owner)
            if owner not in listed_manifests and born is not None and now - born > self._orphan_age_ms:
                doomed.append(part_key)
        for key in doomed:
            await self._records.store.delete_value(key)
            result.records_deleted += 1
        logger.info(
            'Shared map: run %s compacted %d entries into %d parts (%.1f MB), deleted %d records.',
            self._run_id,
            count,
            len(parts),
            total_bytes / 1e6,
            result.records_deleted,
        )

    async def _snapshot_chunks(self, entries: Iterator[tuple[str, Any, int]]) -> AsyncIterator[Chunk]:
        """Yield the whole state in record-sized chunks, letting other tasks run between chunks."""
        for chunk in split_entries(
            entries, record_size=self._record_size, max_record_bytes=self._records.max_record_bytes
        ):
            yield chunk
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ the lease

    async def acquire_lease(self) -> Lease | None:
        """Try to take the compaction lease; None if another live run holds it. Never waits for it."""
        current = await self._read_lease()
        now = self._clock.wall()
        if current is not None and current.owner != self._run_id and current.expires_at > now:
            return None
        lease = Lease(owner=self._run_id, token=secrets.token_hex(8), expires_at=now + self._lease_ttl_ms)
        await self._write_lease(lease)
        # Writes are not conditional: let a concurrent taker's write land, then see whose write stuck. Two runs
        # may still both believe they hold it; the protocol is safe then too (docs/sync-protocol.md).
        await asyncio.sleep(0.05)
        current = await self._read_lease()
        return lease if current is not None and current.token == lease.token else None

    async def release_lease(self, lease: Lease | None = None) -> None:
        """Give up the lease if this run holds it (`lease` or any token of ours)."""
        with contextlib.suppress(Exception):
            current = await self._read_lease()
            if (
                current is not None
                and current.owner == self._run_id
                and (lease is None or current.token == lease.token)
            ):
                await self._write_lease(Lease(owner=self._run_id, token=current.token, expires_at=0))

    async def _renew_lease(self, lease: Lease) -> Lease:
        if lease.expires_at - self._clock.wall() > self._lease_ttl_ms / 2:
            return lease
        renewed = Lease(owner=lease.owner, token=lease.token, expires_at=self._clock.wall() + self._lease_ttl_ms)
        await self._write_lease(renewed)
        return renewed

    async def _write_lease(self, lease: Lease) -> None:
        await self._records.store.set_value(self._keys.lease, dumps(lease.to_body()), content_type=CONTENT_TYPE)

    async def _read_lease(self) -> Lease | None:
        try:
            body = await self._records.fetch(self._keys.lease, 'lease', SyncResult())
            return None if body is None else Lease.from_body(body)
        except CorruptRecordError:
            return None  # An unreadable lease binds nobody; the next acquirer overwrites it.
        finally:
            self._records.bad.discard(self._keys.lease)

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SyncResult:
    """What one `SharedMap.sync()` did."""

    entries_written: int = 0
    """Entries this run published (its local changes since the last sync)."""
    records_written: int = 0
    bytes_written: int = 0
    entries_read: int = 0
    """Entries merged from records of other runs (and snapshots)."""
    records_read: int = 0
    bytes_read: int = 0
    entries_changed: int = 0
    """Local entries whose value changed because of what was read."""
    snapshots_loaded: int = 0
    records_skipped: int = 0
    """Corrupt or foreign records under the map's prefix, skipped (logged once each)."""
    records_missing: int = 0
    """Records listed but gone when read (a compaction folded them); the next sync catches up through the snapshot."""
    compacted: bool = False
    lease_won: bool | None = None
    """None when no compaction was attempted."""
    records_deleted: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunStats:
    """Totals over the life of one run's map; kept in the store in the run's record."""

    syncs: int = 0
    sync_errors: int = 0
    entries_written: int = 0
    records_written: int = 0
    bytes_written: int = 0
    entries_read: int = 0
    records_read: int = 0
    bytes_read: int = 0
    snapshots_loaded: int = 0
    records_skipped: int = 0
    compactions: int = 0
    records_deleted: int = 0
    lease_wins: int = 0
    lease_misses: int = 0
    sync_seconds: float = 0.0
    max_sync_seconds: float = 0.0
    store_reads: int = 0
    """Calls to the store, by kind (reads include existence checks; lists count one per listing, however long)."""
    store_writes: int = 0
    store_deletes: int = 0
    store_lists: int = 0
    sync_durations: list[float] = field(default_factory=list, repr=False)

    def add(self, result: SyncResult, *, is_sync: bool = True) -> None:
        """Add what one sync (or, with `is_sync=False`, the initial load) did."""
        self.syncs += is_sync
        for name in (
            'entries_written',
            'records_written',
            'bytes_written',
            'entries_read',
            'records_read',
            'bytes_read',
            'snapshots_loaded',
            'records_skipped',
            'records_deleted',
        ):
            setattr(self, name, getattr(self, name) + getattr(result, name))
        self.compactions += result.compacted
        if result.lease_won is not None:
            self.lease_wins += result.lease_won
            self.lease_misses += not result.lease_won
        if is_sync:
            self.sync_seconds += result.seconds
            self.max_sync_seconds = max(self.max_sync_seconds, result.seconds)
            if len(self.sync_durations) < 100_000:  # Bounded: enough for percentiles in a stress run.
                self.sync_durations.append(result.seconds)

    @property
    def store_operations(self) -> int:
        """All calls to the store."""
        return self.store_reads + self.store_writes + self.store_deletes + self.store_lists

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data['store_operations'] = self.store_operations
        del data['sync_durations']
        data['sync_seconds'] = round(self.sync_seconds, 4)
        data['max_sync_seconds'] = round(self.max_sync_seconds, 4)
        return data


@dataclass
class SharingStats:
    """What the sharing saved and cost, for this run."""

    known_skipped: int = 0
    """Discovered URLs dropped because some run already knew them."""
    handed_over: int = 0
    """Discovered URLs left in the map for the run that owns them."""
    taken_over: int = 0
    """URLs this run queued from the map (handed over to it, or left by a run that died or finished)."""
    skipped_before_fetch: int = 0
    """Queued requests not fetched because another run had processed them meanwhile."""
    left_to_owner: int = 0
    """Queued requests not fetched because another live run owns them now (it queues and fetches them)."""
    owner_changes: int = 0
    """Times the set of live runs (hence URL ownership) changed."""
    syncs: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

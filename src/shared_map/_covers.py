"""Which log records a snapshot (or a reader) holds: per writer, a set of seqs kept as a few ranges."""

from __future__ import annotations

from bisect import bisect_right


class SeqSet:
    """A set of non-negative integers kept as sorted, disjoint, inclusive `[lo, hi]` ranges.

    Sequence numbers of one run's log records are almost always contiguous, so this stays tiny.
    """

    __slots__ = ('_ranges',)

    def __init__(self, ranges: list[list[int]] | None = None) -> None:
        self._ranges: list[list[int]] = []
        for lo, hi in ranges or []:
            if not 0 <= lo <= hi:
                raise ValueError(f'invalid range [{lo}, {hi}]')
            self._add_range(lo, hi)

    def _add_range(self, lo: int, hi: int) -> None:
        ranges = self._ranges
        if ranges and ranges[-1][1] >= lo - 1 and ranges[-1][0] <= lo:  # The usual case: extend the last range.
            ranges[-1][1] = max(ranges[-1][1], hi)
            return
        kept = [r for r in ranges if r[1] < lo - 1 or r[0] > hi + 1]
        for r in ranges:
            if not (r[1] < lo - 1 or r[0] > hi + 1):
                lo, hi = min(lo, r[0]), max(hi, r[1])
        kept.append([lo, hi])
        kept.sort()
        self._ranges = kept

    def add(self, seq: int) -> None:
        """Add one sequence number."""
        self._add_range(seq, seq)

    def update(self, other: SeqSet) -> None:
        """Add every number of `other`."""
        for lo, hi in other._ranges:
            self._add_range(lo, hi)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect_right(self._ranges, [seq, float('inf')]) - 1
        return i >= 0 and self._ranges[i][0] <= seq <= self._ranges[i][1]

    def issubset(self, other: SeqSet) -> bool:
        """Whether every number of this set is in `other`."""
        for lo, hi in self._ranges:
            i = bisect_right(other._ranges, [lo, float('inf')]) - 1
            if i < 0 or not (other._ranges[i][0] <= lo and hi <= other._ranges[i][1]):
                return False
        return True

    def max(self) -> int:
        """The largest number, or 0 for an empty set."""
        return self._ranges[-1][1] if self._ranges else 0

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self._ranges)

    def to_json(self) -> list[list[int]]:
        """The ranges, as stored in a manifest."""
        return [list(r) for r in self._ranges]

    def __repr__(self) -> str:
        return f'SeqSet({self._ranges!r})'


Covers = dict[str, SeqSet]
"""Log records by writer (`<run>` for version-1 logs, `<run>.<incarnation>` since version 2) -> their seqs."""


def writer_id(run: str, incarnation: str) -> str:
    """The identity of one incarnation of a run: what its log keys and `covers` entries are named by."""
    return f'{run}.{incarnation}'


def run_of(writer: str) -> str:
    """The run a writer (a run, or one incarnation of it) belongs to."""
    return writer.split('.', 1)[0]


def covers_subset(a: Covers, b: Covers) -> bool:
    """Whether every log record covered by `a` is covered by `b`."""
    return all(seqs.issubset(b.get(run, SeqSet())) for run, seqs in a.items())


def covers_union(into: Covers, other: Covers) -> None:
    """Add the coverage of `other` to `into`."""
    for run, seqs in other.items():
        into.setdefault(run, SeqSet()).update(seqs)

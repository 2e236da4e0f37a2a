"""The persisted records of the shared map: their keys, their one schema, and their encoding.

Every record is compact JSON (ASCII-only, so its length in characters is its size in bytes) stored as
`application/octet-stream`, so that no storage client re-encodes it. Every record carries
`{"format": "apify-shared-map", "version": 2, "kind": ...}`; see `docs/sync-protocol.md`.

Version 2 put an *incarnation* (drawn at every start of a run) into log keys: `SM.L.<run>.<incarnation>.<seq>`.
Version 1 logs (`SM.L.<run>.<seq>`) are still read: their writer is the run alone. Logs, manifests' `covers` and
the map's merged set are all keyed by *writer* (`<run>` or `<run>.<incarnation>`), so a restarted run can never
reuse a log identity, whatever it managed to read at start-up.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import UnsupportedFormatError

FORMAT_NAME = 'apify-shared-map'
FORMAT_VERSION = 2
CONTENT_TYPE = 'application/octet-stream'

RecordKind = Literal['log', 'part', 'manifest', 'lease', 'run']

# Characters our record keys use: a subset of the platform's `[a-zA-Z0-9!\-_.'()]` that no storage client escapes.
NAME_PATTERN = re.compile(r'^[A-Za-z0-9_-]{1,64}$')
INCARNATION_PATTERN = re.compile(r'^[0-9a-z]{1,24}$')
PLATFORM_KEY_PATTERN = re.compile(r"^[a-zA-Z0-9!\-_.'()]{1,256}$")

#: The value that "enqueued" entries carry; it never replaces a value already present when merging.
ENQUEUED = 'enqueued'

# A group is `[stamp, value, [key, ...]]`: every key in it got `value` at `stamp`.
Group = list[Any]


class CorruptRecordError(Exception):
    """A record under the shared map's prefix that cannot be decoded. Internal: logged and skipped, never raised."""


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


@dataclass(frozen=True)
class Keys:
    """The naming scheme of the records of one shared map (all start with `prefix` and a dot).

    Log records sort before manifests, so a paginated listing sees a manifest written before a log it covers
    was deleted (see `docs/sync-protocol.md`).
    """

    prefix: str

    def log(self, writer: str, seq: int) -> str:
        return f'{self.prefix}.L.{writer}.{seq:010d}'

    def manifest(self, gen: int, run: str, nonce: str) -> str:
        return f'{self.prefix}.M.{gen:010d}.{run}.{nonce}'

    def part(self, manifest_key: str, index: int) -> str:
        return f'{self.prefix}.P.{manifest_key[len(self.prefix) + 3 :]}.{index:05d}'

    def part_manifest(self, part_key: str) -> str:
        """The manifest key a part key belongs to."""
        return f'{self.prefix}.M.{part_key[len(self.prefix) + 3 :].rsplit(".", 1)[0]}'

    @property
    def lease(self) -> str:
        return f'{self.prefix}.LEASE'

    def run(self, run: str) -> str:
        return f'{self.prefix}.R.{run}'

    def classify(self, key: str) -> tuple[str, list[str]] | None:
        """Split one of our keys into its kind letter and fields; None for a key that is not ours."""
        if not key.startswith(self.prefix + '.'):
            return None
        rest = key[len(self.prefix) + 1 :]
        if rest == 'LEASE':
            return 'LEASE', []
        kind, _, fields = rest.partition('.')
        parts = fields.split('.')
        if kind == 'L':  # `<run>.<seq>` (version 1) or `<run>.<incarnation>.<seq>`
            if len(parts) == 3 and not INCARNATION_PATTERN.match(parts[1]):
                return None
            return (kind, parts) if len(parts) in (2, 3) and parts[-1].isdigit() else None
        expected = {'M': 3, 'P': 4, 'R': 1}.get(kind)
        if expected is None or len(parts) != expected:
            return None
        if kind in 'MP' and not parts[0].isdigit():
            return None
        return kind, parts

    def log_writer(self, fields: list[str]) -> tuple[str, int]:
        """The writer and seq of a log key's fields (as `classify` returns them)."""
        return '.'.join(fields[:-1]), int(fields[-1])


def manifest_time_ms(manifest_key: str) -> int | None:
    """When a manifest (or its parts) was started, from the hex milliseconds that open its nonce."""
    nonce = manifest_key.rsplit('.', 1)[-1]
    try:
        return int(nonce[:-4], 16)
    except ValueError:
        return None


def dumps(body: dict[str, Any]) -> bytes:
    """Encode a record body: compact, ASCII-only JSON."""
    return json.dumps(body, ensure_ascii=True, separators=(',', ':'), allow_nan=False).encode('ascii')


def envelope(kind: RecordKind, **fields: Any) -> dict[str, Any]:
    """A record body with the format header."""
    return {'format': FORMAT_NAME, 'version': FORMAT_VERSION, 'kind': kind, **fields}


def loads(key: str, raw: object, kind: RecordKind) -> dict[str, Any]:
    """Decode and check a record body read from the store.

    Raises:
        CorruptRecordError: not a shared-map record of that kind (truncated, foreign, malformed).
        UnsupportedFormatError: a shared-map record of a newer format version.
    """
    if isinstance(raw, (bytes, bytearray)):
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f'not valid JSON ({exc})') from exc
    elif isinstance(raw, dict):  # A client that decoded JSON for us.
        body = raw
    else:
        raise CorruptRecordError(f'unexpected value of type {type(raw).__name__}')
    if not isinstance(body, dict) or body.get('format') != FORMAT_NAME:
        raise CorruptRecordError('not a shared-map record (no "format": "apify-shared-map")')
    version = body.get('version')
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptRecordError(f'invalid format version {version!r}')
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(key, version, FORMAT_VERSION)
    if body.get('kind') != kind:
        raise CorruptRecordError(f'expected a {kind} record, found kind {body.get("kind")!r}')
    return body


def check_groups(body: dict[str, Any]) -> tuple[list[Group], list[Group]]:
    """The value groups and deletion groups of a log or part body, validated.

    Raises:
        CorruptRecordError: if they are malformed.
    """
    groups = body.get('groups', [])
    deleted = body.get('deleted', [])
    if not isinstance(groups, list) or not isinstance(deleted, list):
        raise CorruptRecordError('"groups" and "deleted" must be lists')
    for group in groups:
        if not (
            isinstance(group, list)
            and len(group) == 3
            and _is_stamp(group[0])
            and isinstance(group[2], list)
            and _all_strings(group[2])
        ):
            raise CorruptRecordError(f'malformed group {str(group)[:80]}')
    for group in deleted:
        if not (
            isinstance(group, list)
            and len(group) == 2
            and _is_stamp(group[0])
            and isinstance(group[1], list)
            and _all_strings(group[1])
        ):
            raise CorruptRecordError(f'malformed deletion group {str(group)[:80]}')
    return groups, deleted


def _all_strings(items: list[Any]) -> bool:
    return not items or set(map(type, items)) == {str}  # in C: a Python loop costs seconds at 1M keys


def _is_stamp(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class Manifest:
    """A snapshot: `parts` hold the merge of every log record in `covers`."""

    key: str
    gen: int
    run: str
    parts: list[str]
    covers: Covers
    entries: int
    bytes: int
    written_at: int
    supersedes: list[str] = field(default_factory=list)

    def to_body(self) -> dict[str, Any]:
        return envelope(
            'manifest',
            gen=self.gen,
            run=self.run,
            parts=self.parts,
            covers={run: seqs.to_json() for run, seqs in self.covers.items()},
            entries=self.entries,
            bytes=self.bytes,
            writtenAt=self.written_at,
            supersedes=self.supersedes,
        )

    @classmethod
    def from_body(cls, key: str, body: dict[str, Any]) -> Manifest:
        try:
            covers = {
                str(run): SeqSet([[int(lo), int(hi)] for lo, hi in ranges]) for run, ranges in body['covers'].items()
            }
            parts = [str(p) for p in body['parts']]
            return cls(
                key=key,
                gen=int(body['gen']),
                run=str(body['run']),
                parts=parts,
                covers=covers,
                entries=int(body['entries']),
                bytes=int(body['bytes']),
                written_at=int(body['writtenAt']),
                supersedes=[str(s) for s in body.get('supersedes', [])],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecordError(f'malformed manifest ({exc!r})') from exc


@dataclass
class Lease:
    """Who may compact: `owner` until `expires_at` (ms since the epoch); `token` tells two attempts apart."""

    owner: str
    token: str
    expires_at: int

    def to_body(self) -> dict[str, Any]:
        return envelope('lease', owner=self.owner, token=self.token, expiresAt=self.expires_at)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Lease:
        try:
            return cls(owner=str(body['owner']), token=str(body['token']), expires_at=int(body['expiresAt']))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecordError(f'malformed lease ({exc!r})') from exc

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ._covers import Covers, SeqSet
from ._errors import UnsupportedFormatError
from ._values import DELETED, SCALAR_TYPES

FORMAT_NAME = 'apify-shared-map'
FORMAT_VERSION = 2
CONTENT_TYPE = 'application/octet-stream'

RecordKind = Literal['log', 'part', 'manifest', 'lease', 'run']

# Characters our record keys use: a subset of the platform's `[a-zA-Z0-9!\-_.'()]` that no storage client escapes.
NAME_PATTERN = re.compile(r'^[A-Za-z0-9_-]{1,64}$')
INCARNATION_PATTERN = re.compile(r'^[0-9a-z]{1,24}$')
PLATFORM_KEY_PATTERN = re.compile(r"^[a-zA-Z0-9!\-_.'()]{1,256}$")

# A group is `[stamp, value, [key, ...]]`: every key in it got `value` at `stamp`.
Group = list[Any]


class CorruptRecordError(Exception):
    """A record under the shared map's prefix that cannot be decoded. Internal: logged and skipped, never raised."""


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


def body_groups(body: dict[str, Any]) -> Iterator[tuple[int, Any, list[str]]]:
    """The `(stamp, value, keys)` groups of a log or part body that `check_groups` accepted; deletions as `DELETED`."""
    for stamp, value, keys in body.get('groups', []):
        yield stamp, value, keys
    for stamp, keys in body.get('deleted', []):
        yield stamp, DELETED, keys


def encoded_len(text: str) -> int:
    """The exact length of `text` in our JSON (ASCII-only: escapes count), cheaply for the usual plain URL."""
    if text.isascii() and text.isprintable() and '"' not in text and '\\' not in text:
        return len(text) + 2
    return len(json.dumps(text, ensure_ascii=True))


@dataclass
class Chunk:
    """The entries of one log or part record being built: values grouped by (stamp, value), deletions by stamp."""

    keys: list[str] = field(default_factory=list)
    groups: dict[tuple[int, type, Any], Group] = field(default_factory=dict)
    singles: list[Group] = field(default_factory=list)
    deleted: dict[int, Group] = field(default_factory=dict)
    size: int = 0

    def cost(self, key: str, value: Any, stamp: int) -> int:
        """How many bytes adding this entry adds to the record (exact for strings, generous for the rest)."""
        key_size = encoded_len(key) + 1
        if value is DELETED:
            return key_size + (0 if stamp in self.deleted else 32)
        if value.__class__ in SCALAR_TYPES:
            if (stamp, value.__class__, value) in self.groups:
                return key_size
            return key_size + 32 + (encoded_len(value) if value.__class__ is str else 24)
        return key_size + 32 + len(json.dumps(value, ensure_ascii=True))

    def add(self, key: str, value: Any, stamp: int, cost: int) -> None:
        self.keys.append(key)
        self.size += cost
        if value is DELETED:
            self.deleted.setdefault(stamp, [stamp, []])[1].append(key)
        elif value.__class__ in SCALAR_TYPES:
            group = self.groups.get((stamp, value.__class__, value))
            if group is None:
                group = self.groups[(stamp, value.__class__, value)] = [stamp, value, []]
            group[2].append(key)
        else:
            self.singles.append([stamp, value, [key]])

    def restamp(self, stamp: int) -> None:
        """Give every entry of the record the same stamp (log records: the stamp of the write)."""
        for group in (*self.groups.values(), *self.singles, *self.deleted.values()):
            group[0] = stamp

    def log_body(self, *, run: str, seq: int, written_at: int, final: bool) -> bytes:
        """The encoded log record of these entries."""
        return dumps(envelope('log', run=run, seq=seq, writtenAt=written_at, final=final, **self._fields()))

    def part_body(self, *, manifest: str, index: int) -> bytes:
        """The encoded snapshot part of these entries."""
        return dumps(envelope('part', manifest=manifest, index=index, **self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {'groups': [*self.groups.values(), *self.singles], 'deleted': list(self.deleted.values())}


def split_entries(
    entries: Iterable[tuple[str, Any, int]], *, record_size: int, max_record_bytes: int
) -> Iterator[Chunk]:
    """Split `(key, value, stamp)` entries into records of at most `record_size` entries and `max_record_bytes`."""
    budget = max_record_bytes - 4096  # room for the envelope
    chunk = Chunk()
    for key, value, stamp in entries:
        cost = chunk.cost(key, value, stamp)
        if chunk.keys and (len(chunk.keys) >= record_size or chunk.size + cost > budget):
            yield chunk
            chunk = Chunk()
            cost = chunk.cost(key, value, stamp)
        chunk.add(key, value, stamp, cost)
    if chunk.keys:
        yield chunk


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

"""The options of `SharedMap`, checked in one place with messages that say what a valid value looks like."""

from __future__ import annotations

import os
import uuid

from ._errors import InvalidOptionError
from ._records import NAME_PATTERN

MiB = 1024 * 1024


def check_options(
    *,
    run_id: str | None,
    prefix: str,
    record_size: int,
    max_record_bytes: int,
    compact_after_records: int,
    lease_ttl_secs: float,
    orphan_age_secs: float,
    heartbeat_secs: float | None,
    store_timeout_secs: float,
) -> str:
    """Check `SharedMap`'s options; the run id to use (default: the Apify run id, else a random one).

    Raises:
        InvalidOptionError: naming the option and its valid values.
    """
    run_id = run_id or os.environ.get('ACTOR_RUN_ID') or os.environ.get('APIFY_ACTOR_RUN_ID') or uuid.uuid4().hex[:12]
    if not NAME_PATTERN.match(run_id):
        raise InvalidOptionError(f'run_id {run_id!r} must be 1-64 characters from A-Z, a-z, 0-9, "_" and "-".')
    if not NAME_PATTERN.match(prefix) or len(prefix) > 20:
        raise InvalidOptionError(f'prefix {prefix!r} must be 1-20 characters from A-Z, a-z, 0-9, "_" and "-".')
    if record_size < 1:
        raise InvalidOptionError(f'record_size must be at least 1, got {record_size}.')
    if not 64 * 1024 <= max_record_bytes <= 9 * MiB:
        raise InvalidOptionError(f'max_record_bytes must be between 64 KiB and 9 MiB, got {max_record_bytes}.')
    if compact_after_records < 2:
        raise InvalidOptionError(f'compact_after_records must be at least 2, got {compact_after_records}.')
    if lease_ttl_secs <= 0 or orphan_age_secs < 4 * lease_ttl_secs:
        raise InvalidOptionError('lease_ttl_secs must be positive and orphan_age_secs at least 4 x lease_ttl_secs.')
    if heartbeat_secs is not None and heartbeat_secs <= 0:
        raise InvalidOptionError(f'heartbeat_secs must be positive, got {heartbeat_secs}.')
    if store_timeout_secs <= 0:
        raise InvalidOptionError(f'store_timeout_secs must be positive, got {store_timeout_secs}.')
    return run_id

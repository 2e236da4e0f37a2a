"""Records a shared map reads once at start and never changes: `INITIAL` seeds and the JS package's `STATE-<i>`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._values import ENQUEUED, check_value

if TYPE_CHECKING:
    from ._store import CountedStore

logger = logging.getLogger(__name__)


async def load_seed_record(
    store: CountedStore, key: str, *, initial: bool, merge_one: Callable[[str, Any, int], bool]
) -> None:
    """Merge an `INITIAL` record or a JS `STATE-<i>` record with stamp 0 (anything synced later wins).

    `INITIAL` records may hold a list of keys (each becomes `enqueued`), a list of `[key, value]` pairs, or an
    object; `STATE-<i>` records hold `[key, value]` pairs. Entries that are not valid are logged and skipped.
    """
    value = await store.get_value(key)
    if isinstance(value, (bytes, bytearray, str)):
        try:
            value = json.loads(value)
        except ValueError:
            logger.warning('Shared map: skipping record %r: not JSON. It is left in the store untouched.', key)
            return
    if isinstance(value, dict):
        pairs: Iterable[Any] = value.items()
    elif isinstance(value, list):
        pairs = ([item, ENQUEUED] if isinstance(item, str) and initial else item for item in value)
    else:
        logger.warning('Shared map: skipping record %r: expected a list or an object, got %s.', key, type(value))
        return
    count = 0
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
            logger.warning('Shared map: skipping an entry of %r: %r is not a key or a [key, value] pair.', key, pair)
            continue
        try:
            check_value(pair[1])
        except (TypeError, ValueError) as exc:
            logger.warning('Shared map: skipping an entry of %r: %s', key, exc)
            continue
        merge_one(pair[0], pair[1], 0)
        count += 1
    logger.info('Shared map: loaded %d entries from %r.', count, key)

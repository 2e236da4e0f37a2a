"""Which crawl a run belongs to: every fresh start is a new crawl, a resume is explicit.

A crawl is named by the input (`sharedStoreName`: re-running with the name continues it, and runs on other machines
join it) or, without a name, gets its own shared store, `crawl-<UTC time>-<random>`. The first run records the crawl
in its *default* key-value store (`SHARED_CRAWL`), so what keeps that store keeps the crawl:

- locally, a start that purges (the default of `apify run` and `python -m src`) empties the default store: a new
  crawl; `apify run --no-purge` / `CRAWLEE_PURGE_ON_START=0` keeps it: the same crawl, resumed;
- on the platform every new run has a new default store (a new crawl); a migration or a resurrected run keeps it.

Runs started by the first one get the crawl's store in their input (`sharedStoreName`); they never derive their own.

The shared store holds the crawl's id (`CRAWL.ID`, written once by its first run), which ties everything else to the
crawl: a local child run's folder (its `crawl.json`) and what the crawl merged into a result set
(`CRAWL.RESULTS.<dataset id>`, see `src/item_merger.py`). `python -m src.shared_map reset` deletes these records with
the map, so the next crawl with that store is a new one.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apify import Actor

if TYPE_CHECKING:
    from crawlee.storages import KeyValueStore

logger = logging.getLogger(__name__)

CRAWL_RECORD = 'SHARED_CRAWL'
"""Key of the crawl's record in the first run's default key-value store."""
CRAWL_ID_KEY = 'CRAWL.ID'
"""Key of the crawl's id in the shared store."""
RESULTS_KEY_PREFIX = 'CRAWL.RESULTS.'
"""Prefix of the keys (in the shared store) of what the crawl merged into a result set (see `src/item_merger.py`)."""
CHILD_MARKER = 'crawl.json'
"""A local child run's file (beside its storages) naming the crawl it took part in."""
VERSION = 1


@dataclass(frozen=True)
class Crawl:
    """The crawl a run takes part in."""

    crawl_id: str
    store_name: str
    named: bool
    """Whether the input named it (`sharedStoreName`)."""

    def to_record(self) -> dict[str, Any]:
        """The `SHARED_CRAWL` record."""
        return {'version': VERSION, 'crawlId': self.crawl_id, 'sharedStoreName': self.store_name, 'named': self.named}


def new_store_name() -> str:
    """The shared store of a new unnamed crawl: readable in a listing, sortable by start time, unique."""
    return f'crawl-{time.strftime("%Y%m%d-%H%M%S", time.gmtime())}-{secrets.token_hex(3)}'


def parse_record(value: object) -> Crawl | None:
    """The crawl of a `SHARED_CRAWL` record, or None if it is missing or not one this version wrote."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict) or value.get('version') != VERSION:
        return None
    crawl_id, name = value.get('crawlId'), value.get('sharedStoreName')
    if not isinstance(crawl_id, str) or not isinstance(name, str) or not crawl_id or not name:
        return None
    return Crawl(crawl_id=crawl_id, store_name=name, named=value.get('named') is True)


async def recorded_store_name() -> str | None:
    """The shared store of the unnamed crawl this run's default store records (a resume), if any."""
    crawl = parse_record(await Actor.get_value(CRAWL_RECORD))
    return crawl.store_name if crawl is not None and not crawl.named else None


async def crawl_id_of(store: KeyValueStore, *, create: bool) -> str | None:
    """The crawl id the shared store holds; with `create`, a new one is written if it holds none."""
    value = await store.get_value(CRAWL_ID_KEY)
    if isinstance(value, dict) and isinstance(value.get('crawlId'), str):
        return str(value['crawlId'])
    if not create:
        return None
    crawl_id = secrets.token_hex(6)
    await store.set_value(CRAWL_ID_KEY, {'version': VERSION, 'crawlId': crawl_id, 'createdAt': int(time.time())})
    return crawl_id


def results_key(dataset_id: str) -> str:
    """The key of what the crawl merged into the dataset `dataset_id`.

    By id, not name: runs on two machines have a default dataset each, and so has a named dataset locally.
    """
    return f'{RESULTS_KEY_PREFIX}{dataset_id}'


def mark_child_folder(folder: Path, crawl_id: str) -> None:
    """Tie a local child run's storage folder to its crawl."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHILD_MARKER).write_text(json.dumps({'version': VERSION, 'crawlId': crawl_id}))


def local_child_folders(storage: Path, crawl_id: str | None) -> list[Path]:
    """The storage folders of the local child runs of crawl `crawl_id` (earlier attempts too), in run-id order.

    Folders of other crawls, or without a marker (written before crawls had ids), are never included.
    """
    if crawl_id is None:
        return []
    folders = []
    for folder in sorted(path for path in (storage / 'parallel-runs').glob('*') if path.is_dir()):
        try:
            marker = json.loads((folder / CHILD_MARKER).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(marker, dict) and marker.get('crawlId') == crawl_id:
            folders.append(folder)
    return folders


def local_crawl(storage: Path) -> Crawl | None:
    """The crawl recorded in a local storage folder's default store (read from its file; nothing is written)."""
    folder = storage / 'key_value_stores' / 'default'
    for path in (folder / CRAWL_RECORD, folder / f'{CRAWL_RECORD}.json'):  # crawlee's file name has no extension
        try:
            return parse_record(path.read_text(encoding='utf-8'))
        except OSError:
            continue
    return None

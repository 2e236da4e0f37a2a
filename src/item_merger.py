"""Which items of a crawl's run datasets its result set still lacks, and the merge's progress in the crawl's store.

An item is identified by its page and its position among that page's items in its run's dataset. Its page is the
one whose handler pushed it (`#page`, see `src/page_items.py`: a stub a listing pushes about a product belongs to the
listing), else the shared-map key of its `url` (items of older datasets); a page two runs fetched keeps the items of
the first run in merge order (that is "fetched twice"). An item with neither is identified by its content and by how
many items of the same content came before it in merge order: each is added once.

What this crawl added to a result set is recorded in its shared store (`CRAWL.RESULTS.<dataset id>`): where its part
of the result set begins (a named result set may hold other crawls' items before it), the ranges of items the merge
appended (written before each append, so a kill in the middle leaves them covered). A merge run again (a resume
after a kill during the merge, or of the crawl) reads it back, goes through every source again and appends only
what is missing; the "fetched twice" count is the same each time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .crawl_identity import results_key
from .page_items import PAGE_FIELD
from .shared_map import map_key

if TYPE_CHECKING:
    from pathlib import Path

    from crawlee.storages import Dataset, KeyValueStore

URL_FIELD = 'url'
OWN = 'own'
"""The source id of the first run's own dataset."""


def page_key(item: object) -> str | None:
    """The page an item belongs to: the one whose handler pushed it, else its `url`'s map key; None if neither."""
    if not isinstance(item, Mapping):
        return None
    page = item.get(PAGE_FIELD)
    if isinstance(page, str) and page:
        return page
    url = item.get(URL_FIELD)
    return map_key(url) if isinstance(url, str) and url else None


def content_key(item: object) -> str:
    """An item's identity by content (for items without a `url`)."""
    text = json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class ItemMerger:
    """Decides which items of the crawl's run datasets a result set still lacks (see the module docstring).

    Feed it first what the result set holds of this crawl, in order (`present` for merged items, `note` for the first
    run's own items when they are in the result set itself), then every source's items in merge order (`admit`).
    """

    def __init__(self) -> None:
        """An empty result set."""
        self._present_pages: Counter[str] = Counter()
        self._present_others: Counter[str] = Counter()
        self._owner: dict[str, str] = {}
        self._positions: Counter[str] = Counter()
        self._others_seen: Counter[str] = Counter()
        self._twice: set[tuple[str, str]] = set()
        self.fetched_twice = 0
        """Pages a later source held too: fetched by two runs of the crawl (counted once per extra run)."""

    def present(self, item: object) -> None:
        """Note an item the merge added to the result set before."""
        page = page_key(item)
        if page is None:
            self._present_others[content_key(item)] += 1
        else:
            self._present_pages[page] += 1

    def note(self, source: str, item: object) -> None:
        """Note an item of `source` that is in the result set already, as it would have been admitted."""
        self.present(item)
        self.admit(source, item)

    def admit(self, source: str, item: object) -> bool:
        """Whether to add `item`, the next item of the run dataset `source` (sources come one after another)."""
        page = page_key(item)
        if page is None:
            content = content_key(item)
            index = self._others_seen[content]
            self._others_seen[content] += 1
            return index >= self._present_others[content]
        owner = self._owner.setdefault(page, source)
        if owner != source:
            if (source, page) not in self._twice:
                self._twice.add((source, page))
                self.fetched_twice += 1
            return False
        index = self._positions[page]
        self._positions[page] += 1
        return index >= self._present_pages[page]


def item_kind(index: int, offset: int, appended: list[list[int]]) -> str | None:
    """What a result set's item at `index` is: `merged` (appended by a merge), `ours` or None (another crawl's)."""
    if index < offset:
        return None
    return 'merged' if any(start <= index < end for start, end in appended) else 'ours'


def local_progress(store_folder: Path | None, dataset_id: str) -> tuple[int, list[list[int]]]:
    """The offset and appended ranges recorded in a local shared store's folder (read from its file).

    None recorded (no store, or nothing merged yet): `(0, [])`, every item of the dataset is the first run's own.
    """
    if store_folder is None:
        return 0, []
    try:
        value = json.loads((store_folder / results_key(dataset_id)).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return 0, []
    if not isinstance(value, dict) or not isinstance(value.get('offset'), int):
        return 0, []
    return value['offset'], [list(pair) for pair in value.get('appended', []) if isinstance(pair, list)]


@dataclass
class MergeProgress:
    """What this crawl merged into a result set so far, kept in its shared store (see the module docstring)."""

    store: KeyValueStore
    key: str
    dataset_id: str
    offset: int
    """Where this crawl's part of the result set begins."""
    appended: list[list[int]] = field(default_factory=list)
    """Ranges `[start, end)` of the items the merge appended."""

    @classmethod
    async def load(cls, store: KeyValueStore, target: Dataset) -> MergeProgress:
        """The progress recorded for `target`; a new one (this crawl's part starting at its end) if none applies."""
        metadata = await target.get_metadata()
        key = results_key(metadata.id)
        value: Any = await store.get_value(key)
        if (
            isinstance(value, dict)
            and value.get('datasetId') == metadata.id
            and isinstance(value.get('offset'), int)
            and value['offset'] <= metadata.item_count  # else the dataset was emptied (purged) since
        ):
            ranges = [list(pair) for pair in value.get('appended', []) if isinstance(pair, list) and len(pair) == 2]
            return cls(store, key, metadata.id, value['offset'], ranges)
        # A named result set: this crawl's part begins at its end. The first run's default dataset: at its start
        # (it holds the run's own pages, which are this crawl's).
        progress = cls(store, key, metadata.id, metadata.item_count if metadata.name else 0)
        await progress.save()
        return progress

    def kind(self, index: int) -> str | None:
        """What the result set's item at `index` is: `merged` (appended by a merge), `ours` or None (before)."""
        return item_kind(index, self.offset, self.appended)

    async def appending(self, start: int, count: int) -> None:
        """Record, before appending them, that items `[start, start + count)` are the merge's."""
        if self.appended and self.appended[-1][1] == start:
            self.appended[-1][1] = start + count
        else:
            self.appended.append([start, start + count])
        await self.save()

    async def save(self) -> None:
        """Write the record."""
        record = {'version': 1, 'datasetId': self.dataset_id, 'offset': self.offset, 'appended': self.appended}
        await self.store.set_value(self.key, record)

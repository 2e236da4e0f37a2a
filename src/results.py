"""One result set for the whole crawl: every item each of its runs pushed, each page's items once.

Each run pushes its pages to its own default dataset, as in the official template. When the crawl ends, the run
that started the others merges the datasets of *this crawl's* runs into the *result set*: the named dataset
`datasetName` if the input gives one, else its own default dataset. Locally the sources are the child-run folders
under `storage/parallel-runs/` tied to this crawl (`crawl.json`, earlier attempts of a resumed crawl too, never
another crawl's); on the platform, the default datasets of the runs it started.

What is merged once (`ItemMerger`):
- an item with a `url` is identified by its page (the shared-map key of the URL, see `map_key`) and its position
  among that page's items in its run's dataset: a handler that pushes two items for a page keeps both. A page two runs
  fetched (after a crash, say) keeps the items of the first run in merge order; that is "fetched twice";
- an item without a `url` is identified by its content: each is added once, also by a merge run again.

A named result set may hold other crawls' items: this crawl's part starts at the offset recorded when the crawl first
merged into it (`CRAWL.RESULTS.<dataset>` in the shared store, with the runs already merged), so a fresh crawl adds
each of its pages once and keeps the old items, and a merge run again (a resume after a kill during the merge) adds
only what is not there yet.

`python -m src.results` exports the results of a local crawl (JSON Lines or CSV) without changing a byte of the
storage folder.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apify import Actor

from .crawl_identity import RESULTS_KEY_PREFIX, local_child_folders, local_crawl
from .shared_map import map_key

if TYPE_CHECKING:
    from crawlee.storages import Dataset, KeyValueStore

    from .fanout import ChildRun
    from .input import CrawlerInput
    from .shared_map import SharedRequestManager

logger = logging.getLogger(__name__)

URL_FIELD = 'url'
BATCH = 500


@dataclass
class MergeReport:
    """What merging the runs' datasets did."""

    dataset: str
    """Name of the result set (`default` for the run's own dataset)."""
    items: int = 0
    """Items in the result set after the merge (other crawls' items in a named result set too)."""
    added: int = 0
    duplicates: int = 0
    """Pages fetched twice by the crawl's runs (their items are kept once)."""
    runs: int = 0
    """Run datasets read."""

    def to_summary(self) -> dict[str, Any]:
        """The fields this adds to the run's OUTPUT summary."""
        return {
            'resultSet': self.dataset,
            'resultItems': self.items,
            'resultsMerged': self.added,
            'duplicatesDropped': self.duplicates,
        }


def page_key(item: object) -> str | None:
    """The page an item stands for (the shared-map key of its `url`), or None if it has no URL."""
    url = item.get(URL_FIELD) if isinstance(item, Mapping) else None
    return map_key(url) if isinstance(url, str) and url else None


async def skip_saved_pages(manager: SharedRequestManager) -> int:
    """Mark the pages already in this run's dataset processed (a resumed or restarted run); how many were not yet."""
    dataset = await Actor.open_dataset()
    if not (await dataset.get_metadata()).item_count:
        return 0
    keys = [key async for item in dataset.iterate_items() if (key := page_key(item)) is not None]
    marked = manager.mark_processed(keys)
    if marked:
        Actor.log.info(f'{marked} pages saved in this dataset by an earlier attempt are not fetched again.')
    return marked


class ItemMerger:
    """Decides which items of the crawl's run datasets a result set still lacks (see the module docstring).

    Feed it first what the result set already holds of this crawl (`present`), then every source's items in merge
    order (`admit`).
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
        """Note an item the result set already holds."""
        page = page_key(item)
        if page is None:
            self._present_others[content_key(item)] += 1
        else:
            self._present_pages[page] += 1

    def admit(self, source: str, item: object, *, merged_before: bool = False) -> bool:
        """Whether to add `item`, the next item of the run dataset `source` (sources come one after another).

        Args:
            source: The run dataset's id.
            item: The item.
            merged_before: Whether this source's items may be in the result set already (an earlier merge of it, cut
                short or not): a page there is then not taken for fetched twice.
        """
        page = page_key(item)
        if page is None:
            content = content_key(item)
            index = self._others_seen[content]
            self._others_seen[content] += 1
            return index >= self._present_others[content]
        owner = self._owner.setdefault(page, source)
        first = self._positions[page] == 0
        if owner != source or (first and self._present_pages[page] and not merged_before):
            self._count_twice(source, page)
            if owner != source:
                return False
        index = self._positions[page]
        self._positions[page] += 1
        return index >= self._present_pages[page]

    def note(self, source: str, item: object) -> None:
        """Note an item of a source merged completely before (it is in the result set), counting nothing."""
        page = page_key(item)
        if page is None:
            self._others_seen[content_key(item)] += 1
        elif self._owner.setdefault(page, source) == source:
            self._positions[page] += 1

    def _count_twice(self, source: str, page: str) -> None:
        if (source, page) not in self._twice:
            self._twice.add((source, page))
            self.fetched_twice += 1


def content_key(item: object) -> str:
    """An item's identity by content (for items without a `url`)."""
    text = json.dumps(item, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


async def merge_results(crawl_input: CrawlerInput, children: list[ChildRun], store: KeyValueStore) -> MergeReport:
    """Merge the datasets of the crawl's runs into the result set (see the module docstring).

    Args:
        crawl_input: The first run's input (with the crawl's id).
        children: The runs this run started.
        store: The crawl's shared store, which records the merge's progress.
    """
    name = crawl_input.dataset_name
    target = await Actor.open_dataset(name=name) if name else await Actor.open_dataset()
    report = MergeReport(dataset=name or 'default')
    progress = await MergeProgress.load(store, target)
    merger = ItemMerger()
    offset = 0
    async for item in target.iterate_items():
        if offset >= progress.offset:  # the items before are other crawls'
            merger.present(item)
        offset += 1
    report.items = offset
    sources: list[tuple[str, AsyncIterator[dict[str, Any]]]] = []
    if name:  # this run's own pages go to the result set too
        sources.append(('own', _dataset_items(await Actor.open_dataset())))
    if Actor.is_at_home():
        sources += [(child.run_id, _platform_run_items(child.run_id)) for child in children]
    else:
        folders = local_child_folders(_storage_dir(), crawl_input.crawl_id)
        sources += [(folder.name, _aiter(local_items(folder))) for folder in folders]
    for source, items in sources:
        report.runs += 1
        if source in progress.merged:  # merged before a kill or a resume: its items are in the result set
            async for item in items:
                merger.note(source, item)
            continue
        # This run's own dataset grows when the crawl resumes, so it is merged again each time (adding what is new).
        merged_before = source in ('own', progress.merging_before)
        await progress.start(source)
        batch: list[dict[str, Any]] = []
        async for item in items:
            if merger.admit(source, item, merged_before=merged_before):
                batch.append(item)
            if len(batch) >= BATCH:
                await _push(target, batch, report)
        await _push(target, batch, report)
        await progress.done(source, complete=source != 'own')
    report.duplicates = merger.fetched_twice
    runs = 'run dataset' if report.runs == 1 else 'run datasets'
    pages = 'page' if report.duplicates == 1 else 'pages'
    Actor.log.info(
        f'Results: {report.items} items in dataset "{report.dataset}" ({report.added} merged from {report.runs} '
        f'{runs} of this crawl; {report.duplicates} {pages} fetched twice by its runs, kept once).'
    )
    return report


@dataclass
class MergeProgress:
    """What this crawl merged into a result set so far, kept in its shared store (`CRAWL.RESULTS.<dataset>`)."""

    store: KeyValueStore
    key: str
    offset: int
    """Where this crawl's items begin in the result set."""
    merged: list[str]
    """The sources merged completely."""
    merging_before: str | None
    """The source whose merge an earlier attempt started and did not finish."""
    dataset_id: str

    @classmethod
    async def load(cls, store: KeyValueStore, target: Dataset) -> MergeProgress:
        """The progress recorded for `target`; a new one (this crawl's part starting at its end) if none applies."""
        metadata = await target.get_metadata()
        key = f'{RESULTS_KEY_PREFIX}{metadata.name or "default"}'
        value = await store.get_value(key)
        if (
            isinstance(value, dict)
            and value.get('datasetId') == metadata.id
            and isinstance(value.get('offset'), int)
            and value['offset'] <= metadata.item_count  # else the dataset was emptied (purged) since
        ):
            merging = value.get('merging')
            return cls(store, key, value['offset'], list(value.get('merged', [])), merging, metadata.id)
        offset = metadata.item_count if metadata.name else 0  # the run's default dataset holds its own pages
        progress = cls(store, key, offset, [], None, metadata.id)
        await progress.save(None)
        return progress

    async def start(self, source: str) -> None:
        """Note that `source` is being merged."""
        await self.save(source)

    async def done(self, source: str, *, complete: bool) -> None:
        """Note that `source` is merged (`complete`: it never gets more items)."""
        if complete:
            self.merged.append(source)
        await self.save(None)

    async def save(self, merging: str | None) -> None:
        """Write the record."""
        record = {'version': 1, 'datasetId': self.dataset_id, 'offset': self.offset, 'merged': self.merged}
        await self.store.set_value(self.key, record | {'merging': merging})


async def _push(target: Dataset, batch: list[dict[str, Any]], report: MergeReport) -> None:
    if batch:
        await target.push_data(list(batch))
        report.added += len(batch)
        report.items += len(batch)
        batch.clear()


async def _dataset_items(dataset: Dataset) -> AsyncIterator[dict[str, Any]]:
    async for item in dataset.iterate_items():
        yield dict(item)


async def _platform_run_items(run_id: str) -> AsyncIterator[dict[str, Any]]:
    async for item in Actor.apify_client.run(run_id).dataset().iterate_items():
        yield item


async def _aiter(items: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


def _storage_dir() -> Path:
    return Path(Actor.configuration.storage_dir).resolve()


def local_items(folder: Path, dataset: str = 'default') -> Iterator[dict[str, Any]]:
    """The items of a dataset in a local storage folder, in order, read from its files (nothing is written).

    A file that is not a JSON object (e.g. cut short by a full disk) is skipped with a warning that names it.
    """
    for path in sorted((folder / 'datasets' / dataset).glob('*.json')):
        if path.name == '__metadata__.json':
            continue
        try:
            item = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as exc:
            logger.warning('Skipping %s: not a readable JSON item (%s).', path, exc)
            continue
        if isinstance(item, dict):
            yield item
        else:
            logger.warning('Skipping %s: not a JSON object.', path)


def crawl_results(storage: Path, *, dataset: str | None = None) -> Iterator[dict[str, Any]]:
    """A local crawl's results: the named `dataset` as it is, or the crawl's run datasets merged.

    A named dataset is written as it is (the merge added each item once). Without one: the items of the crawl recorded
    in the folder, merged as `merge_results` does (the first run's dataset, then its child runs').
    """
    if dataset:
        yield from local_items(storage, dataset)
        return
    crawl = local_crawl(storage)
    merger = ItemMerger()
    own = list(local_items(storage))  # the result set once the crawl has merged, else the first run's pages
    for item in own:
        merger.present(item)
    yield from own
    for folder in local_child_folders(storage, crawl.crawl_id if crawl else None):
        for item in local_items(folder):
            if merger.admit(folder.name, item, merged_before=True):
                yield item


def export(argv: list[str] | None = None) -> int:
    """`python -m src.results`: write a local crawl's results as JSON Lines or CSV."""
    parser = argparse.ArgumentParser(
        prog='python -m src.results',
        description="Export a local crawl's results (reads the storage folder, changes nothing).",
    )
    parser.add_argument(
        '--storage-dir', '--storage', dest='storage', type=Path, default=Path('storage'), help='default: ./storage'
    )
    parser.add_argument('--dataset', help="a named dataset (the input's datasetName); default: the crawl's runs")
    parser.add_argument('--format', choices=['jsonl', 'csv'], default='jsonl')
    parser.add_argument('--output', type=Path, help='the file to write (default: standard output)')
    args = parser.parse_args(argv)
    if not (args.storage / 'datasets').is_dir():
        message = f"ERROR {args.storage} holds no datasets: give the crawl's storage folder (--storage-dir)."
        print(message, file=sys.stderr)
        return 1
    if args.dataset and not (args.storage / 'datasets' / args.dataset).is_dir():
        print(f'ERROR {args.storage} holds no dataset named "{args.dataset}".', file=sys.stderr)
        return 1
    items = list(crawl_results(args.storage, dataset=args.dataset))
    out = args.output.open('w', encoding='utf-8', newline='') if args.output else sys.stdout
    try:
        if args.format == 'jsonl':
            for item in items:
                out.write(json.dumps(item, ensure_ascii=False) + '\n')
        else:
            columns = list(dict.fromkeys(column for item in items for column in item))
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            for item in items:
                writer.writerow({key: _csv_cell(value) for key, value in item.items()})
    finally:
        if out is not sys.stdout:
            out.close()
    print(f'{len(items)} results written to {args.output or "standard output"}.', file=sys.stderr)
    return 0


def _csv_cell(value: object) -> object:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


if __name__ == '__main__':
    logging.basicConfig(format='%(levelname)s %(message)s')
    sys.exit(export())

"""One result set for the whole crawl: every item each of its runs pushed, each page's items once.

Each run pushes its pages to its own default dataset, as in the official template. When the crawl ends, the run
that started the others merges the datasets of *this crawl's* runs into the *result set*: the named dataset
`datasetName` if the input gives one, else its own default dataset. Locally the sources are the child-run folders
under `storage/parallel-runs/` tied to this crawl (`crawl.json`, earlier attempts of a resumed crawl too, never
another crawl's); on the platform, the default datasets of the runs it started.

What is merged once (`src/item_merger.py`): an item with a `url` by its page and its position among that page's
items in its run's dataset (a handler that pushes two items for a page keeps both; a page two runs fetched keeps the
first run's items: "fetched twice"); an item without a `url` by its content, each once. The merge's progress is
recorded in the crawl's shared store, so a fresh crawl into an existing `datasetName` adds each of its items once and
keeps the older items, and a merge run again (a resume after a kill during the merge) adds only what is missing.
A run that resumes after a crash fetches again the pages its dataset holds but the shared store does not hold as
done, without saving their items twice (`src/page_items.py`).

`python -m src.results` exports the results of a local crawl (JSON Lines or CSV) without changing a byte of the
storage folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apify import Actor

from .crawl_identity import local_child_folders, local_crawl
from .item_merger import OWN, ItemMerger, MergeProgress, item_kind, local_progress

if TYPE_CHECKING:
    from crawlee.storages import Dataset, KeyValueStore

    from .fanout import ChildRun
    from .input import CrawlerInput

logger = logging.getLogger(__name__)

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
    async for item in target.iterate_items():
        kind = progress.kind(report.items)
        if kind == 'merged':
            merger.present(item)
        elif kind == 'ours' and not name:  # the first run's own pages, in its own dataset: the first source
            merger.note(OWN, item)
        report.items += 1
    sources: list[tuple[str, AsyncIterator[dict[str, Any]]]] = []
    if name:  # this run's own pages go to the result set too
        sources.append((OWN, _dataset_items(await Actor.open_dataset())))
    if Actor.is_at_home():
        sources += [(child.run_id, _platform_run_items(child.run_id)) for child in children]
    else:
        folders = local_child_folders(_storage_dir(), crawl_input.crawl_id)
        sources += [(folder.name, _aiter(local_items(folder))) for folder in folders]
    for source, items in sources:
        report.runs += 1
        batch: list[dict[str, Any]] = []
        async for item in items:
            if merger.admit(source, item):
                batch.append(item)
            if len(batch) >= BATCH:
                await _push(target, batch, report, progress)
        await _push(target, batch, report, progress)
    report.duplicates = merger.fetched_twice
    runs = 'run dataset' if report.runs == 1 else 'run datasets'
    pages = 'page' if report.duplicates == 1 else 'pages'
    Actor.log.info(
        f'Results: {report.items} items in dataset "{report.dataset}" ({report.added} merged from {report.runs} '
        f'{runs} of this crawl; {report.duplicates} {pages} fetched twice by its runs, kept once).'
    )
    return report


async def _push(target: Dataset, batch: list[dict[str, Any]], report: MergeReport, progress: MergeProgress) -> None:
    if batch:
        await progress.appending(report.items, len(batch))  # first: a kill during the push leaves them covered
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
    store_folder = storage / 'key_value_stores' / crawl.store_name if crawl else None
    offset, appended = local_progress(store_folder, _local_dataset_id(storage))
    merger = ItemMerger()
    for index, item in enumerate(local_items(storage)):  # the result set once the crawl has merged
        if item_kind(index, offset, appended) == 'merged':
            merger.present(item)
        else:  # the first run's own pages
            merger.note(OWN, item)
        yield item
    for folder in local_child_folders(storage, crawl.crawl_id if crawl else None):
        for item in local_items(folder):
            if merger.admit(folder.name, item):
                yield item


def _local_dataset_id(storage: Path) -> str:
    try:
        metadata = json.loads((storage / 'datasets' / 'default' / '__metadata__.json').read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return ''
    return str(metadata.get('id', '')) if isinstance(metadata, dict) else ''


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

"""One result set for the whole crawl: every run's items, each page once.

Each run pushes its pages to its own default dataset, as in the official template. When the crawl ends, the run
that started the others merges their datasets into the *result set*: the named dataset `datasetName` if the input
gives one, else its own default dataset. Locally the sources are every run folder under `storage/parallel-runs/`
(earlier attempts of a resumed crawl too); on the platform, the default datasets of the runs it started.

Items are deduplicated by the shared-map key of their `url` field, so a page fetched again after a crash appears
once; the merge reads what the result set already holds first, so running it again (a resume after a kill during the
merge) adds nothing twice. A run that resumes after a crash fetches again the pages its dataset holds but the shared
store does not hold as done, without saving their items twice (`src/page_items.py`).

`python -m src.results` exports the results of a local crawl (JSON Lines or CSV), deduplicated the same way, without
changing a byte of the storage folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apify import Actor

from .shared_map import map_key

if TYPE_CHECKING:
    from crawlee.storages import Dataset

    from .fanout import ChildRun
    from .input import CrawlerInput

logger = logging.getLogger(__name__)

URL_FIELD = 'url'
BATCH = 500


@dataclass
class MergeReport:
    """What merging the runs' datasets did."""

    dataset: str
    """Name of the result set (`default` for the run's own dataset)."""
    items: int = 0
    """Items in the result set after the merge."""
    added: int = 0
    duplicates: int = 0
    """Items not added because the result set already held their page."""
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


async def merge_results(crawl_input: CrawlerInput, children: list[ChildRun]) -> MergeReport:
    """Merge the datasets of the crawl's runs into the result set, each page once (see the module docstring)."""
    name = crawl_input.dataset_name
    target = await Actor.open_dataset(name=name) if name else await Actor.open_dataset()
    report = MergeReport(dataset=name or 'default')
    seen: set[str] = set()
    async for item in target.iterate_items():
        key = page_key(item)
        if key is not None:
            seen.add(key)
        report.items += 1
    sources: list[AsyncIterator[dict[str, Any]]] = []
    if name:  # this run's own pages go to the result set too
        sources.append(_dataset_items(await Actor.open_dataset()))
    if Actor.is_at_home():
        sources += [_platform_run_items(child.run_id) for child in children]
    else:
        sources += [_aiter(local_items(folder)) for folder in local_run_folders(_storage_dir(), own=False)]
    for source in sources:
        report.runs += 1
        batch: list[dict[str, Any]] = []
        async for item in source:
            key = page_key(item)
            if key is not None and key in seen:
                report.duplicates += 1
                continue
            if key is not None:
                seen.add(key)
            batch.append(item)
            if len(batch) >= BATCH:
                await _push(target, batch, report)
        await _push(target, batch, report)
    Actor.log.info(
        f'Results: {report.items} pages in dataset "{report.dataset}" ({report.added} merged from {report.runs} '
        f'run datasets, {report.duplicates} pages fetched twice kept once).'
    )
    return report


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


def local_run_folders(storage: Path, *, own: bool = True) -> list[Path]:
    """The storage folders of a local crawl: the first run's (if `own`), then every child run's, earlier ones too."""
    children = sorted(path for path in (storage / 'parallel-runs').glob('*') if path.is_dir())
    return [storage, *children] if own else children


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
    """A local crawl's results, each page once: the named `dataset`, or every run's default dataset."""
    if dataset:
        sources: Iterable[Iterator[dict[str, Any]]] = [local_items(storage, dataset)]
    else:
        sources = (local_items(folder) for folder in local_run_folders(storage))
    seen: set[str] = set()
    for items in sources:
        for item in items:
            key = page_key(item)
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            yield item


def export(argv: list[str] | None = None) -> int:
    """`python -m src.results`: write a local crawl's results as JSON Lines or CSV."""
    parser = argparse.ArgumentParser(
        prog='python -m src.results',
        description="Export a local crawl's results, each page once (reads the storage folder, changes nothing).",
    )
    parser.add_argument('--storage', type=Path, default=Path('storage'), help='the storage folder (default: storage)')
    parser.add_argument('--dataset', help="a named dataset (the input's datasetName); default: every run's dataset")
    parser.add_argument('--format', choices=['jsonl', 'csv'], default='jsonl')
    parser.add_argument('--output', type=Path, help='the file to write (default: standard output)')
    args = parser.parse_args(argv)
    if not (args.storage / 'datasets').is_dir():
        print(f"ERROR {args.storage} holds no datasets: give the crawl's storage folder (--storage).", file=sys.stderr)
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

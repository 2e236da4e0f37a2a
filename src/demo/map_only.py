"""Demo of the shared map alone: N processes "crawl" a generated link graph and share URL state (no network).

`python -m src.demo.map_only [--runs 3] [--pages 3000]` starts the runs as real processes on one file-system
store in a temporary folder, waits for them, and prints what each did and whether their maps converged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..shared_map import SharedMap, open_store


def links_of(page: int, pages: int) -> list[int]:
    """The pages a page links to: a deterministic graph where every page is reachable from page 0."""
    rng = random.Random(page)
    return sorted({(page * 2 + 1) % pages, (page * 2 + 2) % pages, *(rng.randrange(pages) for _ in range(3))})


def url(page: int) -> str:
    """The URL of a page of the graph."""
    return f'http://127.0.0.1/demo/page-{page:06d}.html'


async def run_child(storage: Path, run: int, pages: int, out: Path) -> None:
    """One run: take pages from a local frontier, skip what the shared map says is processed, share discoveries."""
    store = await open_store('demo-shared-map', connection=f'file://{storage}')
    rng = random.Random(run)
    async with SharedMap(store, run_id=f'run-{run}', compact_after_records=16) as shared:
        shared.start_background_sync(0.05)
        frontier = [rng.randrange(pages)]  # every run starts somewhere else
        shared.setdefault(url(frontier[0]), 'enqueued')
        processed = skipped = 0
        while frontier:
            page = frontier.pop()
            if shared.get(url(page)) == 'processed':
                skipped += 1  # another run got there first (seen at a sync)
                continue
            await asyncio.sleep(0.0005)  # "fetch" the page
            shared[url(page)] = 'processed'
            processed += 1
            for link in links_of(page, pages):
                if url(link) not in shared:
                    shared[url(link)] = 'enqueued'
                    frontier.append(link)
        await shared.stop_background_sync()
        stats = shared.stats.to_dict()
    summary = {'run': run, 'processed': processed, 'skipped': skipped, 'stats': stats}
    await asyncio.to_thread(out.write_text, json.dumps(summary))


def run_parent(runs: int, pages: int) -> int:
    """Start the runs as processes, wait, and print what they did."""
    with tempfile.TemporaryDirectory(prefix='shared-map-demo-') as tmp:
        storage = Path(tmp) / 'storage'
        started = time.monotonic()
        command = [sys.executable, '-m', 'src.demo.map_only', '--storage', str(storage), '--pages', str(pages)]
        procs = [
            subprocess.Popen([*command, '--child', str(run), '--out', str(Path(tmp) / f'run-{run}.json')])
            for run in range(runs)
        ]
        codes = [proc.wait() for proc in procs]
        wall = time.monotonic() - started
        if any(codes):
            print(f'A run failed (exit codes {codes}).', file=sys.stderr)
            return 1
        results = [json.loads((Path(tmp) / f'run-{run}.json').read_text()) for run in range(runs)]
        final = asyncio.run(_load(storage))

    print(f'\n{runs} runs shared one map over a graph of {pages} pages in {wall:.1f} s.\n')
    print('| run | pages processed | skipped (another run had it) | syncs | records written | KB written |')
    print('|---|---|---|---|---|---|')
    for result in results:
        stats = result['stats']
        print(
            f'| run-{result["run"]} | {result["processed"]} | {result["skipped"]} | {stats["syncs"]} '
            f'| {stats["records_written"]} | {stats["bytes_written"] / 1000:.0f} |'
        )
    total = sum(result['processed'] for result in results)
    done = sum(1 for value in final.values() if value == 'processed')
    print(f'\nPages processed: {total} by all runs, {done} distinct: {total - done} duplicates '
          f'({(total - done) / max(done, 1):.1%}), fetched between two syncs by two runs.')  # fmt: skip
    print(f'Every page processed: {done == pages}. Entries in the shared map: {len(final)}.')
    return 0 if done == pages else 1


async def _load(storage: Path) -> dict[str, object]:
    store = await open_store('demo-shared-map', connection=f'file://{storage}')
    shared = SharedMap(store, run_id='checker')
    await shared.initialize()
    return dict(shared)


def main() -> None:
    """Parse the command line; run the demo, or one of its runs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--pages', type=int, default=3000)
    parser.add_argument('--child', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--storage', type=Path, help=argparse.SUPPRESS)
    parser.add_argument('--out', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        asyncio.run(run_child(args.storage, args.child, args.pages, args.out))
    else:
        sys.exit(run_parent(args.runs, args.pages))


if __name__ == '__main__':
    main()

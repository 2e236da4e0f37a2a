"""`make demo`: serve a generated site on 127.0.0.1 and crawl it with 3 parallel runs of the actor (no internet).

`python -m src.demo [--pages 3000] [--runs 3] [--sync-interval 2]`. The runs' storages are kept in
`storage/demo/` (the parent's) and `storage/demo/parallel-runs/<run id>/` (the children's) for a look afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .site import serve_site

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    """Run the demo and print a table of what each run did."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--pages', type=int, default=3000)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--sync-interval', type=float, default=2.0)
    parser.add_argument('--storage', type=Path, default=ROOT / 'storage' / 'demo')
    args = parser.parse_args()

    site = serve_site(args.pages, delay_secs=0.005)
    storage: Path = args.storage.resolve()
    shutil.rmtree(storage, ignore_errors=True)
    (storage / 'key_value_stores' / 'default').mkdir(parents=True)
    actor_input = {
        'startUrls': [{'url': site.url}],
        'parallelRuns': args.runs,
        'syncIntervalSecs': args.sync_interval,
        'deadRunTimeoutSecs': max(20.0, 4 * args.sync_interval),
        'sharedStoreName': 'demo-crawl',
    }
    (storage / 'key_value_stores' / 'default' / 'INPUT.json').write_text(json.dumps(actor_input, indent=2))
    print(f'Serving {args.pages} pages at {site.url}; crawling them with {args.runs} parallel runs.')
    print(f'Logs: {storage / "log.txt"} and {storage / "parallel-runs"}/*/log.txt\n')

    env = {key: value for key, value in os.environ.items() if not key.startswith(('CRAWLEE_', 'APIFY_', 'ACTOR_'))}
    env |= {'CRAWLEE_STORAGE_DIR': str(storage), 'APIFY_LOCAL_STORAGE_DIR': str(storage)}
    started = time.monotonic()
    with (storage / 'log.txt').open('wb') as log:
        actor = subprocess.Popen([sys.executable, '-m', 'src'], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while actor.poll() is None:
                time.sleep(2)
                print(f'  {time.monotonic() - started:5.0f} s: {_progress(storage, site.stats.snapshot())}', flush=True)
        except KeyboardInterrupt:  # Ctrl-C reached the actor too: it stops every run cleanly; wait for that
            print('\nStopping: each run finishes its pages in flight and does a final sync...', flush=True)
            actor.wait(timeout=120)
            site.stop()
            print(f'Stopped after {_progress(storage, site.stats.snapshot())}; see {storage / "log.txt"}.')
            sys.exit(130)
    wall = time.monotonic() - started
    stats = site.stats.snapshot()
    site.stop()
    if actor.returncode != 0:
        print(f'\nThe actor failed (exit code {actor.returncode}); see {storage / "log.txt"}.', file=sys.stderr)
        sys.exit(1)

    summaries = [_read_output(path) for path in _output_files(storage)]
    print('\n| run | pages | syncs | store ops | seconds | pages/s |\n|---|---|---|---|---|---|')
    for s in summaries:
        pages = s.get('pagesProcessed', 0)
        print(
            f'| {s.get("runId")} | {pages} | {s.get("syncs", 0)} | {s.get("storeOperations", 0)} '
            f'| {s.get("seconds", 0):.1f} | {pages / max(s.get("seconds", 0), 1e-9):.1f} |'
        )
    print(
        f'\nAll runs: {stats["distinct"]} of {args.pages} pages in {wall:.1f} s '
        f'({stats["distinct"] / wall:.1f} pages/s); '
        f'duplicate fetches counted by the site: {stats["duplicates"]} '
        f'({stats["duplicates"] / max(stats["distinct"], 1):.2%}).'
    )
    if stats['distinct'] != args.pages:
        print('Not every page was crawled.', file=sys.stderr)
        sys.exit(1)


def _output_files(storage: Path) -> list[Path]:
    return [
        storage / 'key_value_stores' / 'default' / 'OUTPUT',
        *sorted(storage.glob('parallel-runs/*/key_value_stores/default/OUTPUT')),
    ]


def _read_output(path: Path) -> dict[str, Any]:
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {'runId': f'{path.parts[-4]} (no summary)'}
    return summary


def _progress(storage: Path, stats: dict[str, Any]) -> str:
    """Pages done per run (from each run's dataset folder), and in all."""
    folders = [storage, *sorted((storage / 'parallel-runs').glob('*'))]
    per_run = [sum(1 for _ in (folder / 'datasets' / 'default').glob('0*.json')) for folder in folders]
    runs = ', '.join(f'run {index}: {count}' for index, count in enumerate(per_run))
    return f'{stats["distinct"]} pages fetched ({runs})'


if __name__ == '__main__':
    main()

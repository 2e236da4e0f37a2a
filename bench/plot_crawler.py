"""Plot the crawler benchmark: duplicate fetches and store operations per page against the sync interval.

python -m bench.plot_crawler [--results bench/out/crawler.json] [--out docs/crawler-sync-interval.png]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any

import matplotlib

matplotlib.use('Agg')  # no screen here
import matplotlib.pyplot as plt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--results', type=Path, default=Path('bench/out/crawler.json'))
    parser.add_argument('--out', type=Path, default=Path('docs/crawler-sync-interval.png'))
    args = parser.parse_args()
    measurements: list[dict[str, Any]] = json.loads(args.results.read_text())['measurements']
    series: dict[int, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for m in measurements:
        if m['mode'] == 'shared' and not m.get('timed_out'):
            series[m['runs']][m['sync_secs']].append(m)

    figure, (dup_axis, ops_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for runs in sorted(series):
        intervals = sorted(series[runs])
        dups = [100 * median(m['duplicate_ratio'] for m in series[runs][s]) for s in intervals]
        ops = [median(m['store_operations_per_page'] for m in series[runs][s]) for s in intervals]
        dup_axis.plot(intervals, dups, marker='o', label=f'N = {runs}')
        ops_axis.plot(intervals, ops, marker='o', label=f'N = {runs}')
    dup_axis.axhline(1.0, color='grey', linestyle='--', linewidth=1, label='target 1%')
    ops_axis.axhline(0.05, color='grey', linestyle='--', linewidth=1, label='target 0.05')
    dup_axis.set(xlabel='sync interval (s)', ylabel='duplicate fetches (% of pages)', title='Duplicate fetches')
    ops_axis.set(xlabel='sync interval (s)', ylabel='store operations per page', title='Key-value store operations')
    pages = measurements[0]['pages'] if measurements else 0
    figure.suptitle(f'N parallel runs sharing a crawl of a {pages}-page local site')
    for axis in (dup_axis, ops_axis):
        axis.set_xscale('log')
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f'Wrote {args.out}')


if __name__ == '__main__':
    main()

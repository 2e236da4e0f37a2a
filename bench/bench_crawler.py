"""End-to-end benchmark of the crawler actor: N parallel runs sharing a map against N runs that share nothing.

Run from the repository root:

    .venv/bin/python -m bench.bench_crawler [--pages 3000] [--runs 1 2 3] [--sync-intervals 2] [--repeat 1]
        [--extra 3:5] [--out bench/out/crawler.json]

Every measurement gets a fresh local site (`src.demo.site.serve_site(pages, delay_secs=0.005)`, so its fetch counts
belong to that measurement only) and a fresh temporary storage folder, and runs the actor as real processes:

* shared: one `python -m src` with `parallelRuns` N and sync interval S; that parent run starts the N-1 other runs
  as child processes itself (storages under `<dir>/parallel-runs/<run id>/`), and they share the named store.
* independent: the same input with `"useSharedMap": false` and `"parallelRuns": 1`, started as N processes by the
  benchmark, each with its own storage folder: every run crawls the whole site, duplicates = (N-1) x pages.

Measured: the wall clock from starting the first process until the last one exits; the site's fetch counts
(`fetches`, `distinct` pages, `duplicates`), polled every 0.1 s for the time of the first fetch and of the first fetch
of the last new page; each run's OUTPUT record (pages processed, store operations, syncs ...). Derived:
pages/s = distinct pages / wall time, duplicate fetch ratio = duplicates / distinct, store operations per page =
sum of the runs' storeOperations / distinct pages, and whether every page was crawled (distinct == pages).
`--extra N:S` adds shared measurements at other sync intervals (default: 3 runs at 5 s).

The crawl is CPU-bound on a small machine, so other work slows it (crawlee's autoscaled pool even drops to one
request at a time when the CPU is overloaded). Each measurement therefore records the CPU seconds of the runs, of
the site and of everything else on the machine (from /proc/stat); before each one the benchmark waits (up to
`--quiet-wait` seconds) until other work uses at most `--quiet-below` of the cores, and it measures again (up to
`--busy-retries` times; the discarded ones stay in the JSON) when other work used more than `--busy-above` of them.

The Markdown tables go to stdout, progress to stderr, the raw numbers to the JSON file (`--out`), and every run's log
to `<out dir>/crawler-logs/<measurement>/`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from src.demo.site import SiteStats, serve_site

REPO_ROOT = Path(__file__).resolve().parents[1]
STORE_NAME = 'bench-crawl'
SITE_DELAY_SECS = 0.005
MAX_CONCURRENCY = 10
POLL_SECS = 0.1

TARGET_DUPLICATE_RATIO = 0.01
TARGET_OPS_PER_PAGE = 0.05

Json = dict[str, Any]


@dataclass(frozen=True)
class Config:
    mode: str
    """'shared' (one parent run fanning out to N runs) or 'independent' (N runs that share nothing)."""
    runs: int
    sync_secs: float

    @property
    def label(self) -> str:
        if self.mode == 'independent':  # The sync interval is in its input but unused: no shared map.
            return f'independent-n{self.runs}'
        return f'{self.mode}-n{self.runs}-s{self.sync_secs:g}'


_started = time.perf_counter()


def _progress(message: str) -> None:
    print(f'[{time.perf_counter() - _started:7.1f} s] {message}', file=sys.stderr, flush=True)


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def actor_input(site_url: str, runs: int, sync_secs: float, *, shared: bool) -> Json:
    """The INPUT of the (parent) run."""
    raw: Json = {
        'startUrls': [{'url': site_url}],
        'parallelRuns': runs if shared else 1,
        'syncIntervalSecs': sync_secs,
        'deadRunTimeoutSecs': max(30, 4 * sync_secs),
        'sharedStoreName': STORE_NAME,
        'maxConcurrency': MAX_CONCURRENCY,
    }
    if not shared:
        raw['useSharedMap'] = False
    return raw


def start_actor(storage: Path, raw_input: Json, log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m src` with its own storage folder and INPUT (as `apify run` would), in a new process group."""
    input_dir = storage / 'key_value_stores' / 'default'
    input_dir.mkdir(parents=True, exist_ok=True)
    (input_dir / 'INPUT.json').write_text(json.dumps(raw_input, indent=2), encoding='utf-8')
    env = {key: value for key, value in os.environ.items() if not key.startswith(('CRAWLEE_', 'APIFY_', 'ACTOR_'))}
    env |= {'CRAWLEE_STORAGE_DIR': str(storage), 'APIFY_LOCAL_STORAGE_DIR': str(storage)}
    with log_path.open('wb') as log:
        return subprocess.Popen(
            [sys.executable, '-m', 'src'],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills the run and the runs it started
        )


def read_output(kvs_dir: Path) -> tuple[Json | None, str | None]:
    """A run's OUTPUT record and the file it was in (crawlee's file-system client names it `OUTPUT`)."""
    for name in ('OUTPUT', 'OUTPUT.json'):
        path = kvs_dir / name
        if path.is_file():
            value = json.loads(path.read_text(encoding='utf-8'))
            return (value if isinstance(value, dict) else {'value': value}), name
    return None, None


def _log_summary(path: Path) -> Json:
    """Counts of warning and error lines in a run's log, and its last lines."""
    if not path.is_file():
        return {'path': str(path), 'missing': True}
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    return {
        'path': str(path),
        'lines': len(lines),
        'warnings': sum(' WARN' in line for line in lines),
        'errors': sum(' ERROR' in line or 'Traceback' in line for line in lines),
        'sharing_failed': sum('Sharing the crawl state failed' in line for line in lines),
        'tail': lines[-15:],
    }


class CpuMeter:
    """CPU seconds used by the whole machine, by this process (the site) and by its reaped children (the runs).

    Other work on the machine (foreign CPU) competes with the runs; its share of the cores is reported with every
    measurement, since it makes the wall times slower and noisier.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float, float]:
        with open('/proc/stat', encoding='ascii') as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        busy = (fields[0] + fields[1] + fields[2] + sum(fields[5:8])) / os.sysconf('SC_CLK_TCK')  # user..steal
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return busy, own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime, time.perf_counter()

    def stop(self) -> Json:
        busy, own, children, now = (end - start for end, start in zip(self._read(), self._start, strict=True))
        cores = os.cpu_count() or 1
        foreign = max(0.0, busy - own - children)
        return {
            'machine_cpu_seconds': busy,
            'site_cpu_seconds': own,
            'runs_cpu_seconds': children,
            'foreign_cpu_seconds': foreign,
            'foreign_cpu_share': foreign / (now * cores),
            'machine_busy_share': busy / (now * cores),
            'load_average_at_end': os.getloadavg()[0],
        }


def wait_for_quiet(below: float, max_wait: float, window: float = 5.0) -> Json:
    """Wait until the machine's busy share over `window` seconds is at most `below` (this process idles meanwhile)."""
    started = time.perf_counter()
    waited_for: list[float] = []
    while True:
        meter = CpuMeter()
        time.sleep(window)
        share = meter.stop()['machine_busy_share']
        waited_for.append(round(share, 3))
        elapsed = time.perf_counter() - started
        if share <= below or elapsed >= max_wait:
            if len(waited_for) > 1:
                _progress(f'  waited {elapsed:.0f} s for a quiet machine (busy {share:.0%} of the cores now)')
            return {'seconds': elapsed, 'busy_shares': waited_for, 'quiet': share <= below}


def wait_for_processes(
    processes: list[subprocess.Popen[bytes]],
    stats: SiteStats,
    started: float,
    timeout: float,
    *,
    on_tick: Callable[[list[int]], object] | None = None,
    poll_secs: float = POLL_SECS,
) -> Json:
    """Wait for the processes, polling the site's counts; timings are seconds since `started`.

    `on_tick` gets the pids of the processes still running at every poll (e.g. to sample their memory).
    """
    first_fetch = last_new_page = last_fetch = None
    seen_distinct = seen_fetches = 0
    ended: dict[int, float] = {}
    timed_out = False
    while len(ended) < len(processes):
        if on_tick is not None:
            on_tick([process.pid for index, process in enumerate(processes) if index not in ended])
        now = time.perf_counter() - started
        for index, process in enumerate(processes):
            if index not in ended and process.poll() is not None:
                ended[index] = now
        with stats.lock:
            fetches = sum(stats.fetches.values())
            distinct = len(stats.fetches)
        if fetches > seen_fetches:
            first_fetch = now if first_fetch is None else first_fetch
            last_fetch, seen_fetches = now, fetches
        if distinct > seen_distinct:
            last_new_page, seen_distinct = now, distinct
        if len(ended) == len(processes):
            break
        if now > timeout:
            timed_out = True
            for index, process in enumerate(processes):
                if index not in ended:
                    _progress(f'  timeout after {now:.0f} s: killing process group {process.pid}')
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    ended[index] = time.perf_counter() - started
            break
        time.sleep(poll_secs)
    return {
        'wall_seconds': max(ended.values()),
        'process_seconds': [ended[i] for i in range(len(processes))],
        'first_fetch_seconds': first_fetch,
        'last_new_page_seconds': last_new_page,
        'last_fetch_seconds': last_fetch,
        'timed_out': timed_out,
        'exit_codes': [process.returncode for process in processes],
    }


def measure(config: Config, pages: int, repeat_index: int, timeout: float, logs_root: Path, keep: bool) -> Json:
    """One measurement on a fresh site and fresh storage folders."""
    site = serve_site(pages, delay_secs=SITE_DELAY_SECS)
    tmp = Path(tempfile.mkdtemp(prefix=f'crawler-bench-{config.label}-'))
    try:
        shared = config.mode == 'shared'
        raw = actor_input(site.url, config.runs, config.sync_secs, shared=shared)
        storages = [tmp / 'storage'] if shared else [tmp / f'storage-{i}' for i in range(1, config.runs + 1)]
        load_at_start = os.getloadavg()[0]
        meter = CpuMeter()
        started = time.perf_counter()
        processes = [start_actor(storage, raw, tmp / f'{storage.name}.log') for storage in storages]
        timing = wait_for_processes(processes, site.stats, started, timeout)
        cpu = meter.stop() | {'load_average_at_start': load_at_start}
        snapshot = site.stats.snapshot()
        counts: dict[str, int] = snapshot.pop('counts')

        kvs_dirs = [storage / 'key_value_stores' / 'default' for storage in storages]
        logs = [tmp / f'{storage.name}.log' for storage in storages]
        if shared:
            children = sorted((storages[0] / 'parallel-runs').glob('*'))
            kvs_dirs += [child / 'key_value_stores' / 'default' for child in children]
            logs += [child / 'log.txt' for child in children]
        outputs: list[Json] = []
        missing_outputs = 0
        for kvs_dir in kvs_dirs:
            output, name = read_output(kvs_dir)
            if output is None:
                missing_outputs += 1
                continue
            outputs.append(output | {'_file': str(kvs_dir / str(name))})

        distinct = snapshot['distinct']
        store_operations = sum(int(o.get('storeOperations', 0)) for o in outputs) if shared else None
        result: Json = {
            'mode': config.mode,
            'runs': config.runs,
            'sync_secs': config.sync_secs,
            'repeat_index': repeat_index,
            'pages': pages,
            'tmpdir': str(tmp),
            'input': raw,
            'git_commit': _git('rev-parse', 'HEAD'),
            'src_uncommitted_changes': _git('status', '--porcelain', 'src').splitlines(),
            **timing,
            'site': snapshot,
            'max_fetches_of_one_page': max(counts.values(), default=0),
            'pages_fetched_more_than_once': sum(count > 1 for count in counts.values()),
            'outputs': outputs,
            'runs_started': len(kvs_dirs),
            'missing_outputs': missing_outputs,
            'pages_processed': sum(int(o.get('pagesProcessed', 0)) for o in outputs),
            'pages_failed': sum(int(o.get('pagesFailed', 0)) for o in outputs),
            'store_operations': store_operations,
            'pages_per_second': distinct / timing['wall_seconds'],
            'fetches_per_second': snapshot['fetches'] / timing['wall_seconds'],
            'duplicate_ratio': snapshot['duplicates'] / distinct if distinct else None,
            'store_operations_per_page': (
                store_operations / distinct if store_operations is not None and distinct else None
            ),
            'all_pages_crawled': distinct == pages,
            'cpu': cpu,
            'runs_cpu_ms_per_page': cpu['runs_cpu_seconds'] * 1000 / snapshot['fetches']
            if snapshot['fetches']
            else None,
        }
        result['log_summaries'] = [_log_summary(log) for log in logs]
        logs_dir = logs_root / f'{config.label}-r{repeat_index}'
        shutil.rmtree(logs_dir, ignore_errors=True)
        logs_dir.mkdir(parents=True)
        for log in logs:
            if log.is_file():
                name = log.name if log.parent == tmp else f'{log.parent.name}.log'
                shutil.copyfile(log, logs_dir / name)
        result['logs_dir'] = str(logs_dir)
        result['problems'] = problems(result)
        return result
    finally:
        site.stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def common_problems(m: Json, *, runs: int) -> list[str]:
    """What looks wrong in any crawl measurement (of `runs` runs): a timeout, exit codes, missing summaries, pages
    not crawled or failed, counts that disagree with the site's, error lines in the logs."""
    found: list[str] = []
    if m['timed_out']:
        found.append(f'timed out after {m["wall_seconds"]:.0f} s')
    if any(code != 0 for code in m['exit_codes']):
        found.append(f'exit codes {m["exit_codes"]}')
    if m['missing_outputs']:
        found.append(f'{m["missing_outputs"]} of {runs} runs wrote no summary')
    if not m['all_pages_crawled']:
        found.append(f'only {m["site"]["distinct"]} of {m["pages"]} pages crawled')
    if m['pages_failed']:
        found.append(f'{m["pages_failed"]} pages failed')
    if m['pages_processed'] != m['site']['fetches']:
        found.append(f'runs report {m["pages_processed"]} pages processed, the site served {m["site"]["fetches"]}')
    errors = sum(s.get('errors', 0) for s in m['log_summaries'])
    if errors:
        found.append(f'{errors} error lines in the logs')
    return found


def problems(m: Json) -> list[str]:
    """What looks wrong in a measurement of this benchmark."""
    found = common_problems(m, runs=m['runs_started'])
    if m['runs_started'] != m['runs']:
        found.append(f'{m["runs_started"]} runs started, expected {m["runs"]}')
    expected_duplicates = (m['runs'] - 1) * m['pages'] if m['mode'] == 'independent' else 0
    if m['mode'] == 'independent' and m['site']['duplicates'] != expected_duplicates:
        found.append(f'{m["site"]["duplicates"]} duplicates, expected (N-1) x pages = {expected_duplicates}')
    failed_syncs = sum(s.get('sharing_failed', 0) for s in m['log_summaries'])
    if failed_syncs:
        found.append(f'{failed_syncs} failed syncs in the logs')
    return found


# ---------------------------------------------------------------------------------------------------- report


def aggregate(measurements: list[Json]) -> Json:
    """Medians over the repeats of one configuration."""

    def med(name: str) -> float | None:
        return _median([m[name] for m in measurements if m[name] is not None])

    def med_output(name: str) -> float | None:
        return _median([sum(float(o.get(name, 0)) for o in m['outputs']) for m in measurements])

    return {
        'repeats': len(measurements),
        'wall_seconds': med('wall_seconds'),
        'first_fetch_seconds': med('first_fetch_seconds'),
        'last_new_page_seconds': med('last_new_page_seconds'),
        'pages_per_second': med('pages_per_second'),
        'fetches_per_second': med('fetches_per_second'),
        'duplicate_ratio': med('duplicate_ratio'),
        'duplicates': _median([m['site']['duplicates'] for m in measurements]),
        'distinct': _median([m['site']['distinct'] for m in measurements]),
        'store_operations': med('store_operations'),
        'store_operations_per_page': med('store_operations_per_page'),
        'syncs': med_output('syncs'),
        'handed_over': med_output('handedOver'),
        'taken_over': med_output('takenOver'),
        'skipped_before_fetch': med_output('skippedBeforeFetch'),
        'wall_seconds_range': [
            min(m['wall_seconds'] for m in measurements),
            max(m['wall_seconds'] for m in measurements),
        ],
        'runs_cpu_ms_per_page': med('runs_cpu_ms_per_page'),
        'foreign_cpu_share': _median([m['cpu']['foreign_cpu_share'] for m in measurements]),
        'foreign_cpu_share_max': max(m['cpu']['foreign_cpu_share'] for m in measurements),
        'machine_busy_share': _median([m['cpu']['machine_busy_share'] for m in measurements]),
        'all_pages_crawled': sum(m['all_pages_crawled'] for m in measurements),
        'problems': sorted({p for m in measurements for p in m['problems']}),
    }


def _fmt(value: float | None, spec: str, suffix: str = '') -> str:
    return '—' if value is None else f'{value:{spec}}{suffix}'


def _crawled(agg: Json) -> str:
    ok, total = agg['all_pages_crawled'], agg['repeats']
    word = 'yes' if ok == total else 'NO'
    return word if total == 1 else f'{word} ({ok}/{total})'


def _status(agg: Json) -> str:
    duplicate_ratio, ops = agg['duplicate_ratio'], agg['store_operations_per_page']
    dup_ok = duplicate_ratio is not None and duplicate_ratio <= TARGET_DUPLICATE_RATIO
    ops_ok = ops is not None and ops <= TARGET_OPS_PER_PAGE
    parts = [
        'duplicates met' if dup_ok else '**duplicates NOT met**',
        'store ops met' if ops_ok else '**store ops NOT met**',
    ]
    return ', '.join(parts)


def comparison_table(aggregates: dict[str, Json], runs: list[int], syncs: list[float], extra: list[Config]) -> str:
    header = [
        'Runs N',
        'Sync interval',
        'Shared: wall',
        'Shared: pages/s',
        'Shared: duplicate ratio',
        'Shared: store ops/page',
        'Shared: all pages',
        'Independent: wall',
        'Independent: pages/s',
        'Independent: duplicate ratio',
        'Independent: all pages',
        'Targets (dup <= 1 %, ops <= 0.05)',
    ]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    rows = [Config('shared', n, s) for n in runs for s in syncs] + extra
    for config in rows:
        shared = aggregates.get(Config('shared', config.runs, config.sync_secs).label)
        independent = aggregates.get(Config('independent', config.runs, config.sync_secs).label)
        if shared is None:
            continue
        cells = [
            str(config.runs),
            f'{config.sync_secs:g} s',
            _fmt(shared['wall_seconds'], '.1f', ' s'),
            _fmt(shared['pages_per_second'], '.1f'),
            f'{_fmt(shared["duplicate_ratio"], ".2%")} ({_fmt(shared["duplicates"], ".0f")})',
            f'{_fmt(shared["store_operations_per_page"], ".3f")} ({_fmt(shared["store_operations"], ".0f")})',
            _crawled(shared),
        ]
        if independent is None:
            cells += ['—'] * 4
        else:
            cells += [
                _fmt(independent['wall_seconds'], '.1f', ' s'),
                _fmt(independent['pages_per_second'], '.1f'),
                f'{_fmt(independent["duplicate_ratio"], ".2%")} ({_fmt(independent["duplicates"], ".0f")})',
                _crawled(independent),
            ]
        cells.append(_status(shared))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def runs_table(measurements: list[Json]) -> str:
    """Every run of every shared measurement, from its OUTPUT record."""
    header = [
        'Measurement',
        'Run',
        'Pages',
        'Known skipped',
        'Handed over',
        'Taken over',
        'Skipped before fetch',
        'Syncs',
        'Store ops',
        'Seconds',
    ]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    for m in measurements:
        if m['mode'] != 'shared':
            continue
        label = f'N={m["runs"]}, S={m["sync_secs"]:g} s, #{m["repeat_index"] + 1}'
        for o in m['outputs']:
            cells = [label, str(o.get('runId', '?'))]
            cells += [
                str(o.get(name, '—'))
                for name in (
                    'pagesProcessed',
                    'knownSkipped',
                    'handedOver',
                    'takenOver',
                    'skippedBeforeFetch',
                    'syncs',
                    'storeOperations',
                    'seconds',
                )
            ]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def timing_table(aggregates: dict[str, Json]) -> str:
    header = [
        'Measurement',
        'Wall (range)',
        'First fetch at',
        'Last new page at',
        'Fetches/s',
        'Syncs (all runs)',
        'CPU of the runs per fetch',
        'Machine busy',
        'Other work on the machine',
    ]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    for label, agg in aggregates.items():
        low, high = agg['wall_seconds_range']
        cells = [
            label,
            f'{_fmt(agg["wall_seconds"], ".1f", " s")} ({low:.1f}-{high:.1f})',
            _fmt(agg['first_fetch_seconds'], '.1f', ' s'),
            _fmt(agg['last_new_page_seconds'], '.1f', ' s'),
            _fmt(agg['fetches_per_second'], '.1f'),
            _fmt(agg['syncs'], '.0f'),
            _fmt(agg['runs_cpu_ms_per_page'], '.1f', ' ms'),
            _fmt(agg['machine_busy_share'], '.0%', f' of {os.cpu_count()} cores'),
            f'{_fmt(agg["foreign_cpu_share"], ".0%")} (max {_fmt(agg["foreign_cpu_share_max"], ".0%")})',
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------- driver


def _git(*args: str) -> str:
    done = subprocess.run(['git', *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _parse_extra(value: str) -> Config:
    try:
        runs, sync = value.split(':')
        return Config('shared', int(runs), float(sync))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'expected RUNS:SYNC_SECS such as 3:5, got {value!r}') from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] if __doc__ else None)
    parser.add_argument('--pages', type=int, default=3000, help='pages of the local site')
    parser.add_argument('--runs', type=int, nargs='+', default=[1, 2, 3], help='numbers of parallel runs N')
    parser.add_argument('--sync-intervals', type=float, nargs='+', default=[2.0], help='syncIntervalSecs values')
    parser.add_argument(
        '--extra',
        type=_parse_extra,
        nargs='*',
        default=[Config('shared', 3, 5.0)],
        help='more shared measurements as RUNS:SYNC_SECS (default 3:5); none with an empty list',
    )
    parser.add_argument('--repeat', type=int, default=1, help='repeats of each measurement (medians are reported)')
    parser.add_argument('--timeout', type=float, default=900, help='seconds before a measurement is killed')
    parser.add_argument('--no-independent', action='store_true', help='skip the runs that share nothing')
    parser.add_argument(
        '--quiet-below',
        type=float,
        default=0.15,
        help='before each measurement, wait until other work uses at most this share of the cores (over 5 s)',
    )
    parser.add_argument('--quiet-wait', type=float, default=600, help='longest wait for a quiet machine, in seconds')
    parser.add_argument(
        '--busy-above',
        type=float,
        default=0.2,
        help='measure again when other work used more than this share of the cores during a measurement',
    )
    parser.add_argument('--busy-retries', type=int, default=2, help='how many times to measure again (then keep it)')
    parser.add_argument('--keep', action='store_true', help='keep the temporary storage folders')
    parser.add_argument('--out', type=Path, default=REPO_ROOT / 'bench' / 'out' / 'crawler.json', help='JSON output')
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.pages < 1 or any(n < 1 for n in args.runs):
        parser.error('--repeat, --pages and every --runs value must be at least 1')
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started_at = datetime.now(UTC).isoformat(timespec='seconds')
    commit_at_start = _git('rev-parse', 'HEAD')
    src_changes_at_start = _git('status', '--porcelain', 'src').splitlines()
    configs = [Config('shared', n, s) for n in args.runs for s in args.sync_intervals]
    configs += [c for c in args.extra if c not in configs]
    if not args.no_independent:
        configs += [Config('independent', n, args.sync_intervals[0]) for n in args.runs]
    logs_root = args.out.parent / 'crawler-logs'
    measurements: list[Json] = []
    aggregates: dict[str, Json] = {}
    discarded: list[Json] = []
    for config in configs:
        batch: list[Json] = []
        for r in range(args.repeat):
            for attempt in range(args.busy_retries + 1):
                _progress(
                    f'{config.label}: measurement {r + 1}/{args.repeat}' + (f', again ({attempt})' * bool(attempt))
                )
                quiet = wait_for_quiet(args.quiet_below, args.quiet_wait)
                m = measure(config, args.pages, r, args.timeout, logs_root, args.keep)
                m['quiet_before'] = quiet
                foreign = m['cpu']['foreign_cpu_share']
                _progress(
                    f'  wall {m["wall_seconds"]:.1f} s, {m["site"]["distinct"]}/{args.pages} pages, '
                    f'{m["site"]["duplicates"]} duplicates, store ops {m["store_operations"]}, '
                    f'{m["pages_per_second"]:.1f} pages/s, other work {foreign:.0%} of the cores'
                    + (f'; PROBLEMS: {"; ".join(m["problems"])}' if m['problems'] else '')
                )
                if foreign <= args.busy_above or attempt == args.busy_retries:
                    break
                _progress(f'  discarded: other work used {foreign:.0%} of the cores (above {args.busy_above:.0%})')
                discarded.append(m)
            batch.append(m)
        measurements += batch
        aggregates[config.label] = aggregate(batch)

    extra = [c for c in args.extra if c not in [Config('shared', n, s) for n in args.runs for s in args.sync_intervals]]
    comparison = comparison_table(aggregates, args.runs, args.sync_intervals, extra)
    per_run = runs_table(measurements)
    timings = timing_table(aggregates)
    results: Json = {
        'meta': {
            'command': ' '.join([Path(sys.executable).name, '-m', 'bench.bench_crawler', *sys.argv[1:]]),
            'started_at': started_at,
            'total_seconds': time.perf_counter() - _started,
            'pages': args.pages,
            'repeat': args.repeat,
            'site_delay_secs': SITE_DELAY_SECS,
            'max_concurrency': MAX_CONCURRENCY,
            'python': sys.version,
            'crawlee': importlib.metadata.version('crawlee'),
            'apify': importlib.metadata.version('apify'),
            'platform': platform.platform(),
            'cpus': os.cpu_count(),
            'git_commit_at_start': commit_at_start,
            'git_commit_at_end': _git('rev-parse', 'HEAD'),
            'src_uncommitted_changes_at_start': src_changes_at_start,
            'src_uncommitted_changes_at_end': _git('status', '--porcelain', 'src').splitlines(),
        },
        'targets': {'duplicate_ratio': TARGET_DUPLICATE_RATIO, 'store_operations_per_page': TARGET_OPS_PER_PAGE},
        'aggregates': aggregates,
        'measurements': measurements,
        'discarded_measurements': discarded,
        'tables': {'comparison': comparison, 'runs': per_run, 'timings': timings},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + '\n', encoding='utf-8')
    print(comparison)
    print('\nPer run (OUTPUT records of the shared measurements):\n')
    print(per_run)
    print('\nTimings (seconds from the start of the first process):\n')
    print(timings)
    versions = {(m['git_commit'], tuple(m['src_uncommitted_changes'])) for m in measurements}
    if len(versions) > 1:
        print(f'\nWARNING: src/ changed during the benchmark: {len(versions)} versions measured (see the JSON).')
    problem_lines = [f'- {label}: {"; ".join(agg["problems"])}' for label, agg in aggregates.items() if agg['problems']]
    if problem_lines:
        print('\nProblems:\n' + '\n'.join(problem_lines))
    print(f'\nTotal run time: {time.perf_counter() - _started:.1f} s. Raw numbers: {args.out}')


if __name__ == '__main__':
    main()

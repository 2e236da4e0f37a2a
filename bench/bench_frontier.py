"""Frontier benchmark (issue #11): the template against plain crawlee on a generated documentation site.

Run from the repository root (PostgreSQL for `crawlee-sql-3` comes from `scripts/with-services.sh`):

    TEST_POSTGRES_PORT=54341 bash scripts/with-services.sh .venv/bin/python -m bench.bench_frontier \
        [--pages 10000] [--configs crawlee-1 crawlee-sql-3 template-1 template-3] [--repeat 1] \
        [--sync-interval S] [--out bench/out/frontier.json]

Four configurations, each measured on a fresh site (`bench.docs_site`: pages of ~30 KB with ~100 links, most of
them shared between pages; fresh fetch counts) and fresh storage; with `--repeat`, the configurations take turns, so
changing load on the machine hits them alike:

* `crawlee-1`: crawlee with nothing shared, 1 run: the template with `"useSharedMap": false`, `"parallelRuns": 1`.
* `crawlee-sql-3`: 3 processes of plain crawlee (`bench.crawlee_sql_worker`) sharing ONE named request queue through
  crawlee's `SqlStorageClient` on a fresh PostgreSQL database (skipped, and said so, without `TEST_POSTGRES_URL`).
* `template-1` and `template-3`: the template with the shared map, `parallelRuns` 1 and 3 (the parent run starts the
  others), at the template's default sync interval unless `--sync-interval` is given.

Measured per configuration: wall seconds (first process started to last one ended); pages/s = distinct pages / wall;
CPU ms per page = CPU seconds of all processes of the configuration (reaped children, from `getrusage`) / fetches,
plus the PostgreSQL server's CPU for `crawlee-sql-3` (from /proc, reported apart); key-value store operations per
page by kind (the template runs' OUTPUT: storeReads, storeWrites, storeDeletes, storeLists); request-queue writes per
page (files left under every `request_queues/` folder of the configuration's storage; on PostgreSQL the inserts,
updates and deletes of `request_queue_records`, from `pg_stat_user_tables`); duplicate fetches (from the site's
counts); peak memory (VmHWM of every process of the configuration, sampled every 0.2 s from /proc: the largest, and
the sum of the per-process peaks); whether every page was crawled. Also the median time of one
`BeautifulSoup(html, 'lxml')` parse of a typical page, in this process, to compare the CPU per page with.

The Markdown tables go to stdout, progress to stderr, the raw numbers to `--out`, the logs to
`<out dir>/frontier-logs/`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from bs4 import BeautifulSoup

from bench.bench_crawler import (
    CpuMeter,
    _fmt,
    _git,
    _log_summary,
    _median,
    _progress,
    actor_input,
    common_problems,
    read_output,
    start_actor,
    wait_for_processes,
    wait_for_quiet,
)
from bench.docs_site import DocsSite, serve_docs_site

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ['crawlee-1', 'crawlee-sql-3', 'template-1', 'template-3']
SQL_PROCESSES = 3
SAMPLE_SECS = 0.2
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
KV_KINDS = {'reads': 'storeReads', 'writes': 'storeWrites', 'deletes': 'storeDeletes', 'lists': 'storeLists'}

TARGET_SPEEDUP_ONE_RUN = 1.75
TARGET_SPEEDUP_THREE_RUNS = 1.8
TARGET_SPEEDUP_OVER_SQL = 1.75
TARGET_CPU_OVER_PARSE = 2.0
TARGET_KV_OPS_PER_PAGE = 0.05
TARGET_DUPLICATE_RATIO = 0.005

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- processes


class ProcessTreeSampler:
    """Peak memory and CPU of a set of processes and all their descendants, sampled from /proc.

    VmHWM is the kernel's own peak RSS of a process, so sampling finds it even between samples; only a process that
    lives less than one sampling interval can be missed.
    """

    def __init__(self) -> None:
        self.processes: dict[int, Json] = {}

    def sample(self, roots: Sequence[int]) -> None:
        """Read every live process of the trees under `roots`."""
        stack = list(roots)
        seen: set[int] = set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            stack.extend(_children(pid))
            status = _read(f'/proc/{pid}/status')
            stat = _read(f'/proc/{pid}/stat')
            if status is None or stat is None:
                continue  # it just ended
            hwm = re.search(r'^VmHWM:\s+(\d+) kB', status, re.MULTILINE)
            fields = stat.rsplit(')', 1)[-1].split()
            entry = self.processes.get(pid)
            if entry is None:
                entry = self.processes[pid] = {
                    'pid': pid,
                    'command': _command(pid),
                    'run': _run_key(pid),
                    'peak_kib': 0,
                }
            if hwm:
                entry['peak_kib'] = max(entry['peak_kib'], int(hwm.group(1)))
            entry['cpu_seconds_sampled'] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def summary(self) -> Json:
        """The largest peak, the sum of the peaks, and every process."""
        peaks = [p['peak_kib'] for p in self.processes.values()]
        return {
            'processes': len(self.processes),
            'peak_rss_max_mib': max(peaks, default=0) / 1024,
            'peak_rss_sum_mib': sum(peaks) / 1024,
            'cpu_seconds_sampled': sum(p.get('cpu_seconds_sampled', 0.0) for p in self.processes.values()),
            'per_process': sorted(self.processes.values(), key=lambda p: int(p['pid'])),
        }


def _read(path: str) -> str | None:
    try:
        with open(path, encoding='utf-8', errors='replace') as file:
            return file.read()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid` (a child started from a worker thread is listed under that thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return found
    for task in tasks:
        text = _read(f'/proc/{pid}/task/{task}/children')
        if text:
            found.extend(int(child) for child in text.split())
    return found


def _run_key(pid: int) -> str | None:
    """Which run a process is: its `ACTOR_RUN_ID` (the template's child runs), else its storage folder's name."""
    text = _read(f'/proc/{pid}/environ') or ''
    env = dict(item.split('=', 1) for item in text.split('\0') if '=' in item)
    if 'ACTOR_RUN_ID' in env:
        return env['ACTOR_RUN_ID']
    return Path(env['CRAWLEE_STORAGE_DIR']).name if 'CRAWLEE_STORAGE_DIR' in env else None


def _command(pid: int) -> str:
    text = _read(f'/proc/{pid}/cmdline') or ''
    return ' '.join(text.split('\0')).strip()[:200]


def postgres_cpu_seconds() -> float | None:
    """CPU seconds the test PostgreSQL server has used so far (postmaster, its reaped and its live backends)."""
    match = re.search(r'-D (\S+)', os.environ.get('TEST_POSTGRES_CTL', ''))
    pid_text = _read(f'{match.group(1)}/postmaster.pid') if match else None
    if not pid_text:
        return None
    postmaster = int(pid_text.split()[0])
    stat = _read(f'/proc/{postmaster}/stat')
    if stat is None:
        return None
    fields = stat.rsplit(')', 1)[-1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    for child in _children(postmaster):
        child_stat = _read(f'/proc/{child}/stat')
        if child_stat is not None:
            child_fields = child_stat.rsplit(')', 1)[-1].split()
            ticks += int(child_fields[11]) + int(child_fields[12])
    return ticks / CLOCK_TICKS


# ---------------------------------------------------------------------------------------------------- PostgreSQL


def _admin_dsn() -> str:
    return os.environ['TEST_POSTGRES_URL'].replace('postgresql+asyncpg://', 'postgresql://')


async def _create_database() -> str:
    name = f'bench_{uuid.uuid4().hex[:16]}'
    admin = await asyncpg.connect(_admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE {name}')
    finally:
        await admin.close()
    return name


async def _queue_stats_and_drop(name: str) -> Json:
    """Rows and row writes of the request-queue tables of database `name`, then drop it."""
    connection = await asyncpg.connect(_admin_dsn().rsplit('/', 1)[0] + f'/{name}')
    try:
        rows = await connection.fetchval('SELECT count(*) FROM request_queue_records')
        handled = await connection.fetchval('SELECT count(*) FROM request_queue_records WHERE is_handled')
        tables = await connection.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname LIKE 'request%'"
        )
    finally:
        await connection.close()
    admin = await asyncpg.connect(_admin_dsn())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')
    finally:
        await admin.close()
    writes = {str(t['relname']): int(t['n_tup_ins']) + int(t['n_tup_upd']) + int(t['n_tup_del']) for t in tables}
    return {'rows': int(rows), 'handled_rows': int(handled), 'row_writes_by_table': writes}


# ---------------------------------------------------------------------------------------------------- measurement


def template_input(site_url: str, runs: int, sync_secs: float | None, *, shared: bool) -> Json:
    """The actor's INPUT (bench_crawler's), at the template's default sync interval unless one is given."""
    raw = actor_input(site_url, runs, sync_secs or 10.0, shared=shared)
    if sync_secs is None or not shared:
        del raw['syncIntervalSecs'], raw['deadRunTimeoutSecs']
    return raw


def _start_sql_worker(connection: str, site_url: str, storage: Path, *, prepare: bool) -> subprocess.Popen[bytes]:
    storage.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(('CRAWLEE_', 'APIFY_', 'ACTOR_'))}
    env |= {'CRAWLEE_STORAGE_DIR': str(storage)}
    command = [sys.executable, '-m', 'bench.crawlee_sql_worker', '--connection', connection, '--start-url', site_url]
    command += ['--prepare'] if prepare else ['--summary', str(storage / 'summary.json')]
    with (storage / ('prepare.log' if prepare else 'log.txt')).open('wb') as log:
        return subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _attach_processes(outputs: list[Json], processes: list[Json], timing: Json) -> None:
    """Give each run's summary its process's peak memory and CPU (matched by run id, else by storage folder)."""
    by_run = {p['run']: p for p in processes if p['run']}
    for output in outputs:
        process = by_run.get(str(output.get('runId'))) or by_run.get('storage')
        if process is not None:
            output['_peakRssMiB'] = round(process['peak_kib'] / 1024, 1)
            output['_cpuSecondsSampled'] = process.get('cpu_seconds_sampled')
    if len(outputs) == 1 and 'seconds' not in outputs[0]:  # crawlee-1 writes no seconds: its process's wall time
        outputs[0]['seconds'] = round(timing['process_seconds'][0], 2)


def _request_queue_files(root: Path) -> Json:
    """Files under every `request_queues/` folder below `root` (a local request queue's records and metadata)."""
    files = [f for folder in root.rglob('request_queues') for f in folder.rglob('*') if f.is_file()]
    records = [f for f in files if f.name != '__metadata__.json']
    return {'files': len(files), 'records': len(records)}


def measure(config: str, args: argparse.Namespace, repeat_index: int, logs_root: Path) -> Json:
    """One measurement of `config` on a fresh site and fresh storage (and a fresh database)."""
    site = serve_docs_site(args.pages, seed=args.seed, delay_secs=args.delay_ms / 1000)
    tmp = Path(tempfile.mkdtemp(prefix=f'frontier-bench-{config}-'))
    database = None
    try:
        sql = config == 'crawlee-sql-3'
        storages: list[Path]
        if sql:
            database = asyncio.run(_create_database())
            connection = os.environ['TEST_POSTGRES_URL'].rsplit('/', 1)[0] + f'/{database}'
            prepare = _start_sql_worker(connection, site.url, tmp / 'prepare', prepare=True)
            if prepare.wait(timeout=120) != 0:
                raise RuntimeError(f'preparing the queue failed: see {tmp / "prepare" / "prepare.log"}')
            storages = [tmp / f'worker-{i}' for i in range(1, SQL_PROCESSES + 1)]
            raw: Json = {'connection': connection, 'processes': SQL_PROCESSES}
        else:
            runs = 3 if config == 'template-3' else 1
            raw = template_input(site.url, runs, args.sync_interval, shared=config.startswith('template'))
            storages = [tmp / 'storage']
        sampler = ProcessTreeSampler()
        load_at_start = os.getloadavg()[0]
        postgres_before = postgres_cpu_seconds() if sql else None
        meter = CpuMeter()
        if sql:
            processes = [_start_sql_worker(connection, site.url, s, prepare=False) for s in storages]
        else:
            processes = [start_actor(storages[0], raw, tmp / 'storage.log')]
        timing = wait_for_processes(
            processes, site.stats, time.perf_counter(), args.timeout, on_tick=sampler.sample, poll_secs=SAMPLE_SECS
        )
        cpu = meter.stop() | {'load_average_at_start': load_at_start}
        postgres_after = postgres_cpu_seconds() if sql else None
        snapshot = site.stats.snapshot()
        counts: dict[str, int] = snapshot.pop('counts')

        outputs: list[Json] = []
        missing_outputs = 0
        logs: list[Path] = []
        if sql:
            for storage in storages:
                logs.append(storage / 'log.txt')
                summary_file = storage / 'summary.json'
                if summary_file.is_file():
                    outputs.append(json.loads(summary_file.read_text(encoding='utf-8')) | {'runId': storage.name})
                else:
                    missing_outputs += 1
        else:
            logs.append(tmp / 'storage.log')
            children = sorted((storages[0] / 'parallel-runs').glob('*'))
            logs += [child / 'log.txt' for child in children]
            for kvs_dir in [storages[0] / 'key_value_stores' / 'default'] + [
                child / 'key_value_stores' / 'default' for child in children
            ]:
                output, _ = read_output(kvs_dir)
                if output is None:
                    missing_outputs += 1
                else:
                    outputs.append(output)

        memory = sampler.summary()
        _attach_processes(outputs, memory['per_process'], timing)
        fetches, distinct = snapshot['fetches'], snapshot['distinct']
        rq = _request_queue_files(tmp)
        if database is not None:
            rq['postgres'] = asyncio.run(_queue_stats_and_drop(database))
            database = None
            rq_writes = rq['postgres']['row_writes_by_table'].get('request_queue_records')
            rq['postgres']['all_tables_row_writes'] = sum(rq['postgres']['row_writes_by_table'].values())
        else:
            rq_writes = rq['records']
        kv = (
            {kind: sum(int(o.get(field, 0)) for o in outputs) for kind, field in KV_KINDS.items()}
            if config.startswith('template')
            else None
        )
        postgres_cpu = (
            postgres_after - postgres_before if postgres_before is not None and postgres_after is not None else None
        )
        result: Json = {
            'config': config,
            'repeat_index': repeat_index,
            'pages': args.pages,
            'tmpdir': str(tmp),
            'input': raw,
            'git_commit': _git('rev-parse', 'HEAD'),
            'src_uncommitted_changes': _git('status', '--porcelain', 'src').splitlines(),
            **timing,
            'site': snapshot,
            'max_fetches_of_one_page': max(counts.values(), default=0),
            'outputs': outputs,
            'runs': len(outputs) + missing_outputs,
            'missing_outputs': missing_outputs,
            'pages_processed': sum(int(o.get('pagesProcessed', 0)) for o in outputs),
            'pages_failed': sum(int(o.get('pagesFailed') or 0) for o in outputs),
            'pages_per_second': distinct / timing['wall_seconds'],
            'cpu': cpu,
            'cpu_ms_per_page': cpu['runs_cpu_seconds'] * 1000 / fetches if fetches else None,
            'postgres_cpu_seconds': postgres_cpu,
            'postgres_cpu_ms_per_page': postgres_cpu * 1000 / fetches if postgres_cpu is not None and fetches else None,
            'kv_operations': kv,
            'kv_operations_per_page': {k: v / distinct for k, v in kv.items()} if kv is not None and distinct else None,
            'request_queue': rq,
            'request_queue_writes': rq_writes,
            'request_queue_writes_per_page': rq_writes / distinct if rq_writes is not None and distinct else None,
            # crawlee's SQL queue also keeps metadata rows (counts, a buffer of their changes): all its row writes
            'request_queue_all_table_writes_per_page': (
                rq['postgres']['all_tables_row_writes'] / distinct if 'postgres' in rq and distinct else None
            ),
            'duplicates': snapshot['duplicates'],
            'duplicate_ratio': snapshot['duplicates'] / distinct if distinct else None,
            'memory': memory,
            'all_pages_crawled': distinct == args.pages,
        }
        result['log_summaries'] = [_log_summary(log) for log in logs]
        logs_dir = logs_root / f'{config}-r{repeat_index}'
        shutil.rmtree(logs_dir, ignore_errors=True)
        logs_dir.mkdir(parents=True)
        for log in logs:
            if log.is_file():
                shutil.copyfile(log, logs_dir / (log.name if log.parent == tmp else f'{log.parent.name}.log'))
        result['logs_dir'] = str(logs_dir)
        result['problems'] = common_problems(result, runs=result['runs'])
        return result
    finally:
        site.stop()
        if database is not None:  # a failed measurement: still drop its database
            asyncio.run(_queue_stats_and_drop(database))
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def parse_time_ms(pages: int, seed: int, samples: int) -> Json:
    """Median time of one `BeautifulSoup(html, 'lxml')` parse of a typical page of the site, in this process."""
    site = DocsSite(pages, seed=seed)
    number = pages // 2
    html = site.render(number)
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        BeautifulSoup(html, 'lxml')
        times.append(time.perf_counter() - started)
    return {
        'page': site.page(number).path,
        'bytes': len(html.encode()),
        'links': len(site.links(number)),
        'samples': samples,
        'median_ms': statistics.median(times) * 1000,
    }


# ---------------------------------------------------------------------------------------------------- report


def aggregate(measurements: list[Json]) -> Json:
    """Medians over the repeats of one configuration."""

    def med(get: Any) -> float | None:
        return _median([v for v in (get(m) for m in measurements) if v is not None])

    kv = {
        kind: med(lambda m, kind=kind: (m['kv_operations_per_page'] or {}).get(kind))
        for kind in KV_KINDS
        if measurements[0]['kv_operations_per_page'] is not None
    }
    return {
        'repeats': len(measurements),
        'runs': measurements[0]['runs'],
        'wall_seconds': med(lambda m: m['wall_seconds']),
        'wall_seconds_range': [
            min(m['wall_seconds'] for m in measurements),
            max(m['wall_seconds'] for m in measurements),
        ],
        'pages_per_second': med(lambda m: m['pages_per_second']),
        'cpu_ms_per_page': med(lambda m: m['cpu_ms_per_page']),
        'postgres_cpu_ms_per_page': med(lambda m: m['postgres_cpu_ms_per_page']),
        'kv_operations_per_page': kv or None,
        'kv_operations_per_page_total': sum(v for v in kv.values() if v is not None) if kv else None,
        'request_queue_writes_per_page': med(lambda m: m['request_queue_writes_per_page']),
        'request_queue_all_table_writes_per_page': med(lambda m: m['request_queue_all_table_writes_per_page']),
        'duplicates': med(lambda m: m['duplicates']),
        'duplicate_ratio': med(lambda m: m['duplicate_ratio']),
        'peak_rss_max_mib': med(lambda m: m['memory']['peak_rss_max_mib']),
        'peak_rss_sum_mib': med(lambda m: m['memory']['peak_rss_sum_mib']),
        'foreign_cpu_share': med(lambda m: m['cpu']['foreign_cpu_share']),
        'all_pages_crawled': sum(m['all_pages_crawled'] for m in measurements),
        'problems': sorted({p for m in measurements for p in m['problems']}),
    }


def _row(cells: Sequence[str]) -> str:
    return '| ' + ' | '.join(cells) + ' |'


def _header(cells: Sequence[str]) -> str:
    return _row(cells) + '\n|' + '|'.join('---' for _ in cells) + '|'


def main_table(aggregates: dict[str, Json], skipped: dict[str, str]) -> str:
    lines = [
        _header(
            [
                'Configuration',
                'Runs',
                'Wall s',
                'Pages/s',
                'CPU ms/page',
                'KV reads / writes / deletes / lists per page',
                'RQ writes per page',
                'Duplicates',
                'Peak RSS MiB (max / sum)',
                'Every page',
            ]
        )
    ]
    for config in CONFIGS:
        if config in skipped:
            lines.append(_row([config, '—', f'skipped: {skipped[config]}', *['—'] * 7]))
            continue
        agg = aggregates.get(config)
        if agg is None:
            continue
        kv = agg['kv_operations_per_page']
        kv_cell = ' / '.join(_fmt(kv[k], '.4f') for k in KV_KINDS) if kv else '— (not counted)'
        cpu = _fmt(agg['cpu_ms_per_page'], '.1f')
        if agg['postgres_cpu_ms_per_page'] is not None:
            cpu += f' (+ PostgreSQL {agg["postgres_cpu_ms_per_page"]:.1f})'
        rq_cell = _fmt(agg['request_queue_writes_per_page'], '.3f')
        if agg['request_queue_all_table_writes_per_page'] is not None:
            rq_cell += f' (all queue tables {agg["request_queue_all_table_writes_per_page"]:.1f})'
        ok, total = agg['all_pages_crawled'], agg['repeats']
        crawled = ('yes' if ok == total else 'NO') + ('' if total == 1 else f' ({ok}/{total})')
        lines.append(
            _row(
                [
                    config,
                    str(agg['runs']),
                    _fmt(agg['wall_seconds'], '.1f'),
                    _fmt(agg['pages_per_second'], '.1f'),
                    cpu,
                    kv_cell,
                    rq_cell,
                    f'{_fmt(agg["duplicates"], ".0f")} ({_fmt(agg["duplicate_ratio"], ".2%")})',
                    f'{_fmt(agg["peak_rss_max_mib"], ".0f")} / {_fmt(agg["peak_rss_sum_mib"], ".0f")}',
                    crawled,
                ]
            )
        )
    return '\n'.join(lines)


def runs_table(measurements: list[Json]) -> str:
    """Every run (process) of every measurement: its summary, and its process's CPU and peak memory from /proc."""
    lines = [
        _header(
            [
                'Measurement',
                'Run',
                'Pages',
                'Seconds',
                'Pages/s',
                'CPU ms/page',
                'Peak RSS MiB',
                'KV reads / writes / deletes / lists',
            ]
        )
    ]
    for m in measurements:
        for o in m['outputs']:
            pages, seconds, cpu = o.get('pagesProcessed'), o.get('seconds'), o.get('_cpuSecondsSampled')
            kv = ' / '.join(str(o.get(field, '—')) for field in KV_KINDS.values())
            cells = [
                f'{m["config"]} #{m["repeat_index"] + 1}',
                str(o.get('runId', '?')),
                str(pages if pages is not None else '—'),
                _fmt(seconds, '.1f'),
                _fmt(pages / seconds if pages and seconds else None, '.1f'),
                _fmt(cpu * 1000 / pages if cpu is not None and pages else None, '.1f'),
                _fmt(o.get('_peakRssMiB'), '.0f'),
                kv if m['config'].startswith('template') else '—',
            ]
            lines.append(_row(cells))
    return '\n'.join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(aggregates: dict[str, Json], parse: Json) -> list[Json]:
    """The issue's targets, each with what was measured (None: a configuration was not measured)."""

    def get(config: str, name: str) -> float | None:
        agg = aggregates.get(config)
        return None if agg is None else agg[name]

    pps = {config: get(config, 'pages_per_second') for config in CONFIGS}
    rows = [
        ('template-1 / crawlee-1, pages/s', _ratio(pps['template-1'], pps['crawlee-1']), '>=', TARGET_SPEEDUP_ONE_RUN),
        (
            'template-3 / template-1, pages/s',
            _ratio(pps['template-3'], pps['template-1']),
            '>=',
            TARGET_SPEEDUP_THREE_RUNS,
        ),
        (
            'template-3 / crawlee-sql-3, pages/s',
            _ratio(pps['template-3'], pps['crawlee-sql-3']),
            '>=',
            TARGET_SPEEDUP_OVER_SQL,
        ),
    ]
    for config in ('template-1', 'template-3'):
        rows.append(
            (
                f'{config}: CPU per page / one parse ({_fmt(parse["median_ms"], ".1f")} ms)',
                _ratio(get(config, 'cpu_ms_per_page'), parse['median_ms']),
                '<=',
                TARGET_CPU_OVER_PARSE,
            )
        )
    rows += [
        ('template-1: RQ writes per page', get('template-1', 'request_queue_writes_per_page'), '<=', 0.0),
        ('template-3: RQ writes per page', get('template-3', 'request_queue_writes_per_page'), '<=', 0.0),
        (
            'template-3: KV operations per page',
            get('template-3', 'kv_operations_per_page_total'),
            '<=',
            TARGET_KV_OPS_PER_PAGE,
        ),
        ('template-1: duplicate ratio', get('template-1', 'duplicate_ratio'), '<=', TARGET_DUPLICATE_RATIO),
        ('template-3: duplicate ratio', get('template-3', 'duplicate_ratio'), '<=', TARGET_DUPLICATE_RATIO),
    ]
    found = []
    for name, value, op, target in rows:
        met = None if value is None else (value >= target if op == '>=' else value <= target)
        found.append({'name': name, 'measured': value, 'target': f'{op} {target:g}', 'met': met})
    return found


def targets_table(rows: list[Json]) -> str:
    lines = [_header(['Target', 'Measured', 'Target', 'Met'])]
    for row in rows:
        met = '—' if row['met'] is None else ('met' if row['met'] else '**not met**')
        lines.append(_row([row['name'], _fmt(row['measured'], '.3f'), row['target'], met]))
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------- driver


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] if __doc__ else None)
    parser.add_argument('--pages', type=int, default=10000, help='pages of the generated documentation site')
    parser.add_argument('--configs', nargs='+', choices=CONFIGS, default=CONFIGS, help='configurations to measure')
    parser.add_argument('--repeat', type=int, default=1, help='repeats of each configuration (medians are reported)')
    parser.add_argument(
        '--sync-interval', type=float, default=None, help="syncIntervalSecs of the template (default: the template's)"
    )
    parser.add_argument('--seed', type=int, default=1, help='seed of the generated site')
    parser.add_argument('--delay-ms', type=float, default=0.0, help="the site's delay before each answer")
    parser.add_argument('--parse-samples', type=int, default=200, help='parses of one page to time (0: none)')
    parser.add_argument('--timeout', type=float, default=1800, help='seconds before a measurement is killed')
    parser.add_argument(
        '--quiet-below',
        type=float,
        default=0.15,
        help='before each measurement, wait until other work uses at most this share of the cores (over 5 s)',
    )
    parser.add_argument('--quiet-wait', type=float, default=300, help='longest wait for a quiet machine, in seconds')
    parser.add_argument('--keep', action='store_true', help='keep the temporary storage folders')
    parser.add_argument('--out', type=Path, default=REPO_ROOT / 'bench' / 'out' / 'frontier.json', help='JSON output')
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.pages < 2:
        parser.error('--repeat must be at least 1 and --pages at least 2')
    if args.sync_interval is not None and args.sync_interval <= 0:
        parser.error('--sync-interval must be positive')
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started_at = datetime.now(UTC).isoformat(timespec='seconds')
    commit_at_start = _git('rev-parse', 'HEAD')
    src_changes_at_start = _git('status', '--porcelain', 'src').splitlines()
    configs = [c for c in CONFIGS if c in args.configs]
    skipped: dict[str, str] = {}
    if 'crawlee-sql-3' in configs and not os.environ.get('TEST_POSTGRES_URL'):
        skipped['crawlee-sql-3'] = 'no PostgreSQL (TEST_POSTGRES_URL unset: run under scripts/with-services.sh)'
        _progress(f'crawlee-sql-3 skipped: {skipped["crawlee-sql-3"]}')
        configs.remove('crawlee-sql-3')
    parse = parse_time_ms(args.pages, args.seed, args.parse_samples) if args.parse_samples else {'median_ms': None}
    if args.parse_samples:
        _progress(
            f'one BeautifulSoup + lxml parse of {parse["page"]} ({parse["bytes"]} B): {parse["median_ms"]:.2f} ms'
        )
    logs_root = args.out.parent / 'frontier-logs'
    measurements: list[Json] = []
    for r in range(args.repeat):  # the configurations take turns: a change of load hits them alike
        for config in configs:
            _progress(f'{config}: measurement {r + 1}/{args.repeat}')
            quiet = wait_for_quiet(args.quiet_below, args.quiet_wait)
            m = measure(config, args, r, logs_root) | {'quiet_before': quiet}
            _progress(
                f'  wall {m["wall_seconds"]:.1f} s, {m["site"]["distinct"]}/{args.pages} pages, '
                f'{m["pages_per_second"]:.1f} pages/s, CPU {_fmt(m["cpu_ms_per_page"], ".1f")} ms/page, '
                f'{m["duplicates"]} duplicates, RQ writes {m["request_queue_writes"]}, '
                f'peak RSS {m["memory"]["peak_rss_max_mib"]:.0f} MiB, '
                f'other work {m["cpu"]["foreign_cpu_share"]:.0%} of the cores'
                + (f'; PROBLEMS: {"; ".join(m["problems"])}' if m['problems'] else '')
            )
            measurements.append(m)
    aggregates = {c: aggregate([m for m in measurements if m['config'] == c]) for c in configs}
    target_rows = targets(aggregates, parse)
    pps = {c: aggregates[c]['pages_per_second'] if c in aggregates else None for c in CONFIGS}
    tables = {
        'main': main_table(aggregates, skipped),
        'runs': runs_table(measurements),
        'targets': targets_table(target_rows),
    }
    results: Json = {
        'meta': {
            'command': ' '.join([Path(sys.executable).name, '-m', 'bench.bench_frontier', *sys.argv[1:]]),
            'started_at': started_at,
            'total_seconds': time.perf_counter() - _started,
            'pages': args.pages,
            'seed': args.seed,
            'repeat': args.repeat,
            'sync_interval_secs': args.sync_interval,
            'delay_ms': args.delay_ms,
            'python': sys.version,
            'crawlee': importlib.metadata.version('crawlee'),
            'apify': importlib.metadata.version('apify'),
            'platform': platform.platform(),
            'cpus': os.cpu_count(),
            'git_commit_at_start': commit_at_start,
            'git_commit_at_end': _git('rev-parse', 'HEAD'),
            'src_uncommitted_changes_at_start': src_changes_at_start,
            'src_uncommitted_changes_at_end': _git('status', '--porcelain', 'src').splitlines(),
            'skipped': skipped,
        },
        'parse': parse,
        'ratios': {
            'template_1_over_crawlee_1': _ratio(pps['template-1'], pps['crawlee-1']),
            'template_3_over_template_1': _ratio(pps['template-3'], pps['template-1']),
            'template_3_over_crawlee_sql_3': _ratio(pps['template-3'], pps['crawlee-sql-3']),
        },
        'targets': target_rows,
        'aggregates': aggregates,
        'measurements': measurements,
        'tables': tables,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + '\n', encoding='utf-8')
    print(tables['main'])
    print(f'\nPer run:\n\n{tables["runs"]}')
    print(f'\nTargets (issue #11):\n\n{tables["targets"]}')
    versions = {(m['git_commit'], tuple(m['src_uncommitted_changes'])) for m in measurements}
    if len(versions) > 1:
        print(f'\nWARNING: src/ changed during the benchmark: {len(versions)} versions measured (see the JSON).')
    problem_lines = [f'- {c}: {"; ".join(agg["problems"])}' for c, agg in aggregates.items() if agg['problems']]
    if problem_lines:
        print('\nProblems:\n' + '\n'.join(problem_lines))
    print(f'\nTotal run time: {time.perf_counter() - _started:.1f} s. Raw numbers: {args.out}')


_started = time.perf_counter()

if __name__ == '__main__':
    main()

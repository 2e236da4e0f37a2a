"""`python -m src.shared_map inspect|export|reset STORE`: look into, dump or clear a shared store.

`inspect` without a store lists the stores of the folder (or database) that hold a shared map, e.g. the crawls of a
project (`crawl-<time>-<random>` for each crawl started without a `sharedStoreName`), with their runs' state.
`reset` refuses a store that live runs are using (seen by their heartbeats): it would be undone by their next sync
and they would fetch pages again; `--force` resets anyway (for runs that are dead but not yet silent for long).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crawlee.configuration import Configuration
from crawlee.storage_clients import FileSystemStorageClient, StorageClient
from crawlee.storages import KeyValueStore

from ._backends import (
    REDIS_PREFIXES,
    check_connection,
    check_store_name,
    close_storage_client,
    describe_connection,
    storage_client_for,
    unavailable,
)
from ._errors import InvalidOptionError, SharedMapError
from ._records import Keys
from ._shared_map import SharedMap
from ._urls import info_prefix


class CliError(SharedMapError):
    """A problem the user can fix; printed without a traceback."""


@contextlib.asynccontextmanager
async def _open(args: argparse.Namespace, *, writable: bool = False) -> AsyncIterator[KeyValueStore]:
    """Open the store without changing anything unless `writable`; never create it, never purge it.

    crawlee purges unnamed stores (such as `default`) when opened with purge-on-start, and the file-system client
    rewrites a store's `__metadata__.json` on every read. So `inspect` and `export` read a local store from a
    temporary copy, and every command opens with `purge_on_start=False`.
    """
    connection = args.connection
    if writable:
        check_store_name(args.store)  # `reset --all` on crawlee's default store would delete the run's INPUT
    if connection is None or connection.startswith('file://'):
        folder = _check_local_store(connection.removeprefix('file://') if connection else args.storage_dir, args.store)
        with tempfile.TemporaryDirectory(prefix='shared-map-cli-') as temp:
            if not writable:
                shutil.copytree(folder / 'key_value_stores' / args.store, Path(temp) / 'key_value_stores' / args.store)
                folder = Path(temp)
            configuration = Configuration(storage_dir=str(folder), purge_on_start=False)
            store = await KeyValueStore.open(
                name=args.store, storage_client=FileSystemStorageClient(), configuration=configuration
            )
            yield await _check_shared_map(store, args)
        return
    check_connection(connection)
    if connection.startswith(REDIS_PREFIXES):
        await _check_redis_store(connection, args.store)
    else:
        await _check_database_store(connection, args.store)
    storage_client, _ = storage_client_for(connection)
    try:
        store = await _open_existing(connection, args.store, storage_client, Configuration(purge_on_start=False))
        yield await _check_shared_map(store, args)
    finally:
        await close_storage_client(storage_client)


async def _open_existing(
    connection: str, name: str, storage_client: StorageClient | None, configuration: Configuration
) -> KeyValueStore:
    try:
        return await KeyValueStore.open(name=name, storage_client=storage_client, configuration=configuration)
    except Exception as exc:
        if type(exc).__module__.startswith('redis'):  # e.g. a Redis without RedisJSON: say what to do
            raise CliError(str(unavailable(connection, exc))) from None
        raise


async def _check_shared_map(store: KeyValueStore, args: argparse.Namespace) -> KeyValueStore:
    keys = [meta.key async for meta in store.iterate_keys()]
    if not keys:
        raise CliError(f'The store "{args.store}" is empty.')
    prefix = f'{args.prefix}.'
    if not any(key.startswith(prefix) or 'INITIAL' in key for key in keys):
        raise CliError(
            f'The store "{args.store}" holds {len(keys)} records, none of a shared map with prefix "{args.prefix}" '
            f'(keys like "{prefix}L..."). Is it the right store (or --prefix)?'
        )
    return store


def _check_local_store(storage_dir: str, store: str) -> Path:
    folder = Path(storage_dir).resolve()
    if not (folder / 'key_value_stores' / store).is_dir():
        existing = sorted(p.name for p in (folder / 'key_value_stores').glob('*') if p.is_dir())
        raise CliError(
            f'No key-value store named "{store}" in {folder}. Stores there: {", ".join(existing) or "none"}. '
            'Use --storage-dir for another folder, or --connection for a database.'
        )
    return folder


def _check_sqlite_file(connection: str) -> None:
    from sqlalchemy.engine import make_url

    database = make_url(connection).database
    if database and not Path(database).is_file():  # connecting would create an empty database file
        raise CliError(f'No SQLite database file at {Path(database).resolve()}.')


async def _check_redis_store(connection: str, store: str) -> None:
    """Fail unless the Redis server holds a key-value store of that name, reading only (opening would create it)."""
    from redis.exceptions import RedisError

    from ._redis import redis_store_names

    try:
        names = await redis_store_names(connection)
    except RedisError as exc:
        raise CliError(str(unavailable(connection, exc))) from None
    if store not in names:
        raise CliError(
            f'No key-value store named "{store}" on {describe_connection(connection)}. '
            f'Stores there: {", ".join(names) or "none"}.'
        )


async def _check_database_store(connection: str, store: str) -> None:
    """Fail unless the database holds a key-value store of that name, reading only (opening would create it)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine

    where = describe_connection(connection)
    if connection.startswith('sqlite'):
        _check_sqlite_file(connection)
    engine = create_async_engine(connection)
    try:
        async with engine.connect() as db:
            names = sorted(row[0] for row in await db.execute(text('SELECT name FROM key_value_stores')))
    except (OSError, TimeoutError) as exc:
        raise CliError(f'Cannot reach {where}: {exc}') from None
    except DBAPIError as exc:
        if 'key_value_stores' not in str(exc):
            raise CliError(f'Cannot read {where}: {str(exc).splitlines()[0][:300]}') from None
        names = []  # no table: crawlee never created a store in this database
    finally:
        await engine.dispose()
    if store not in names:
        shown = ', '.join(str(name) for name in names) or 'none'
        raise CliError(f'No key-value store named "{store}" in {where}. Stores there: {shown}.')


async def _load(store: KeyValueStore, prefix: str) -> SharedMap:
    shared = SharedMap(store, run_id='inspector', prefix=prefix)  # reads only: writes happen in sync() and close()
    await shared.initialize()
    return shared


def _status(value: Any) -> str:
    return value if isinstance(value, str) else f'<{type(value).__name__}>'


def _when(ms: object) -> str:
    if not isinstance(ms, int) or ms <= 0:
        return '-'
    ago = time.time() - ms / 1000
    stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ms / 1000))
    return f'{stamp} ({ago:.0f} s ago)' if ago >= 0 else f'{stamp} (in {-ago:.0f} s)'


async def inspect(args: argparse.Namespace) -> None:
    """Print entries by status, runs, lease and records of a shared store."""
    async with _open(args) as store:
        await _inspect(store, args)


async def _inspect(store: KeyValueStore, args: argparse.Namespace) -> None:
    keys = Keys(args.prefix)
    records: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    run_keys: list[str] = []
    async for meta in store.iterate_keys():
        parsed = keys.classify(meta.key)
        kind = {'L': 'log', 'M': 'manifest', 'P': 'snapshot part', 'R': 'run', 'LEASE': 'lease'}.get(
            parsed[0] if parsed else '', 'other'
        )
        records[kind] += 1
        sizes[kind] += meta.size or 0
        if kind == 'run':
            run_keys.append(meta.key)
    shared = await _load(store, args.prefix)
    print(f'Store "{args.store}": {len(shared)} entries')
    for status, count in Counter(_status(value) for value in shared.values()).most_common():
        print(f'  {status:<12} {count}')
    print('\nRuns (their own statistics records):')
    live = set(shared.live_runs(dead_after_secs=args.dead_after))
    for key in sorted(run_keys):
        raw = await store.get_value(key)
        try:
            body = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
            stats = body.get('stats', {})
        except (ValueError, AttributeError):
            print(f'  {key}: unreadable')
            continue
        run = body.get('run')
        state = 'finished' if body.get('finished') else 'live' if run in live else 'not finished (silent)'
        print(
            f'  {run}: {state}; last sync {_when(body.get("lastSyncAt"))}; {stats.get("syncs", 0)} syncs, '
            f'{stats.get("entries_written", 0)} entries written, {stats.get("store_operations", 0)} store operations'
        )
    lease_raw = await store.get_value(keys.lease)
    if lease_raw is None:
        print('\nLease: never taken')
    else:
        lease = json.loads(lease_raw) if isinstance(lease_raw, (bytes, str)) else lease_raw
        held = isinstance(lease, dict) and lease.get('expiresAt', 0) > time.time() * 1000
        owner = lease.get('owner') if isinstance(lease, dict) else '?'
        expires = lease.get('expiresAt') if isinstance(lease, dict) else None
        print(f'\nLease: {"held by " + str(owner) if held else "free"} (expires {_when(expires)})')
    print(f'\nRecords: {sum(records.values())}, {sum(sizes.values()) / 1e6:.2f} MB')
    for kind, count in records.most_common():
        print(f'  {kind:<14} {count:>6} records {sizes[kind] / 1e6:>10.2f} MB')


async def export(args: argparse.Namespace) -> None:
    """Write every entry as JSON Lines or CSV."""
    async with _open(args) as store:
        shared = await _load(store, args.prefix)
    _write_export(shared, args.format, args.output)
    print(f'Exported {len(shared)} entries.', file=sys.stderr)


def _write_export(shared: SharedMap, file_format: str, output: str) -> None:
    out = sys.stdout if output == '-' else Path(output).open('w', encoding='utf-8', newline='')  # noqa: SIM115
    try:
        if file_format == 'csv':
            writer = csv.writer(out)
            writer.writerow(['key', 'value'])
            for key, value in shared.items():
                writer.writerow([key, value if isinstance(value, str) else json.dumps(value)])
        else:
            for key, value in shared.items():
                out.write(json.dumps({'key': key, 'value': value}, ensure_ascii=False) + '\n')
    finally:
        if out is not sys.stdout:
            out.close()


CRAWL_RECORDS = 'CRAWL.'
"""Prefix of the records a crawler keeps about its crawl beside the map (its id, its merge progress): reset with it."""


async def reset(args: argparse.Namespace) -> None:
    """Delete the shared map's records (after confirmation), unless live runs use them (see the module docstring)."""
    async with _open(args, writable=True) as store:
        live = await _live_runs(store, args)
        if live and not args.force:
            raise CliError(
                f'{len(live)} live {"run uses" if len(live) == 1 else "runs use"} the store "{args.store}": '
                f'{", ".join(live)}. A reset now would be undone by their next sync, and they would fetch pages again. '
                'Stop them first (Ctrl-C, or abort them), or wait until they end; if they are dead, add --force '
                f'(runs silent for {args.dead_after:g} s count as dead).'
            )
        doomed = [
            meta.key
            async for meta in store.iterate_keys()
            # The map's records, its request-info map's and the crawl's; --all: every record of the store.
            if meta.key.startswith((f'{args.prefix}.', f'{info_prefix(args.prefix)}.', CRAWL_RECORDS)) or args.all
        ]
        if not args.yes:
            print(f'This deletes {len(doomed)} records from "{args.store}". Type the store name to confirm: ', end='')
            sys.stdout.flush()
            if sys.stdin.readline().strip() != args.store:
                raise CliError('Not confirmed; nothing was deleted.')
        for key in doomed:
            await store.delete_value(key)
    print(f'Deleted {len(doomed)} records; the next crawl with this store starts afresh.')


async def _live_runs(store: KeyValueStore, args: argparse.Namespace) -> list[str]:
    """The runs whose heartbeats say they are using the store, with when each last synced."""
    shared = await _load(store, args.prefix)
    live = [run for run in shared.live_runs(dead_after_secs=args.dead_after) if run != shared.run_id]
    described = []
    for run in live:
        record = await store.get_value(Keys(args.prefix).run(run))
        body = json.loads(record) if isinstance(record, (bytes, str)) else record
        synced = body.get('lastSyncAt') if isinstance(body, dict) else None
        described.append(f'{run} (last sync {_when(synced)})' if synced else run)
    return described


async def list_stores(args: argparse.Namespace) -> None:
    """Print the stores of a local folder that hold a shared map, with their runs' state."""
    folder, names = _local_stores(args.storage_dir)
    rows = []
    for name in names:
        store_args = argparse.Namespace(**{**vars(args), 'store': name})
        try:
            async with _open(store_args) as store:
                runs = await _run_states(store, args)
        except CliError:
            continue  # not a shared map
        rows.append(f'  {name}  {runs}')
    if not rows:
        raise CliError(f'No store in {folder} holds a shared map.')
    print(f'Stores with a shared map in {folder} (inspect one: inspect NAME; remove one: reset NAME):')
    print('\n'.join(rows))


def _local_stores(storage_dir: str) -> tuple[Path, list[str]]:
    folder = Path(storage_dir).resolve()
    names = sorted(path.name for path in (folder / 'key_value_stores').glob('*') if path.is_dir())
    return folder, [name for name in names if name not in ('default', '__default__')]


async def _run_states(store: KeyValueStore, args: argparse.Namespace) -> str:
    keys = Keys(args.prefix)
    states: Counter[str] = Counter()
    last = 0
    async for meta in store.iterate_keys():
        parsed = keys.classify(meta.key)
        if not parsed or parsed[0] != 'R':
            continue
        raw = await store.get_value(meta.key)
        body = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        if not isinstance(body, dict):
            continue
        synced = body.get('lastSyncAt')
        synced = synced if isinstance(synced, int) else 0
        last = max(last, synced)
        recent = time.time() * 1000 - synced < args.dead_after * 1000
        states['finished' if body.get('finished') else 'live' if recent else 'silent'] += 1
    runs = ', '.join(f'{count} {state}' for state, count in sorted(states.items())) or 'no run record'
    return f'runs: {runs}; last sync {_when(last)}'


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; 0 on success, 2 on a user error."""
    parser = argparse.ArgumentParser(prog='python -m src.shared_map', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    for name, helptext in (
        ('inspect', 'entries by status, runs, lease, records'),
        ('export', 'all entries as JSON Lines or CSV'),
        ('reset', 'delete the shared map (asks first)'),
    ):
        command = commands.add_parser(name, help=helptext)
        if name == 'inspect':
            command.add_argument(
                'store', nargs='?', help='name of the shared key-value store (default: list the stores of a crawl)'
            )
        else:
            command.add_argument('store', help='name of the shared key-value store, e.g. crawl-20261207-101500-1a2b3c')
        where = command.add_mutually_exclusive_group()
        where.add_argument(
            '--storage-dir', '--storage', default='storage', help='local storage folder (default: ./storage)'
        )
        where.add_argument(
            '--connection', help='file:///path, sqlite+aiosqlite:///file.db, postgresql+asyncpg://... or redis://...'
        )
        command.add_argument('--prefix', default='SM', help='key prefix of the map (default: SM)')
        if name in ('inspect', 'reset'):
            command.add_argument('--dead-after', type=float, default=120.0, help='seconds of silence = not live')
        if name == 'export':
            command.add_argument('--format', choices=['jsonl', 'csv'], default='jsonl')
            command.add_argument('--output', default='-', help='file to write (default: standard output)')
        if name == 'reset':
            command.add_argument('--yes', action='store_true', help='do not ask')
            command.add_argument('--force', action='store_true', help='reset even if runs seem live (they are dead)')
            command.add_argument(
                '--all', action='store_true', help="delete every record of the store (e.g. the runs' summaries too)"
            )
    args = parser.parse_args(argv)
    handler = {'inspect': inspect, 'export': export, 'reset': reset}[args.command]
    if args.command == 'inspect' and args.store is None:
        if args.connection is not None:
            parser.error('inspect without a store lists a local folder only: give a store name with --connection')
        handler = list_stores
    try:
        asyncio.run(handler(args))
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not reported at exit
    except (CliError, InvalidOptionError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `inspect ... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not fail again
        return 0
    return 0

"""`python -m src.shared_map inspect|export|reset STORE`: look into, dump or clear a shared store."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._backends import storage_client_for
from ._errors import SharedMapError
from ._records import Keys
from ._shared_map import SharedMap

if TYPE_CHECKING:
    from crawlee.storages import KeyValueStore


class CliError(SharedMapError):
    """A problem the user can fix; printed without a traceback."""


async def _open(args: argparse.Namespace) -> KeyValueStore:
    from crawlee.storages import KeyValueStore

    connection = args.connection or _local_connection(args.storage_dir, args.store)
    storage_client, configuration = storage_client_for(connection)
    store = await KeyValueStore.open(name=args.store, storage_client=storage_client, configuration=configuration)
    keys = [meta.key async for meta in store.iterate_keys()]
    if not keys:
        if args.connection:
            await store.drop()  # opening a database store creates it: leave nothing behind
        raise CliError(f'The store "{args.store}" does not exist or is empty.')
    prefix = f'{args.prefix}.'
    if not any(key.startswith(prefix) or 'INITIAL' in key for key in keys):
        raise CliError(
            f'The store "{args.store}" holds {len(keys)} records, none of a shared map with prefix "{args.prefix}" '
            f'(keys like "{prefix}L..."). Is it the right store (or --prefix)?'
        )
    return store


def _local_connection(storage_dir: str, store: str) -> str:
    folder = Path(storage_dir).resolve()
    if not (folder / 'key_value_stores' / store).is_dir():
        existing = sorted(p.name for p in (folder / 'key_value_stores').glob('*') if p.is_dir())
        raise CliError(
            f'No key-value store named "{store}" in {folder}. Stores there: {", ".join(existing) or "none"}. '
            'Use --storage-dir for another folder, or --connection for a database.'
        )
    return f'file://{folder}'


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
    store = await _open(args)
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
    store = await _open(args)
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


async def reset(args: argparse.Namespace) -> None:
    """Delete the shared map's records (after confirmation)."""
    store = await _open(args)
    doomed = [
        meta.key
        async for meta in store.iterate_keys()
        if meta.key.startswith((f'{args.prefix}.', f'{args.prefix}D.', 'RUN-SUMMARY.')) or args.all
    ]
    if not args.yes:
        print(f'This deletes {len(doomed)} records from "{args.store}". Type the store name to confirm: ', end='')
        sys.stdout.flush()
        if sys.stdin.readline().strip() != args.store:
            raise CliError('Not confirmed; nothing was deleted.')
    for key in doomed:
        await store.delete_value(key)
    print(f'Deleted {len(doomed)} records; the next crawl with this store starts afresh.')


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
        command.add_argument('store', help='name of the shared key-value store, e.g. shared-crawl-state')
        where = command.add_mutually_exclusive_group()
        where.add_argument('--storage-dir', default='storage', help='local storage folder (default: ./storage)')
        where.add_argument('--connection', help='file:///path, sqlite+aiosqlite:///file.db or postgresql+asyncpg://...')
        command.add_argument('--prefix', default='SM', help='key prefix of the map (default: SM)')
        if name == 'inspect':
            command.add_argument('--dead-after', type=float, default=120.0, help='seconds of silence = not live')
        if name == 'export':
            command.add_argument('--format', choices=['jsonl', 'csv'], default='jsonl')
            command.add_argument('--output', default='-', help='file to write (default: standard output)')
        if name == 'reset':
            command.add_argument('--yes', action='store_true', help='do not ask')
            command.add_argument('--all', action='store_true', help='delete every record of the store')
    args = parser.parse_args(argv)
    handler = {'inspect': inspect, 'export': export, 'reset': reset}[args.command]
    try:
        asyncio.run(handler(args))
    except CliError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0

"""The inspect / export / reset command, on stores written by real worker processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from crawlee.configuration import Configuration
from crawlee.storages import KeyValueStore
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.shared_map_processes import ROOT, load_fresh, start_worker, wait_all
from src.shared_map import SharedMap, open_store
from tests.conftest import fresh_redis


def cli(*args: str, stdin: str = '') -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, '-m', 'src.shared_map', *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def where(connection: str) -> list[str]:
    if connection.startswith('file://'):
        return ['--storage-dir', connection.removeprefix('file://')]
    return ['--connection', connection]


async def test_inspect_export_reset(connection: str, tmp_path: Path) -> None:
    procs = [start_worker(connection, tmp_path, i, 2, 7 + i, '--ops', '400') for i in range(2)]
    await asyncio.to_thread(wait_all, procs, tmp_path, 300)
    expected = await load_fresh(connection)

    shown = cli('inspect', 'shared-proc', *where(connection))
    assert shown.returncode == 0, shown.stderr
    assert f'Store "shared-proc": {len(expected)} entries' in shown.stdout
    processed = sum(1 for value in expected.values() if value == 'processed')
    assert f'processed    {processed}' in shown.stdout
    assert 'worker0: finished' in shown.stdout
    assert 'worker1: finished' in shown.stdout
    assert 'Lease: ' in shown.stdout
    assert 'Records: ' in shown.stdout

    exported = cli('export', 'shared-proc', *where(connection))
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {row['key']: row['value'] for row in rows} == expected
    as_csv = cli('export', 'shared-proc', *where(connection), '--format', 'csv', '--output', str(tmp_path / 'x.csv'))
    assert as_csv.returncode == 0
    assert (tmp_path / 'x.csv').read_text().splitlines()[0] == 'key,value'
    assert len((tmp_path / 'x.csv').read_text().splitlines()) == len(expected) + 1

    refused = cli('reset', 'shared-proc', *where(connection), stdin='wrong-name\n')
    assert refused.returncode == 2
    assert 'nothing was deleted' in refused.stderr
    assert await load_fresh(connection) == expected
    done = cli('reset', 'shared-proc', *where(connection), stdin='shared-proc\n')
    assert done.returncode == 0, done.stderr
    assert await load_fresh(connection) == {}


def test_clear_errors_for_missing_and_foreign_stores(tmp_path: Path) -> None:
    missing = cli('inspect', 'no-such-store', '--storage-dir', str(tmp_path))
    assert missing.returncode == 2
    assert 'No key-value store named "no-such-store"' in missing.stderr
    foreign = tmp_path / 'key_value_stores' / 'foreign'
    foreign.mkdir(parents=True)
    (foreign / 'thing.json').write_text('{"a": 1}')
    meta = {'key': 'thing', 'content_type': 'application/json; charset=utf-8', 'size': 8}
    (foreign / 'thing.json.__metadata__.json').write_text(json.dumps(meta))
    (foreign / '__metadata__.json').write_text(
        json.dumps(
            {
                'id': 'x',
                'name': 'foreign',
                'created_at': '2026-01-01T00:00:00Z',
                'accessed_at': '2026-01-01T00:00:00Z',
                'modified_at': '2026-01-01T00:00:00Z',
            }
        )
    )
    shown = cli('inspect', 'foreign', '--storage-dir', str(tmp_path))
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert 'none of a shared map' in shown.stderr


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> SHA-256 of its bytes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob('*') if p.is_file()
    }


async def test_inspect_and_export_change_nothing(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    default = storage / 'key_value_stores' / 'default'
    default.mkdir(parents=True)
    (default / 'INPUT.json').write_text('{"startUrls": [{"url": "https://crawlee.dev"}]}')  # as a user writes it
    shared = await SharedMap.open('crawl-state', connection=f'file://{storage}', run_id='run-a', in_actor=False)
    shared.update({'https://a.example/': 'processed', 'https://a.example/b': 'enqueued'})
    await shared.close()
    output = await KeyValueStore.open(configuration=Configuration(storage_dir=str(storage), purge_on_start=False))
    await output.set_value('OUTPUT', {'pagesProcessed': 1})
    before = tree_digest(storage)
    assert {'key_value_stores/default/OUTPUT', 'key_value_stores/default/INPUT.json'} <= set(before)

    shown = cli('inspect', 'crawl-state', '--storage-dir', str(storage))
    assert shown.returncode == 0, shown.stderr
    assert 'Store "crawl-state": 2 entries' in shown.stdout
    exported = cli('export', 'crawl-state', '--storage-dir', str(storage), '--format', 'csv')
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 3
    default_store = cli('inspect', 'default', '--storage-dir', str(storage))
    assert default_store.returncode == 2
    assert 'none of a shared map' in default_store.stderr
    missing = cli('inspect', 'no-such-store', '--storage-dir', str(storage))
    assert missing.returncode == 2
    assert 'Stores there: crawl-state, default.' in missing.stderr
    refused = cli('reset', 'default', '--storage-dir', str(storage), '--all', '--yes')
    assert refused.returncode == 2
    assert 'cannot be "default"' in refused.stderr
    for done in (shown, exported, default_store, missing, refused):
        assert 'Traceback' not in done.stdout + done.stderr

    assert tree_digest(storage) == before, 'byte-identical: nothing created, purged or rewritten'


async def test_inspect_never_creates_a_database_store(tmp_path: Path) -> None:
    db = tmp_path / 'state.db'
    connection = f'sqlite+aiosqlite:///{db}'
    absent = cli('inspect', 'crawl-state', '--connection', connection)
    assert absent.returncode == 2
    assert f'No SQLite database file at {db}' in absent.stderr
    assert not db.exists()
    store = await open_store('other-store', connection=connection)
    await store.set_value('x', 1)
    missing = cli('inspect', 'crawl-state', '--connection', connection)
    assert missing.returncode == 2
    assert 'No key-value store named "crawl-state"' in missing.stderr
    assert 'Stores there: other-store.' in missing.stderr
    assert [name async for name in _store_names(connection)] == ['other-store']


async def _store_names(connection: str) -> AsyncIterator[str]:
    engine = create_async_engine(connection)
    try:
        async with engine.connect() as db:
            for row in await db.execute(text('SELECT name FROM key_value_stores ORDER BY name')):
                yield row[0]
    finally:
        await engine.dispose()


async def test_reset_refuses_a_store_a_live_run_uses_unless_forced(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    live = await SharedMap.open('shared-proc', connection=f'file://{storage}', run_id='run-live', heartbeat_secs=1)
    live['https://example.com/'] = 'enqueued'
    await live.sync()  # published, not closed: its heartbeat says it is live
    refused = await asyncio.to_thread(cli, 'reset', 'shared-proc', '--storage-dir', str(storage), '--yes')
    assert refused.returncode == 2
    assert refused.stderr.startswith('error: 1 live run uses the store "shared-proc": run-live')
    assert await load_fresh(f'file://{storage}') == {'https://example.com/': 'enqueued'}

    code, errors = await asyncio.to_thread(export_to_a_closed_pipe, storage)
    assert code == 0, '`export ... | head`: the reader is gone before the command writes; it ends quietly'
    assert b'Traceback' not in errors
    assert b'BrokenPipe' not in errors

    forced = await asyncio.to_thread(cli, 'reset', 'shared-proc', '--storage-dir', str(storage), '--yes', '--force')
    assert forced.returncode == 0, forced.stderr
    assert await load_fresh(f'file://{storage}') == {}


def export_to_a_closed_pipe(storage: Path) -> tuple[int, bytes]:
    """`export` writing to a pipe whose reader has gone; its exit code and standard error."""
    export = subprocess.Popen(
        [sys.executable, '-m', 'src.shared_map', 'export', 'shared-proc', '--storage-dir', str(storage)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert export.stdout is not None
    export.stdout.close()
    _, errors = export.communicate(timeout=120)
    return export.returncode, errors


async def test_inspect_on_redis_never_creates_a_store(tmp_path: Path) -> None:
    async with fresh_redis() as connection:
        store = await open_store('other-store', connection=connection)
        await store.set_value('x', 1)
        missing = await asyncio.to_thread(cli, 'inspect', 'crawl-state', '--connection', connection)
        admin = Redis.from_url(connection)
        try:
            metadata_keys = sorted(await admin.keys('key_value_stores:*:metadata'))
        finally:
            await admin.aclose()
    assert missing.returncode == 2
    assert 'No key-value store named "crawl-state" on redis://127.0.0.1' in missing.stderr
    assert 'Stores there: other-store.' in missing.stderr
    assert metadata_keys == [b'key_value_stores:other-store:metadata'], 'inspect created nothing'

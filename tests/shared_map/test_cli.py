"""The inspect / export / reset command, on stores written by real worker processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.shared_map.harness import ROOT, load_fresh, start_worker, wait_all


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

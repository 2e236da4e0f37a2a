"""Mistakes a user makes, run as the real `python -m src` process: one line that says what to fix, no traceback,
a non-zero exit code, nothing started and nothing lost."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.actor.project import ROOT, run_actor
from tests.conftest import closed_port


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if 'ERROR' in line]


def run_with_connection(storage: Path, connection: str, *, parallel_runs: int = 2) -> tuple[int, str]:
    """The actor with this sharedStorageConnection and a start URL nothing serves: it must stop before any fetch."""
    actor_input = {
        'startUrls': [{'url': 'http://127.0.0.1:1/'}],
        'parallelRuns': parallel_runs,
        'sharedStorageConnection': connection,
    }
    return run_actor(ROOT, storage=storage, actor_input=actor_input)


def test_an_input_file_that_is_not_json_is_named_with_the_position(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    code, output = run_actor(
        ROOT, storage=storage, actor_input='{"startUrls": [{"url": "https://crawlee.dev"}],\n "parallelRuns": 2,}\n'
    )
    assert code != 0
    assert 'Traceback' not in output
    (line,) = error_lines(output)
    assert f'{storage}/key_value_stores/default/INPUT.json is not valid JSON' in line
    assert 'line 2, column 20' in line
    assert not (storage / 'parallel-runs').exists()


@pytest.mark.parametrize(
    'url',
    [
        'postgresql+asyncpg://crawler:pw-s3cret-42@127.0.0.1:{port}/crawl',
        'redis://crawler:pw-s3cret-42@127.0.0.1:{port}/0',
    ],
    ids=['postgres', 'redis'],
)
def test_an_unreachable_database_is_reported_before_any_child_starts_and_without_the_password(
    tmp_path: Path, url: str
) -> None:
    storage = tmp_path / 'storage'
    port = closed_port()
    code, output = run_with_connection(storage, url.format(port=port), parallel_runs=3)
    assert code != 0
    assert 'Traceback' not in output
    assert 'pw-s3cret-42' not in output
    assert 'sharedStorageConnection: Cannot open the shared store' in output
    assert f'host 127.0.0.1, port {port}' in output
    assert len([line for line in error_lines(output) if 'Cannot open the shared store' in line]) == 1
    assert not (storage / 'parallel-runs').exists(), 'no child run was started'


@contextlib.contextmanager
def redis_without_json() -> Iterator[int]:
    """A plain Redis server (no RedisJSON module) on a free port of 127.0.0.1, for as long as the block runs."""
    if shutil.which('redis-server') is None:
        pytest.skip('redis-server is not installed (make test installs it when it can)')
    port = closed_port()
    server = subprocess.Popen(
        ['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', port), timeout=1) as probe:
                probe.sendall(b'PING\r\n')
                if probe.recv(16).startswith(b'+PONG'):
                    break
            time.sleep(0.1)
        yield port
    finally:
        server.kill()
        server.wait()


def test_a_redis_without_redisjson_is_reported_with_what_to_load(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    with redis_without_json() as port:
        code, output = run_with_connection(storage, f'redis://:pw-s3cret-42@127.0.0.1:{port}/0')
    assert code != 0
    assert 'Traceback' not in output
    assert 'pw-s3cret-42' not in output
    (line,) = [line for line in error_lines(output) if 'sharedStorageConnection' in line]
    assert f'Redis server at redis://:***@127.0.0.1:{port}/0 (host 127.0.0.1, port {port})' in line
    assert "it has no RedisJSON module (unknown command 'JSON.GET')" in line
    assert '--loadmodule /path/to/rejson.so' in line
    assert not (storage / 'parallel-runs').exists(), 'no child run was started'


def test_a_sqlite_file_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    missing = tmp_path / 'no-such-folder'
    code, output = run_with_connection(storage, f'sqlite+aiosqlite:///{missing}/state.db')
    assert code != 0
    assert 'Traceback' not in output
    (line,) = error_lines(output)
    assert f'The folder {missing} for the SQLite file' in line
    assert 'does not exist' in line
    assert not missing.exists()
    assert not (storage / 'parallel-runs').exists()


def test_a_misspelt_field_suggests_the_known_one(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    code, output = run_actor(
        ROOT, storage=storage, actor_input={'startUrl': [{'url': 'http://127.0.0.1:1/'}], 'maxConcurency': 2}
    )
    assert code != 0
    assert 'Traceback' not in output
    (line,) = error_lines(output)
    assert 'Unknown input field startUrl: did you mean startUrls?' in line
    assert 'Unknown input field maxConcurency: did you mean maxConcurrency?' in line

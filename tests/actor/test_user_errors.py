"""Mistakes a user makes, run as the real `python -m src` process: one line that says what to fix, no traceback,
a non-zero exit code, nothing started and nothing lost."""

from __future__ import annotations

from pathlib import Path

from tests.actor.project import ROOT, run_actor
from tests.conftest import closed_port


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if 'ERROR' in line]


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


def test_an_unreachable_database_is_reported_before_any_child_starts_and_without_the_password(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    port = closed_port()
    code, output = run_actor(
        ROOT,
        storage=storage,
        actor_input={
            'startUrls': [{'url': 'http://127.0.0.1:1/'}],
            'parallelRuns': 3,
            'sharedStorageConnection': f'postgresql+asyncpg://crawler:pw-s3cret-42@127.0.0.1:{port}/crawl',
        },
    )
    assert code != 0
    assert 'Traceback' not in output
    assert 'pw-s3cret-42' not in output
    assert 'sharedStorageConnection: Cannot open the shared store' in output
    assert f'host 127.0.0.1, port {port}' in output
    assert len([line for line in error_lines(output) if 'Cannot open the shared store' in line]) == 1
    assert not (storage / 'parallel-runs').exists(), 'no child run was started'


def test_a_sqlite_file_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    missing = tmp_path / 'no-such-folder'
    code, output = run_actor(
        ROOT,
        storage=storage,
        actor_input={
            'startUrls': [{'url': 'http://127.0.0.1:1/'}],
            'parallelRuns': 2,
            'sharedStorageConnection': f'sqlite+aiosqlite:///{missing}/state.db',
        },
    )
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

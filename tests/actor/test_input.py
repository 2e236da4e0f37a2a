from __future__ import annotations

import json
from pathlib import Path

import pytest

from src.input import CrawlerInput, InputError, check_local_input_file
from tests.actor.project import ROOT


def test_defaults_and_camel_case_fields() -> None:
    parsed = CrawlerInput.parse({'startUrls': [{'url': 'https://crawlee.dev'}, 'http://127.0.0.1:8000/x']})
    assert parsed.start_urls == ['https://crawlee.dev', 'http://127.0.0.1:8000/x']
    assert parsed.parallel_runs == 1
    assert parsed.max_requests_per_crawl is None
    assert parsed.sync_interval_secs == 10.0
    assert parsed.shared_store_name == '', 'no fixed store: each fresh start is a new crawl with its own'
    assert not parsed.named_crawl
    assert parsed.use_shared_map is True
    assert not parsed.is_child
    full = CrawlerInput.parse(
        {
            'startUrls': [{'url': 'https://a.example'}],
            'maxRequestsPerCrawl': 100,
            'maxCrawlDepth': 2,
            'maxConcurrency': 4,
            'sharedStoreName': 'my-crawl-2',
            'sharedStorageConnection': 'sqlite+aiosqlite:////tmp/x.db',
            'syncIntervalSecs': 2,
            'deadRunTimeoutSecs': 30,
            'parallelRuns': 3,
            'useSharedMap': False,
            'parentRunId': 'abc',
            'somethingElse': 1,
        }
    )
    assert (full.max_requests_per_crawl, full.max_crawl_depth, full.max_concurrency) == (100, 2, 4)
    assert full.parallel_runs == 3
    assert full.is_child
    assert full.unknown_fields == ['somethingElse']


@pytest.mark.parametrize(
    ('raw', 'message'),
    [
        ({}, 'startUrls is required'),
        ({'startUrls': []}, 'startUrls is required'),
        ({'startUrls': 'https://a.example'}, 'startUrls must be a list'),
        ({'startUrls': [{'url': 'ftp://a.example'}]}, r'startUrls\[0\] "ftp://a.example" is not an http\(s\) URL'),
        ({'startUrls': [{'url': 'not a url'}]}, 'is not an http'),
        ({'startUrls': [{'nope': 1}]}, r'startUrls\[0\] must be'),
        ({'startUrls': ['https://a.example'], 'maxRequestsPerCrawl': -1}, 'maxRequestsPerCrawl must be at least 0'),
        ({'startUrls': ['https://a.example'], 'parallelRuns': 0}, 'parallelRuns must be between 1 and 50'),
        ({'startUrls': ['https://a.example'], 'parallelRuns': 2.5}, 'parallelRuns must be a whole number'),
        ({'startUrls': ['https://a.example'], 'maxConcurrency': True}, 'maxConcurrency must be a whole number'),
        ({'startUrls': ['https://a.example'], 'syncIntervalSecs': 0}, 'syncIntervalSecs must be between'),
        ({'startUrls': ['https://a.example'], 'sharedStoreName': 'Bad_Name'}, 'not a valid store name'),
        ({'startUrls': [{'url': 'https://a.example', 'label': 3}]}, r'startUrls\[0\]\.label must be a string'),
        ({'startUrls': [{'url': 'https://a.example', 'userData': []}]}, r'startUrls\[0\]\.userData must be an object'),
        ({'startUrls': [{'url': 'https://a.example', 'method': 'FETCH'}]}, r'startUrls\[0\]\.method must be one of'),
        ({'startUrls': [{'url': 'https://a.example', 'payload': {}}]}, r'startUrls\[0\]\.payload must be a string'),
        ({'startUrls': [{'url': 'https://a.example', 'headers': {'a': 1}}]}, r'startUrls\[0\]\.headers must be an'),
        ({'startUrls': ['https://a.example'], 'sharedStorageConnection': 'mongodb://x'}, 'is not supported'),
        (
            {'startUrls': ['https://a.example'], 'sharedStorageConnection': 'redis://:secret@h:6379/zero'},
            r'sharedStorageConnection: Bad Redis connection .redis://:\*\*\*@h:6379/zero.*the database "zero" is not',
        ),
        ({'startUrls': ['https://a.example'], 'useSharedMap': 'yes'}, 'useSharedMap must be true or false'),
        (
            {'startUrls': ['https://a.example'], 'syncIntervalSecs': 60, 'deadRunTimeoutSecs': 90},
            'at least twice syncIntervalSecs',
        ),
        ([1, 2], 'must be a JSON object'),
    ],
)
def test_invalid_input_says_what_to_fix(raw: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        CrawlerInput.parse(raw)


def test_start_urls_keep_their_request_fields() -> None:
    parsed = CrawlerInput.parse(
        {
            'startUrls': [
                {'url': 'https://a.example/p', 'label': 'DETAIL', 'userData': {'shop': 'a'}},
                {'url': 'https://a.example/q', 'userData': {'label': 'LIST'}, 'method': 'post', 'payload': 'x=1'},
                {'url': 'https://a.example/r', 'method': 'GET', 'headers': {'Accept': 'text/html'}},
                {'url': 'https://a.example/plain'},
            ]
        }
    )
    assert parsed.start_url_fields == {
        'https://a.example/p': {'label': 'DETAIL', 'user_data': {'shop': 'a'}},
        'https://a.example/q': {'label': 'LIST', 'method': 'POST', 'payload': 'x=1'},
        'https://a.example/r': {'headers': {'Accept': 'text/html'}},
    }


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(InputError) as info:
        CrawlerInput.parse({'startUrls': [], 'parallelRuns': -3, 'maxConcurrency': 'ten'})
    assert 'startUrls' in str(info.value)
    assert 'parallelRuns' in str(info.value)
    assert 'maxConcurrency' in str(info.value)


@pytest.mark.parametrize('name', ['default', '__default__'])
def test_crawlees_default_store_is_refused_as_the_shared_store(name: str) -> None:
    with pytest.raises(InputError, match=f'sharedStoreName "{name}" is not allowed: crawlee purges the default'):
        CrawlerInput.parse({'startUrls': ['https://a.example'], 'sharedStoreName': name})


def test_a_misspelt_field_is_an_error_that_names_the_known_one() -> None:
    with pytest.raises(InputError, match=r'Unknown input field StartURLs: did you mean startUrls\?'):
        CrawlerInput.parse({'StartURLs': ['https://a.example']})
    with pytest.raises(InputError, match=r'Unknown input field parallelRun: did you mean parallelRuns\?'):
        CrawlerInput.parse({'startUrls': ['https://a.example'], 'parallelRun': 3})
    unrelated = CrawlerInput.parse({'startUrls': ['https://a.example'], 'myOwnSetting': 1})
    assert unrelated.unknown_fields == ['myOwnSetting'], 'a field unlike any known one is only warned about'


def test_a_sqlite_file_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / 'nope'
    with pytest.raises(InputError, match=f'The folder {missing} for the SQLite file .* does not exist'):
        CrawlerInput.parse(
            {'startUrls': ['https://a.example'], 'sharedStorageConnection': f'sqlite+aiosqlite:///{missing}/x.db'}
        )
    ok = CrawlerInput.parse(
        {'startUrls': ['https://a.example'], 'sharedStorageConnection': f'sqlite+aiosqlite:///{tmp_path}/x.db'}
    )
    assert ok.shared_storage_connection == f'sqlite+aiosqlite:///{tmp_path}/x.db'


def test_an_unsupported_connection_never_shows_its_password() -> None:
    with pytest.raises(InputError, match='is not supported') as info:
        CrawlerInput.parse({'startUrls': ['https://a.example'], 'sharedStorageConnection': 'mysql://u:hunter2@db/x'})
    assert 'hunter2' not in str(info.value)


def test_a_broken_input_file_is_named_with_line_and_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / 'default-storage' / 'key_value_stores' / 'default'  # conftest's CRAWLEE_STORAGE_DIR
    folder.mkdir(parents=True)
    (folder / 'INPUT.json').write_text('{\n  "startUrls": [}\n')
    monkeypatch.delenv('ACTOR_INPUT_KEY', raising=False)
    with pytest.raises(InputError, match=r'INPUT.json is not valid JSON: .* at line 2, column 17'):
        check_local_input_file()
    (folder / 'INPUT.json').write_text('{"startUrls": []}')
    check_local_input_file()


def test_the_shipped_input_names_no_crawl() -> None:
    """`apify run` twice with the project's INPUT.json: two crawls. An input naming the store would make every later
    run resume the first crawl and fetch nothing (seen with the shipped input before)."""
    shipped = json.loads((ROOT / 'storage' / 'key_value_stores' / 'default' / 'INPUT.json').read_text())
    assert 'sharedStoreName' not in shipped
    assert CrawlerInput.parse(shipped).use_shared_map

from __future__ import annotations

import pytest

from src.input import CrawlerInput, InputError


def test_defaults_and_camel_case_fields() -> None:
    parsed = CrawlerInput.parse({'startUrls': [{'url': 'https://crawlee.dev'}, 'http://127.0.0.1:8000/x']})
    assert parsed.start_urls == ['https://crawlee.dev', 'http://127.0.0.1:8000/x']
    assert parsed.parallel_runs == 1
    assert parsed.max_requests_per_crawl is None
    assert parsed.sync_interval_secs == 10.0
    assert parsed.shared_store_name == 'shared-crawl-state'
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
        ({'startUrls': ['https://a.example'], 'sharedStorageConnection': 'redis://x'}, 'is not supported'),
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


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(InputError) as info:
        CrawlerInput.parse({'startUrls': [], 'parallelRuns': -3, 'maxConcurrency': 'ten'})
    assert 'startUrls' in str(info.value)
    assert 'parallelRuns' in str(info.value)
    assert 'maxConcurrency' in str(info.value)

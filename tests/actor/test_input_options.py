"""The crawl options of the input (`globs`, ...): parsed, validated with one line saying what to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crawlee.crawlers import BeautifulSoupCrawler
from crawlee.storage_clients import MemoryStorageClient
from crawlee.storages import RequestQueue

from src.crawl_options import LinkRules, prepare_crawl_options
from src.demo.site import RunningSite, serve_site
from src.input import KNOWN_FIELDS, CrawlerInput, InputError
from src.routes import router

START = {'startUrls': [{'url': 'https://example.com/'}]}


def test_globs_in_apifys_format_and_as_plain_strings() -> None:
    parsed = CrawlerInput.parse(
        {
            **START,
            'globs': [{'glob': 'https://example.com/docs/**'}, 'https://example.com/blog/*'],
            'excludeGlobs': [{'glob': 'https://example.com/docs/old/**', 'method': 'GET'}],
        }
    )
    assert parsed.globs == ['https://example.com/docs/**', 'https://example.com/blog/*']
    assert parsed.exclude_globs == ['https://example.com/docs/old/**']
    assert parsed.unknown_fields == []
    defaults = CrawlerInput.parse({**START, 'globs': []})
    assert defaults.globs is None, 'no globs: the same host as the start URL'
    assert defaults.exclude_globs == []


def test_the_result_set_and_the_blocked_page_check_options() -> None:
    defaults = CrawlerInput.parse(START)
    assert defaults.dataset_name is None, "the first run's default dataset"
    assert defaults.retry_on_blocked is True, "crawlee's default"
    parsed = CrawlerInput.parse({**START, 'datasetName': 'crawl-results', 'retryOnBlocked': False})
    assert (parsed.dataset_name, parsed.retry_on_blocked) == ('crawl-results', False)


def test_link_rules_follow_crawlees_glob_semantics() -> None:
    rules = LinkRules.from_input(
        CrawlerInput.parse(
            {**START, 'globs': ['https://example.com/docs/**'], 'excludeGlobs': ['https://example.com/docs/old/**']}
        )
    )
    assert not rules.excludes('https://example.com/docs/a/b.html?x=1')
    assert rules.excludes('https://example.com/docs/old/a.html'), 'excluded beats included'
    assert rules.excludes('https://example.com/blog/'), 'matches no glob'
    assert rules.enqueue_links_options()['strategy'] == 'all'
    same_host = LinkRules.from_input(CrawlerInput.parse({**START, 'excludeGlobs': ['https://example.com/x/*']}))
    assert same_host.enqueue_links_options()['strategy'] == 'same-hostname'
    assert not same_host.excludes('https://example.com/docs/')
    assert same_host.excludes('https://example.com/x/1')


@pytest.mark.parametrize(
    ('raw', 'message'),
    [
        ({'globs': 'https://example.com/**'}, r'globs must be a list such as \[\{"glob": '),
        ({'globs': [{'url': 'https://example.com/**'}]}, r'globs\[0\] is \{'),
        ({'excludeGlobs': [{'glob': ''}]}, r'excludeGlobs must be a list .*; excludeGlobs\[0\] is'),
        ({'excludeGlobs': ['docs/**']}, r'excludeGlobs\[0\] "docs/\*\*" is not a URL glob: it must start with http'),
        ({'datasetName': 'default'}, r'datasetName "default" is not a valid dataset name: .* \(not "default"\)'),
        ({'datasetName': 'My_Results'}, r'datasetName "My_Results" is not a valid dataset name: use 1-63 characters'),
        ({'retryOnBlocked': 'yes'}, r"retryOnBlocked must be true or false, got 'yes'"),
    ],
)
def test_invalid_options_say_what_to_fix(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        CrawlerInput.parse({**START, **raw})
    assert '\n' not in str(info.value)


def test_the_input_schema_and_the_parser_know_the_same_fields() -> None:
    schema = json.loads((Path(__file__).resolve().parents[2] / '.actor' / 'input_schema.json').read_text())
    assert set(schema['properties']) == KNOWN_FIELDS


def test_start_urls_take_requests_from_url_entries() -> None:
    parsed = CrawlerInput.parse(
        {'startUrls': [{'url': 'https://example.com/'}, {'requestsFromUrl': 'https://example.com/urls.txt'}]}
    )
    assert parsed.start_urls == ['https://example.com/']
    assert parsed.start_url_lists == ['https://example.com/urls.txt']
    only_a_list = CrawlerInput.parse({'startUrls': [{'requestsFromUrl': 'http://127.0.0.1:8000/urls.txt'}]})
    assert (only_a_list.start_urls, only_a_list.start_url_lists) == ([], ['http://127.0.0.1:8000/urls.txt'])
    with pytest.raises(InputError, match=r'startUrls\[0\].requestsFromUrl "urls.txt" is not an http\(s\) URL'):
        CrawlerInput.parse({'startUrls': [{'requestsFromUrl': 'urls.txt'}]})


def test_respect_robots_txt_file_is_a_boolean_off_by_default() -> None:
    assert CrawlerInput.parse(START).respect_robots_txt_file is False
    assert CrawlerInput.parse({**START, 'respectRobotsTxtFile': True}).respect_robots_txt_file is True
    with pytest.raises(InputError, match='respectRobotsTxtFile must be true or false'):
        CrawlerInput.parse({**START, 'respectRobotsTxtFile': 'yes'})


def test_max_requests_per_minute_is_a_whole_number_zero_for_no_limit() -> None:
    assert CrawlerInput.parse(START).max_requests_per_minute is None
    assert CrawlerInput.parse({**START, 'maxRequestsPerMinute': 0}).max_requests_per_minute is None
    assert CrawlerInput.parse({**START, 'maxRequestsPerMinute': 120}).max_requests_per_minute == 120
    with pytest.raises(InputError, match='maxRequestsPerMinute must be between 0 and 1000000, got -5'):
        CrawlerInput.parse({**START, 'maxRequestsPerMinute': -5})
    with pytest.raises(InputError, match='maxRequestsPerMinute must be a whole number'):
        CrawlerInput.parse({**START, 'maxRequestsPerMinute': 'fast'})


def test_proxy_configuration_takes_apifys_proxy_input() -> None:
    assert CrawlerInput.parse(START).proxy_configuration is None
    own = {'useApifyProxy': False, 'proxyUrls': ['http://user:pw@127.0.0.1:8000', 'socks5://proxy.example:1080']}
    assert CrawlerInput.parse({**START, 'proxyConfiguration': own}).proxy_configuration == own
    apify = {'useApifyProxy': True, 'apifyProxyGroups': ['RESIDENTIAL']}
    assert CrawlerInput.parse({**START, 'proxyConfiguration': apify}).proxy_configuration == apify


@pytest.mark.parametrize(
    ('proxy', 'message'),
    [
        ('http://127.0.0.1:8000', 'proxyConfiguration must be an object such as'),
        ({'useApifyProxy': 'yes'}, 'proxyConfiguration.useApifyProxy must be true or false'),
        ({'proxyUrls': 'http://127.0.0.1:8000'}, 'proxyConfiguration.proxyUrls must be a list of proxy URLs'),
        ({'proxyUrls': ['ftp://user:s3cret@proxy.example:21']}, r"got \['proxy.example:21'\]"),
    ],
)
def test_invalid_proxy_configuration_says_what_to_fix_without_credentials(proxy: object, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        CrawlerInput.parse({**START, 'proxyConfiguration': proxy})
    assert 's3cret' not in str(info.value)


def test_use_sitemaps_is_a_boolean_off_by_default() -> None:
    assert CrawlerInput.parse(START).use_sitemaps is False
    assert CrawlerInput.parse({**START, 'useSitemaps': True}).use_sitemaps is True
    with pytest.raises(InputError, match='useSitemaps must be true or false'):
        CrawlerInput.parse({**START, 'useSitemaps': 1})


async def test_each_crawler_follows_the_link_rules_it_was_built_with() -> None:
    """The rules travel with the crawler's options: preparing other options later does not change an earlier crawl."""
    site = serve_site(40, delay_secs=0)
    try:
        only_start = await prepare_crawl_options(CrawlerInput.parse(_input(site, excludeGlobs=[f'{site.url}**'])))
        follow_all = await prepare_crawl_options(CrawlerInput.parse(_input(site)))  # prepared last
        fetched: dict[str, int] = {}
        for name, options in (('only_start', only_start), ('follow_all', follow_all)):
            queue = await RequestQueue.open(alias=name, storage_client=MemoryStorageClient())
            crawler = BeautifulSoupCrawler(
                request_manager=queue, max_requests_per_crawl=5, **options.crawler_kwargs(router)
            )
            await crawler.run(options.start_urls)
            fetched[name] = crawler.statistics.state.requests_finished
    finally:
        site.stop()
    # crawlee's own max_requests_per_crawl may let a request in flight finish past 5 (maxConcurrency 2).
    assert fetched['only_start'] == 1, 'the excludeGlobs prepared first still hold: only the start URL'
    assert fetched['follow_all'] >= 5, 'the options prepared last follow every link'


def _input(site: RunningSite, **extra: Any) -> dict[str, Any]:
    return {'startUrls': [{'url': site.url}], 'maxConcurrency': 2, **extra}

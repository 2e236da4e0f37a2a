"""The private internals of crawlee and the Apify SDK the project relies on, each checked against the installed version.

The list, with why each one is used and what breaks without it, is in `docs/architecture.md` ("Private internals of
crawlee and the SDK"). When an upgrade changes one, the test of that entry fails and says what to revisit.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import re
from pathlib import Path

from apify import Actor
from crawlee import service_locator
from crawlee.crawlers import AbstractHttpCrawler, BeautifulSoupCrawler

from src.lean_crawler import _KNOWN_RETRY_SELECTORS, LeanBeautifulSoupCrawler, LeanSoupParser
from src.shared_map._actor_events import actor_is_active
from src.shared_map._store import FS_CLIENT_LOGGER, _ExpectedRaceFilter

ROOT = Path(__file__).resolve().parents[1]


def pinned(package: str) -> str:
    """'pinned X, installed Y' for the message of a failed check."""
    requirements = (ROOT / 'requirements.txt').read_text()
    match = re.search(rf'^{package}(?:\[[^\]]*\])?==(\S+)', requirements, re.MULTILINE)
    return f'{package} pinned {match.group(1) if match else "?"}, installed {importlib.metadata.version(package)}'


def revisit(entry: str, package: str) -> str:
    return f'{pinned(package)}: "{entry}" changed; revisit it (docs/architecture.md, private internals).'


def test_the_lean_parser_still_plugs_into_crawlees_private_parser_slot() -> None:
    entry = 'BeautifulSoupParser and the crawler attribute _parser (src/lean_crawler.py)'
    module = importlib.import_module('crawlee.crawlers._beautifulsoup._beautifulsoup_parser')
    parser_class = getattr(module, 'BeautifulSoupParser', None)
    assert parser_class is not None, revisit(entry, 'crawlee')
    assert issubclass(LeanSoupParser, parser_class), revisit(entry, 'crawlee')
    assert list(inspect.signature(parser_class.find_links).parameters) == [
        'self',
        'parsed_content',
        'selector',
        'attribute',
    ], revisit(entry, 'crawlee')
    assert list(inspect.signature(parser_class.is_blocked).parameters) == ['self', 'parsed_content'], revisit(
        entry, 'crawlee'
    )
    assert isinstance(BeautifulSoupCrawler()._parser, parser_class), revisit(entry, 'crawlee')
    assert isinstance(LeanBeautifulSoupCrawler()._parser, LeanSoupParser), revisit(entry, 'crawlee')
    # The crawler must read its parser from that attribute at every page (not from a copy made in __init__).
    source = inspect.getsource(AbstractHttpCrawler)
    for call in ('self._parser.parse(', 'self._parser.find_links(', 'self._parser.is_blocked('):
        assert call in source, revisit(entry, 'crawlee') + f' AbstractHttpCrawler no longer calls {call}...)'


def test_the_retry_selectors_the_blocked_page_precheck_was_written_for() -> None:
    entry = 'crawlee._utils.blocked.RETRY_CSS_SELECTORS and crawlee.crawlers._types.BlockedInfo (src/lean_crawler.py)'
    blocked = importlib.import_module('crawlee._utils.blocked')
    # With other selectors the precheck turns itself off (crawlee's check then runs on every page, slower).
    assert list(blocked.RETRY_CSS_SELECTORS) == _KNOWN_RETRY_SELECTORS, revisit(entry, 'crawlee')
    info = importlib.import_module('crawlee.crawlers._types').BlockedInfo(reason='')
    assert not info, revisit(entry, 'crawlee')


async def test_actor_active_says_whether_an_actor_context_is_open() -> None:
    entry = 'Actor._active (src/shared_map/_actor_events.py)'
    assert not actor_is_active(), revisit(entry, 'apify')
    async with Actor(exit_process=False):
        assert actor_is_active(), revisit(entry, 'apify')
    assert not actor_is_active(), revisit(entry, 'apify')


def test_crawlees_file_system_warnings_about_vanished_records_are_the_ones_filtered() -> None:
    entry = (
        "crawlee's file-system key-value store logger and its 'file disappeared' warnings (src/shared_map/_store.py)"
    )
    module = importlib.import_module('crawlee.storage_clients._file_system._key_value_store_client')
    assert getattr(module, 'logger', None) is logging.getLogger(FS_CLIENT_LOGGER), revisit(entry, 'crawlee')
    source = inspect.getsource(module)
    for message in ('Metadata file disappeared for key "{key}"', 'Value file disappeared for key "{key}"'):
        assert message in source, revisit(entry, 'crawlee') + f' (no longer logs {message!r})'
        record = logging.LogRecord('x', logging.WARNING, 'x', 0, message.replace('{key}', 'SM.L.run.1'), (), None)
        assert not _ExpectedRaceFilter().filter(record), revisit(entry, 'crawlee')


def test_the_service_locator_fields_the_tests_reset() -> None:
    entry = 'service_locator._configuration, _event_manager, _storage_client (tests/conftest.py)'
    for name in ('_configuration', '_event_manager', '_storage_client'):
        assert hasattr(service_locator, name), revisit(entry, 'crawlee') + f' (no {name})'


def test_the_sdk_module_the_platform_stand_in_patches() -> None:
    entry = 'apify.storage_clients._apify._api_client_creation.ApifyClientAsync (tests/platform/)'
    module = importlib.import_module('apify.storage_clients._apify._api_client_creation')
    assert hasattr(module, 'ApifyClientAsync'), revisit(entry, 'apify')

"""crawlee's `BeautifulSoupCrawler` with a leaner page path: the same links and the same blocked-page verdicts.

A profile of a crawl of documentation pages (~100 links each) showed, besides the parse itself, three costs per page
that do not need a CSS engine: finding the links (`select('a')`, and `select('base[href]')` for the base URL), and
the blocked-page check (`select_one` for each of crawlee's `RETRY_CSS_SELECTORS`, which are run on every page and
match almost none). Here links are found with `find_all`, and the blocked-page check first looks for the only
elements those selectors can match (an `iframe`, or the element with id `infoDiv0`) in one pass; only a page that
has one runs crawlee's own check. The results are exactly crawlee's (`tests/actor/test_lean_crawler.py` compares them).

Known links are dropped before crawlee builds a `Request` for them by `LinkRules` (`src/crawl_options.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bs4 import BeautifulSoup, Tag
from crawlee._utils.blocked import RETRY_CSS_SELECTORS
from crawlee.crawlers import BeautifulSoupCrawler
from crawlee.crawlers._beautifulsoup._beautifulsoup_parser import BeautifulSoupParser
from crawlee.crawlers._types import BlockedInfo
from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Iterable

# The selectors the pre-check below was written for: with others (a newer crawlee), crawlee's check runs on every page.
_KNOWN_RETRY_SELECTORS = [
    '#turnstile-wrapper iframe[src^="https://challenges.cloudflare.com"]',
    'div#infoDiv0 a[href*="//www.google.com/policies/terms/"]',
    'iframe[src*="_Incapsula_Resource"]',
]
_PRECHECK_IS_EXACT = list(RETRY_CSS_SELECTORS) == _KNOWN_RETRY_SELECTORS


def _may_match_a_retry_selector(tag: Tag) -> bool:
    """Whether `tag` is an element one of the known retry selectors needs (an iframe, or the element `#infoDiv0`)."""
    return tag.name == 'iframe' or tag.get('id') == 'infoDiv0'


class LeanSoupParser(BeautifulSoupParser):
    """crawlee's BeautifulSoup parser, with links and blocked pages found without a CSS engine in the common case."""

    @override
    def find_links(self, parsed_content: Tag, selector: str, attribute: str) -> Iterable[str]:
        name = {'a': 'a', 'a[href]': 'a', 'base[href]': 'base'}.get(selector) if attribute == 'href' else None
        if name is None:
            return super().find_links(parsed_content, selector, attribute)
        return [url.strip() for tag in parsed_content.find_all(name, href=True) if (url := _attribute(tag))]

    @override
    def is_blocked(self, parsed_content: BeautifulSoup) -> BlockedInfo:
        precheck = _PRECHECK_IS_EXACT and parsed_content is not None
        if precheck and parsed_content.find(_may_match_a_retry_selector) is None:
            return BlockedInfo(reason='')
        return super().is_blocked(parsed_content)


def _attribute(tag: Tag) -> str | None:
    value = tag.get('href')
    return value if isinstance(value, str) and value else None


class LeanBeautifulSoupCrawler(BeautifulSoupCrawler):
    """`BeautifulSoupCrawler` with `LeanSoupParser`: use it exactly like `BeautifulSoupCrawler`."""

    def __init__(self, *, parser: Any = 'lxml', **kwargs: Any) -> None:
        """Take the same options as `BeautifulSoupCrawler`."""
        super().__init__(parser=parser, **kwargs)
        self._parser = LeanSoupParser(parser=parser)  # the crawler reads its parser from here at every page

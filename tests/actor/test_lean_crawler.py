"""The lean page path (`src/lean_crawler.py`, `LinkRules.is_known`): crawlee's results, with less work per page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup
from crawlee import Request
from crawlee.crawlers._beautifulsoup._beautifulsoup_parser import BeautifulSoupParser

from src.crawl_options import prepare_crawl_options
from src.demo.site import LONG_SEGMENT, UNICODE_PATH, serve_site
from src.input import CrawlerInput
from src.lean_crawler import LeanBeautifulSoupCrawler, LeanSoupParser
from src.routes import router
from src.shared_map import SharedRequestManager

PAGES = [
    '<html><body><a href="/a">a</a><A HREF=" /b ">b</A><a>no href</a><a href="">empty</a><a href="  ">blank</a>'
    '<a class="x" href="/c">c</a><svg><a href="/in-svg">svg</a></svg><area href="/area"></body></html>',
    '<html><head><base href="https://other.example/docs/"></head><body><a href="page">p</a></body></html>',
    '<html><head><base href="  "></head><body><base href="/second/"><a href="x">x</a></body></html>',
    '<html><body><p>no links at all</p></body></html>',
    '<html><body><a href="/q?b=2&amp;a=1#f">q</a><a href="mailto:x@y.z">m</a><a href="javascript:void(0)">j</a>'
    f'<a href="{UNICODE_PATH}">u</a><a href="/long/{LONG_SEGMENT}">l</a><a href="//other.example/">o</a></body></html>',
]
BLOCKED_OR_NOT = [
    '<html><body><div id="turnstile-wrapper"><iframe src="https://challenges.cloudflare.com/x"></iframe></div>',
    '<html><body><iframe src="https://challenges.cloudflare.com/x"></iframe></body></html>',  # no wrapper: not blocked
    '<html><body><iframe src="/_Incapsula_Resource?x=1"></iframe></body></html>',
    '<html><body><div id="infoDiv0"><a href="https://www.google.com/policies/terms/">terms</a></div></body></html>',
    '<html><body><span id="infoDiv0"><a href="https://www.google.com/policies/terms/">t</a></span></body></html>',
    '<html><body><iframe src="https://video.example/embed"></iframe><p>an ordinary page</p></body></html>',
    '<html><body><p>an ordinary page</p></body></html>',
]


@pytest.mark.parametrize('html', PAGES)
@pytest.mark.parametrize('selector', ['a', 'a[href]', 'base[href]', 'a.x', 'area'])
def test_links_are_the_ones_crawlee_finds(html: str, selector: str) -> None:
    soup = BeautifulSoup(html, 'lxml')
    assert list(LeanSoupParser().find_links(soup, selector, 'href')) == list(
        BeautifulSoupParser().find_links(soup, selector, 'href')
    )


@pytest.mark.parametrize('html', BLOCKED_OR_NOT)
def test_the_blocked_page_verdict_is_crawlee_s(html: str) -> None:
    soup = BeautifulSoup(html, 'lxml')
    assert LeanSoupParser().is_blocked(soup) == BeautifulSoupParser().is_blocked(soup)


def test_the_cases_above_include_blocked_pages() -> None:
    verdicts = [bool(BeautifulSoupParser().is_blocked(BeautifulSoup(html, 'lxml')).reason) for html in BLOCKED_OR_NOT]
    assert verdicts.count(True) == 3, 'the comparison covers real matches, not only pages that match nothing'


async def test_known_links_never_become_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = serve_site(150, delay_secs=0)
    built: list[str] = []
    from_url = Request.from_url.__func__  # type: ignore[attr-defined]

    def counting_from_url(cls: type[Request], /, url: str, **kwargs: Any) -> Request:
        built.append(url)
        request: Request = from_url(cls, url, **kwargs)
        return request

    monkeypatch.setattr(Request, 'from_url', classmethod(counting_from_url))
    try:
        crawl_input = CrawlerInput.parse({'startUrls': [{'url': site.url}], 'syncIntervalSecs': 0.5})
        options = await prepare_crawl_options(crawl_input)
        async with SharedRequestManager.open_crawl(
            'lean-crawl', connection=f'file://{tmp_path}', run_id='lean', sync_interval_secs=0.5, dead_after_secs=2
        ) as manager:
            crawler = LeanBeautifulSoupCrawler(
                request_manager=options.wrap(manager),
                keep_alive=True,
                **options.crawler_kwargs(router, is_known=manager.is_known),
            )
            await manager.wait_for_runs()
            await manager.run(crawler, options.start_urls)
            stats = site.stats.snapshot()
            skipped = manager.stats.known_skipped
    finally:
        site.stop()
    assert stats['distinct'] == site.pages, 'every page crawled'
    # A new link found by two pages in flight at once is built by both (until one of them queues it): a few more
    # requests than pages. Without the check, every link of every page (7 a page here) becomes a request.
    links = sum(1 for url in built if url.startswith(site.url))
    assert links <= 1.2 * site.pages, f'{links} requests built for {site.pages} pages: known links became requests'
    assert skipped > 5 * site.pages, 'known links are still counted as skipped'

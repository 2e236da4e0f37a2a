"""Input options deciding which URLs are crawled and how: URL lists, sitemaps, globs, robots.txt, rate, proxy.

`prepare_crawl_options()` turns the validated input into a `CrawlOptions`: what `src/routes.py` passes to
`enqueue_links` (`link_options()`), and `CrawlOptions.wrap()`, a request manager around the shared one that applies
the same rules to every request this run is about to fetch, including URLs taken over from the shared map (queued
by a run with other options, e.g. an earlier attempt of a resumed crawl), and that paces this run's fetches to its
share of `maxRequestsPerMinute`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apify import Actor
from crawlee import Glob, Request, RequestState
from crawlee.http_clients import HttpClient, ImpitHttpClient
from crawlee.request_loaders import RequestManager, SitemapRequestLoader

from .input import InputError
from .shared_map import SharedRequestManager, map_key

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from apify import ProxyConfiguration
    from crawlee.storage_clients.models import ProcessedRequest

    from .input import CrawlerInput

logger = logging.getLogger(__name__)

URL_IN_TEXT = re.compile(r"""https?://[^\s,"'<>]+""")
"""A URL in a `requestsFromUrl` file: one a line, or anywhere in the text (up to a space, comma or quote)."""
LIST_TIMEOUT = timedelta(seconds=30)
SITEMAPS_TIMEOUT_SECS = 300.0
"""Longest a run reads sitemaps before it starts crawling with the URLs read so far."""
SITEMAP_IN_ROBOTS = re.compile(r'^\s*sitemap\s*:\s*(\S+)', re.IGNORECASE | re.MULTILINE)
MAX_PACE_WAIT_SECS = 2.0
"""Longest a crawler task waits for this run's next turn before it returns no request (crawlee then starts another
task): no task waits anywhere near crawlee's timeout for fetching a request, and a stopping crawler is not held up."""


@dataclass(frozen=True)
class LinkRules:
    """Which links are followed: those matching a glob (without globs: links to the same host), minus excluded ones."""

    include: tuple[Glob, ...] = ()
    exclude: tuple[Glob, ...] = ()

    @classmethod
    def from_input(cls, crawl_input: CrawlerInput) -> LinkRules:
        """The rules of `globs` and `excludeGlobs`."""
        return cls(
            include=tuple(Glob(glob) for glob in crawl_input.globs or ()),
            exclude=tuple(Glob(glob) for glob in crawl_input.exclude_globs),
        )

    def enqueue_links_options(self) -> dict[str, Any]:
        """Keyword arguments of `context.enqueue_links` (crawlee matches the globs against absolute URLs)."""
        if self.include:  # the globs decide, whatever the host (as in Apify's Cheerio Scraper)
            return {'strategy': 'all', 'include': list(self.include), 'exclude': list(self.exclude)}
        return {'strategy': 'same-hostname', 'exclude': list(self.exclude)}

    def excludes(self, url: str) -> bool:
        """Whether a request for `url` must not be fetched: it matches an excluded glob, or no glob at all.

        The host rule (without globs) is not checked here: the map only ever receives links that passed it.
        """
        if any(glob.regexp.match(url) for glob in self.exclude):
            return True
        return bool(self.include) and not any(glob.regexp.match(url) for glob in self.include)


_link_rules = LinkRules()


def link_options() -> dict[str, Any]:
    """What the request handler passes to `context.enqueue_links`: this run's link rules, from its input."""
    return _link_rules.enqueue_links_options()


@dataclass
class CrawlOptions:
    """The crawl options of one run, built from its input by `prepare_crawl_options()`."""

    links: LinkRules
    start_urls: list[str]
    crawler_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the crawler (`BeautifulSoupCrawler`)."""
    max_requests_per_minute: int | None = None
    _start_keys: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._start_keys = {map_key(url) for url in self.start_urls}

    def is_start_url(self, url: str) -> bool:
        """Whether `url` is one of the start URLs (they are fetched whatever the globs say, as in Apify's crawlers)."""
        return map_key(url) in self._start_keys

    def wrap(self, manager: SharedRequestManager) -> RequestManager:
        """`manager`, made to skip the requests these options exclude before they are fetched, and paced."""
        pacer = None
        if self.max_requests_per_minute:
            pacer = Pacer(self.max_requests_per_minute, live_runs=lambda: len(manager.live_runs))
        return OptionsRequestManager(manager, self, pacer)


async def prepare_crawl_options(crawl_input: CrawlerInput) -> CrawlOptions:
    """The options of this run; also installs its link rules for `link_options()`.

    Raises:
        InputError: an option cannot be applied (the message says what to fix).
    """
    global _link_rules  # the template's router is a module-level object: it reads them from here
    _link_rules = LinkRules.from_input(crawl_input)
    start_urls = list(crawl_input.start_urls)
    if crawl_input.start_url_lists:
        client = ImpitHttpClient()
        for list_url in crawl_input.start_url_lists:
            start_urls += await read_url_list(list_url, client)
        logger.info(
            '%d start URLs, %d of them from requestsFromUrl lists.',
            len(start_urls),
            len(start_urls) - len(crawl_input.start_urls),
        )
    if crawl_input.use_sitemaps:
        found = await read_sitemaps(start_urls, _link_rules, ImpitHttpClient())
        start_urls += found
        logger.info(
            'useSitemaps: %d URLs from the sitemaps of %d start URLs.', len(found), len(start_urls) - len(found)
        )
    # crawlee reads each site's robots.txt once per run; it drops disallowed links in `enqueue_links` and skips a
    # disallowed request just before fetching it (one taken over from the map too), marking it handled: `skipped`.
    crawler_options: dict[str, Any] = {'respect_robots_txt_file': crawl_input.respect_robots_txt_file}
    if crawl_input.proxy_configuration is not None:
        crawler_options['proxy_configuration'] = await _proxy_configuration(crawl_input.proxy_configuration)
    return CrawlOptions(
        links=_link_rules,
        start_urls=list(dict.fromkeys(start_urls)),
        crawler_options=crawler_options,
        max_requests_per_minute=crawl_input.max_requests_per_minute,
    )


async def _proxy_configuration(proxy_input: dict[str, Any]) -> ProxyConfiguration | None:
    """The SDK's proxy configuration for the input (None: `proxyUrls` empty and no Apify Proxy).

    Raises:
        InputError: the SDK refused it, e.g. Apify Proxy without a password or token when running locally.
    """
    try:
        return await Actor.create_proxy_configuration(actor_proxy_input=proxy_input)
    except Exception as exc:  # the SDK raises ValueError and ConnectionError with long, multi-line messages
        reason = ' '.join(str(exc).split())
        raise InputError(f'proxyConfiguration cannot be used: {reason:.400}') from None


async def read_sitemaps(start_urls: list[str], links: LinkRules, client: HttpClient) -> list[str]:
    """The page URLs in the sitemaps of the start URLs' sites, those the link rules follow, each once.

    The sitemaps of a site are those its robots.txt names (`Sitemap:` lines) and `/sitemap.xml`; crawlee's
    `SitemapRequestLoader` reads them (XML, plain text, gzip, nested sitemap indexes). Each run reads them when it
    starts; the shared map makes sure every URL is fetched once. A missing sitemap is logged and skipped.
    """
    sitemaps: list[str] = []
    for origin in dict.fromkeys(f'{parts.scheme}://{parts.netloc}' for parts in map(urlsplit, start_urls)):
        try:
            response = await client.send_request(f'{origin}/robots.txt', timeout=LIST_TIMEOUT)
            robots = (await response.read()).decode('utf-8', errors='replace') if response.status_code == 200 else ''
        except Exception as exc:  # no robots.txt: only the default location then
            logger.warning('useSitemaps: could not read %s/robots.txt: %s', origin, type(exc).__name__)
            robots = ''
        sitemaps += [*SITEMAP_IN_ROBOTS.findall(robots), f'{origin}/sitemap.xml']
    loader = SitemapRequestLoader(
        list(dict.fromkeys(sitemaps)),
        client,
        include=list(links.include) or None,
        exclude=list(links.exclude),
        enqueue_strategy='all' if links.include else 'same-hostname',
    )
    urls: list[str] = []
    try:
        async with asyncio.timeout(SITEMAPS_TIMEOUT_SECS):
            while (request := await loader.fetch_next_request()) is not None:
                urls.append(request.url)
                await loader.mark_request_as_handled(request)
    except TimeoutError:
        logger.warning('useSitemaps: reading the sitemaps took over %.0f s; crawling with the URLs read so far.',
                       SITEMAPS_TIMEOUT_SECS)  # fmt: skip
    finally:
        await loader.close()
    return list(dict.fromkeys(urls))


async def read_url_list(url: str, client: HttpClient) -> list[str]:
    """The http(s) URLs in the text file at `url` (a `requestsFromUrl` entry), in order, each once.

    Each run reads the list itself when it starts (the runs share the input, not the list): the shared map makes
    sure every URL is fetched once.

    Raises:
        InputError: the file cannot be read, or lists no URL.
    """
    try:
        response = await client.send_request(url, timeout=LIST_TIMEOUT)
        body = await response.read()
    except Exception as exc:  # network errors of any HTTP client; their messages can span many lines
        reason = (str(exc).strip().splitlines() or [''])[0]
        raise InputError(
            f'startUrls: the list of URLs at {url} (requestsFromUrl) could not be read: {type(exc).__name__}: '
            f'{reason:.200}. Check that address.'
        ) from None
    if not 200 <= response.status_code < 300:
        raise InputError(
            f'startUrls: the list of URLs at {url} (requestsFromUrl) answered HTTP {response.status_code}. '
            'Check that address.'
        )
    urls = list(dict.fromkeys(URL_IN_TEXT.findall(body.decode('utf-8', errors='replace'))))
    if not urls:
        raise InputError(
            f'startUrls: the list at {url} (requestsFromUrl) has no http(s) URL in it: put one URL on each line.'
        )
    return urls


class Pacer:
    """Spaces this run's fetches so that all live runs together fetch at most `per_minute` requests a minute.

    Each run takes `per_minute / live runs`, the live runs as the shared map last saw them: when a run joins or ends,
    the others' share follows at their next sync. Turns are taken one at a time, `60 * live runs / per_minute`
    seconds apart; a turn that finds no request to fetch is given back.
    """

    def __init__(self, per_minute: int, *, live_runs: Callable[[], int]) -> None:
        """Pace to `per_minute` for all the runs `live_runs()` counts."""
        self._per_minute = per_minute
        self._live_runs = live_runs
        self._next_at = 0.0  # time.monotonic() of this run's next turn
        self._runs_logged = 0

    def interval(self) -> float:
        """Seconds between two fetches of this run."""
        runs = max(1, self._live_runs())
        if runs != self._runs_logged:
            self._runs_logged = runs
            logger.info(
                'maxRequestsPerMinute %d shared by %d runs: this run fetches at most %.1f pages a minute.',
                self._per_minute,
                runs,
                self._per_minute / runs,
            )
        return 60.0 * runs / self._per_minute

    async def take_turn(self) -> float | None:
        """Wait for this run's next turn and take it; None if it is more than `MAX_PACE_WAIT_SECS` away.

        Returns:
            The time of the turn before this one, to `give_back()` if the turn is not used.
        """
        deadline = time.monotonic() + MAX_PACE_WAIT_SECS
        while True:
            now = time.monotonic()
            if now >= self._next_at:
                previous, interval = self._next_at, self.interval()
                # While busy, keep the cadence (a late wake-up does not slow the pace); after an idle spell, no burst.
                self._next_at = previous + interval if now - previous < interval else now + interval
                return previous
            if self._next_at > deadline:
                await asyncio.sleep(max(0.0, deadline - now))
                return None
            await asyncio.sleep(self._next_at - now)

    def give_back(self, previous: float) -> None:
        """Undo the last `take_turn()` (no request was fetched in it)."""
        self._next_at = min(self._next_at, previous)


class OptionsRequestManager(RequestManager):
    """A request manager that skips, before fetching, the requests the crawl options exclude, and paces the rest.

    A skipped request is marked handled with the state `SKIPPED` (the shared map records it as `skipped`), as
    crawlee does with a URL that robots.txt disallows.
    """

    def __init__(self, inner: RequestManager, options: CrawlOptions, pacer: Pacer | None = None) -> None:
        """Wrap `inner` (the run's shared request manager)."""
        self._inner = inner
        self._options = options
        self._pacer = pacer
        self.excluded = 0
        """Requests skipped because the options exclude them."""

    async def fetch_next_request(self) -> Request | None:
        """The next request the options allow, once it is this run's turn (with `maxRequestsPerMinute`)."""
        while True:
            turn = None
            if self._pacer is not None and (turn := await self._pacer.take_turn()) is None:
                return None  # not this run's turn yet: crawlee asks again
            request = await self._inner.fetch_next_request()
            if request is not None and self._allowed(request):
                return request
            if self._pacer is not None and turn is not None:
                self._pacer.give_back(turn)  # nothing fetched in this turn
            if request is None:
                return None
            self.excluded += 1
            logger.info('Skipping %s: excluded by the globs of the input.', request.url)
            request.state = RequestState.SKIPPED
            await self._inner.mark_request_as_handled(request)

    def _allowed(self, request: Request) -> bool:
        return not self._options.links.excludes(request.url) or self._options.is_start_url(request.url)

    async def add_request(self, request: str | Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Add a request to the wrapped manager."""
        return await self._inner.add_request(request, forefront=forefront)

    async def add_requests(
        self,
        requests: Sequence[str | Request],
        *,
        forefront: bool = False,
        batch_size: int = 1000,
        wait_time_between_batches: timedelta | None = None,
        wait_for_all_requests_to_be_added: bool = False,
        wait_for_all_requests_to_be_added_timeout: timedelta | None = None,
    ) -> None:
        """Add requests to the wrapped manager."""
        options: dict[str, Any] = {
            'forefront': forefront,
            'batch_size': batch_size,
            'wait_for_all_requests_to_be_added': wait_for_all_requests_to_be_added,
            'wait_for_all_requests_to_be_added_timeout': wait_for_all_requests_to_be_added_timeout,
        }
        if wait_time_between_batches is not None:
            options['wait_time_between_batches'] = wait_time_between_batches
        await self._inner.add_requests(requests, **options)

    async def mark_request_as_handled(self, request: Request) -> ProcessedRequest | None:
        """Mark a request handled in the wrapped manager."""
        return await self._inner.mark_request_as_handled(request)

    async def reclaim_request(self, request: Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Give a request back to the wrapped manager for a retry."""
        return await self._inner.reclaim_request(request, forefront=forefront)

    async def get_handled_count(self) -> int:
        """Requests the wrapped manager handled."""
        return await self._inner.get_handled_count()

    async def get_total_count(self) -> int:
        """Requests in the wrapped manager."""
        return await self._inner.get_total_count()

    async def is_empty(self) -> bool:
        """Whether the wrapped manager has nothing to fetch now."""
        return await self._inner.is_empty()

    async def is_finished(self) -> bool:
        """Whether the wrapped manager has nothing to fetch and nothing in progress."""
        return await self._inner.is_finished()

    async def drop(self) -> None:
        """Drop the wrapped manager."""
        await self._inner.drop()

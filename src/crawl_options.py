"""Input options deciding which URLs are crawled and how: URL lists, sitemaps, globs, robots.txt, rate, proxy.

`prepare_crawl_options()` turns the validated input into a `CrawlOptions`: the start URLs (with those of
`requestsFromUrl` lists and sitemaps), the crawler's options (`crawler_kwargs()`: concurrency, retries, robots.txt,
proxy, and the request handler made to follow the input's link rules), and `CrawlOptions.wrap()`: a request manager
around the shared one that applies the same link rules to every request this run is about to fetch, including URLs
taken over from the shared map (queued by a run with other options, e.g. an earlier attempt of a resumed crawl), and
that paces this run's fetches to its share of `maxRequestsPerMinute` (`src/paced_request_manager.py`).

The link rules travel with the objects built from them (the request handler and the request manager), never
through module state: what a handler's `context.enqueue_links()` does is decided by the options the crawler was
built with.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apify import Actor
from crawlee import ConcurrencySettings, Glob, Request
from crawlee.http_clients import HttpClient, ImpitHttpClient
from crawlee.request_loaders import SitemapRequestLoader

from .input import InputError
from .paced_request_manager import PacedRequestManager, Pacer
from .shared_map import map_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from apify import ProxyConfiguration
    from crawlee import RequestOptions, RequestTransformAction
    from crawlee.crawlers import BeautifulSoupCrawlingContext
    from crawlee.request_loaders import RequestManager

    from .input import CrawlerInput
    from .shared_map import SharedRequestManager

    Handler = Callable[[BeautifulSoupCrawlingContext], Awaitable[None]]  # the template's `Router`, or a function

logger = logging.getLogger(__name__)

URL_IN_TEXT = re.compile(r"""https?://[^\s,"'<>]+""")
"""A URL in a `requestsFromUrl` file: one a line, or anywhere in the text (up to a space, comma or quote)."""
LIST_TIMEOUT = timedelta(seconds=30)
SITEMAPS_TIMEOUT_SECS = 300.0
"""Longest a run reads sitemaps before it starts crawling with the URLs read so far."""
SITEMAP_IN_ROBOTS = re.compile(r'^\s*sitemap\s*:\s*(\S+)', re.IGNORECASE | re.MULTILINE)


_LINK_OPTIONS = frozenset({'strategy', 'include', 'exclude'})
"""`enqueue_links` options that say which links to follow: a call that passes one decides for itself."""


@dataclass(frozen=True)
class LinkRules:
    """Which links are followed: those matching a glob (without globs: links to the same host), minus excluded ones."""

    include: tuple[Glob, ...] = ()
    exclude: tuple[Glob, ...] = ()
    is_known: Callable[[str], bool] | None = None
    """Whether the shared map already has a URL: such links are dropped before crawlee builds a `Request`."""

    @classmethod
    def from_input(cls, crawl_input: CrawlerInput) -> LinkRules:
        """The rules of `globs` and `excludeGlobs`."""
        return cls(
            include=tuple(Glob(glob) for glob in crawl_input.globs or ()),
            exclude=tuple(Glob(glob) for glob in crawl_input.exclude_globs),
        )

    def enqueue_links_options(self) -> dict[str, Any]:
        """Keyword arguments of `context.enqueue_links` (crawlee matches the globs against absolute URLs)."""
        options: dict[str, Any] = {'strategy': 'same-hostname', 'exclude': list(self.exclude)}
        if self.include:  # the globs decide, whatever the host (as in Apify's Cheerio Scraper)
            options |= {'strategy': 'all', 'include': list(self.include)}
        if self.is_known is not None:
            options['transform_request_function'] = self._skip_known
        return options

    def _skip_known(self, options: RequestOptions) -> RequestOptions | RequestTransformAction:
        return 'skip' if self.is_known is not None and self.is_known(options['url']) else 'unchanged'

    def applied_to(self, handler: Handler) -> Handler:
        """`handler`, given crawling contexts whose `enqueue_links` follows these rules.

        `context.enqueue_links()` then follows the links these rules allow; a call that passes its own `strategy`,
        `include` or `exclude` decides for itself (the requests it enqueues are still checked before they are
        fetched, `CrawlOptions.allows()`). With `is_known`, links the shared map already has are dropped before
        crawlee builds a `Request` for them (most links of a page, on a site whose pages share their navigation),
        unless the call passes its own `transform_request_function`.
        """

        async def handle(context: BeautifulSoupCrawlingContext) -> None:
            await handler(replace(context, enqueue_links=_EnqueueLinksByRules(context.enqueue_links, self)))

        return handle

    def excludes(self, url: str) -> bool:
        """Whether a request for `url` must not be fetched: it matches an excluded glob, or no glob at all.

        The host rule (without globs) is not checked here: the map only ever receives links that passed it.
        """
        if any(glob.regexp.match(url) for glob in self.exclude):
            return True
        return bool(self.include) and not any(glob.regexp.match(url) for glob in self.include)


class _EnqueueLinksByRules:
    """A context's `enqueue_links`, with the link rules as the default of the options a call does not pass."""

    def __init__(self, enqueue_links: Callable[..., Coroutine[None, None, None]], rules: LinkRules) -> None:
        self._enqueue_links = enqueue_links
        self._rules = rules

    def __call__(self, **options: Any) -> Coroutine[None, None, None]:
        if options.get('requests') is None:  # the page's links (explicit requests take no link options)
            defaults = self._rules.enqueue_links_options()
            if _LINK_OPTIONS & options.keys():
                defaults = {k: v for k, v in defaults.items() if k not in _LINK_OPTIONS}
            if options.get('transform_request_function') is not None:
                defaults.pop('transform_request_function', None)
            options = defaults | options
        return self._enqueue_links(**options)


@dataclass
class CrawlOptions:
    """The crawl options of one run, built from its input by `prepare_crawl_options()`."""

    links: LinkRules
    start_urls: list[str | Request]
    """A start URL with request fields in the input (`label`, `userData`, `method`, ...) is a `Request`."""
    crawler_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the crawler (`BeautifulSoupCrawler`) but its request handler: see `crawler_kwargs()`."""
    max_requests_per_minute: int | None = None
    _start_keys: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._start_keys = {map_key(url if isinstance(url, str) else url.url) for url in self.start_urls}

    def allows(self, url: str) -> bool:
        """Whether `url` may be fetched: a start URL always (as in Apify's crawlers), others unless excluded."""
        return not self.links.excludes(url) or map_key(url) in self._start_keys

    def crawler_kwargs(self, router: Handler, *, is_known: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Keyword arguments of the crawler: these options, and `router` following the link rules.

        Args:
            router: The request handler (the template's `Router`).
            is_known: Whether the shared map already has a URL (`SharedRequestManager.is_known`): such links are
                dropped before crawlee builds a `Request` for them.
        """
        links = self.links if is_known is None else replace(self.links, is_known=is_known)
        return {**self.crawler_options, 'request_handler': links.applied_to(router)}

    def wrap(self, manager: SharedRequestManager) -> RequestManager:
        """`manager`, made to skip the requests these options exclude before they are fetched, and paced."""
        pacer = None
        if self.max_requests_per_minute:
            pacer = Pacer(self.max_requests_per_minute, live_runs=lambda: len(manager.live_runs))
        return PacedRequestManager(manager, allows=self.allows, pacer=pacer)


async def prepare_crawl_options(crawl_input: CrawlerInput) -> CrawlOptions:
    """The options of this run.

    Raises:
        InputError: an option cannot be applied (the message says what to fix).
    """
    links = LinkRules.from_input(crawl_input)
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
        found = await read_sitemaps(start_urls, links, ImpitHttpClient())
        start_urls += found
        logger.info(
            'useSitemaps: %d URLs from the sitemaps of %d start URLs.', len(found), len(start_urls) - len(found)
        )
    # crawlee reads each site's robots.txt once per run; it drops disallowed links in `enqueue_links` and skips a
    # disallowed request just before fetching it (one taken over from the map too), marking it handled: `skipped`.
    crawler_options: dict[str, Any] = {  # as in the official template, plus robots.txt and proxy
        'max_request_retries': crawl_input.max_request_retries,
        'retry_on_blocked': crawl_input.retry_on_blocked,
        'max_crawl_depth': crawl_input.max_crawl_depth,
        'concurrency_settings': ConcurrencySettings(
            max_concurrency=crawl_input.max_concurrency, desired_concurrency=min(10, crawl_input.max_concurrency)
        ),
        'respect_robots_txt_file': crawl_input.respect_robots_txt_file,
    }
    if crawl_input.proxy_configuration is not None:
        crawler_options['proxy_configuration'] = await _proxy_configuration(crawl_input.proxy_configuration)
    return CrawlOptions(
        links=links,
        start_urls=[_start_request(url, crawl_input.start_url_fields) for url in dict.fromkeys(start_urls)],
        crawler_options=crawler_options,
        max_requests_per_minute=crawl_input.max_requests_per_minute,
    )


def _start_request(url: str, fields: dict[str, dict[str, Any]]) -> str | Request:
    """`url`, as a `Request` with its fields if the input gives any (the label routes it to its handler)."""
    options = fields.get(url)
    return Request.from_url(url, **options) if options else url


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

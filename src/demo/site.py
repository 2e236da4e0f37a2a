"""A generated, interlinked local web site that counts how often each page is fetched (no internet needed).

`python -m src.demo.site --pages 3000 --port 8321` serves it; `GET /__stats` returns the fetch counts as JSON,
`POST /__reset` clears them. Tests and the demo start it in a thread with `serve_site()`, which can also serve a few
text files (a robots.txt, a sitemap, a list of URLs), counted like pages.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass
class SiteStats:
    """Fetch counts per path, and the time of every fetch, shared by the server's threads."""

    fetches: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)
    """`time.monotonic()` of each fetch, in order."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, path: str) -> None:
        """Count one fetch of `path`."""
        with self.lock:
            self.fetches[path] += 1
            self.times.append(time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        """Total and distinct fetches, duplicates, and the count per path."""
        with self.lock:
            total = sum(self.fetches.values())
            distinct = len(self.fetches)
            return {
                'fetches': total,
                'distinct': distinct,
                'duplicates': total - distinct,
                'counts': dict(self.fetches),
            }


def page_path(page: int) -> str:
    """The path of page number `page` (page 0 is the home page)."""
    return '/' if page == 0 else f'/section-{page % 17}/page-{page:05d}.html'


def page_links(page: int, pages: int) -> list[int]:
    """Pages linked from `page`: a tree (so every page is reachable from the home page) plus random cross links."""
    rng = random.Random(page)
    children = [child for child in (page * 3 + 1, page * 3 + 2, page * 3 + 3) if child < pages]
    return children + [rng.randrange(pages) for _ in range(4)] + [0]


def render_page(page: int, pages: int) -> str:
    """The HTML of a page, with same-site links, a fragment link, an external link and a mail link."""
    links = ''.join(f'<li><a href="{page_path(link)}">Page {link}</a></li>' for link in page_links(page, pages))
    return (
        f'<!doctype html><html><head><title>Demo page {page}</title></head><body>'
        f'<h1>Demo page {page}</h1><ul>{links}</ul>'
        f'<a href="{page_path(page)}#top">this page again</a> '
        '<a href="https://example.invalid/elsewhere">elsewhere</a> <a href="mailto:someone@example.invalid">mail</a>'
        '</body></html>'
    )


HOSTILE_LINKS = 3000
LONG_SEGMENT = 'x' * 1800
UNICODE_PATH = '/hostile/%C5%A1%C4%8D%C5%99-%C3%BC-%F0%9F%98%80.html'


def hostile_page(path: str, port: int) -> tuple[int, str, bytes, dict[str, str]] | None:
    """A page that stresses a crawler, as (status, content type, body, extra headers); None if `path` is not one.

    Thousands of links, very long and odd URLs, a redirect to another host, non-HTML bodies, errors.
    """
    html = 'text/html; charset=utf-8'
    if path == '/hostile/':
        links = [
            '/hostile/many-links.html',
            f'/hostile/long/{LONG_SEGMENT}.html',
            UNICODE_PATH,
            '/hostile/query.html?b=2&a=1&utm_source=news#fragment',
            '/hostile/query.html?a=1&b=2',
            '/hostile/redirect',
            '/hostile/data.json',
            '/hostile/blob.bin',
            '/hostile/missing.html',
            '/hostile/error.html',
        ]
        body = ''.join(f'<a href="{link}">{index}</a> ' for index, link in enumerate(links))
        return 200, html, f'<html><title>Hostile</title><body>{body}</body></html>'.encode(), {}
    if path == '/hostile/many-links.html':
        body = ''.join(f'<a href="/hostile/n/{i}.html">{i}</a>' for i in range(HOSTILE_LINKS))
        return 200, html, f'<html><title>Many links</title><body>{body}</body></html>'.encode(), {}
    if path.startswith('/hostile/n/') and path.endswith('.html'):
        return 200, html, b'<html><title>Tiny</title><body><a href="/hostile/">up</a></body></html>', {}
    if path in (f'/hostile/long/{LONG_SEGMENT}.html', UNICODE_PATH, '/hostile/query.html?a=1&b=2'):
        return 200, html, b'<html><title>Odd URL</title><body>odd</body></html>', {}
    if path == '/hostile/redirect':  # to another host name of this machine: a host the crawl does not follow
        return 302, html, b'', {'Location': f'http://localhost:{port}/hostile/landed.html'}
    if path == '/hostile/landed.html':
        return 200, html, f'<html><title>Landed</title><a href="http://localhost:{port}/">there</a></html>'.encode(), {}
    if path == '/hostile/data.json':
        return 200, 'application/json', b'{"not": "html", "links": ["/a", "/b"]}', {}
    if path == '/hostile/blob.bin':
        return 200, 'application/octet-stream', bytes(range(256)) * 64, {}
    if path == '/hostile/error.html':
        return 500, html, b'<html><title>Error</title></html>', {}
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _SiteServer

    def do_GET(self) -> None:
        path = self.path.split('#', 1)[0]
        if path == '/__stats':
            self._send(200, 'application/json', json.dumps(self.server.stats.snapshot()).encode())
            return
        if path in self.server.files:
            self.server.stats.hit(path)
            content_type = 'application/xml' if path.endswith('.xml') else 'text/plain; charset=utf-8'
            self._send(200, content_type, self.server.files[path].encode())
            return
        if self.server.hostile and path.startswith('/hostile/'):
            self.server.stats.hit(path)
            answer = hostile_page(path, self.server.server_address[1])
            if answer is None:
                self._send(404, 'text/html', b'<html><title>Not found</title></html>')
            else:
                status, content_type, body, headers = answer
                self._send(status, content_type, body, headers)
            return
        page = self.server.pages_by_path.get(path.split('?', 1)[0])
        if page is None:
            self._send(404, 'text/html', b'<html><title>Not found</title></html>')
            return
        self.server.stats.hit(path)
        if self.server.delay_secs:
            time.sleep(self.server.delay_secs)
        html = render_page(page, self.server.pages)
        if self.server.hostile and page == 0:
            html = html.replace('</body>', '<a href="/hostile/">hostile corner</a></body>')
        self._send(200, 'text/html; charset=utf-8', html.encode())

    def do_POST(self) -> None:
        if self.path == '/__reset':
            with self.server.stats.lock:
                self.server.stats.fetches.clear()
            self._send(204, 'text/plain', b'')
        else:
            self._send(404, 'text/plain', b'')

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the terminal quiet."""


class _SiteServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, pages: int, delay_secs: float, hostile: bool, files: dict[str, str]) -> None:
        super().__init__(('127.0.0.1', port), _Handler)
        self.files = files
        self.hostile = hostile
        self.pages = pages
        self.delay_secs = delay_secs
        self.pages_by_path = {page_path(page): page for page in range(pages)}
        self.stats = SiteStats()


@dataclass
class RunningSite:
    """A site served in a background thread."""

    server: _SiteServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """The home page's URL."""
        return f'http://127.0.0.1:{self.server.server_address[1]}/'

    @property
    def stats(self) -> SiteStats:
        """The fetch counts."""
        return self.server.stats

    @property
    def pages(self) -> int:
        """How many pages the site has."""
        return self.server.pages

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_site(
    pages: int = 3000,
    *,
    port: int = 0,
    delay_secs: float = 0.0,
    hostile: bool = False,
    files: Mapping[str, str] | None = None,
) -> RunningSite:
    """Serve a site of `pages` pages on 127.0.0.1 (port 0: any free port) in a daemon thread.

    With `hostile`, the home page also links to `/hostile/`: thousands of links, long and odd URLs, a redirect to
    another host, non-HTML responses, a 404 and a 500. `files` maps paths (`/robots.txt`) to text served as they are
    (`.xml` as XML, the rest as plain text); `{port}` in a file's text becomes the site's port.
    """
    server = _SiteServer(port, pages, delay_secs, hostile, {})
    server.files.update(
        {path: text.replace('{port}', str(server.server_address[1])) for path, text in (files or {}).items()}
    )
    thread = threading.Thread(target=server.serve_forever, name='demo-site', daemon=True)
    thread.start()
    return RunningSite(server, thread)


def main() -> None:
    """Serve the site until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--pages', type=int, default=3000)
    parser.add_argument('--port', type=int, default=8321)
    parser.add_argument('--delay-ms', type=float, default=0.0)
    args = parser.parse_args()
    site = serve_site(args.pages, port=args.port, delay_secs=args.delay_ms / 1000)
    print(f'Serving {args.pages} pages at {site.url} (stats at {site.url}__stats). Ctrl+C stops.', flush=True)
    try:
        site.thread.join()
    except KeyboardInterrupt:
        site.stop()


if __name__ == '__main__':
    main()

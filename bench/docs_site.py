"""A generated site shaped like real documentation, served on 127.0.0.1, counting every fetch of every page.

Pages of ~30 KB of HTML (a head with styles and scripts, a top navigation bar, a section sidebar, breadcrumbs,
headings, paragraphs with inline markup, code blocks, "on this page" anchors, prev/next and related links, a footer)
with ~100 links each, most of them shared between pages, as on a real documentation site:

* a top navigation bar of 15 links (the same on every page),
* a sidebar listing every page of the page's section (sections of 60 pages: the same on all pages of a section),
* ~25 links of the page's own: breadcrumbs, previous/next page, 4 anchors into the page, 14 related pages elsewhere
  on the site (seeded random), 2 external links and a "back to top" anchor.

Previous/next links chain every page, so every page is reachable from `/`. Everything is deterministic for a seed.
Pages are rendered on each fetch from pieces built once (the navigation bar, each section's sidebar, pools of
paragraphs and code blocks): a fetch costs a string join, so the server is not what a crawl waits for.

    .venv/bin/python -m bench.docs_site --pages 10000 --port 8322
"""

from __future__ import annotations

import argparse
import html
import random
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from src.demo.site import SiteStats

SECTION_PAGES = 60
"""Pages per section: each page's sidebar links to all pages of its section."""
TOP_NAV_LINKS = 15
RELATED_LINKS = 14
ANCHORS = 4
PARAGRAPHS_PER_PAGE = 13
CODE_BLOCKS_PER_PAGE = 4

AREAS = [
    'getting-started',
    'guides',
    'concepts',
    'api-reference',
    'tutorials',
    'configuration',
    'deployment',
    'integrations',
    'examples',
    'cli',
    'sdk',
    'security',
    'troubleshooting',
    'faq',
    'changelog',
]
_WORD_TEXT = (
    'request queue crawler storage dataset key value store proxy session browser handler router middleware '
    'pipeline schedule retry timeout concurrency worker process thread event loop callback context response '
    'header cookie token client server cache index record metadata label depth link selector element parser '
    'document page section module function method class object instance property argument parameter option '
    'setting default environment variable input output result error exception warning log message level '
    'format encoding charset stream buffer chunk batch limit offset cursor iterator generator async await task'
)
WORDS = _WORD_TEXT.split()


_A_HREF = re.compile(r'<a [^>]*?href="([^"]*)"')


def _title(words: list[str]) -> str:
    return ' '.join(words).capitalize()


@dataclass(frozen=True)
class Page:
    """Where a page sits in the site."""

    number: int
    section: int
    path: str
    title: str


class DocsSite:
    """The pages of a documentation site of `pages` pages (page 0 is the home page `/`), deterministic for `seed`."""

    def __init__(self, pages: int, *, seed: int = 1) -> None:
        if pages < 1:
            raise ValueError('a site needs at least one page')
        self.pages = pages
        self.seed = seed
        self.sections = max(1, -(-(pages - 1) // SECTION_PAGES))
        rng = random.Random(seed)
        section_slugs = [f'{"-".join(rng.sample(WORDS, 2))}-{s:03d}' for s in range(self.sections)]
        self._pages = [Page(0, 0, '/', 'Documentation')]
        for number in range(1, pages):
            section = (number - 1) // SECTION_PAGES
            words = rng.sample(WORDS, rng.randint(2, 4))
            path = f'/docs/{AREAS[section % len(AREAS)]}/{section_slugs[section]}/{"-".join(words)}-{number:05d}.html'
            self._pages.append(Page(number, section, path, _title(words)))
        self.by_path = {page.path: page.number for page in self._pages}
        self._paragraphs = [self._paragraph(rng) for _ in range(300)]
        self._code_blocks = [self._code_block(rng) for _ in range(60)]
        self._sidebars: dict[int, str] = {}  # built on first use, shared by the section's pages
        nav_pages = sorted({self.section_start(s * self.sections // TOP_NAV_LINKS) for s in range(TOP_NAV_LINKS)})
        nav_targets = [nav_pages[i % len(nav_pages)] for i in range(TOP_NAV_LINKS)]
        self._top_nav = (
            '<header class="navbar"><a class="navbar-brand" href="/">Docs</a><nav class="navbar-items"><ul>'
            + ''.join(
                f'<li class="navbar-item"><a class="navbar-link" href="{self.page(target).path}">'
                f'{AREAS[self.page(target).section % len(AREAS)].replace("-", " ").title()}</a></li>'
                for target in nav_targets
            )
            + '</ul></nav><input class="search" type="search" placeholder="Search the docs"></header>'
        )

    def page(self, number: int) -> Page:
        """Page number `number`."""
        return self._pages[number]

    def section_start(self, section: int) -> int:
        """The first page of `section` (its index page)."""
        return min(1 + section * SECTION_PAGES, self.pages - 1)

    def section_pages(self, section: int) -> range:
        """The page numbers of `section`."""
        start = 1 + section * SECTION_PAGES
        return range(min(start, self.pages), min(start + SECTION_PAGES, self.pages))

    def related(self, number: int) -> list[int]:
        """The page's related pages elsewhere on the site (seeded random)."""
        rng = random.Random(self.seed * 1_000_003 + number)
        return [rng.randrange(self.pages) for _ in range(RELATED_LINKS)]

    @staticmethod
    def _paragraph(rng: random.Random) -> str:
        parts = []
        for _ in range(rng.randint(5, 8)):
            words = rng.choices(WORDS, k=rng.randint(9, 16))
            markup = rng.random()
            if markup < 0.3:
                words[3] = f'<code>{words[3]}_{words[4]}()</code>'
            elif markup < 0.45:
                words[2] = f'<strong>{words[2]}</strong>'
            elif markup < 0.55:
                words[5] = f'<em>{words[5]}</em>'
            parts.append(_title(words) + '.')
        return '<p>' + ' '.join(parts) + '</p>'

    @staticmethod
    def _code_block(rng: random.Random) -> str:
        lines = []
        for _ in range(rng.randint(10, 18)):
            a, b, c = rng.choices(WORDS, k=3)
            lines.append(
                f'<span class="token keyword">await</span> {a}.{b}(<span class="token string">'
                f'&quot;{c}&quot;</span>, timeout=<span class="token number">{rng.randint(1, 99)}</span>)'
            )
        return '<div class="code-block"><pre class="language-python"><code>' + '\n'.join(lines) + '</code></pre></div>'

    def _sidebar(self, section: int) -> str:
        cached = self._sidebars.get(section)
        if cached is not None:
            return cached
        items = ''.join(
            f'<li class="menu-item"><a class="menu-link" href="{self._pages[n].path}">{self._pages[n].title}</a></li>'
            for n in self.section_pages(section)
        )
        self._sidebars[section] = (
            f'<aside class="sidebar"><nav class="menu"><ul class="menu-list">{items}</ul></nav></aside>'
        )
        return self._sidebars[section]

    def links(self, number: int) -> list[str]:
        """The `href` of every `<a>` of the page, in order (anchors and external links included)."""
        return _A_HREF.findall(self.render(number))

    def render(self, number: int) -> str:
        """The page's HTML."""
        page = self._pages[number]
        rng = random.Random(self.seed * 7_919 + number)
        section_index = self._pages[self.section_start(page.section)]
        previous_page = self._pages[number - 1 if number else self.pages - 1]
        next_page = self._pages[(number + 1) % self.pages]
        paragraphs = rng.sample(self._paragraphs, PARAGRAPHS_PER_PAGE)
        code_blocks = rng.sample(self._code_blocks, CODE_BLOCKS_PER_PAGE)
        headings = [_title(rng.sample(WORDS, 3)) for _ in range(ANCHORS)]
        body: list[str] = []
        per_heading = PARAGRAPHS_PER_PAGE // ANCHORS
        for i, heading in enumerate(headings):
            body.append(f'<h2 id="h-{i}">{heading}<a class="hash-link" href="#h-{i}" title="Direct link">#</a></h2>')
            body.extend(paragraphs[i * per_heading : (i + 1) * per_heading])
            body.append(code_blocks[i % CODE_BLOCKS_PER_PAGE])
        body.extend(paragraphs[ANCHORS * per_heading :])
        related = ''.join(
            f'<li><a class="related-link" href="{self._pages[n].path}">{self._pages[n].title}</a></li>'
            for n in self.related(number)
        )
        title = html.escape(page.title)
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{title} | Docs</title><meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="description" content="{title}: documentation page {number}.">'
            '<link rel="stylesheet" href="/assets/css/styles.4f1e2b.css">'
            '<script src="/assets/js/runtime.8c2d1a.js" defer></script>'
            '<script src="/assets/js/main.b7e90c.js" defer></script></head>'
            f'<body id="top">{self._top_nav}<div class="main-wrapper">{self._sidebar(page.section)}'
            '<main class="doc-main"><nav class="breadcrumbs"><ul>'
            '<li class="breadcrumb"><a href="/">Home</a></li>'
            f'<li class="breadcrumb"><a href="{section_index.path}">{section_index.title}</a></li></ul></nav>'
            f'<article class="markdown"><h1>{title}</h1>{"".join(body)}</article>'
            f'<nav class="pagination"><a class="pagination-prev" href="{previous_page.path}">{previous_page.title}</a>'
            f'<a class="pagination-next" href="{next_page.path}">{next_page.title}</a></nav>'
            f'<section class="related"><h2>Related pages</h2><ul>{related}</ul></section>'
            '<footer class="footer"><a href="https://github.com/example/docs/edit/main/docs.md">Edit this page</a> '
            '<a href="https://example.invalid/community">Community</a> <a href="#top">Back to top</a></footer>'
            '</main></div></body></html>'
        )


class _Handler(BaseHTTPRequestHandler):
    server: _DocsServer
    protocol_version = 'HTTP/1.1'  # keep-alive, as a real web server
    # Headers and body go out in two writes: with Nagle's algorithm the body would wait for the client's delayed
    # ACK of the headers (~40 ms per page on a keep-alive connection).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        path = self.path.split('#', 1)[0].split('?', 1)[0]
        number = self.server.site.by_path.get(path)
        if number is None:
            self._send(404, b'<html><title>Not found</title></html>')
            return
        self.server.stats.hit(path)
        if self.server.delay_secs:
            time.sleep(self.server.delay_secs)
        self._send(200, self.server.site.render(number).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the terminal quiet."""


class _DocsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: DocsSite, port: int, delay_secs: float) -> None:
        super().__init__(('127.0.0.1', port), _Handler)
        self.site = site
        self.delay_secs = delay_secs
        self.stats = SiteStats()


@dataclass
class RunningDocsSite:
    """A documentation site served in a background thread."""

    server: _DocsServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        """The home page's URL."""
        return f'http://127.0.0.1:{self.server.server_address[1]}/'

    @property
    def stats(self) -> SiteStats:
        """The fetch counts per path."""
        return self.server.stats

    @property
    def site(self) -> DocsSite:
        """The pages."""
        return self.server.site

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_docs_site(pages: int, *, seed: int = 1, port: int = 0, delay_secs: float = 0.0) -> RunningDocsSite:
    """Serve a fresh `DocsSite` (fresh fetch counts) on 127.0.0.1 (port 0: any free port) in a daemon thread."""
    server = _DocsServer(DocsSite(pages, seed=seed), port, delay_secs)
    thread = threading.Thread(target=server.serve_forever, name='docs-site', daemon=True)
    thread.start()
    return RunningDocsSite(server, thread)


def main() -> None:
    """Serve the site until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0] if __doc__ else None)
    parser.add_argument('--pages', type=int, default=10000)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--port', type=int, default=8322)
    args = parser.parse_args()
    running = serve_docs_site(args.pages, seed=args.seed, port=args.port)
    print(f'Serving {args.pages} documentation pages at {running.url}. Ctrl+C stops.', flush=True)
    try:
        running.thread.join()
    except KeyboardInterrupt:
        running.stop()


if __name__ == '__main__':
    main()

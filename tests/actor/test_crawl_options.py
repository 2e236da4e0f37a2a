"""End-to-end: the crawl options of the input (globs, ...) through `python -m src` in a full copy of the repository.

The local site counts every fetch, so "fetched" is what the server saw, not what the actor says.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from src.demo.site import RunningSite, page_links, page_path, serve_site
from tests.actor.project import ROOT, child_pid, copy_project, finish, kill_group, run_actor, start_actor, write_input
from tests.actor.test_user_errors import error_lines


def options_input(site: RunningSite, **extra: Any) -> dict[str, Any]:
    return {
        'startUrls': [{'url': site.url}],
        'sharedStoreName': 'options-crawl',
        'syncIntervalSecs': 0.5,
        'deadRunTimeoutSecs': 4,
        **extra,
    }


def all_logs(repo: Path) -> str:
    """The log of the run and those of its child runs."""
    logs = [repo / 'storage.log', *sorted((repo / 'storage').glob('parallel-runs/*/log.txt'))]
    return '\n'.join(path.read_text(errors='replace') for path in logs)


def reachable(pages: int, follows: Any) -> set[str]:
    """Paths reachable from the home page (always fetched: a start URL) through pages `follows(path)` accepts."""
    seen = {0}
    frontier = [0]
    while frontier:
        page = frontier.pop()
        for link in page_links(page, pages):
            if link not in seen and follows(page_path(link)):
                seen.add(link)
                frontier.append(link)
    return {page_path(page) for page in seen}


def excluded_section(path: str) -> bool:
    """Sections 1 and 10-16: what `section-1*/**` excludes."""
    return path.startswith('/section-1')


async def test_globs_and_exclude_globs_hold_in_three_runs_and_when_one_is_killed(tmp_path: Path) -> None:
    site = serve_site(300, delay_secs=0.03)
    expected = reachable(site.pages, lambda path: not excluded_section(path))
    assert 100 < len(expected) < site.pages, 'the exclusion leaves a real part of the site out'
    repo = copy_project(tmp_path / 'repo')
    actor_input = options_input(
        site,
        parallelRuns=3,
        maxConcurrency=3,
        globs=[{'glob': f'{site.url}section-*/**'}],  # every page but the home page, a start URL anyway
        excludeGlobs=[{'glob': f'{site.url}section-1*/**'}],
    )
    write_input(repo / 'storage', actor_input)
    proc = start_actor(repo, None, repo / 'storage.log')
    try:
        deadline = time.monotonic() + 60
        while site.stats.snapshot()['fetches'] < 40 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a counter other threads update
            await asyncio.sleep(0.05)
        pid = child_pid(repo / 'storage', '-2')
        assert pid is not None, 'the child run is running'
        os.kill(pid, signal.SIGKILL)
        code, log = await asyncio.to_thread(finish, proc, 180, repo / 'storage.log')
        stats = site.stats.snapshot()
    finally:
        if proc.poll() is None:
            kill_group(proc)
        site.stop()
    assert code == 0, log[-3000:]
    fetched = set(stats['counts'])
    assert not {path for path in fetched if excluded_section(path)}, 'an excluded page was fetched'
    assert fetched == expected, f'{len(expected - fetched)} included pages not fetched, {len(fetched - expected)} extra'
    assert stats['duplicates'] <= 20, 'at most the pages in flight when the run died are fetched twice'
    assert 'no summary' in log, 'one run was killed'


async def test_exclude_globs_added_on_resume_hold_for_urls_already_waiting_in_the_map(tmp_path: Path) -> None:
    site = serve_site(300, delay_secs=0.005)
    repo = copy_project(tmp_path / 'repo')
    try:
        # First attempt: no exclusion, stopped by the limit while many URLs of every section wait in the map.
        write_input(repo / 'storage', options_input(site, maxRequestsPerCrawl=30))
        code, log = await asyncio.to_thread(run_actor, repo, timeout=120)
        assert code == 0, log[-3000:]
        first = dict(site.stats.snapshot()['counts'])
        assert len(first) == 30
        site.stats.fetches.clear()
        # The same crawl resumed with an exclusion: the excluded URLs already waiting are skipped, not fetched.
        write_input(repo / 'storage', options_input(site, excludeGlobs=[{'glob': f'{site.url}section-1*/**'}]))
        code, log = await asyncio.to_thread(run_actor, repo, timeout=120, purge=False)
        second = site.stats.snapshot()['counts']
    finally:
        site.stop()
    assert code == 0, log[-3000:]
    assert not {path for path in second if excluded_section(path)}, 'an excluded page was fetched on resume'
    assert not set(first) & set(second), 'no page fetched twice'
    assert 'excluded by the globs of the input' in log


async def test_start_urls_from_a_text_file_are_each_fetched_once_by_two_runs(tmp_path: Path) -> None:
    listed = [page_path(page) for page in range(100, 120)]
    text = '# pages to crawl\n' + '\n'.join(f'http://127.0.0.1:{{port}}{path}' for path in listed + listed[:5]) + '\n\n'
    site = serve_site(300, files={'/urls.txt': text})
    repo = copy_project(tmp_path / 'repo')
    start_urls = [{'url': site.url}, {'requestsFromUrl': f'{site.url}urls.txt'}]
    write_input(repo / 'storage', options_input(site, startUrls=start_urls, maxCrawlDepth=0, parallelRuns=2))
    try:
        code, log = await asyncio.to_thread(run_actor, repo, timeout=120)
        counts = site.stats.snapshot()['counts']
    finally:
        site.stop()
    assert code == 0, log[-3000:]
    assert counts.pop('/urls.txt') == 2, 'each run reads the list'
    assert counts == dict.fromkeys(['/', *listed], 1), 'the start URL and every listed page, each once'


async def test_a_list_of_urls_that_cannot_be_read_stops_the_run_with_one_line(tmp_path: Path) -> None:
    site = serve_site(10)
    try:
        storage = tmp_path / 'storage'
        start_urls = [{'url': site.url}, {'requestsFromUrl': f'{site.url}no-such-list.txt'}]
        code, output = await asyncio.to_thread(
            run_actor, ROOT, storage=storage, actor_input=options_input(site, startUrls=start_urls, parallelRuns=2)
        )
        fetched = site.stats.snapshot()['fetches']
    finally:
        site.stop()
    assert code != 0
    assert 'Traceback' not in output
    (line,) = error_lines(output)
    assert f'the list of URLs at {site.url}no-such-list.txt (requestsFromUrl) answered HTTP 404' in line
    assert fetched == 0
    assert not (storage / 'parallel-runs').exists(), 'no child run was started'


async def test_no_run_fetches_a_url_robots_txt_disallows_even_when_it_waits_in_the_map(tmp_path: Path) -> None:
    site = serve_site(300, delay_secs=0.005, files={'/robots.txt': 'User-agent: *\nDisallow: /section-1\n'})
    allowed = reachable(site.pages, lambda path: not excluded_section(path))  # /section-1 covers 1 and 10-16
    repo = copy_project(tmp_path / 'repo')
    try:
        # First attempt without robots.txt, stopped by the limit: disallowed URLs wait in the map and in the queue.
        write_input(repo / 'storage', options_input(site, maxRequestsPerCrawl=30))
        code, log = await asyncio.to_thread(run_actor, repo, timeout=120)
        assert code == 0, log[-3000:]
        first = dict(site.stats.snapshot()['counts'])
        assert any(excluded_section(path) for path in first), 'the first attempt reached the disallowed part'
        site.stats.fetches.clear()
        # The same crawl resumed by 3 runs respecting robots.txt.
        write_input(repo / 'storage', options_input(site, respectRobotsTxtFile=True, parallelRuns=3))
        code, log = await asyncio.to_thread(run_actor, repo, timeout=180, purge=False)
        second = dict(site.stats.snapshot()['counts'])
    finally:
        site.stop()
    assert code == 0, log[-3000:]
    assert second.pop('/robots.txt') == 3, 'each run read robots.txt once'
    assert not {path for path in second if excluded_section(path)}, 'a URL robots.txt disallows was fetched'
    assert allowed <= set(first) | set(second), 'every allowed page was fetched'
    assert 'disallowed based on robots.txt' in all_logs(repo), 'URLs waiting in the map were skipped, not fetched'


RATE_BUDGET = 240  # pages a minute for the whole crawl: 4 a second, so ~50 fetches take ~12 s


async def crawl_wide_rate(tmp_path: Path, runs: int) -> float:
    """Pages a minute the site saw from `runs` runs sharing `maxRequestsPerMinute`, once all of them fetch."""
    site = serve_site(3000)
    repo = copy_project(tmp_path / f'runs-{runs}')
    actor_input = options_input(site, parallelRuns=runs, maxRequestsPerMinute=RATE_BUDGET)
    write_input(repo / 'storage', actor_input)
    skip, count = 10, 50  # the first fetches: the runs start one after the other, with few URLs known yet
    proc = start_actor(repo, None, repo / 'storage.log')
    try:
        deadline = time.monotonic() + 50
        while len(site.stats.times) < skip + count and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a list the server threads append to
            await asyncio.sleep(0.1)
        assert proc.poll() is None, (repo / 'storage.log').read_text()[-3000:]
    finally:
        kill_group(proc)
        site.stop()
    times = site.stats.times[skip : skip + count]
    assert len(times) == count, f'only {len(site.stats.times)} fetches in 50 s'
    return (count - 1) / (times[-1] - times[0]) * 60


async def test_max_requests_per_minute_is_for_the_whole_crawl_with_one_run_and_with_three(tmp_path: Path) -> None:
    rates = {runs: await crawl_wide_rate(tmp_path, runs) for runs in (1, 3)}
    print(f'maxRequestsPerMinute {RATE_BUDGET}: measured {rates[1]:.1f} (1 run), {rates[3]:.1f} (3 runs) a minute')
    for runs, rate in rates.items():
        assert abs(rate - RATE_BUDGET) <= 0.1 * RATE_BUDGET, f'{runs} runs fetched {rate:.1f} pages a minute'


class _CountingProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(('127.0.0.1', 0), _ProxyHandler)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A forward proxy for plain-HTTP GETs (`GET http://host/path`), counting each request by path."""

    server: _CountingProxy

    def do_GET(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        with self.server.lock:
            self.server.counts[target.path + (f'?{target.query}' if target.query else '')] += 1
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the site
        try:
            with opener.open(self.path, timeout=30) as answer:
                status, body, content_type = answer.status, answer.read(), answer.headers.get('Content-Type', '')
        except urllib.error.HTTPError as error:
            status, body, content_type = error.code, error.read(), error.headers.get('Content-Type', '')
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


async def test_every_fetch_of_every_run_goes_through_the_proxy_of_proxy_urls(tmp_path: Path) -> None:
    site = serve_site(100, delay_secs=0.005)
    proxy = _CountingProxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy_url = f'http://127.0.0.1:{proxy.server_address[1]}'
    repo = copy_project(tmp_path / 'repo')
    actor_input = options_input(
        site, parallelRuns=2, proxyConfiguration={'useApifyProxy': False, 'proxyUrls': [proxy_url]}
    )
    write_input(repo / 'storage', actor_input)
    try:
        code, log = await asyncio.to_thread(run_actor, repo, timeout=120)
        counts = site.stats.snapshot()['counts']
    finally:
        proxy.shutdown()
        proxy.server_close()
        site.stop()
    assert code == 0, log[-3000:]
    assert len(counts) == site.pages, 'every page was crawled'
    assert dict(proxy.counts) == counts, 'every fetch the site saw came through the proxy'


async def test_apify_proxy_without_a_password_stops_the_run_with_one_line(tmp_path: Path) -> None:
    storage = tmp_path / 'storage'
    actor_input = {'startUrls': [{'url': 'http://127.0.0.1:1/'}], 'parallelRuns': 2}
    code, output = await asyncio.to_thread(
        run_actor, ROOT, storage=storage, actor_input={**actor_input, 'proxyConfiguration': {'useApifyProxy': True}}
    )
    assert code != 0
    assert 'Traceback' not in output
    (line,) = error_lines(output)
    assert 'proxyConfiguration cannot be used: Apify Proxy password must be provided' in line
    assert not (storage / 'parallel-runs').exists(), 'no child run was started'


def sitemap(paths: list[str], *extra_urls: str) -> str:
    urls = [f'http://127.0.0.1:{{port}}{path}' for path in paths] + list(extra_urls)
    entries = ''.join(f'<url><loc>{url}</loc></url>' for url in urls)
    return f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'


async def test_use_sitemaps_seeds_the_crawl_from_the_sites_sitemaps_each_page_once(tmp_path: Path) -> None:
    main = [page_path(page) for page in range(150, 180)]
    extra = [page_path(page) for page in range(175, 190)]  # 5 also in the main sitemap
    files = {
        '/robots.txt': 'User-agent: *\nAllow: /\nSitemap: http://127.0.0.1:{port}/sitemap-extra.xml\n',
        '/sitemap.xml': sitemap(main, 'https://example.invalid/elsewhere'),  # another host: not crawled
        '/sitemap-extra.xml': sitemap(extra),
    }
    site = serve_site(300, files=files)
    repo = copy_project(tmp_path / 'repo')
    write_input(repo / 'storage', options_input(site, useSitemaps=True, maxCrawlDepth=0, parallelRuns=2))
    try:
        code, log = await asyncio.to_thread(run_actor, repo, timeout=120)
        counts = site.stats.snapshot()['counts']
    finally:
        site.stop()
    assert code == 0, log[-3000:]
    assert {path: counts.pop(path) for path in files} == dict.fromkeys(files, 2), 'each run read them once'
    assert counts == dict.fromkeys(['/', *main, *extra], 1), 'the start URL and every sitemap page, each once'

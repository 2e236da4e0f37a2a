"""The actor's input (`.actor/input_schema.json`), validated with messages that say what to fix."""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .shared_map import CONNECTION_PREFIXES, RESERVED_STORE_NAMES, InvalidOptionError, check_connection

STORE_NAME = re.compile(r'^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$')
PROXY_URL = re.compile(r'^(?:https?|socks[45]h?)://[^/\s]+/?$', re.IGNORECASE)
HTTP_METHODS = frozenset({'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'})
URL_GLOB = re.compile(r'^https?\*?://', re.IGNORECASE)
KNOWN_FIELDS = {
    'startUrls',
    'maxRequestsPerCrawl',
    'maxCrawlDepth',
    'maxConcurrency',
    'maxRequestRetries',
    'sharedStoreName',
    'sharedStorageConnection',
    'syncIntervalSecs',
    'deadRunTimeoutSecs',
    'parallelRuns',
    'useSharedMap',
    'parentRunId',
    'globs',
    'excludeGlobs',
    'respectRobotsTxtFile',
    'maxRequestsPerMinute',
    'proxyConfiguration',
    'useSitemaps',
    'datasetName',
    'retryOnBlocked',
}


class InputError(ValueError):
    """The actor input is invalid; the message lists every problem and how to fix it."""


@dataclass(frozen=True)
class CrawlerInput:
    """The validated input of one run."""

    start_urls: list[str]
    start_url_lists: list[str]
    """URLs of text files listing more start URLs (`{"requestsFromUrl": ...}` entries of `startUrls`)."""
    start_url_fields: dict[str, dict[str, Any]]
    """Request fields of start URLs that give any (`label`, `userData`, `method`, `payload`, `headers`), by URL."""
    max_requests_per_crawl: int | None
    max_crawl_depth: int | None
    max_concurrency: int
    max_request_retries: int
    shared_store_name: str
    """The crawl's shared store; empty until `preflight` names an unnamed crawl's own store (see `named_crawl`)."""
    shared_storage_connection: str | None
    sync_interval_secs: float
    dead_run_timeout_secs: float
    parallel_runs: int
    use_shared_map: bool
    parent_run_id: str | None
    globs: list[str] | None
    """URL globs a link must match to be followed; None: links to the start URL's host are followed."""
    exclude_globs: list[str]
    """URL globs of links never followed, nor fetched when taken over from the map (start URLs excepted)."""
    respect_robots_txt_file: bool
    """Skip the URLs the site's robots.txt disallows (crawlee's `respect_robots_txt_file`)."""
    max_requests_per_minute: int | None
    """Fetches per minute of all runs together; None: no limit."""
    proxy_configuration: dict[str, Any] | None
    """The Apify proxy input (`{"useApifyProxy": true}` or `{"proxyUrls": [...]}`); None: no proxy."""
    use_sitemaps: bool
    """Also start from the URLs in the sitemaps of the start URLs' sites."""
    retry_on_blocked: bool
    """Retry a page that looks like a bot-protection challenge (crawlee's `retry_on_blocked`)."""
    dataset_name: str | None
    """The named dataset that holds the crawl's merged results; None: the first run's default dataset."""
    raw: dict[str, Any]
    unknown_fields: list[str]
    crawl_id: str | None = None
    """The crawl's id, from its shared store (set by `preflight`)."""

    @property
    def named_crawl(self) -> bool:
        """Whether the input names the crawl (`sharedStoreName`): re-running with the name continues it."""
        return bool(self.raw.get('sharedStoreName'))

    @property
    def is_child(self) -> bool:
        """Whether another run started this one (then it does not fan out itself)."""
        return self.parent_run_id is not None

    @classmethod
    def parse(cls, raw: object) -> CrawlerInput:
        """Validate the raw input.

        Raises:
            InputError: naming every invalid field and what a valid value looks like.
        """
        if not isinstance(raw, dict):
            raise InputError(f'The input must be a JSON object, got {type(raw).__name__}.')
        problems: list[str] = []
        unknown = sorted(set(raw) - KNOWN_FIELDS)
        for name, known in _likely_typos(unknown).items():
            problems.append(f'Unknown input field {name}: did you mean {known}?')
        fields = _Fields(raw, problems)
        start_urls, start_url_lists, start_url_fields = _start_urls(raw.get('startUrls'), problems)
        parsed = cls(
            start_urls=start_urls,
            start_url_lists=start_url_lists,
            start_url_fields=start_url_fields,
            max_requests_per_crawl=fields.integer('maxRequestsPerCrawl', default=0, minimum=0) or None,
            max_crawl_depth=fields.integer('maxCrawlDepth', default=None, minimum=0),
            max_concurrency=fields.integer('maxConcurrency', default=10, minimum=1, maximum=1000) or 10,
            max_request_retries=fields.integer('maxRequestRetries', default=3, minimum=0, maximum=100) or 0,
            shared_store_name=fields.store_name('sharedStoreName', default=''),
            shared_storage_connection=fields.connection('sharedStorageConnection'),
            sync_interval_secs=fields.number('syncIntervalSecs', default=10.0, minimum=0.1, maximum=3600),
            dead_run_timeout_secs=fields.number('deadRunTimeoutSecs', default=120.0, minimum=1, maximum=86400),
            parallel_runs=fields.integer('parallelRuns', default=1, minimum=1, maximum=50) or 1,
            use_shared_map=fields.boolean('useSharedMap', default=True),
            parent_run_id=fields.string('parentRunId'),
            globs=fields.globs('globs') or None,
            exclude_globs=fields.globs('excludeGlobs'),
            respect_robots_txt_file=fields.boolean('respectRobotsTxtFile', default=False),
            max_requests_per_minute=fields.integer('maxRequestsPerMinute', default=0, minimum=0, maximum=1_000_000)
            or None,
            proxy_configuration=fields.proxy('proxyConfiguration'),
            use_sitemaps=fields.boolean('useSitemaps', default=False),
            retry_on_blocked=fields.boolean('retryOnBlocked', default=True),
            dataset_name=fields.dataset_name('datasetName'),
            raw=dict(raw),
            unknown_fields=[name for name in unknown if name not in _likely_typos(unknown)],
        )
        if parsed.dead_run_timeout_secs < 2 * parsed.sync_interval_secs:
            problems.append(
                f'deadRunTimeoutSecs ({parsed.dead_run_timeout_secs:g}) must be at least twice syncIntervalSecs '
                f'({parsed.sync_interval_secs:g}), or live runs would be taken for dead.'
            )
        if problems:
            raise InputError('Invalid input: ' + ' '.join(problems))
        return parsed


def _likely_typos(unknown: list[str]) -> dict[str, str]:
    """Unknown fields that are close to a known one (`startUrl` -> `startUrls`): a setting the user meant to make."""
    by_lower = {name.lower(): name for name in KNOWN_FIELDS}
    typos = {}
    for name in unknown:
        match = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.8)
        if match:
            typos[name] = by_lower[match[0]]
    return typos


def exit_if_input_file_is_invalid() -> None:
    """Print one line naming the broken local INPUT file and exit with status 1 (see `check_local_input_file`)."""
    try:
        check_local_input_file()
    except InputError as exc:
        print(f'ERROR {exc}', file=sys.stderr)
        raise SystemExit(1) from None


def check_local_input_file() -> None:
    """Check that the local INPUT file, if any, is valid JSON, before `Actor.init()` parses it with a traceback.

    Looks where the Apify SDK reads the input when running locally: `<storage>/key_value_stores/default/<key>.json`
    (or the file without extension), `<storage>` from `CRAWLEE_STORAGE_DIR`/`APIFY_LOCAL_STORAGE_DIR` (default
    `./storage`), `<key>` from `ACTOR_INPUT_KEY`/`APIFY_INPUT_KEY`/`CRAWLEE_INPUT_KEY` (default `INPUT`).

    Raises:
        InputError: naming the file and the line and column of the first syntax error.
    """
    if os.environ.get('APIFY_IS_AT_HOME') in ('1', 'true'):
        return  # on the platform the input comes from the API, already validated against the input schema
    env = os.environ
    storage = env.get('CRAWLEE_STORAGE_DIR') or env.get('APIFY_LOCAL_STORAGE_DIR') or './storage'
    key = env.get('ACTOR_INPUT_KEY') or env.get('APIFY_INPUT_KEY') or env.get('CRAWLEE_INPUT_KEY') or 'INPUT'
    folder = Path(storage) / 'key_value_stores' / 'default'
    for path in (folder / f'{key}.json', folder / key):
        if not path.is_file():
            continue
        try:
            json.loads(path.read_bytes().decode('utf-8'))
        except UnicodeDecodeError as exc:
            raise InputError(
                f'Invalid input: {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 JSON.'
            ) from None
        except json.JSONDecodeError as exc:
            raise InputError(
                f'Invalid input: {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. '
                'Fix that file (e.g. a trailing comma, or a missing quote) and run again.'
            ) from None


def _start_urls(value: object, problems: list[str]) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """The start URLs, the URLs of the text files that list more (`requestsFromUrl`), and their request fields."""
    if value is None or value == []:
        problems.append('startUrls is required: give at least one URL, e.g. [{"url": "https://crawlee.dev"}].')
        return [], [], {}
    if not isinstance(value, list):
        problems.append('startUrls must be a list such as [{"url": "https://crawlee.dev"}].')
        return [], [], {}
    urls: list[str] = []
    lists: list[str] = []
    fields: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(value):
        from_url = isinstance(item, dict) and 'requestsFromUrl' in item and 'url' not in item
        url = item.get('requestsFromUrl' if from_url else 'url') if isinstance(item, dict) else item
        if not isinstance(url, str):
            problems.append(
                f'startUrls[{index}] must be {{"url": "https://..."}} or {{"requestsFromUrl": "https://.../urls.txt"}}'
                f', got {item!r:.80}.'
            )
            continue
        parts = urlsplit(url.strip())
        if parts.scheme not in ('http', 'https') or not parts.netloc:
            field = '.requestsFromUrl' if from_url else ''
            problems.append(f'startUrls[{index}]{field} "{url:.200}" is not an http(s) URL with a host.')
            continue
        (lists if from_url else urls).append(url.strip())
        if isinstance(item, dict) and not from_url and (options := _request_fields(item, index, problems)):
            fields[url.strip()] = options
    return urls, lists, fields


def _request_fields(item: dict[str, Any], index: int, problems: list[str]) -> dict[str, Any]:
    """The request fields of a start URL as Apify's start-URL editor gives them, as `Request.from_url` options."""
    options: dict[str, Any] = {}
    where = f'startUrls[{index}]'
    label, user_data = item.get('label'), item.get('userData')
    method, payload, headers = item.get('method'), item.get('payload'), item.get('headers')
    if label is not None and label != '':
        if isinstance(label, str):
            options['label'] = label
        else:
            problems.append(f'{where}.label must be a string (the name of a route), got {label!r:.80}.')
    if user_data is not None:
        if isinstance(user_data, dict):
            data = dict(user_data)
            if isinstance(data.get('label'), str) and 'label' not in options:  # crawlee keeps the label there too
                options['label'] = data['label']
            data.pop('label', None)
            if data:
                options['user_data'] = data
        else:
            problems.append(
                f'{where}.userData must be an object such as {{"category": "shoes"}}, got {user_data!r:.80}.'
            )
    if method is not None:
        if isinstance(method, str) and method.upper() in HTTP_METHODS:
            if method.upper() != 'GET':
                options['method'] = method.upper()
        else:
            problems.append(f'{where}.method must be one of {", ".join(sorted(HTTP_METHODS))}, got {method!r:.80}.')
    if payload is not None and payload != '':
        if isinstance(payload, str):
            options['payload'] = payload
        else:
            problems.append(f'{where}.payload must be a string (the request body), got {payload!r:.80}.')
    if headers is not None and headers != {}:
        if isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            options['headers'] = headers
        else:
            problems.append(
                f'{where}.headers must be an object of strings such as {{"Accept": "text/html"}}, got {headers!r:.80}.'
            )
    return options


class _Fields:
    """Typed getters that collect problems instead of stopping at the first."""

    def __init__(self, raw: dict[str, Any], problems: list[str]) -> None:
        self._raw = raw
        self._problems = problems

    def integer(self, name: str, *, default: int | None, minimum: int, maximum: int | None = None) -> int | None:
        value = self._raw.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            self._problems.append(f'{name} must be a whole number, got {value!r:.80}.')
            return default
        if value < minimum or (maximum is not None and value > maximum):
            limit = f'between {minimum} and {maximum}' if maximum is not None else f'at least {minimum}'
            self._problems.append(f'{name} must be {limit}, got {value}.')
            return default
        return int(value)

    def number(self, name: str, *, default: float, minimum: float, maximum: float) -> float:
        value = self._raw.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._problems.append(f'{name} must be a number of seconds, got {value!r:.80}.')
            return default
        if not minimum <= value <= maximum:
            self._problems.append(f'{name} must be between {minimum:g} and {maximum:g}, got {value}.')
            return default
        return float(value)

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._raw.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._problems.append(f'{name} must be true or false, got {value!r:.80}.')
            return default
        return value

    def string(self, name: str) -> str | None:
        value = self._raw.get(name)
        if value is None or value == '':
            return None
        if not isinstance(value, str):
            self._problems.append(f'{name} must be a string, got {value!r:.80}.')
            return None
        return value

    def globs(self, name: str) -> list[str]:
        """URL globs in Apify's format, `[{"glob": "https://example.com/docs/**"}]` (plain strings are taken too)."""
        value = self._raw.get(name)
        if value is None:
            return []
        example = f'{name} must be a list such as [{{"glob": "https://example.com/docs/**"}}]'
        if not isinstance(value, list):
            self._problems.append(f'{example}, got {value!r:.80}.')
            return []
        globs = []
        for index, item in enumerate(value):
            glob = item.get('glob') if isinstance(item, dict) else item
            if not isinstance(glob, str) or not glob.strip():
                self._problems.append(f'{example}; {name}[{index}] is {item!r:.80}.')
            elif not URL_GLOB.match(glob.strip()):
                self._problems.append(
                    f'{name}[{index}] "{glob:.200}" is not a URL glob: it must start with http:// or https:// (or '
                    'http*://), e.g. "https://example.com/docs/**", since it is matched against whole URLs.'
                )
            else:
                globs.append(glob.strip())
        return globs

    def proxy(self, name: str) -> dict[str, Any] | None:
        """The Apify proxy input: `{"useApifyProxy": true, ...}` (the platform) or `{"proxyUrls": ["http://..."]}`."""
        value = self._raw.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self._problems.append(
                f'{name} must be an object such as {{"useApifyProxy": true}} or '
                f'{{"proxyUrls": ["http://user:password@proxy.example:8000"]}}, got {value!r:.80}.'
            )
            return None
        if not isinstance(value.get('useApifyProxy', False), bool):
            self._problems.append(f'{name}.useApifyProxy must be true or false.')
            return None
        urls = value.get('proxyUrls', [])
        if not value.get('useApifyProxy') and not (
            isinstance(urls, list) and all(isinstance(url, str) and PROXY_URL.match(url) for url in urls)
        ):
            shown = (
                [url.split('@')[-1] if isinstance(url, str) else url for url in urls]
                if isinstance(urls, list)
                else urls
            )
            self._problems.append(
                f'{name}.proxyUrls must be a list of proxy URLs such as "http://user:password@proxy.example:8000" '
                f'(http, https, socks4 or socks5), got {shown!r:.120}.'  # credentials are never shown
            )
            return None
        return value

    def store_name(self, name: str, *, default: str) -> str:
        value = self.string(name)
        if value is None:
            return default
        if value in RESERVED_STORE_NAMES:
            self._problems.append(
                f'{name} "{value}" is not allowed: crawlee purges the default key-value store when a run starts, so '
                "runs sharing it would delete each other's INPUT and state. Use another name, e.g. "
                '"my-crawl".'
            )
            return default
        if not STORE_NAME.match(value):
            self._problems.append(
                f'{name} "{value:.80}" is not a valid store name: use 1-63 characters a-z, 0-9 and inner hyphens.'
            )
            return default
        return value

    def dataset_name(self, name: str) -> str | None:
        value = self.string(name)
        if value is None:
            return None
        if value == 'default' or not STORE_NAME.match(value):
            self._problems.append(
                f'{name} "{value:.80}" is not a valid dataset name: use 1-63 characters a-z, 0-9 and inner hyphens '
                '(not "default"), e.g. "my-crawl-results"; leave it empty for the run\'s default dataset.'
            )
            return None
        return value

    def connection(self, name: str) -> str | None:
        value = self.string(name)
        if value is None:
            return None
        if not value.startswith(CONNECTION_PREFIXES):
            shown = value.split('@')[-1]  # what precedes a host may be a password: never show it
            self._problems.append(
                f'{name} "{shown:.80}" is not supported: use file:///absolute/path, sqlite+aiosqlite:///file.db, '
                'postgresql+asyncpg://user:password@host/database or redis://:password@host:port/db, or leave it '
                'empty for the default storage.'
            )
            return None
        try:
            check_connection(value)
        except InvalidOptionError as exc:
            self._problems.append(f'{name}: {exc}')
            return None
        return value

"""Map keys and ownership of URLs: what every run must compute identically."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

from crawlee import Request

PROCESSED = 'processed'
FAILED = 'failed'
SKIPPED = 'skipped'
DONE = (PROCESSED, FAILED)
"""Statuses that count towards the limit (crawlee counts failed requests towards its limit too)."""
MAP_KEY_FIELD = '__sharedMapKey'
"""`user_data` field of a request queued again under a fresh unique key: the map key it stands for."""


def rendezvous(runs: list[str], url: str) -> str:
    """The run that owns `url` among `runs`: the highest hash of (run, url) wins, so every run agrees."""
    return max(runs, key=lambda run: hashlib.blake2b(f'{run}\n{url}'.encode(), digest_size=8).digest())


def map_key_of(request: Request) -> str:
    """The map key a queued request stands for."""
    key = request.user_data.get(MAP_KEY_FIELD)
    return key if isinstance(key, str) else request.unique_key


def map_key(url: str) -> str:
    """The shared-map key of a URL: no fragment, no `utm_` parameters, sorted query, lower-case scheme and host.

    The path and the query's encoding are kept as they are, so the key is a URL that fetches the same page.
    """
    parts = urlsplit(url.strip())
    pairs = sorted(pair for pair in parts.query.split('&') if pair and not pair.startswith('utm_'))
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or '/', '&'.join(pairs), ''))


def with_map_key(request: Request) -> Request:
    """`request` with its map key as its unique key (GET requests), so the queue dedupes exactly as the map does."""
    if request.method != 'GET':
        return request
    key = map_key(request.url)
    return request if request.unique_key == key else request.model_copy(update={'unique_key': key})

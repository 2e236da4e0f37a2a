"""What the parts of the Apify API MOCK (`stand_in.py`, `stand_in_datasets.py`, `stand_in_runs.py`) share."""

from __future__ import annotations

import gzip
import importlib
import json
import zlib
from datetime import UTC, datetime
from typing import Any

__all__ = ['JSON_HEADERS', 'ApiError', 'decode_body', 'iso', 'json_reply']

JSON_HEADERS = {'Content-Type': 'application/json; charset=utf-8'}


class ApiError(Exception):
    """Answer the request with this error (status, platform error type, message)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def iso(ts: float) -> str:
    """A timestamp as the API writes it (`2026-01-01T00:00:00.000Z`)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec='milliseconds').replace('+00:00', 'Z')


def json_reply(status: int, data: Any) -> tuple[int, dict[str, str], bytes]:
    """A `{"data": ...}` answer, as the API wraps every object it returns."""
    return status, dict(JSON_HEADERS), json.dumps({'data': data}).encode()


def decode_body(body: bytes, encoding: str) -> bytes:
    """The body as the client meant it, before the client compressed it for the transfer."""
    encoding = encoding.strip().lower()
    if encoding in ('', 'identity'):
        return body
    if encoding == 'gzip':
        return gzip.decompress(body)
    if encoding == 'deflate':
        return zlib.decompress(body)
    if encoding == 'br':
        brotli: Any = importlib.import_module('brotli')  # apify-client's own dependency; untyped
        return bytes(brotli.decompress(body))
    raise ValueError(f'unsupported Content-Encoding {encoding!r}')

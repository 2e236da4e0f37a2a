"""A local STAND-IN (a mock) of the Apify platform API, for tests and `make platform-run` only (see README.md).

This is NOT the Apify platform and talks to nothing outside this machine: it is a small threaded `http.server`
on 127.0.0.1 that answers, from memory, the requests that the Apify SDK (apify 4.1, through apify-client 3.4)
makes, with the JSON shapes that client parses. Datasets are in `stand_in_datasets.py`; actor runs (real processes
of the actor), Abort, migration and the events websocket in `stand_in_runs.py`. The key-value-store endpoints:

    POST   /v2/key-value-stores?name=<name>              get or create a named store      201 {"data": store}
    GET    /v2/key-value-stores/<id or ~name>            store metadata                   200 {"data": store} | 404
    DELETE /v2/key-value-stores/<id>                     drop the store                   204
    GET    /v2/key-value-stores/<id>/keys                list keys, paginated             200 {"data": page}
               ?exclusiveStartKey=&limit=&prefix=        page: items [{key, size, recordPublicUrl}], count, limit,
                                                         exclusiveStartKey, isTruncated, nextExclusiveStartKey
    GET    /v2/key-value-stores/<id>/records/<key>       the body, with its Content-Type  200 | 404
    HEAD   /v2/key-value-stores/<id>/records/<key>       does it exist                    200 | 404
    PUT    /v2/key-value-stores/<id>/records/<key>       store a body (Content-Encoding   201
                                                         gzip/br/deflate is accepted)
    DELETE /v2/key-value-stores/<id>/records/<key>       delete (also when missing)       204

It enforces what the local storage clients do not, as the platform documents it:

* a key listing returns at most 1000 keys per call (`max_list_limit`), in key order, so clients must paginate
  with `exclusiveStartKey`;
* record keys must match `^[a-zA-Z0-9!\\-_.'()]{1,256}$`, else 400 `invalid-record-key`;
* a record over 9 MiB (9,437,184 bytes, `max_record_bytes`), measured decoded (as the client meant it, before
  the client's own gzip/brotli transfer compression), is refused with 413 `record-too-large`;
* a fraction of all requests (`rate_limit_fraction`, seeded; or the next few, `rate_limit_next()`) is answered
  429 `rate-limit-exceeded` with no side effect, which the client must retry;
* requests without the expected `Authorization: Bearer <token>` get 401.

A body uploaded with a `Content-Encoding` is stored as uploaded and served back with that encoding, as the API
documents. Every request is counted by kind (`requests`) and by kind and status (`responses`); refused keys and
bodies are kept in `rejections`. The message texts imitate the platform's but are not copied from it.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tests.platform.api_common import ApiError, decode_body, iso
from tests.platform.stand_in_datasets import Datasets
from tests.platform.stand_in_runs import Runs

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

KEY_PATTERN = re.compile(r"^[a-zA-Z0-9!\-_.'()]{1,256}$")
STORE_NAME_PATTERN = re.compile(r'^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$')
MAX_RECORD_BYTES = 9 * 1024 * 1024
MAX_LIST_LIMIT = 1000

KINDS = (
    'store_get_or_create',
    'store_get',
    'store_delete',
    'list_keys',
    'record_get',
    'record_head',
    'record_put',
    'record_delete',
    'other',
)


@dataclass
class Record:
    body: bytes
    """As uploaded (possibly compressed, see `encoding`)."""
    content_type: str
    encoding: str
    size: int
    """Size of the decoded body."""

    def decoded(self) -> bytes:
        return decode_body(self.body, self.encoding)


@dataclass
class Store:
    id: str
    name: str | None
    created_at: float = field(default_factory=time.time)
    modified_at: float = field(default_factory=time.time)
    accessed_at: float = field(default_factory=time.time)
    records: dict[str, Record] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)


@dataclass
class Rejection:
    kind: str
    status: int
    error_type: str
    message: str
    key: str | None


@dataclass
class Hold:
    """A request held before it is answered: `reached` is set when it arrives; it is answered after `release()`."""

    kind: str
    when: Callable[[dict[str, str]], bool]
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    query: dict[str, str] = field(default_factory=dict)

    def release(self) -> None:
        self.released.set()


class PlatformStandIn:
    """A local stand-in (mock) of the Apify API: key-value stores, datasets (`datasets`), runs (`runs`).

    Usage:
        ```python
        with PlatformStandIn(rate_limit_fraction=0.1) as api:
            configuration = apify.Configuration(token=api.token, api_base_url=api.url, api_public_base_url=api.url)
            store = await KeyValueStore.open(name='x', storage_client=ApifyStorageClient(), configuration=configuration)
        ```
    """

    def __init__(
        self,
        *,
        token: str = 'stand-in-token',
        rate_limit_fraction: float = 0.0,
        seed: int = 0,
        max_list_limit: int = MAX_LIST_LIMIT,
        max_record_bytes: int = MAX_RECORD_BYTES,
        max_items_per_page: int = 1000,
        folder: Path | None = None,
        **run_options: Any,
    ) -> None:
        """A mock of the API; `folder` keeps the runs' logs (default: a temporary one); `run_options` go to `Runs`."""
        self.token = token
        self.datasets = Datasets(base_url=lambda: self.url, max_items_per_page=max_items_per_page)
        self.folder = folder
        self._run_options = run_options
        self._runs: Runs | None = None
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self.rate_limit_fraction = rate_limit_fraction
        self.max_list_limit = max_list_limit
        self.max_record_bytes = max_record_bytes
        self.stores: dict[str, Store] = {}
        self.requests: Counter[str] = Counter()
        """Every request received, by kind (see `KINDS`), those answered 429 included."""
        self.responses: Counter[tuple[str, int]] = Counter()
        """Every response, by (kind, status)."""
        self.rejections: list[Rejection] = []
        """Requests refused for what they asked (bad key, body too large, bad parameter), not for the rate limit."""
        self.list_pages: list[int] = []
        """Number of keys in each key-listing page served (200)."""
        self.largest_record = 0
        """Largest decoded record body stored."""
        self.accept_encodings: Counter[str] = Counter()
        self._holds: list[Hold] = []
        self._forced_429 = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL of the stand-in (what `APIFY_API_BASE_URL` would hold)."""
        if self._server is None:
            raise RuntimeError('The stand-in is not running.')
        host, port = self._server.server_address[:2]
        return f'http://{host!s}:{port}'

    def start(self) -> PlatformStandIn:
        self._server = _Server(('127.0.0.1', 0), _Handler)
        self._server.api = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={'poll_interval': 0.05}, name='apify-stand-in', daemon=True
        )
        self._thread.start()
        return self

    @property
    def runs(self) -> Runs:
        """The actor runs (started on first use: a websocket server, and real processes once a run starts)."""
        if self._runs is None:
            if self.folder is None:
                self._temporary = tempfile.TemporaryDirectory(prefix='apify-stand-in-')
                self.folder = Path(self._temporary.name)
            self._runs = Runs(self, log_dir=self.folder / 'runs', **self._run_options)
        return self._runs

    def stop(self) -> None:
        if self._runs is not None:
            self._runs.close()
            self._runs = None
        for hold in self._holds:
            hold.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self) -> PlatformStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection

    def count(self, kind: str | None = None, status: int | None = None) -> int:
        """Responses of `kind` (any if None) with `status` (any if None)."""
        return sum(
            n for (k, s), n in self.responses.items() if (kind is None or k == kind) and (status is None or s == status)
        )

    def store_named(self, name: str) -> Store:
        with self._lock:
            return next(store for store in self.stores.values() if store.name == name)

    def rate_limit_next(self, count: int) -> None:
        """Answer the next `count` requests (of any kind) with 429, whatever `rate_limit_fraction` says."""
        with self._lock:
            self._forced_429 = count

    def hold_next(self, kind: str, when: Callable[[dict[str, str]], bool] = lambda _query: True) -> Hold:
        """Hold the next request of `kind` whose query matches `when` until `release()`; answered after it."""
        hold = Hold(kind=kind, when=when)
        with self._lock:
            self._holds.append(hold)
        return hold

    # ------------------------------------------------------------------ request handling (server threads)

    def _take_hold(self, kind: str, query: dict[str, str]) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if hold.kind == kind and not hold.reached.is_set() and hold.when(query):
                    hold.query = query
                    hold.reached.set()
                    return hold
        return None

    def _rate_limited(self) -> bool:
        with self._lock:
            if self._forced_429 > 0:
                self._forced_429 -= 1
                return True
            return self.rate_limit_fraction > 0 and self._rng.random() < self.rate_limit_fraction

    def _store(self, store_ref: str) -> Store:
        """A store by id, or by name as `~name` or `username~name`."""
        with self._lock:
            store = self.stores.get(store_ref)
            if store is None and '~' in store_ref:
                name = store_ref.split('~', 1)[1]
                store = next((s for s in self.stores.values() if s.name == name), None)
        if store is None:
            raise ApiError(404, 'record-not-found', 'Key-value store was not found')
        return store

    def _store_json(self, store: Store) -> dict[str, Any]:
        with self._lock:
            storage_bytes = sum(len(r.body) for r in store.records.values())
            stats = dict(store.stats)
        return {
            'id': store.id,
            'name': store.name,
            'userId': 'standInUser00001',
            'username': 'stand-in',
            'createdAt': iso(store.created_at),
            'modifiedAt': iso(store.modified_at),
            'accessedAt': iso(store.accessed_at),
            'actId': None,
            'actRunId': None,
            'stats': {
                'readCount': stats.get('read', 0),
                'writeCount': stats.get('write', 0),
                'deleteCount': stats.get('delete', 0),
                'listCount': stats.get('list', 0),
                'storageBytes': storage_bytes,
            },
        }

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes, str]:
        """Answer one request: (status, headers, body, kind). Runs in a server thread."""
        split = urlsplit(raw_path)
        # Split the raw path before decoding it: a key may hold an encoded '/'.
        segments = [unquote(segment) for segment in split.path.split('/')[1:]]
        segments = self._run_storage_path(segments)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        kind = self._kind(method, segments)
        with self._lock:
            self.requests[kind] += 1
            self.accept_encodings[headers.get('accept-encoding', '')] += 1
        try:
            self._authorize(headers, query)
            if self._rate_limited():
                raise ApiError(429, 'rate-limit-exceeded', 'You have exceeded the rate limit. Please try again later.')
            hold = self._take_hold(kind, query)
            if hold is not None:
                hold.released.wait(timeout=60)
            status, out_headers, out_body = self._dispatch(kind, method, segments, query, headers, body)
        except ApiError as reply:
            status = reply.status
            out_headers = {'Content-Type': 'application/json; charset=utf-8'}
            out_body = json.dumps({'error': {'type': reply.error_type, 'message': reply.message}}).encode()
            if status not in (401, 404, 429):
                key = segments[4] if kind.startswith('record_') and len(segments) > 4 else None
                with self._lock:
                    self.rejections.append(Rejection(kind, status, reply.error_type, reply.message, key))
        except Exception as exc:  # A bug in the stand-in: answer 500 (the client retries) and remember it.
            status, out_headers = 500, {'Content-Type': 'application/json; charset=utf-8'}
            out_body = json.dumps({'error': {'type': 'internal-error', 'message': repr(exc)}}).encode()
            with self._lock:
                self.rejections.append(Rejection(kind, 500, 'internal-error', repr(exc), None))
        with self._lock:
            self.responses[(kind, status)] += 1
        return status, out_headers, out_body, kind

    def _run_storage_path(self, segments: list[str]) -> list[str]:
        """`/v2/actor-runs/<id>/dataset/...` as `/v2/datasets/<its id>/...`; the same for its key-value store."""
        if len(segments) < 4 or segments[:2] != ['v2', 'actor-runs'] or self._runs is None:
            return segments
        run = self._runs.by_id.get(segments[2])
        if run is None:
            return segments
        if segments[3] == 'dataset':
            return ['v2', 'datasets', run.default_dataset_id, *segments[4:]]
        if segments[3] == 'key-value-store':
            return ['v2', 'key-value-stores', run.default_key_value_store_id, *segments[4:]]
        return segments

    @staticmethod
    def _kind(method: str, segments: list[str]) -> str:
        if len(segments) >= 2 and segments[0] == 'v2' and segments[1] in ('datasets', 'acts', 'actors', 'actor-runs'):
            return f'{segments[1]}_{method.lower()}'
        if len(segments) < 2 or segments[:2] != ['v2', 'key-value-stores']:
            return 'other'
        if len(segments) == 2:
            return 'store_get_or_create' if method == 'POST' else 'other'
        if len(segments) == 3:
            return {'GET': 'store_get', 'DELETE': 'store_delete'}.get(method, 'other')
        if len(segments) == 4 and segments[3] == 'keys' and method == 'GET':
            return 'list_keys'
        if len(segments) == 5 and segments[3] == 'records':
            return {
                'GET': 'record_get',
                'HEAD': 'record_head',
                'PUT': 'record_put',
                'POST': 'record_put',
                'DELETE': 'record_delete',
            }.get(method, 'other')
        return 'other'

    def _authorize(self, headers: dict[str, str], query: dict[str, str]) -> None:
        auth = headers.get('authorization', '')
        token = auth.removeprefix('Bearer ').strip() if auth.startswith('Bearer ') else query.get('token')
        if token != self.token:
            raise ApiError(401, 'token-not-valid', 'Authentication token is not valid.')

    def _dispatch(
        self,
        kind: str,
        method: str,
        segments: list[str],
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        json_headers = {'Content-Type': 'application/json; charset=utf-8'}
        if kind.startswith('datasets_'):
            return self.datasets.handle(method, segments, query, headers, body)
        if kind.startswith(('acts_', 'actors_', 'actor-runs_')):
            return self.runs.handle(method, segments, query, headers, body)
        if kind == 'store_get_or_create':
            return 201, json_headers, json.dumps({'data': self._store_json(self._get_or_create(query))}).encode()
        if kind == 'other':
            raise ApiError(404, 'page-not-found', f'The stand-in does not implement {method} /{"/".join(segments)}')
        store = self._store(segments[2])
        if kind == 'store_get':
            store.accessed_at = time.time()
            return 200, json_headers, json.dumps({'data': self._store_json(store)}).encode()
        if kind == 'store_delete':
            with self._lock:
                self.stores.pop(store.id, None)
            return 204, {}, b''
        if kind == 'list_keys':
            return 200, json_headers, json.dumps({'data': self._list_keys(store, query)}).encode()
        key = segments[4]
        if not KEY_PATTERN.match(key):
            raise ApiError(
                400,
                'invalid-record-key',
                f"Invalid record key {key[:300]!r}: a key must be 1-256 characters from a-zA-Z0-9!-_.'()",
            )
        if kind == 'record_put':
            return self._put_record(store, key, headers, body)
        with self._lock:
            record = store.records.get(key)
            if kind == 'record_delete':
                store.records.pop(key, None)
                store.stats['delete'] += 1
                store.modified_at = time.time()
                return 204, {}, b''
            store.stats['read'] += 1
        if record is None:
            raise ApiError(404, 'record-not-found', 'Record was not found')
        if kind == 'record_head':
            return 200, {'Content-Type': record.content_type}, b''
        out_headers = {'Content-Type': record.content_type}
        if record.encoding:
            out_headers['Content-Encoding'] = record.encoding
        return 200, out_headers, record.body

    def create_store(self, *, name: str | None) -> Store:
        """Get the key-value store named `name`, or create it (a new unnamed one if `name` is None)."""
        return self._get_or_create({'name': name} if name else {})

    def put_record(self, store_id: str, key: str, body: bytes, content_type: str) -> None:
        """Store a record as a client's PUT would (uncompressed)."""
        self._put_record(self._store(store_id), key, {'content-type': content_type}, body)

    def _get_or_create(self, query: dict[str, str]) -> Store:
        name = query.get('name') or None
        if name is not None and not STORE_NAME_PATTERN.match(name):
            raise ApiError(
                400,
                'invalid-value',
                'Name can only contain letters a-z, A-Z, digits and hyphens, not at its start or end.',
            )
        with self._lock:
            if name is not None:
                for store in self.stores.values():
                    if store.name == name:
                        return store
            store = Store(id=uuid.uuid4().hex[:17], name=name)
            self.stores[store.id] = store
            return store

    def _list_keys(self, store: Store, query: dict[str, str]) -> dict[str, Any]:
        try:
            limit = min(int(query.get('limit') or self.max_list_limit), self.max_list_limit)
        except ValueError:
            raise ApiError(400, 'invalid-parameter', 'Parameter "limit" must be an integer') from None
        if limit < 1:
            raise ApiError(400, 'invalid-parameter', 'Parameter "limit" must be at least 1')
        start = query.get('exclusiveStartKey') or None
        prefix = query.get('prefix') or ''
        with self._lock:
            keys = sorted(key for key in store.records if key.startswith(prefix) and (start is None or key > start))
            page = keys[:limit]
            items = [
                {
                    'key': key,
                    'size': len(store.records[key].body),
                    'recordPublicUrl': f'{self.url}/v2/key-value-stores/{store.id}/records/{quote(key, safe="")}',
                }
                for key in page
            ]
            store.stats['list'] += 1
            self.list_pages.append(len(page))
        truncated = len(keys) > limit
        return {
            'items': items,
            'count': len(items),
            'limit': limit,
            'exclusiveStartKey': start,
            'isTruncated': truncated,
            'nextExclusiveStartKey': page[-1] if truncated else None,
        }

    def _put_record(
        self, store: Store, key: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        encoding = headers.get('content-encoding', '').strip().lower()
        if encoding == 'identity':
            encoding = ''
        try:
            decoded = decode_body(body, encoding)
        except (ValueError, OSError, zlib.error) as exc:
            raise ApiError(400, 'invalid-request', f'The request body could not be decoded: {exc}') from None
        if len(decoded) > self.max_record_bytes:
            raise ApiError(
                413,
                'record-too-large',
                f'The record is {len(decoded)} bytes; the maximum record size is {self.max_record_bytes} bytes.',
            )
        content_type = headers.get('content-type') or 'application/octet-stream'
        with self._lock:
            store.records[key] = Record(body=body, content_type=content_type, encoding=encoding, size=len(decoded))
            store.stats['write'] += 1
            store.modified_at = time.time()
            self.largest_record = max(self.largest_record, len(decoded))
        return 201, {}, b''


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: PlatformStandIn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'  # keep-alive, as the real API
    timeout = 30  # an idle keep-alive connection frees its thread after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def _serve(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = self._read_body(headers)
        status, out_headers, out_body, _kind = self.server.api.handle(self.command, self.path, headers, body)
        try:
            self.send_response(status)
            for name, value in out_headers.items():
                self.send_header(name, value)
            no_body = self.command == 'HEAD' or status in (204, 304)
            self.send_header('Content-Length', '0' if no_body else str(len(out_body)))
            self.end_headers()
            if not no_body:
                self.wfile.write(out_body)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (a run killed mid-request)
            self.close_connection = True

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if 'chunked' in headers.get('transfer-encoding', '').lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b';', 1)[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return b''.join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(headers.get('content-length') or 0)
        return self.rfile.read(length) if length else b''

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass

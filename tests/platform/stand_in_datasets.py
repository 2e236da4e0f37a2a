"""The dataset endpoints of the Apify API MOCK (`stand_in.PlatformStandIn`), in memory.

    POST   /v2/datasets?name=<name>          get or create (no name: a new unnamed dataset)   201 {"data": dataset}
    GET    /v2/datasets/<id or ~name>        metadata                                          200 | 404
    DELETE /v2/datasets/<id>                 drop it                                           204
    GET    /v2/datasets/<id>/items           a page of items: ?offset=&limit=&desc=            200 [items]
                                             with X-Apify-Pagination-{Total,Offset,Limit,Count,Desc} headers
    POST   /v2/datasets/<id>/items           push one item (object) or many (array)            201

A page holds at most `max_items_per_page` items (the platform's cap is far higher; a small one makes clients
paginate in tests).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.platform.api_common import JSON_HEADERS, ApiError, decode_body, iso, json_reply

__all__ = ['Dataset', 'Datasets']

_Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Dataset:
    """One dataset of the mock: its items as JSON objects, in push order."""

    id: str
    name: str | None
    act_run_id: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    modified_at: float = field(default_factory=time.time)
    reads: int = 0
    writes: int = 0


class Datasets:
    """The datasets of the mock, and the answers to their endpoints (called from the server's threads)."""

    def __init__(self, *, base_url: Callable[[], str], max_items_per_page: int = 1000) -> None:
        self._base_url = base_url
        self.max_items_per_page = max_items_per_page
        self.by_id: dict[str, Dataset] = {}
        self.pages_served: list[int] = []
        """Number of items in each page of items served."""
        self._lock = threading.Lock()

    def create(self, *, name: str | None = None, act_run_id: str | None = None) -> Dataset:
        """Get the dataset named `name`, or create it (a new unnamed one if `name` is None)."""
        with self._lock:
            if name is not None:
                for dataset in self.by_id.values():
                    if dataset.name == name:
                        return dataset
            dataset = Dataset(id=uuid.uuid4().hex[:17], name=name, act_run_id=act_run_id)
            self.by_id[dataset.id] = dataset
            return dataset

    def get(self, ref: str) -> Dataset:
        """A dataset by id, or by name as `~name` or `username~name`."""
        with self._lock:
            dataset = self.by_id.get(ref)
            if dataset is None and '~' in ref:
                name = ref.split('~', 1)[1]
                dataset = next((d for d in self.by_id.values() if d.name == name), None)
        if dataset is None:
            raise ApiError(404, 'record-not-found', 'Dataset was not found')
        return dataset

    def handle(
        self, method: str, segments: list[str], query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Answer:
        """Answer a request under `/v2/datasets`."""
        if len(segments) == 2 and method == 'POST':
            return json_reply(201, self.to_json(self.create(name=query.get('name') or None)))
        if len(segments) < 3:
            raise ApiError(404, 'page-not-found', f'The mock does not implement {method} /{"/".join(segments)}')
        dataset = self.get(segments[2])
        if len(segments) == 3 and method == 'GET':
            return json_reply(200, self.to_json(dataset))
        if len(segments) == 3 and method == 'DELETE':
            with self._lock:
                self.by_id.pop(dataset.id, None)
            return 204, {}, b''
        if len(segments) == 4 and segments[3] == 'items' and method == 'GET':
            return self._list_items(dataset, query)
        if len(segments) == 4 and segments[3] == 'items' and method == 'POST':
            return self._push_items(dataset, headers, body)
        raise ApiError(404, 'page-not-found', f'The mock does not implement {method} /{"/".join(segments)}')

    def to_json(self, dataset: Dataset) -> dict[str, Any]:
        """The dataset's metadata, with the fields `DatasetResource` requires."""
        with self._lock:
            count = len(dataset.items)
        return {
            'id': dataset.id,
            'name': dataset.name,
            'userId': 'standInUser00001',
            'createdAt': iso(dataset.created_at),
            'modifiedAt': iso(dataset.modified_at),
            'accessedAt': iso(time.time()),
            'itemCount': count,
            'cleanItemCount': count,
            'actId': None,
            'actRunId': dataset.act_run_id,
            'consoleUrl': f'{self._base_url()}/console/datasets/{dataset.id}',
            'stats': {'readCount': dataset.reads, 'writeCount': dataset.writes, 'storageBytes': 0},
        }

    def _list_items(self, dataset: Dataset, query: dict[str, str]) -> _Answer:
        try:
            offset = int(query.get('offset') or 0)
            limit = min(int(query.get('limit') or self.max_items_per_page), self.max_items_per_page)
        except ValueError:
            raise ApiError(400, 'invalid-parameter', 'Parameters "offset" and "limit" must be integers') from None
        if offset < 0 or limit < 1:
            raise ApiError(400, 'invalid-parameter', '"offset" must be at least 0 and "limit" at least 1')
        desc = query.get('desc', '').lower() in ('1', 'true')
        with self._lock:
            items = list(reversed(dataset.items)) if desc else list(dataset.items)
            page = items[offset : offset + limit]
            dataset.reads += 1
            self.pages_served.append(len(page))
        out_headers = {
            **JSON_HEADERS,
            'X-Apify-Pagination-Total': str(len(items)),
            'X-Apify-Pagination-Offset': str(offset),
            'X-Apify-Pagination-Limit': str(limit),
            'X-Apify-Pagination-Count': str(len(page)),
            'X-Apify-Pagination-Desc': 'true' if desc else 'false',
        }
        return 200, out_headers, json.dumps(page).encode()

    def _push_items(self, dataset: Dataset, headers: dict[str, str], body: bytes) -> _Answer:
        try:
            parsed = json.loads(decode_body(body, headers.get('content-encoding', '')))
        except (ValueError, OSError, zlib.error) as exc:
            raise ApiError(400, 'invalid-request', f'The items are not JSON: {exc}') from None
        items = parsed if isinstance(parsed, list) else [parsed]
        if not all(isinstance(item, dict) for item in items):
            raise ApiError(400, 'invalid-request', 'Each item must be a JSON object')
        with self._lock:
            dataset.items.extend(items)
            dataset.writes += 1
            dataset.modified_at = time.time()
        return 201, {}, b''

"""A request manager that forwards every call to the one it wraps: the base of the managers that change a few."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crawlee.request_loaders import RequestManager
from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import timedelta

    from crawlee import Request
    from crawlee.storage_clients.models import ProcessedRequest


class ForwardingRequestManager(RequestManager):
    """Forwards every `RequestManager` call to `inner`; a subclass overrides only what it changes.

    Usage:
        ```python
        class LoggingRequestManager(ForwardingRequestManager):
            @override
            async def fetch_next_request(self) -> Request | None:
                request = await super().fetch_next_request()
                print('next:', request and request.url)
                return request
        ```
    """

    def __init__(self, inner: RequestManager) -> None:
        """Wrap `inner`."""
        self._inner = inner

    @property
    def inner(self) -> RequestManager:
        """The wrapped request manager."""
        return self._inner

    @override
    async def add_request(self, request: str | Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Add a request to the wrapped manager."""
        return await self._inner.add_request(request, forefront=forefront)

    @override
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
        if wait_time_between_batches is not None:  # the wrapped manager's own default otherwise
            options['wait_time_between_batches'] = wait_time_between_batches
        await self._inner.add_requests(requests, **options)

    @override
    async def fetch_next_request(self) -> Request | None:
        """The wrapped manager's next request."""
        return await self._inner.fetch_next_request()

    @override
    async def mark_request_as_handled(self, request: Request) -> ProcessedRequest | None:
        """Mark a request handled in the wrapped manager."""
        return await self._inner.mark_request_as_handled(request)

    @override
    async def reclaim_request(self, request: Request, *, forefront: bool = False) -> ProcessedRequest | None:
        """Give a request back to the wrapped manager for a retry."""
        return await self._inner.reclaim_request(request, forefront=forefront)

    @override
    async def get_handled_count(self) -> int:
        """Requests the wrapped manager handled."""
        return await self._inner.get_handled_count()

    @override
    async def get_total_count(self) -> int:
        """Requests in the wrapped manager."""
        return await self._inner.get_total_count()

    @override
    async def is_empty(self) -> bool:
        """Whether the wrapped manager has nothing to fetch now."""
        return await self._inner.is_empty()

    @override
    async def is_finished(self) -> bool:
        """Whether the wrapped manager has nothing to fetch and nothing in progress."""
        return await self._inner.is_finished()

    @override
    async def drop(self) -> None:
        """Drop the wrapped manager."""
        await self._inner.drop()

    @override
    async def purge(self) -> None:
        """Purge the wrapped manager (a shared map behind it is never purged: other runs rely on it)."""
        await self._inner.purge()

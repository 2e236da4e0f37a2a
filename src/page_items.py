"""Each item a handler pushes records the page it came from, so that a resumed run trusts only its own record.

A run killed with `kill -9` (or out of memory) loses what it did since its last sync: the pages it processed are
still `enqueued` in the shared store, and the links they found exist nowhere. Its dataset may already hold their
items. Those pages must be fetched again, or their links (the rest of the site below them) are never found; but
their items must not be saved twice.

So every item a page's handler pushes carries two hidden fields (the platform hides fields starting with `#` in
Console and skips them in exports with `skipHidden`): `#page`, the shared-map key of the request that pushed it, and
`#item`, its position among that page's items. When a run resumes, the items of its dataset whose page the store
does not hold as done name the pages fetched again; when such a page's handler pushes item `#item` again, it is not
saved a second time. Items that a handler pushes about *other* pages (a stub `{"url": product_url}` on a listing
page) carry the listing page's key, so they never make the product page count as done.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from apify import Actor
from crawlee.crawlers import BasicCrawlingContext

from .shared_map import DONE, map_key_of

logger = logging.getLogger(__name__)

PAGE_FIELD = '#page'
"""Hidden item field: the shared-map key of the page whose handler pushed the item."""
ITEM_FIELD = '#item'
"""Hidden item field: the item's position among the items that page's handler pushed (0, 1, ...)."""

Context = TypeVar('Context', bound=BasicCrawlingContext)


class PageItems:
    """Tags each pushed item with its page; after a crash, pages fetched again do not save their items twice.

    Usage:
        ```python
        pages = await PageItems.open(manager.shared)  # what this run's dataset holds of pages not done
        crawler = BeautifulSoupCrawler(request_handler=pages.wrap(router), request_manager=manager)
        ```
    """

    def __init__(self) -> None:
        # (page, item) saved by an earlier attempt of this run whose page the store does not hold as done.
        self._saved: set[tuple[str, int]] = set()
        self.not_saved_twice = 0
        """Items a page fetched again pushed, not saved since the earlier attempt had saved them."""

    def wrap(self, handler: Callable[[Context], Awaitable[None]]) -> Callable[[Context], Awaitable[None]]:
        """`handler` (e.g. a `Router`) with `context.push_data` tagging each item with its page and position."""

        async def tagged(context: Context) -> None:
            page = map_key_of(context.request)
            positions = itertools.count()  # a retry gets a new context, so it counts from 0 again
            push = context.push_data

            async def push_data(
                data: Any,
                dataset_id: str | None = None,
                dataset_name: str | None = None,
                dataset_alias: str | None = None,
                **kwargs: Any,
            ) -> None:
                items = [data] if isinstance(data, Mapping) else list(data)
                own_dataset = dataset_id is None and dataset_name is None and dataset_alias is None
                batch = []
                for item in items:
                    position = next(positions)
                    if own_dataset and (page, position) in self._saved:
                        self.not_saved_twice += 1
                        continue
                    batch.append({**item, PAGE_FIELD: page, ITEM_FIELD: position})
                if batch:
                    await push(batch, dataset_id, dataset_name, dataset_alias, **kwargs)

            await handler(context.create_modified_copy(push_data=push_data))

        return tagged

    @classmethod
    async def open(cls, statuses: Mapping[str, object]) -> PageItems:
        """Read this run's dataset (kept from an earlier attempt): the pages saved there but not done in the store.

        Those pages are fetched again (their links were lost with the earlier attempt), and the items already saved
        are not saved again.
        """
        page_items = cls()
        await page_items._resume(statuses)
        return page_items

    async def _resume(self, statuses: Mapping[str, object]) -> None:
        dataset = await Actor.open_dataset()
        if not (await dataset.get_metadata()).item_count:
            return
        pages: set[str] = set()
        async for item in dataset.iterate_items():
            page, position = item.get(PAGE_FIELD), item.get(ITEM_FIELD)
            if isinstance(page, str) and isinstance(position, int) and statuses.get(page) not in DONE:
                self._saved.add((page, position))
                pages.add(page)
        if pages:
            Actor.log.info(
                f'{len(pages)} pages saved in this dataset by an earlier attempt were not recorded as done in the '
                'shared store (it stopped before its next sync): they are fetched again to find their links, and '
                'their results are not saved twice.'
            )

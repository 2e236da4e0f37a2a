"""A migration on the Apify platform: the run's process is killed and restarted under the same run id.

The platform sends MIGRATING, then kills the process a little later. The shared map syncs on MIGRATING, but the
crawler would go on fetching and saving pages until the kill: pages saved in the dataset whose links were never
synced. The restarted run would fetch them again (`src/page_items.py`: a page counts as done only once the store
says so), wasted work. Hence, on MIGRATING, the crawler takes no new page, the pages in flight finish, and the shared
maps sync once more: everything in the dataset is then in the shared map, processed and with the links found on
it. The run then waits to be killed; the restarted run goes on from the shared map, without waiting for the other
runs to show up as a new crawl does: they may have finished meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from apify import Actor, Event

if TYPE_CHECKING:
    from crawlee.crawlers import BasicCrawler

    from .shared_map import SharedRequestManager

__all__ = ['joined_before', 'paused_on_migration']

logger = logging.getLogger(__name__)

IN_FLIGHT_TIMEOUT_SECS = 30.0
JOINED_KEY = 'CRAWL-JOINED'
"""A record in the run's default key-value store: an earlier process of this run joined the crawl."""


async def joined_before() -> bool:
    """On the platform, whether an earlier process of this run (before a migration) joined the crawl already.

    The first call in a run's first process records that it joined. Locally always False: a local run that starts
    again is a new run, with a new run id.
    """
    if not Actor.is_at_home():
        return False
    if await Actor.get_value(JOINED_KEY):
        Actor.log.info('This run restarted (a migration): it goes on with the crawl at once.')
        return True
    await Actor.set_value(JOINED_KEY, {'joined': True})
    return False


@contextlib.asynccontextmanager
async def paused_on_migration(crawler: BasicCrawler[Any, Any], manager: SharedRequestManager) -> AsyncIterator[None]:
    """While inside, a MIGRATING event pauses `crawler` and syncs `manager`'s maps once its pages in flight are done."""

    async def on_migrating(_data: object = None) -> None:
        logger.info('Migrating: no new page is fetched; the pages in flight finish, then the shared map syncs.')
        pool = crawler._autoscaled_pool  # crawlee has no public pause; `stop()` would end the run
        pool.pause()
        deadline = time.monotonic() + IN_FLIGHT_TIMEOUT_SECS
        while pool.current_concurrency > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - no "idle" hook
            await asyncio.sleep(0.05)
        maps = [manager.shared] + ([manager.info] if manager.info is not None else [])
        for shared in maps:
            await shared.sync()
        logger.info('Migrating: the shared map holds every page saved; waiting for the restart.')

    if not Actor.is_at_home():
        yield
        return
    Actor.on(Event.MIGRATING, on_migrating)
    try:
        yield
    finally:
        Actor.off(Event.MIGRATING, on_migrating)

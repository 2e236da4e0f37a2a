"""Checks a run makes before it starts other runs: its crawl, its shared store reachable, earlier results kept.

Which crawl a run belongs to is decided here (see `src/crawl_identity.py`): the input's `sharedStoreName`, or the
unnamed crawl this run's default store records (a resume), or a new one.

A crawl is *resumed* when its shared store already holds a shared map: the pages processed by earlier attempts are
not fetched again, so their results exist only in the datasets those attempts wrote. crawlee purges the run's
default dataset the first time it is opened (unless `CRAWLEE_PURGE_ON_START=0`, `apify run --no-purge`); this
module opens it first, without purging, so the earlier results stay and new ones are appended.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from apify import Actor

from .crawl_identity import CRAWL_RECORD, Crawl, crawl_id_of, new_store_name, recorded_store_name, results_key
from .crawl_options import CrawlOptions, prepare_crawl_options
from .input import CrawlerInput, InputError
from .shared_map import InvalidOptionError, StoreUnavailableError, open_store

if TYPE_CHECKING:
    from crawlee.storages import KeyValueStore

logger = logging.getLogger(__name__)


async def read_input() -> tuple[CrawlerInput, CrawlOptions] | None:
    """The run's input, validated, with the shared store checked and the crawl options prepared.

    Returns None (the run failed, saying why in one line) if anything is invalid.
    """
    try:
        crawl_input = CrawlerInput.parse(await Actor.get_input() or {})
        crawl_input = await prepare_shared_store(crawl_input)  # before children start; names an unnamed crawl's store
        options = await prepare_crawl_options(crawl_input)
    except InputError as exc:
        Actor.log.error(str(exc))
        await Actor.fail(status_message=str(exc))
        return None
    if crawl_input.unknown_fields:
        Actor.log.warning(f'Ignoring unknown input fields: {", ".join(crawl_input.unknown_fields)}')
    return crawl_input, options


async def prepare_shared_store(crawl_input: CrawlerInput) -> CrawlerInput:
    """Decide which crawl this run takes part in and open its store before any child run starts.

    When the store already holds a crawl, this run's dataset is kept (a resume adds to it).

    Returns:
        The input with the crawl's store (`shared_store_name`) and id (`crawl_id`).

    Raises:
        InputError: one line saying what to fix when the store cannot be opened (an unreachable database, with
            host and port but no password; a name crawlee would purge).
    """
    if not crawl_input.use_shared_map:
        return crawl_input
    recorded = None if crawl_input.named_crawl or crawl_input.is_child else await recorded_store_name()
    name = crawl_input.shared_store_name or recorded or new_store_name()
    crawl_input = dataclasses.replace(crawl_input, shared_store_name=name)
    try:
        store = await _open(crawl_input)
    except (StoreUnavailableError, InvalidOptionError) as exc:
        field = 'sharedStorageConnection' if crawl_input.shared_storage_connection else 'sharedStoreName'
        raise InputError(f'{field}: {exc}') from None
    resumed = await holds_shared_map(store)
    crawl_id = await crawl_id_of(store, create=not crawl_input.is_child)
    crawl_input = dataclasses.replace(crawl_input, crawl_id=crawl_id)
    if crawl_input.is_child or crawl_id is None:
        return crawl_input
    await Actor.set_value(CRAWL_RECORD, Crawl(crawl_id, name, named=crawl_input.named_crawl).to_record())
    if not resumed:
        if not crawl_input.named_crawl:
            Actor.log.info(
                f'A new crawl, with its state in the shared store "{name}" (a start without purging, e.g. '
                '`apify run --no-purge`, resumes it; set sharedStoreName to name a crawl you continue later).'
            )
        return crawl_input
    kept, dataset_id = await _open_dataset_without_purge()
    if not kept:  # emptied since an earlier merge into it (a purge): what that merge recorded no longer holds
        await store.delete_value(results_key(dataset_id))
    _warn_resume(crawl_input, kept)
    return crawl_input


def _warn_resume(crawl_input: CrawlerInput, kept: int) -> None:
    name = crawl_input.shared_store_name
    afresh = (
        f'python -m src.shared_map reset {name} (or use another sharedStoreName)'
        if crawl_input.named_crawl
        else 'start with purging (`apify run`, `python -m src`): that is a new crawl'
    )
    if kept:
        Actor.log.warning(
            f'Resuming the crawl in shared store "{name}": the {kept} results of earlier attempts stay in the '
            f'dataset and new ones are added. To start afresh: {afresh}.'
        )
    elif crawl_input.named_crawl and _input_key().startswith('__CLI'):
        # `apify run` (unless --no-purge) deletes the default dataset itself before starting the actor when the
        # project has an input schema; nothing the actor does can bring it back.
        Actor.log.warning(
            f'Resuming the crawl in shared store "{name}" under `apify run`, with an empty dataset: unless it was '
            'given --no-purge, the Apify CLI deleted the results of the earlier attempt in this folder before the '
            'run. Resume with `apify run --no-purge` to keep them.'
        )
    else:
        Actor.log.info(f'The shared store "{name}" already holds a crawl: continuing it.')


def _input_key() -> str:
    return os.environ.get('ACTOR_INPUT_KEY') or os.environ.get('APIFY_INPUT_KEY') or ''  # the CLI sets __CLI_INPUT


async def _open(crawl_input: CrawlerInput) -> KeyValueStore:
    # As `SharedMap.open` will: without a connection, through `Actor` (the Apify storage on the platform).
    return await open_store(crawl_input.shared_store_name, connection=crawl_input.shared_storage_connection)


async def holds_shared_map(store: KeyValueStore, prefix: str = 'SM') -> bool:
    """Whether the store holds records of a shared map with this key prefix (stops at the first one)."""
    async for meta in store.iterate_keys():
        if meta.key.startswith(f'{prefix}.'):
            return True
    return False


async def _open_dataset_without_purge() -> tuple[int, str]:
    """Open the run's default dataset without purging it (it stays open for the crawler); its item count and id."""
    configuration = Actor.configuration
    purge = configuration.purge_on_start
    configuration.purge_on_start = False  # read when the dataset is first opened; crawlee caches it after that
    try:
        dataset = await Actor.open_dataset()
    finally:
        configuration.purge_on_start = purge
    metadata = await dataset.get_metadata()
    return metadata.item_count, metadata.id

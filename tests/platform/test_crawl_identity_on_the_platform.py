"""On the platform stand-in (a MOCK of the Apify API): each new run of the actor is a new crawl, a resurrected run
(the same default store) continues its crawl, and a child run joins the store its input names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apify import Actor
from apify_client import ApifyClientAsync

from src.crawl_identity import CRAWL_ID_KEY, CRAWL_RECORD
from src.input import CrawlerInput
from src.preflight import prepare_shared_store
from tests.conftest import _reset_service_locator
from tests.platform.stand_in import PlatformStandIn
from tests.platform.test_platform_stand_in import RUN_A, RUN_B, platform_environment


@pytest.fixture
def api() -> Iterator[PlatformStandIn]:
    with PlatformStandIn(seed=7) as stand_in:
        yield stand_in


async def test_each_new_run_is_a_new_crawl_and_a_resurrected_run_continues_it(
    api: PlatformStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform_environment(api, monkeypatch)
    client = ApifyClientAsync(token=api.token, api_url=api.url)
    raw = {'startUrls': [{'url': 'https://example.com/'}], 'parallelRuns': 2}

    async def start(run_id: str, default_store: str, actor_input: dict[str, object]) -> CrawlerInput:
        """What a run's preflight decides, with `default_store` as its default key-value store."""
        store = await client.key_value_stores().get_or_create(name=default_store)
        monkeypatch.setenv('ACTOR_RUN_ID', run_id)
        monkeypatch.setenv('ACTOR_DEFAULT_KEY_VALUE_STORE_ID', store.id)
        _reset_service_locator()
        async with Actor(exit_process=False):
            return await prepare_shared_store(CrawlerInput.parse(actor_input))

    first = await start(RUN_A, 'default-of-run-a', raw)
    second = await start(RUN_B, 'default-of-run-b', raw)
    resurrected = await start(RUN_A, 'default-of-run-a', raw)
    child = await start(f'{RUN_B}x', 'default-of-a-child', {**raw, 'parentRunId': RUN_B, **{
        'sharedStoreName': second.shared_store_name}})  # fmt: skip

    assert first.shared_store_name.startswith('crawl-')
    assert second.shared_store_name != first.shared_store_name, 'a new run is a new crawl'
    assert second.crawl_id != first.crawl_id
    assert (resurrected.shared_store_name, resurrected.crawl_id) == (first.shared_store_name, first.crawl_id)
    assert (child.shared_store_name, child.crawl_id) == (second.shared_store_name, second.crawl_id), 'it joins'
    assert CRAWL_RECORD not in api.store_named('default-of-a-child').records, 'a child records no crawl of its own'
    for crawl in (first, second):
        assert CRAWL_ID_KEY in api.store_named(crawl.shared_store_name).records
    assert api.requests['other'] == 0, 'only the key-value store endpoints the stand-in implements'

"""Fan-out. The Apify platform API cannot be reached here: on the platform path, `Actor.start` is a MOCK."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apify import Actor

from src.fanout import child_input, fan_out
from src.input import CrawlerInput


@dataclass
class FakeRun:
    id: str


async def test_on_the_platform_it_starts_n_minus_1_runs_with_the_same_input(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[tuple[str, Any]] = []

    async def mock_start(actor_id: str, run_input: Any = None, **_: Any) -> FakeRun:  # MOCK of the platform API
        started.append((actor_id, run_input))
        return FakeRun(id=f'child{len(started)}')

    raw = {'startUrls': [{'url': 'https://a.example'}], 'parallelRuns': 4, 'sharedStoreName': 'crawl-x'}
    crawl_input = CrawlerInput.parse(raw)
    async with Actor(exit_process=False):
        monkeypatch.setattr(Actor, 'is_at_home', lambda: True)
        monkeypatch.setattr(Actor, 'start', mock_start)
        monkeypatch.setattr(Actor.configuration, 'actor_id', 'me/shared-map-crawler')
        children = await fan_out(crawl_input, 'parent-run')
    assert [child.run_id for child in children] == ['child1', 'child2', 'child3']
    assert all(actor_id == 'me/shared-map-crawler' for actor_id, _ in started)
    for _, run_input in started:
        assert run_input == {**raw, 'parentRunId': 'parent-run'}, 'same input, marked as a child'
        assert CrawlerInput.parse(run_input).is_child


async def test_a_child_never_fans_out_again() -> None:
    crawl_input = CrawlerInput.parse({'startUrls': ['https://a.example'], 'parallelRuns': 3, 'parentRunId': 'p'})
    async with Actor(exit_process=False):
        assert await fan_out(crawl_input, 'p-1') == []


def test_local_children_share_the_parent_store_folder(tmp_path: Path) -> None:
    crawl_input = CrawlerInput.parse({'startUrls': ['https://a.example'], 'parallelRuns': 2})
    raw = child_input(crawl_input, 'local-1', tmp_path)
    assert raw['sharedStorageConnection'] == f'file://{tmp_path.resolve()}'
    explicit = CrawlerInput.parse({**crawl_input.raw, 'sharedStorageConnection': 'sqlite+aiosqlite:////x.db'})
    assert child_input(explicit, 'local-1', tmp_path)['sharedStorageConnection'] == 'sqlite+aiosqlite:////x.db'

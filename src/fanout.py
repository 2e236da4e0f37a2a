"""Fan-out: one run starts `parallelRuns - 1` more runs of this actor that share the crawl through the shared map.

On the Apify platform they are new runs of this actor (`Actor.start`). Locally they are child processes
(`python -m src`), each with its own storage folder under `<storage>/parallel-runs/<run id>/` (its own queue,
dataset and INPUT, purged only by itself); they share only the named store, opened from the parent's folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apify import Actor

from .input import CrawlerInput

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUMMARY_PREFIX = 'RUN-SUMMARY.'


@dataclass
class ChildRun:
    """A run started by this one."""

    run_id: str
    process: subprocess.Popen[bytes] | None = None
    storage_dir: Path | None = None

    def stop_if_running(self) -> None:
        """Terminate a local child process that is still running (no-op on the platform)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    async def wait(self) -> int | None:
        """Wait until the run ends; its exit code (None on the platform, where the status says more)."""
        if self.process is not None:
            return await asyncio.to_thread(self.process.wait)
        await Actor.apify_client.run(self.run_id).wait_for_finish()
        return None


def child_input(crawl_input: CrawlerInput, parent_run_id: str, local_storage: Path | None) -> dict[str, Any]:
    """The input of a child run: the parent's, marked as a child; locally also where the shared store is."""
    raw = {**crawl_input.raw, 'parentRunId': parent_run_id}
    if local_storage is not None and not crawl_input.shared_storage_connection:
        raw['sharedStorageConnection'] = f'file://{local_storage.resolve()}'
    return raw


async def fan_out(crawl_input: CrawlerInput, run_id: str) -> list[ChildRun]:
    """Start `parallelRuns - 1` more runs with the same input, unless this run is itself a child."""
    count = crawl_input.parallel_runs - 1
    if count <= 0 or crawl_input.is_child:
        return []
    if Actor.is_at_home():
        actor_id = Actor.configuration.actor_id
        if not actor_id:
            raise RuntimeError('Cannot fan out: this run does not know its actor id (ACTOR_ID is not set).')
        runs = [await Actor.start(actor_id, run_input=child_input(crawl_input, run_id, None)) for _ in range(count)]
        Actor.log.info(f'Started {count} more runs: {", ".join(run.id for run in runs)}')
        return [ChildRun(run_id=run.id) for run in runs]
    storage = _local_storage_dir()
    children = [_start_local_child(crawl_input, run_id, storage, index) for index in range(1, count + 1)]
    Actor.log.info(
        f'Started {count} more local runs as processes; their storages and logs are in {storage / "parallel-runs"}'
    )
    return children


def _local_storage_dir() -> Path:
    return Path(Actor.configuration.storage_dir).resolve()


def _start_local_child(crawl_input: CrawlerInput, parent_run_id: str, storage: Path, index: int) -> ChildRun:
    run_id = f'{parent_run_id}-{index}'
    storage_dir = storage / 'parallel-runs' / run_id
    input_dir = storage_dir / 'key_value_stores' / 'default'
    input_dir.mkdir(parents=True, exist_ok=True)
    (input_dir / 'INPUT.json').write_text(json.dumps(child_input(crawl_input, parent_run_id, storage), indent=2))
    env = {
        **os.environ,
        'CRAWLEE_STORAGE_DIR': str(storage_dir),
        'APIFY_LOCAL_STORAGE_DIR': str(storage_dir),
        'ACTOR_RUN_ID': run_id,
        'APIFY_ACTOR_RUN_ID': run_id,
        'CRAWLEE_PURGE_ON_START': '1',  # purges only this child's own default storages
    }
    log = (storage_dir / 'log.txt').open('wb')
    process = subprocess.Popen(
        [sys.executable, '-m', 'src'], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    return ChildRun(run_id=run_id, process=process, storage_dir=storage_dir)


def summary_table(summaries: list[dict[str, Any]]) -> str:
    """A Markdown table of the runs' summaries."""
    lines = [
        '| run | pages | failed | known links skipped | handed over | taken over | skipped before fetch '
        '| syncs | store ops | ops/page | seconds | pages/s |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for s in summaries:
        pages = s['pagesProcessed']
        lines.append(
            f'| {s["runId"]} | {pages} | {s["pagesFailed"]} | {s["knownSkipped"]} | {s["handedOver"]} '
            f'| {s["takenOver"]} | {s["skippedBeforeFetch"]} | {s["syncs"]} | {s["storeOperations"]} '
            f'| {s["storeOperations"] / max(pages, 1):.3f} | {s["seconds"]:.1f} '
            f'| {pages / max(s["seconds"], 1e-9):.1f} |'
        )
    return '\n'.join(lines)

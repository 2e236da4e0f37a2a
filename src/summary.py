"""The end of a crawl: every run's summary in one table, and a verdict that says whether the crawl succeeded.

A run that crashed or was killed while the others covered for it is a warning; a crawl that fetched no page, or
that was stopped by a signal, ends with a non-zero exit code (`Actor.fail`/`Actor.exit`), so `apify run`, a shell
script or the platform sees what happened.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apify import Actor
from crawlee.crawlers import BasicCrawler
from crawlee.storages import KeyValueStore

from .fanout import OK, PROJECT_ROOT, SUMMARY_PREFIX, ChildRun, signal_name, status_of
from .results import merge_results
from .shared_map import PROCESSED

if TYPE_CHECKING:
    from .input import CrawlerInput
    from .shared_map import SharedRequestManager
    from .supervisor import Supervisor

_COUNTS = ['pagesFailed', 'knownSkipped', 'handedOver', 'takenOver', 'skippedBeforeFetch', 'syncs', 'storeOperations']


@dataclass(frozen=True)
class Verdict:
    """How the crawl ended: the exit code, a one-line message, and the warnings to log."""

    exit_code: int
    message: str
    warnings: list[str] = field(default_factory=list)


async def child_row(child: ChildRun, store: KeyValueStore) -> dict[str, Any]:
    """A finished child's row: its summary from the shared store, or what its dataset shows if it wrote none."""
    status = status_of(child.exit_code, child.platform_status)
    summary = await store.get_value(f'{SUMMARY_PREFIX}{child.run_id}')
    if isinstance(summary, dict):
        return {**summary, 'status': status}
    # No summary: it died before the end. Its dataset still holds the pages it processed.
    items = child.dataset_items()
    row: dict[str, Any] = {'runId': f'{child.run_id} (no summary)', 'status': status, 'pagesProcessed': items}
    row |= dict.fromkeys(_COUNTS)
    row |= {'seconds': None, 'topError': child.last_error()}
    return row


async def finish_run(
    crawl_input: CrawlerInput,
    run_id: str,
    crawler: BasicCrawler[Any, Any],
    manager: SharedRequestManager,
    supervisor: Supervisor,
    *,
    started: float,
) -> None:
    """Write this run's summary (OUTPUT, and the shared store for the parent's table); the parent reports every run.

    A crawl that did not succeed (no page fetched, every run failed, a stop signal) fails the run with its exit code.
    """
    state = crawler.statistics.state
    maps = [manager.shared] + ([manager.info] if manager.info is not None else [])
    summary = {
        'runId': run_id,
        'pagesProcessed': state.requests_finished,
        'pagesFailed': state.requests_failed,
        **{_camel(name): value for name, value in manager.stats.to_dict().items()},
        'storeOperations': sum(shared.stats.store_operations for shared in maps),
        # By kind, to price a crawl: on the platform a listing costs like a write, a read a tenth of one.
        'storeReads': sum(shared.stats.store_reads for shared in maps),
        'storeWrites': sum(shared.stats.store_writes for shared in maps),
        'storeDeletes': sum(shared.stats.store_deletes for shared in maps),
        'storeLists': sum(shared.stats.store_lists for shared in maps),
        'entriesInMap': len(manager.shared),
        # Pages any run of the crawl processed, earlier attempts included: a resumed crawl may have nothing to do.
        'processedInCrawl': sum(1 for status in manager.shared.values() if status == PROCESSED),
        'seconds': round(time.monotonic() - started, 2),
        'topError': top_error(crawler),
        # Changes the shared store did not take at close (it stopped answering): their pages are fetched again later.
        'unsavedChanges': manager.unsaved_changes,
    }
    await Actor.set_value('OUTPUT', summary)
    store = manager.shared.store
    if not manager.unsaved_changes:  # a store that just failed to answer would hold the exit up once more
        await store.set_value(f'{SUMMARY_PREFIX}{run_id}', summary)
    Actor.log.info(f'Run summary: {summary}')
    verdict = await report_runs(
        summary, supervisor.children, store, whole_crawl=not crawl_input.is_child, stopped_by=supervisor.stop_signal
    )
    if manager.unsaved_changes and not verdict.exit_code:
        verdict = Verdict(
            1,
            f'The shared store did not take {manager.unsaved_changes} changes of this run at its end: the crawl is '
            'not finished. Run it again to fetch the pages they cover.',
            verdict.warnings,
        )
        Actor.log.error(verdict.message)
    if not crawl_input.is_child:  # the runs have ended: one result set, every item of this crawl once
        merged = await merge_results(crawl_input, supervisor.children, store)
        await Actor.set_value('OUTPUT', summary | merged.to_summary())
    if verdict.exit_code:
        await Actor.fail(exit_code=verdict.exit_code, status_message=verdict.message)


def _camel(name: str) -> str:
    head, *rest = name.split('_')
    return head + ''.join(part.title() for part in rest)


async def report_runs(
    own: dict[str, Any], children: list[ChildRun], store: KeyValueStore, *, whole_crawl: bool, stopped_by: int | None
) -> Verdict:
    """Wait for the children, log the table of every run and the verdict; the verdict for `main` to exit with.

    Args:
        own: This run's summary.
        children: The runs this one started (they are waited for).
        store: The shared store, where each run leaves its summary.
        whole_crawl: Whether this run speaks for the whole crawl (the parent, or a single run); a child does not
            fail for fetching nothing, since the others may have fetched everything.
        stopped_by: The signal that stopped this run, if any.
    """
    for child in children:
        await child.wait()
    rows = [{**own, 'status': status_of(128 + stopped_by if stopped_by else 0)}]
    rows += [await child_row(child, store) for child in children]
    if children:
        Actor.log.info('Parallel runs:\n' + summary_table(rows))
    verdict = judge(rows, whole_crawl=whole_crawl, stopped_by=stopped_by)
    for warning in verdict.warnings:
        Actor.log.warning(warning)
    if verdict.exit_code:
        Actor.log.error(verdict.message)
    else:
        Actor.log.info(verdict.message)
    return verdict


def judge(rows: list[dict[str, Any]], *, whole_crawl: bool, stopped_by: int | None) -> Verdict:
    """The verdict on a crawl from every run's row (the first row is this run)."""
    pages = sum(row['pagesProcessed'] or 0 for row in rows)
    failed_pages = sum(row['pagesFailed'] or 0 for row in rows)
    warnings = [
        f'Run {row["runId"]} ended {row["status"]}'
        + (f': {row["topError"]}' if row.get('topError') else '')
        + ('; the other runs took over its URLs.' if whole_crawl and not stopped_by else '.')
        for row in rows[1:]
        if row['status'] != OK and not (stopped_by and row['status'].startswith('stopped'))
    ]
    if failed_pages and pages:  # with no page fetched at all, the verdict itself says why
        errors = sorted({row['topError'] for row in rows if row.get('topError')})
        noun = 'page' if failed_pages == 1 else 'pages'
        warnings.append(
            f'{failed_pages} {noun} failed after all retries' + (f': {"; ".join(errors)}' if errors else '.')
        )
    if stopped_by is not None:
        name = signal_name(stopped_by)
        return Verdict(128 + stopped_by, f'Stopped by {name} after {pages} pages. {resume_hint()}', warnings)
    in_crawl = max(pages, rows[0].get('processedInCrawl') or 0)
    if whole_crawl and pages == 0 and in_crawl:
        return Verdict(0, f'Nothing left to fetch: the {in_crawl} pages of this crawl were processed before.', warnings)
    if whole_crawl and pages == 0:
        errors = sorted({row['topError'] for row in rows if row.get('topError')})
        cause = f': {"; ".join(errors)}' if errors else ''
        return Verdict(
            1, f'No page was fetched ({failed_pages} failed){cause}. Check startUrls and the site.', warnings
        )
    if whole_crawl and all(row['status'] != OK for row in rows):
        return Verdict(1, f'Every run failed ({pages} pages processed).', warnings)
    runs = 'run' if len(rows) == 1 else 'runs'
    return Verdict(0, f'The crawl ended: {pages} pages processed by {len(rows)} {runs}.', warnings)


def top_error(crawler: BasicCrawler[Any, Any]) -> str | None:
    """The crawler's most common error (with its count), to say in the summary why pages failed."""
    errors = crawler.statistics.error_tracker.get_most_common_errors(1)
    return f'{errors[0][0]} ({errors[0][1]}x)' if errors else None


def resume_hint() -> str:
    """Commands that resume the crawl: the same run again without purging (the shared store keeps the state)."""
    python = Path(sys.executable)
    if python.is_relative_to(PROJECT_ROOT):
        python = python.relative_to(PROJECT_ROOT)
    return (
        f'To resume, run in {PROJECT_ROOT}: `apify run --no-purge`, or `CRAWLEE_PURGE_ON_START=0 {python} -m src` '
        "(the shared store remembers what was done; purging would empty this run's dataset)."
    )


def summary_table(summaries: list[dict[str, Any]]) -> str:
    """A Markdown table of the runs' summaries (`-` where a run left no summary)."""
    lines = [
        '| run | status | pages | failed | known links skipped | handed over | taken over | skipped before fetch '
        '| syncs | store ops | ops/page | seconds | pages/s |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for s in summaries:
        pages, ops, seconds = s['pagesProcessed'], s['storeOperations'], s['seconds']
        cells = [s['runId'], s.get('status', OK), _cell(pages), *(_cell(s[name]) for name in _COUNTS)]
        cells.append(f'{ops / max(pages, 1):.3f}' if ops is not None and pages is not None else '-')
        cells.append(f'{seconds:.1f}' if seconds is not None else '-')
        cells.append(f'{pages / max(seconds, 1e-9):.1f}' if seconds is not None and pages is not None else '-')
        lines.append('| ' + ' | '.join(str(cell) for cell in cells) + ' |')
    return '\n'.join(lines)


def _cell(value: object) -> str:
    return '-' if value is None else str(value)

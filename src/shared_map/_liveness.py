"""Which runs are alive, and this run's own run record.

Liveness is seen through the log records runs write (timed on this run's own clock). The run record holds this
run's statistics and heartbeat for people and tools (`inspect`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._records import CONTENT_TYPE, dumps, envelope

if TYPE_CHECKING:
    from ._stats import RunStats
    from ._store import RecordStore

logger = logging.getLogger(__name__)


class RunsSeen:
    """Other runs as seen through their log records: when each was last seen, and whether it finished.

    Writers with `heartbeat_secs` write a record at least that often, and `close()` writes a final one. Sightings
    are timed on this run's monotonic clock, so clock skew between machines does not matter.
    """

    def __init__(self, own_run: str, wall_ms: Callable[[], int]) -> None:
        self._own_run = own_run
        self._wall_ms = wall_ms
        self._runs: dict[str, tuple[float, bool]] = {}  # run -> (last seen, monotonic; finished)

    def saw(self, run: str, body: dict[str, Any]) -> None:
        """Note a log record of `run` just read."""
        if run == self._own_run:
            return  # A record of an earlier incarnation of this run (before a restart).
        now = time.monotonic()
        written = body.get('writtenAt')
        # An old record (e.g. read at initialize) means an older sighting; clocks differ, so never in the future.
        age = max(0.0, (self._wall_ms() - written) / 1000) if isinstance(written, int) else 0.0
        seen = now - age
        previous = self._runs.get(run)
        finished = body.get('final') is True or (previous is not None and previous[1] and previous[0] >= seen)
        if previous is None or seen >= previous[0]:
            self._runs[run] = (seen, finished)

    def live(self, dead_after_secs: float) -> set[str]:
        """The other runs seen within `dead_after_secs` that did not finish."""
        now = time.monotonic()
        return {run for run, (seen, done) in self._runs.items() if not done and now - seen < dead_after_secs}

    def finished(self) -> list[str]:
        """The runs whose final record this run has read."""
        return sorted(run for run, (_, done) in self._runs.items() if done)


class RunRecord:
    """This run's statistics and heartbeat in a record only this run writes, rewritten every `interval_secs`."""

    def __init__(
        self, records: RecordStore, *, run_id: str, interval_secs: float, wall_ms: Callable[[], int], stats: RunStats
    ) -> None:
        self._records = records
        self._run_id = run_id
        self._interval = interval_secs
        self._wall_ms = wall_ms
        self._stats = stats
        self._started_at = wall_ms()
        self._last_written = float('-inf')

    def due(self) -> bool:
        """Whether the record is older than its interval."""
        return time.monotonic() - self._last_written >= self._interval

    async def write(self, *, finished: bool, entries: int, pending: int) -> None:
        """Write the record; statistics are best effort, so a failure is only logged (the data path reports its own)."""
        self._last_written = time.monotonic()
        body = envelope(
            'run',
            run=self._run_id,
            startedAt=self._started_at,
            lastSyncAt=self._wall_ms(),
            finished=finished,
            entries=entries,
            pending=pending,
            stats=self._stats.to_dict(),
        )
        try:
            await self._records.store.set_value(
                self._records.keys.run(self._run_id), dumps(body), content_type=CONTENT_TYPE
            )
        except Exception as exc:
            logger.warning('Shared map: could not write the run record: %s', exc)

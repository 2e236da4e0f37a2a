"""Which other runs are alive, as seen through the log records they write (timed on this run's own clock)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


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

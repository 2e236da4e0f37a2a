"""The pacer behind `maxRequestsPerMinute`: turns spaced by the run's share, given back when unused, bounded waits."""

from __future__ import annotations

import time

from src.paced_request_manager import MAX_PACE_WAIT_SECS, Pacer


async def test_turns_are_spaced_by_the_share_of_the_live_runs() -> None:
    live = [1]
    pacer = Pacer(600, live_runs=lambda: live[0])  # 10 a second for the whole crawl
    times = []
    for turn in range(8):
        live[0] = 1 if turn < 4 else 3  # two more runs join: this run's share drops to a third
        assert await pacer.take_turn() is not None
        times.append(time.monotonic())
    # Turn i is never earlier than the intervals of the turns before it, each set when that turn was taken. (Not
    # each gap: the pacer keeps its cadence, so a turn woken late on a loaded machine is followed by a shorter gap;
    # the rate over any run of turns is what the limit is about.)
    intervals = [0.1] * 4 + [0.3] * 4
    for i in range(1, len(times)):
        assert times[i] - times[0] >= sum(intervals[:i]) - 0.005, (i, times)


async def test_a_turn_given_back_is_taken_again_at_once() -> None:
    pacer = Pacer(6, live_runs=lambda: 1)  # one turn every 10 s
    first = await pacer.take_turn()
    assert first is not None
    pacer.give_back(first)  # no request was fetched in that turn
    started = time.monotonic()
    assert await pacer.take_turn() is not None
    assert time.monotonic() - started < 0.5


async def test_a_task_waits_at_most_a_bounded_time_for_a_far_turn() -> None:
    pacer = Pacer(1, live_runs=lambda: 1)  # one turn a minute
    assert await pacer.take_turn() is not None
    started = time.monotonic()
    assert await pacer.take_turn() is None, 'the next turn is a minute away: the task returns empty-handed'
    assert MAX_PACE_WAIT_SECS - 0.05 <= time.monotonic() - started < MAX_PACE_WAIT_SECS + 1.0

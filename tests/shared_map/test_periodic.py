"""`RecurringTask`: one policy for errors and cancellation, for every recurring background job."""

from __future__ import annotations

import asyncio
import logging

import pytest

from src.shared_map import RecurringTask, SyncError


async def test_a_failing_call_is_logged_by_kind_and_the_calls_go_on(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[BaseException] = [SyncError('the store said no'), KeyError('a bug')]
    calls = 0

    async def action() -> None:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)

    with caplog.at_level(logging.WARNING):
        async with RecurringTask(action, interval_secs=0.01, name='t', what='Test job') as task:
            for _ in range(200):
                if calls >= 4:
                    break
                await asyncio.sleep(0.01)
            assert task.running
    assert not task.running
    assert calls >= 4, 'neither failure ended the task'
    expected, bug = (r for r in caplog.records if r.name == 'src.shared_map._periodic')
    assert (expected.levelno, expected.exc_info) == (logging.WARNING, None)
    assert 'Test job failed, will retry in 0.0 s: the store said no' in expected.getMessage()
    assert bug.levelno == logging.ERROR
    assert bug.exc_info is not None, 'an unexpected error is logged with its traceback'


async def test_stop_waits_for_the_call_in_progress_and_ends_a_pause_at_once() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished = 0

    async def action() -> None:
        nonlocal finished
        started.set()
        await release.wait()
        finished += 1

    task = RecurringTask(action, interval_secs=0.01, name='t', what='Test job')
    task.start()
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(task.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done(), 'stop() waits while a call is in progress'
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert finished == 1, 'the call in progress finished; no call after stop()'

    idle = RecurringTask(action, interval_secs=3600, name='t', what='Test job')
    idle.start()
    await asyncio.wait_for(idle.stop(), 1)  # during the pause: at once
    assert finished == 1


async def test_cancelling_the_caller_of_stop_cancels_the_call_in_progress() -> None:
    started = asyncio.Event()
    cancelled = False

    async def action() -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled = True
            raise

    task = RecurringTask(action, interval_secs=0.01, name='t', what='Test job')
    task.start()
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(task.stop())
    await asyncio.sleep(0.02)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await asyncio.sleep(0)
    assert cancelled
    assert not task.running


async def test_a_pause_function_is_asked_again_when_woken() -> None:
    due = asyncio.Event()
    called = asyncio.Event()
    asked = 0

    async def still_to_wait() -> float:
        nonlocal asked
        asked += 1
        return 0.0 if due.is_set() else 3600.0

    async def action() -> None:
        due.clear()
        called.set()

    async with RecurringTask(action, interval_secs=still_to_wait, name='t', what='Test job') as task:
        await asyncio.sleep(0.05)
        assert not called.is_set(), 'the function said to wait'
        due.set()
        task.wake()
        await asyncio.wait_for(called.wait(), 1)
    assert asked >= 2

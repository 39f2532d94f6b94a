"""run_eagerly: inline when a coroutine never waits or waits only on a commit, a task (driven as asyncio
drives it) when it waits on anything else."""

from __future__ import annotations

import asyncio

import pytest

from gateway.datapath.fast.eager import run_eagerly
from gateway.state.sqlite_store import CommitFuture


class Outcome:
    def __init__(self) -> None:
        self.done: list[object] = []
        self.failed: list[BaseException] = []
        self.settled = asyncio.Event()

    def on_done(self, value: object) -> None:
        self.done.append(value)
        self.settled.set()

    def on_failed(self, exc: BaseException) -> None:
        self.failed.append(exc)
        self.settled.set()


async def test_a_coroutine_that_never_waits_finishes_inline() -> None:
    async def inner() -> int:
        return 1

    async def outer() -> int:
        return await inner() + 1

    outcome = Outcome()
    assert run_eagerly(outer(), outcome.on_done, outcome.on_failed) is None
    assert outcome.done == [2]  # before this line: no loop turn was needed


async def test_an_error_raised_inline_is_reported_inline() -> None:
    async def broken() -> None:
        raise ValueError("bad")

    outcome = Outcome()
    run_eagerly(broken(), outcome.on_done, outcome.on_failed)
    assert isinstance(outcome.failed[0], ValueError)


@pytest.mark.parametrize("fails", [False, True])
async def test_a_coroutine_that_waits_continues_in_a_task(fails: bool) -> None:
    gate = asyncio.Event()

    async def waits() -> str:
        await gate.wait()
        await asyncio.sleep(0)  # a bare yield too
        assert asyncio.current_task() is not None  # later steps run inside the task, as timeouts need
        await asyncio.wait_for(asyncio.sleep(0), 1)
        if fails:
            raise KeyError("late")
        return "late"

    outcome = Outcome()
    task = run_eagerly(waits(), outcome.on_done, outcome.on_failed)
    assert task is not None and not outcome.done and not outcome.failed
    gate.set()
    await asyncio.wait_for(outcome.settled.wait(), 2)
    assert (outcome.failed and isinstance(outcome.failed[0], KeyError)) if fails else outcome.done == ["late"]


async def test_cancelling_the_task_reaches_the_coroutine() -> None:
    seen: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    outcome = Outcome()
    task = run_eagerly(waits(), outcome.on_done, outcome.on_failed)
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(outcome.settled.wait(), 2)
    assert seen == ["cancelled"] and isinstance(outcome.failed[0], asyncio.CancelledError)


async def test_inline_false_always_uses_a_task() -> None:
    async def quick() -> int:
        return 5

    outcome = Outcome()
    assert run_eagerly(quick(), outcome.on_done, outcome.on_failed, inline=False) is not None
    await asyncio.wait_for(outcome.settled.wait(), 2)
    assert outcome.done == [5]


@pytest.mark.parametrize("fails", [False, True])
async def test_a_coroutine_waiting_on_a_commit_is_resumed_without_a_task(fails: bool) -> None:
    loop = asyncio.get_running_loop()
    commits = [CommitFuture(loop=loop), CommitFuture(loop=loop)]
    seen: list[object] = []

    async def records() -> int:
        seen.append(await commits[0])
        seen.append(asyncio.current_task())  # no task was made for it
        return await commits[1]

    outcome = Outcome()
    assert run_eagerly(records(), outcome.on_done, outcome.on_failed) is None
    loop.call_soon(commits[0].set_result, 1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [1, None] and not outcome.settled.is_set()
    if fails:
        commits[1].set_exception(KeyError("lost"))
    else:
        commits[1].set_result(2)
    await asyncio.wait_for(outcome.settled.wait(), 2)
    assert (outcome.failed and isinstance(outcome.failed[0], KeyError)) if fails else outcome.done == [2]


async def test_after_a_commit_any_other_wait_continues_in_a_task() -> None:
    commit = CommitFuture(loop=asyncio.get_running_loop())

    async def records_then_waits() -> str:
        await commit
        await asyncio.sleep(0.01)
        assert asyncio.current_task() is not None
        return "done"

    outcome = Outcome()
    run_eagerly(records_then_waits(), outcome.on_done, outcome.on_failed)
    commit.set_result(1)
    await asyncio.wait_for(outcome.settled.wait(), 2)
    assert outcome.done == ["done"]

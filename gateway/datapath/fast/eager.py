"""Run a decision coroutine inline, and give it a task only if it really waits.

The pipeline's decisions are coroutines (store lookups, affinity probes), but with the SQLite store most
never wait: a lookup is one primary-key statement run on the loop. A task per request costs scheduling for
nothing, far more than running the coroutine inline, so the fast path steps the coroutine itself and only
when it yields a future does a task take over, driving it exactly as asyncio.Task would.

One wait needs no task: a POST /prompt's affinity record waits for the end of the loop turn, where writes
share one commit (sqlite_store's CommitFuture, which runs nothing of the waiter's until it resumes). A
coroutine waiting on one is resumed from its done-callback, as Task.__step would resume it, which spares a
decision that waits once (every POST /prompt) the cost of creating and scheduling a task. Any other future
(one a timeout or a cancellation may need a task for) gets the task.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from gateway.state.sqlite_store import CommitFuture

T = TypeVar("T")

Done = Callable[[Any], None]
Failed = Callable[[BaseException], None]


def run_eagerly(
    coro: Coroutine[Any, Any, T], done: Done, failed: Failed, *, inline: bool = True
) -> asyncio.Task[Any] | None:
    """Call `done(result)` or `failed(exception)`; inline when the coroutine finishes without waiting.

    Returns the task that took over, or None when it finished inline. `inline=False` always uses a task (for
    stores whose calls may rely on running inside one, e.g. for their own timeouts).
    """
    if not inline:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda t: _report(t, done, failed))
        return task
    return _step(coro, done, failed)


def _step(
    coro: Coroutine[Any, Any, Any], done: Done, failed: Failed, _settled: object = None
) -> asyncio.Task[Any] | None:
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        done(stop.value)
        return None
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, who renders it
        failed(exc)
        return None
    if type(yielded) is CommitFuture and yielded._asyncio_future_blocking:
        yielded._asyncio_future_blocking = False
        # Its result or error reaches the coroutine's await when resumed.
        yielded.add_done_callback(functools.partial(_step, coro, done, failed))
        return None
    task = asyncio.get_running_loop().create_task(_drive(coro, yielded))
    task.add_done_callback(lambda t: _report(t, done, failed))
    return task


def _report(task: asyncio.Task[Any], done: Done, failed: Failed) -> None:
    if task.cancelled():
        failed(asyncio.CancelledError())
    elif task.exception() is not None:
        failed(task.exception())  # type: ignore[arg-type]
    else:
        done(task.result())


async def _drive(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    """Continue a coroutine that yielded `yielded` as asyncio.Task would: wait for the future it yielded (or one
    loop turn for a bare yield), resume it, repeat; a cancellation of this task is passed to the future."""
    try:
        while True:
            if yielded is None:
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError as exc:
                    yielded = _throw(coro, exc)
                    continue
            elif not getattr(yielded, "_asyncio_future_blocking", False):
                yielded = _throw(coro, RuntimeError(f"coroutine yielded {yielded!r}, not a future"))
                continue
            else:
                yielded._asyncio_future_blocking = False
                while not yielded.done():
                    try:
                        await _settled(yielded)
                    except asyncio.CancelledError:
                        yielded.cancel()
            try:
                yielded = coro.send(None)
            except StopIteration as stop:
                return cast(T, stop.value)
    except _Finished as finished:
        return cast(T, finished.value)


def _throw(coro: Coroutine[Any, Any, Any], exc: BaseException) -> Any:
    try:
        return coro.throw(exc)
    except StopIteration as stop:
        raise _Finished(stop.value) from None


class _Finished(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


def _settled(future: asyncio.Future[Any]) -> asyncio.Future[None]:
    """A future that completes (never fails) when `future` does, so waiting on it never raises its error."""
    waiter: asyncio.Future[None] = future.get_loop().create_future()

    def settle(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(settle)
    return waiter

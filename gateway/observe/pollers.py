"""Background polls for the metrics no request carries: each backend's queue depth, the outcome and execution
time of the prompts this process submitted, and the affinity store's size. Run `poll_forever` as a task.

Why poll rather than listen: ComfyUI sends execution_* events only to the socket of the client that submitted
the prompt, so a socket of the gateway's own hears nothing about them. The history entry keeps those events
(status.messages, with timestamps). A poll reads the newest few entries, doubling the window until it reaches
back to the previous poll's newest ones, so it costs little when few prompts finish and still misses none when
many do. Queue depth comes from GET /prompt (`queue_remaining`, a few bytes) rather than GET /queue, whose
answer carries every queued prompt whole, UI workflows included.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from gateway import __version__
from gateway.backends.calls import BackendCalls
from gateway.backends.queues import QueueLengths
from gateway.backends.table import Backend, BackendTable
from gateway.core.errors import UpstreamError
from gateway.observe.metrics import GatewayMetrics
from gateway.observe.prompt_outcomes import read_finished
from gateway.state.store import StateStore, StoreError

log = logging.getLogger("comfy_gateway.metrics")

HISTORY_WINDOW = 8  # entries read per poll while few prompts finish between two polls
MAX_HISTORY_WINDOW = 256
MAX_HISTORY_BYTES = 32 * 1024 * 1024
MAX_PROMPT_INFO_BYTES = 64 * 1024
# Background traffic says so, like the health checks, so a backend's own logs can tell it from clients'.
POLL_HEADERS = {"User-Agent": f"comfy-gateway/{__version__} health-check (metrics poll)"}


class BackendPoller:
    """One backend's queue depth and the settling of the prompts submitted to it through this process."""

    def __init__(
        self,
        calls: BackendCalls,
        backend: Backend,
        metrics: GatewayMetrics,
        *,
        timeout_seconds: float,
        queues: QueueLengths | None = None,
    ):
        self._calls = calls
        self._backend = backend
        self._metrics = metrics
        self._queues = queues
        self._timeout_seconds = timeout_seconds
        self._recent: frozenset[str] = frozenset()  # the newest entry ids the previous history read saw

    async def poll(self) -> None:
        name = self._backend.name
        try:
            await self._read_queue_depth()
            if self._metrics.submitted.waiting(name):
                await self._settle_finished_prompts()
        except (UpstreamError, ValueError) as exc:
            # A backend that is down is the health check's news (logged there once); here it is a counter.
            self._metrics.poll_failed(name)
            log.debug("metrics poll of backend %s failed: %s", name, exc)
        forgotten = self._metrics.submitted.forget_older_than_max_age(name)
        if forgotten:
            log.info("stopped following %d prompts on backend %s that never reached its history", forgotten, name)

    async def _read_queue_depth(self) -> None:
        body = await self._get_json("/prompt", MAX_PROMPT_INFO_BYTES)
        try:
            remaining = body["exec_info"]["queue_remaining"]
        except (KeyError, TypeError):
            raise ValueError("GET /prompt answer has no exec_info.queue_remaining") from None
        if not isinstance(remaining, int) or isinstance(remaining, bool):
            raise ValueError(f"queue_remaining is {remaining!r}, not an integer")
        self._metrics.set_queue_depth(self._backend.name, remaining)
        if self._queues is not None:
            self._queues.polled(self._backend.name, remaining)

    async def _settle_finished_prompts(self) -> None:
        name = self._backend.name
        waiting = self._metrics.submitted.waiting(name)
        window = HISTORY_WINDOW
        while True:
            history = await self._get_json(f"/history?max_items={window}", MAX_HISTORY_BYTES)
            if not isinstance(history, dict):
                raise ValueError("GET /history answer is not a JSON object")
            if (
                len(history) < window  # the whole history
                or window >= MAX_HISTORY_WINDOW
                or not self._recent.isdisjoint(history)  # reaches back to what the previous poll saw
                or all(pid in history for pid in waiting)
            ):
                break
            window = min(window * 2, MAX_HISTORY_WINDOW)
        for pid, entry in history.items():
            if pid in waiting:
                self._metrics.submitted.take(name, pid)
                finished = read_finished(entry)
                if finished is not None:
                    self._metrics.prompt_finished(name, finished)
        self._recent = frozenset(list(history)[-HISTORY_WINDOW:])

    async def _get_json(self, target: str, max_bytes: int) -> Any:
        reply = await self._calls.fetch(
            self._backend, "GET", target, POLL_HEADERS, timeout_seconds=self._timeout_seconds, max_bytes=max_bytes,
            retry=False,
        )
        if reply.status != 200:
            raise UpstreamError(
                f"backend {self._backend.name!r} answered GET {target} with {reply.status}", backend=self._backend.name
            )
        return json.loads(reply.body)


async def read_affinity_size(store: StateStore, metrics: GatewayMetrics) -> None:
    try:
        metrics.set_affinity_size(await store.count_prompts())
    except StoreError as exc:
        log.debug("affinity store size unavailable: %s", exc)


async def poll_forever(
    backends: BackendTable,
    calls: BackendCalls,
    store: StateStore,
    metrics: GatewayMetrics,
    *,
    interval_seconds: float,
    timeout_seconds: float,
    queues: QueueLengths | None = None,
) -> None:
    """Poll every backend (concurrently) and the store, then wait `interval_seconds`; until cancelled."""
    pollers = [
        BackendPoller(calls, backend, metrics, timeout_seconds=timeout_seconds, queues=queues)
        for backend in backends.values()
    ]
    while True:
        results = await asyncio.gather(
            *(poller.poll() for poller in pollers), read_affinity_size(store, metrics), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.error("metrics poll failed unexpectedly; polling goes on", exc_info=result)
        await asyncio.sleep(interval_seconds)

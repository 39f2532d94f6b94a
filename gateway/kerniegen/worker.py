"""The prompt worker: takes one prompt at a time off the queue, runs it in the executor thread,
records its history entry, and sends the final `executing` (node null), as ComfyUI's prompt_worker.
Also the entry point for interrupts and POST /free."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

from gateway.kerniegen.config import Directories
from gateway.kerniegen.executor import PromptExecutor, RunResult
from gateway.kerniegen.faults import FaultState
from gateway.kerniegen.history import History
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.prompt_queue import PromptQueue, QueueItem
from gateway.kerniegen.run_events import RunEvent
from gateway.kerniegen.ws_frames import encode_message
from gateway.kerniegen.ws_hub import WsHub

log = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 5.0  # how long close() waits for a node that is mid-computation


class PromptWorker:
    def __init__(
        self,
        queue: PromptQueue,
        history: History,
        hub: WsHub,
        faults: FaultState,
        dirs: Directories,
        step_delay_seconds: float,
        inventory: Inventory,
    ) -> None:
        self._queue = queue
        self._history = history
        self._hub = hub
        self._faults = faults
        self._interrupt = threading.Event()
        self._executor = PromptExecutor(dirs, step_delay_seconds, self._interrupt, self._post_from_thread, inventory)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kerniegen-exec")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: concurrent.futures.Future[RunResult] | None = None
        self._free_memory_requested = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run_forever(), name="kerniegen-worker")

    async def stop(self) -> None:
        """Interrupt the running prompt, wait briefly for its thread, and stop taking prompts."""
        self._interrupt.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._in_flight is not None and not self._in_flight.done():
            try:
                await asyncio.wait_for(asyncio.wrap_future(self._in_flight), _STOP_GRACE_SECONDS)
            except Exception:  # a timeout or its own failure: its result no longer matters
                log.warning("kerniegen: a node was still running at shutdown")
        self._pool.shutdown(wait=False, cancel_futures=True)

    def interrupt(self, prompt_id: Any = None) -> None:
        """POST /interrupt: global without prompt_id; with one, only if that prompt is running."""
        running = self._queue.running
        if prompt_id and (running is None or running.prompt_id != prompt_id):
            return
        # A global interrupt while idle sets the flag too; the next prompt's start clears it, as in ComfyUI.
        self._interrupt.set()

    def request_free(self, free_memory: bool) -> None:
        """POST /free: cached node outputs are dropped once no prompt is running."""
        if not free_memory:
            return  # unload_models alone has nothing to unload here
        if self._queue.running is None:
            self._executor.free_memory()
        else:
            self._free_memory_requested = True

    async def _run_forever(self) -> None:
        assert self._loop is not None
        while True:
            item = await self._queue.get()
            # ComfyUI clears the flag as each prompt starts. Doing it here, in the same loop step that
            # made the prompt visible as running, means no interrupt aimed at it can be lost.
            self._interrupt.clear()
            self._hub.running_client_id = item.client_id
            fail = self._faults.take_prompt_failure()
            self._in_flight = self._pool.submit(self._executor.run, item, fail)
            try:
                result = await asyncio.wrap_future(self._in_flight)
            except Exception:  # never lose the worker to one prompt
                log.exception("kerniegen: prompt %s crashed the executor", item.prompt_id)
                result = RunResult(False, [], {}, {})
            self._finish(item, result)
            if self._free_memory_requested:
                self._free_memory_requested = False
                self._executor.free_memory()

    def _finish(self, item: QueueItem, result: RunResult) -> None:
        self._history.add(item.prompt_id, {
            "prompt": item.as_list(),
            "outputs": result.outputs,
            "status": {
                "status_str": "success" if result.success else "error",
                "completed": result.success,
                "messages": [[event, data] for event, data in result.status_messages],
            },
            "meta": result.meta,
        })
        self._queue.task_done()
        if item.client_id is not None:
            self._hub.send(encode_message("executing", {"node": None, "prompt_id": item.prompt_id}), item.client_id)

    def _post_from_thread(self, event: RunEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._hub.apply, event)
        except RuntimeError:  # the loop closed between the check and the call
            pass

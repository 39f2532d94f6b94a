"""Affinity: which backend holds a prompt. Remembered on submit, looked up on every prompt-scoped call,
and, for prompts the gateway never saw, found by asking every backend at once (then remembered).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Literal
from urllib.parse import quote

from gateway.backends.table import Backend
from gateway.core.errors import UpstreamError
from gateway.pipeline.admit import callable_backends
from gateway.pipeline.outcome import observe_call
from gateway.runtime import Runtime
from gateway.state.store import PromptRecord, StoreError

log = logging.getLogger("comfy_gateway.affinity")

PromptState = Literal["queued", "running", "done", "failed", "unknown"]


async def locate_prompts(
    rt: Runtime, prompt_ids: list[str], left_out: dict[str, str] | None = None
) -> tuple[dict[str, list[str]], list[str]]:
    """Group prompt ids by the backend that holds them; the second list holds ids no backend has."""
    by_backend: dict[str, list[str]] = defaultdict(list)
    unknown: list[str] = []
    for pid in dict.fromkeys(prompt_ids):
        backend = await locate_prompt(rt, pid, left_out)
        if backend is None:
            unknown.append(pid)
        else:
            by_backend[backend].append(pid)
    return dict(by_backend), unknown


async def locate_prompt(
    rt: Runtime, prompt_id: str, left_out: dict[str, str] | None = None, *, known: PromptRecord | None = None
) -> str | None:
    """The backend holding `prompt_id`: remembered, else found by a probe. Backends a probe could not ask (down,
    open) are added to `left_out` (name → why), for the answer to say it may be there. With store.on_outage =
    "degrade", a store that cannot answer is treated as knowing nothing. `known`: its record, read already."""
    record = known
    if record is None:
        try:
            record = await rt.store.lookup_prompt(prompt_id)
        except StoreError:
            if not rt.policy.degrade_on_store_outage:
                raise
            record = None
    if record is not None and record.backend in rt.backends:
        rt.metrics.affinity_lookup("hit")
        return record.backend
    found, skipped = await probe_prompt(rt, prompt_id)
    if left_out is not None and found is None:
        left_out.update(skipped)
    if found is not None:
        try:
            await rt.store.record_prompt(
                PromptRecord(prompt_id=prompt_id, backend=found, user=None, client_id=None, submitted_at=time.time())
            )
        except StoreError:
            if not rt.policy.degrade_on_store_outage:
                raise
        rt.metrics.affinity_lookup("probe")
        log.info("affinity probe: prompt %s found on backend %s, remembered", prompt_id, found)
    else:
        rt.metrics.affinity_lookup("miss")
        log.info(
            "affinity probe: prompt %s is on no backend%s",
            prompt_id,
            f" asked (not asked: {', '.join(skipped)})" if skipped else "",
        )
    return found


async def probe_prompt(rt: Runtime, prompt_id: str) -> tuple[str | None, dict[str, str]]:
    """Ask every backend that may be called concurrently; the first that has the prompt (in history or queue)
    wins. Also returns the backends left out (down, open: name → why), so a lookup never waits on them."""
    backends, skipped = callable_backends(rt)
    tasks = {
        asyncio.create_task(_backend_has_prompt(rt, backend, prompt_id)): backend.name for backend in backends
    }
    try:
        for finished in asyncio.as_completed(tasks):
            try:
                name = await finished
            except UpstreamError:
                continue
            if name is not None:
                return name, skipped
        return None, skipped
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _backend_has_prompt(rt: Runtime, backend: Backend, prompt_id: str) -> str | None:
    try:
        state = await read_prompt_state(rt, backend, prompt_id)
    except UpstreamError as exc:
        observe_call(rt, backend.name, exc)
        raise
    observe_call(rt, backend.name, None)
    return backend.name if state != "unknown" else None


async def read_prompt_state(rt: Runtime, backend: Backend, prompt_id: str) -> PromptState:
    """The honest state ComfyUI's `{}` cannot give: from the backend's queue and history, read live."""
    # Each within the backend's timeouts for an API call. Given as a list, gather is typed as returning the list it
    # returns: given two arguments, its stub says a tuple, which a compiled build checks and refuses.
    calls = [rt.calls.fetch(backend, "GET", "/queue"), rt.calls.fetch(backend, "GET", f"/history/{_quote(prompt_id)}")]
    queue_reply, history_reply = await asyncio.gather(*calls)
    queue = _json_or_empty(queue_reply.body) if queue_reply.status == 200 else {}
    for key, state in (("queue_running", "running"), ("queue_pending", "queued")):
        for item in queue.get(key, []) if isinstance(queue, dict) else []:
            if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                return state  # type: ignore[return-value]
    history = _json_or_empty(history_reply.body) if history_reply.status == 200 else {}
    entry = history.get(prompt_id) if isinstance(history, dict) else None
    if isinstance(entry, dict):
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            return "failed"
        return "done"
    return "unknown"


def _quote(prompt_id: str) -> str:
    return quote(prompt_id, safe="")


def _json_or_empty(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return {}

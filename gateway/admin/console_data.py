"""What the console shows, gathered from the Runtime: each backend's state, the recent prompts with their live
state and outputs, and the users' stored preferences. Plain JSON-ready values; the routes (console.py) serve them.

Every field is one the gateway has: a value it does not know (a backend not checked yet, a queue never read) is
left out, never faked. A new fact about a backend (its breaker, its inventory) is one more field in
`backend_state`.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from gateway.backends.table import Backend, pool_fields
from gateway.core.errors import UpstreamError
from gateway.core.redact import redact_secrets, shown_url
from gateway.core.selection import Source
from gateway.observe.prompt_outcomes import read_finished
from gateway.outputs.refs import prefix_subfolder
from gateway.runtime import Runtime
from gateway.state.store import PromptRecord

PromptState = Literal["queued", "running", "done", "failed", "unknown"]
PROMPT_STATES: tuple[PromptState, ...] = ("queued", "running", "done", "failed", "unknown")
# Output images shown per prompt; the rest are counted.
MAX_OUTPUTS_SHOWN = 4
# History reads one listing makes at once, across backends.
HISTORY_READS_AT_ONCE = 8
MAX_QUEUE_BYTES = 16 * 1024 * 1024
MAX_ENTRY_BYTES = 16 * 1024 * 1024


def backend_state(rt: Runtime, backend: Backend) -> dict[str, Any]:
    """One backend as the console shows it: configuration, health, identity, queue, circuit, inventory."""
    state: dict[str, Any] = {
        "name": backend.name,
        "url": shown_url(backend.url),
        "kind": backend.kind,
        "default": rt.backends.is_default(backend.name),
        "embedded": backend.embedded,
        **pool_fields(backend),
    }
    status = rt.health.get(backend.name)
    if status is not None and status.up is not None:
        state["up"] = status.up
        state["ready"] = status.ready
        if status.latency_seconds is not None:
            state["latency_ms"] = round(status.latency_seconds * 1000, 1)
        if status.last_error:
            state["last_error"] = redact_secrets(status.last_error)
        if status.reason and status.reason != status.last_error:
            state["reason"] = redact_secrets(status.reason)
        if status.checked_unix is not None:
            state["checked_at"] = round(status.checked_unix, 1)
    if status is not None and status.identity is not None:
        state["seen_kind"] = status.identity.kind
        if status.identity.version:
            state["seen_version"] = status.identity.version
    depth = rt.metrics.queue_depths.get(backend.name)
    if depth is not None and state.get("up"):
        state["queue_depth"] = depth
    state["circuit"] = rt.breakers.describe(backend.name)
    inventory = rt.inventories.get(backend.name) if rt.inventories is not None else None
    if inventory is not None:
        state["node_classes"] = len(inventory.nodes)
        state["model_files"] = {folder: len(files) for folder, files in inventory.files.items()}
    return state


def backend_states(rt: Runtime) -> list[dict[str, Any]]:
    return [backend_state(rt, backend) for backend in rt.backends.values()]


# --- prompts ------------------------------------------------------------------------------------------------------


def route_reason(route: str | None, rt: Runtime) -> str:
    """Why a prompt went to its backend, in words, from the route recorded with it."""
    policy = rt.policy
    reasons = {
        Source.HEADER.value: f"the request named this backend in its {policy.backend_header} header",
        Source.QUERY.value: f"the request named this backend in its ?{policy.backend_query_param}= parameter",
        Source.PREFERENCE.value: "the user's stored preference names this backend",
        Source.DEFAULT.value: "nothing chose a backend, so the default backend took it",
        Source.AFFINITY.value: "it was already known to run on this backend",
        Source.MODEL.value: (
            "the default backend lacks a model file the prompt names, so the guardrails placed it on the first "
            "backend that has them all"
        ),
        Source.FALLBACK.value: "the backend chosen for it was open or down, so its configured fallback took it",
    }
    if route is None:
        return (
            "the gateway did not route it: it was found on this backend when asked for it "
            "(submitted to the backend directly, or recorded before routes were kept)"
        )
    return reasons.get(route, f"routed by rule {route!r}")


# What each guardrail action stored with a prompt means, for the console (core/guardrail_actions.py's names).
GUARDRAIL_NOTES = {
    "seed_normalized": "a seed below its input's minimum (such as -1, random) was replaced by a random one in range",
    "alias_applied": "a model file the backend lacks was replaced by its configured alias on that backend",
    "placed_by_model": "sent to a backend that has every model file it names, not the default",
    "skipped": "the guardrails could not check it (no inventory of the backend, or a body they cannot read)",
    # A refused prompt reaches no backend and is never recorded; named for completeness.
    "refused_model": "refused: the backend lacks a model file it names",
    "refused_node_class": "refused: the backend lacks a node class it uses",
}


def guardrail_notes(actions: Iterable[str]) -> list[str]:
    """What each of a prompt's guardrail actions did, in words, in its order."""
    return [GUARDRAIL_NOTES.get(action, action) for action in actions]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished prompt's history entry says; it does not change once finished."""

    state: PromptState
    duration_seconds: float | None = None
    outputs: tuple[dict[str, str], ...] = ()
    output_count: int = 0


def _key(record: PromptRecord) -> tuple[str, str, float]:
    # A prompt id submitted again (its owner may) is another run: its submission time tells them apart.
    return (record.backend, record.prompt_id, record.submitted_at)


@dataclass
class FinishedPrompts:
    """Outcomes of finished prompts, newest last, bounded: a listing asks backends only about the others."""

    max_entries: int
    _kept: OrderedDict[tuple[str, str, float], Outcome] = field(default_factory=OrderedDict)

    def get(self, record: PromptRecord) -> Outcome | None:
        return self._kept.get(_key(record))

    def keep(self, record: PromptRecord, outcome: Outcome) -> None:
        if self.max_entries <= 0:
            return
        key = _key(record)
        self._kept[key] = outcome
        self._kept.move_to_end(key)
        while len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)


def read_outcome(entry: Any, backend: str) -> Outcome:
    """A history entry's state, execution time and output images (their refs as the gateway's /view takes them)."""
    finished = read_finished(entry)
    if finished is None:
        state: PromptState = "done"  # in history without a status: an older ComfyUI's finished entry
        seconds = None
    else:
        state = "done" if finished.outcome == "completed" else "failed"
        seconds = finished.execution_seconds
    images = list(_output_images(entry.get("outputs") if isinstance(entry, dict) else None))
    shown = tuple(
        {"filename": ref["filename"], "subfolder": prefix_subfolder(ref["subfolder"], backend), "type": ref["type"]}
        for ref in images[:MAX_OUTPUTS_SHOWN]
    )
    return Outcome(state, seconds, shown, len(images))


def _output_images(outputs: Any) -> Iterable[dict[str, str]]:
    if not isinstance(outputs, dict):
        return
    for node_output in outputs.values():
        images = node_output.get("images") if isinstance(node_output, dict) else None
        for ref in images if isinstance(images, list) else ():
            if (
                isinstance(ref, dict)
                and isinstance(ref.get("filename"), str)
                and isinstance(ref.get("subfolder", ""), str)
                and ref.get("type", "output") in ("output", "temp")
            ):
                yield {
                    "filename": ref["filename"],
                    "subfolder": ref.get("subfolder", ""),
                    "type": ref.get("type", "output"),
                }


async def _queue_states(rt: Runtime, backend: Backend) -> dict[str, PromptState] | None:
    """prompt_id → running/queued from the backend's GET /queue; None when it cannot be read."""
    try:
        reply = await rt.calls.fetch(
            backend, "GET", "/queue", timeout_seconds=backend.timeouts.longest_call(), max_bytes=MAX_QUEUE_BYTES
        )
        queue = json.loads(reply.body) if reply.status == 200 else None
    except (UpstreamError, ValueError):
        return None
    if not isinstance(queue, dict):
        return None
    states: dict[str, PromptState] = {}
    sections: tuple[tuple[str, PromptState], ...] = (("queue_pending", "queued"), ("queue_running", "running"))
    for key, state in sections:
        items = queue.get(key)
        for item in items if isinstance(items, list) else ():
            if isinstance(item, list) and len(item) > 1 and isinstance(item[1], str):
                states[item[1]] = state
    return states


async def _history_outcome(rt: Runtime, backend: Backend, prompt_id: str) -> Outcome:
    try:
        reply = await rt.calls.fetch(
            backend,
            "GET",
            f"/history/{quote(prompt_id, safe='')}",
            timeout_seconds=backend.timeouts.longest_call(),
            max_bytes=MAX_ENTRY_BYTES,
        )
        history = json.loads(reply.body) if reply.status == 200 else None
    except (UpstreamError, ValueError):
        return Outcome("unknown")
    entry = history.get(prompt_id) if isinstance(history, dict) else None
    return Outcome("unknown") if entry is None else read_outcome(entry, backend.name)


async def prompt_outcomes(
    rt: Runtime, records: list[PromptRecord], finished: FinishedPrompts
) -> dict[str, Outcome]:
    """Each record's live state: finished ones from memory, the rest from its backend's queue, then its history.
    A backend the health checks found down is not asked (its prompts are `unknown`)."""
    outcomes: dict[str, Outcome] = {}
    pending: list[PromptRecord] = []
    for record in records:
        kept = finished.get(record)
        if kept is not None:
            outcomes[record.prompt_id] = kept
        elif record.backend in rt.backends and record.backend not in rt.known_down():
            pending.append(record)
        else:
            outcomes[record.prompt_id] = Outcome("unknown")
    names = sorted({record.backend for record in pending})
    queues = dict(zip(names, await asyncio.gather(*(_queue_states(rt, rt.backends[n]) for n in names)), strict=True))
    limit = asyncio.Semaphore(HISTORY_READS_AT_ONCE)

    async def from_history(record: PromptRecord) -> None:
        async with limit:
            outcome = await _history_outcome(rt, rt.backends[record.backend], record.prompt_id)
        outcomes[record.prompt_id] = outcome
        if outcome.state in ("done", "failed"):
            finished.keep(record, outcome)

    reads = []
    for record in pending:
        in_queue = (queues[record.backend] or {}).get(record.prompt_id)
        if in_queue is not None:
            outcomes[record.prompt_id] = Outcome(in_queue)
        else:
            reads.append(from_history(record))
    await asyncio.gather(*reads)
    return outcomes


def prompt_item(rt: Runtime, record: PromptRecord, outcome: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {
        "prompt_id": record.prompt_id,
        "backend": record.backend,
        "user": record.user,
        "route": record.route,
        "route_reason": route_reason(record.route, rt),
        "guardrails": list(record.guardrails),
        "guardrail_notes": guardrail_notes(record.guardrails),
        "submitted_at": record.submitted_at,
        "state": outcome.state,
        "outputs": list(outcome.outputs),
        "output_count": outcome.output_count,
    }
    if outcome.duration_seconds is not None:
        item["duration_seconds"] = round(outcome.duration_seconds, 3)
    return item

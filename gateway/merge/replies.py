"""One merged answer from every backend's reply: GET /history ordered by time and paged as ComfyUI pages one
history (aggregate.py; each reply's entries kept ready by history_parts.py), /queue and /prompt joined.
A reply that is not JSON leaves its backend out, like one that did not answer.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from gateway.core import json_codec
from gateway.merge import aggregate, history_parts
from gateway.merge.cache import Merged, Replies
from gateway.merge.history_parts import HistoryParts

P = ParamSpec("P")
T = TypeVar("T")


def without_collector(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """work(*args, **kwargs) with the cyclic garbage collector paused.

    For the merge: 2 × 10,000 history entries (2 × 14 MB) make millions of containers, and past each
    threshold the collector walks all of them again, in the parse, the merge and the dump alike, which slows
    the merge badly. JSON values hold no reference cycles and the work never yields to the event loop, so
    the pause lasts one merge. Whatever `work` parsed lives only in its own frame, freed when it returns,
    before the collector is back: otherwise its first run would walk all of it once more. What it
    keeps (history_parts) is one small tuple per entry around that entry's bytes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return work(*args, **kwargs)
    finally:
        if was_enabled:
            gc.enable()


def merge_replies(
    kept: HistoryParts, path: str, template: str, replies: Replies, max_items: int | None, offset: int | None
) -> Merged:
    """The merged answer of the replies that are JSON; a reply that is not leaves its backend out, like one
    that did not answer (Merged.answered is empty when none is left)."""
    read = functools.partial(kept.items, path=path) if template == "/history" else _parse
    parts: list[tuple[str, Any]] = []
    not_json: list[tuple[str, str]] = []
    for name, body in replies:
        try:
            parts.append((name, read(name, body=body)))
        except ValueError as exc:  # UnicodeDecodeError included
            not_json.append((name, f"backend {name!r} answered {path} with a body that is not JSON: {exc}"))
    if not parts:
        return Merged((), b"", tuple(not_json))
    answered = tuple(name for name, _ in parts)
    if template == "/history":
        # Every entry of the page is text already (history_parts): this serialisation copies it.
        page = aggregate.merge_items([items for _, items in parts], max_items, offset)
        return Merged(answered, json_codec.dumps_raw(history_parts.ready_answer(page)), tuple(not_json))
    if template == "/queue":
        return Merged(answered, json_codec.dumps(aggregate.merge_queue(parts)), tuple(not_json))
    return Merged(answered, json_codec.dumps(aggregate.merge_prompt_info(parts)), tuple(not_json))


def _parse(_backend: str, body: bytes) -> Any:
    return json_codec.loads_exact(body)

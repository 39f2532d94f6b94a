"""What the gateway does with a request, as a value: made once by decide.py, carried out by a data path.

    Forward  send it to one backend: streamed, read whole and rewritten (/history), or a WebSocket tunnel
    Merge    ask every backend and merge their answers (GET /history, /queue, /prompt, nothing selected)
    FanOut   split a call naming prompts across the backends that hold them
    Answer   the gateway answers itself (an error, a merged or fanned-out result)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any

from gateway.backends.table import CallKind
from gateway.core.selection import Selection

JSON_CONTENT_TYPE = "application/json; charset=utf-8"  # what ComfyUI's (aiohttp's) json_response sends


@dataclass(frozen=True, slots=True)
class Forward:
    selection: Selection
    target: str | None = None  # None: the request's own target, without the gateway's query parameter
    body: bytes | None = None  # read already (POST /prompt, prompt-scoped calls); else the client's is streamed
    prompt_id: str | None = None  # POST /prompt: recorded before, forgotten if the backend does not take it
    rewrite_history: bool = False  # read the answer whole and prefix its output refs
    websocket: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)  # the gateway's own, added to the answer (CORS)
    client_id: str | None = None  # a WebSocket: the clientId it has on every backend (in `target` too)
    # A WebSocket on a pool's member: the pool's other members, followed from the start too, so the events of a
    # prompt placed on any of them reach it, whichever gateway process placed the prompt.
    also_follow: tuple[str, ...] = ()
    kind: CallKind = "api"  # which of the backend's timeouts the call obeys
    # POST /prompt: where the prompt goes instead when its backend refuses the connection (nothing was sent)
    fallback: Selection | None = None


@dataclass(frozen=True, slots=True)
class Merge:
    template: str  # /history, /queue or /prompt
    path: str  # what every backend is asked (paging passed on for /history)
    max_items: int | None = None
    offset: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    only: tuple[str, ...] = ()  # these servers (a pool's members); empty: every backend


@dataclass(frozen=True, slots=True)
class FanOut:
    method: str
    target: str  # the request's target, without the gateway's query parameter
    # The body member naming prompts: "delete" (a list) or "prompt_id" (one); None: the call names none (clear,
    # a global interrupt) and every backend of `groups` (a pool's members) gets it as it is.
    key: str | None
    payload: Mapping[str, Any]  # the body as read; each backend gets it with only its own prompts under `key`
    groups: Mapping[str, list[str]]  # backend → the prompt ids it holds
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: Mapping[str, str] = field(default_factory=dict)  # the gateway's own (X-Comfy-*)


Decision = Forward | Merge | FanOut | Answer


def with_headers(decision: Decision, headers: Mapping[str, str]) -> Decision:
    """`decision` with more of the gateway's own answer headers (CORS, a cookie), whatever its kind."""
    cls = type(decision)
    values, at = _FIELDS[cls]
    members = list(values(decision))
    members[at] = {**decision.headers, **headers}
    return cls(*members)


def _fields_of(cls: type) -> tuple[Callable[[Any], tuple[Any, ...]], int]:
    """Every field's value in one call, and where `headers` is among them: dataclasses.replace's generic steps
    were a measurable share of a small request's cost (every answer to a foreign origin carries CORS headers)."""
    names = [f.name for f in fields(cls)]
    assert all(f.init for f in fields(cls)), f"{cls.__name__}: every field is an __init__ argument"
    return attrgetter(*names), names.index("headers")


_FIELDS = {cls: _fields_of(cls) for cls in (Forward, Merge, FanOut, Answer)}

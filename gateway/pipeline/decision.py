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
from types import MappingProxyType
from typing import Any, Final

from gateway.backends.table import CallKind
from gateway.core.selection import Selection

JSON_CONTENT_TYPE = "application/json; charset=utf-8"  # what ComfyUI's (aiohttp's) json_response sends


class _Kept:
    """The value of an argument not given to Forward.replaced."""


_KEPT = _Kept()


_FORWARD_FIELDS = ("selection", "target", "body", "prompt_id", "rewrite_history", "websocket", "headers", "client_id",
                   "also_follow", "kind", "fallback")  # Forward's, in order (a compiled class keeps no __slots__)


class Forward:
    """Send the request to one backend. A value, made once per request, so a plain class: a frozen dataclass's
    __init__ is written by the dataclasses module, and runs interpreted even in the compiled build, a generic
    setattr per field. Its attributes are Final (the type checker refuses an assignment); `replaced` makes a
    changed copy."""

    __slots__ = ("selection", "target", "body", "prompt_id", "rewrite_history", "websocket", "headers", "client_id",
                 "also_follow", "kind", "fallback")

    def __init__(
        self,
        selection: Selection,
        target: str | None = None,
        body: bytes | None = None,
        prompt_id: str | None = None,
        rewrite_history: bool = False,
        websocket: bool = False,
        headers: Mapping[str, str] | None = None,
        client_id: str | None = None,
        also_follow: tuple[str, ...] = (),
        kind: CallKind = "api",
        fallback: Selection | None = None,
    ) -> None:
        self.selection: Final = selection
        self.target: Final = target  # None: the request's own target, without the gateway's query parameter
        # read already (POST /prompt, prompt-scoped calls); else the client's is streamed
        self.body: Final = body
        self.prompt_id: Final = prompt_id  # POST /prompt: recorded before, forgotten if the backend does not take it
        self.rewrite_history: Final = rewrite_history  # read the answer whole and prefix its output refs
        self.websocket: Final = websocket
        # the gateway's own, added to the answer (CORS)
        self.headers: Final[Mapping[str, str]] = _NO_HEADERS if headers is None else headers
        self.client_id: Final = client_id  # a WebSocket: the clientId it has on every backend (in `target` too)
        # A WebSocket on a pool's member: the pool's other members, followed from the start too, so the events of
        # a prompt placed on any of them reach it, whichever gateway process placed the prompt.
        self.also_follow: Final = also_follow
        self.kind: Final = kind  # which of the backend's timeouts the call obeys
        # POST /prompt: where the prompt goes instead when its backend refuses the connection (nothing was sent)
        self.fallback: Final = fallback

    def replaced(
        self,
        *,
        selection: Selection | _Kept = _KEPT,
        body: bytes | None | _Kept = _KEPT,
        headers: Mapping[str, str] | _Kept = _KEPT,
        client_id: str | None | _Kept = _KEPT,
        also_follow: tuple[str, ...] | _Kept = _KEPT,
        kind: CallKind | _Kept = _KEPT,
        fallback: Selection | None | _Kept = _KEPT,
    ) -> Forward:
        """A copy with the values given; what is not given is kept."""
        return Forward(
            self.selection if isinstance(selection, _Kept) else selection,
            self.target,
            self.body if isinstance(body, _Kept) else body,
            self.prompt_id,
            self.rewrite_history,
            self.websocket,
            self.headers if isinstance(headers, _Kept) else headers,
            self.client_id if isinstance(client_id, _Kept) else client_id,
            self.also_follow if isinstance(also_follow, _Kept) else also_follow,
            self.kind if isinstance(kind, _Kept) else kind,
            self.fallback if isinstance(fallback, _Kept) else fallback,
        )

    def _values(self) -> tuple[object, ...]:
        return (self.selection, self.target, self.body, self.prompt_id, self.rewrite_history, self.websocket,
                self.headers, self.client_id, self.also_follow, self.kind, self.fallback)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Forward):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and its headers are a dict

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in zip(_FORWARD_FIELDS, self._values(), strict=True))
        return f"Forward({values})"


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


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
    if isinstance(decision, Forward):
        return decision.replaced(headers={**decision.headers, **headers})
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


_FIELDS = {cls: _fields_of(cls) for cls in (Merge, FanOut, Answer)}

"""Merged answers for GET /history, /queue and /prompt when a request selects no backend: every backend is
asked at once, the ones that are down are left out and named in a header, and aggregate.py does the merge
(unless merge_cache holds the answer to these very replies; history_parts keeps each backend's /history
reply ready, so that only what changed is parsed again).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from gateway.core import json_codec
from gateway.merge import aggregate, history_parts
from gateway.backends.table import Backend
from gateway.core.errors import BadRequest, UpstreamError
from gateway.core.exchange import Exchange
from gateway.datapath.aio.forward import failure_kind
from gateway.core.headers import BACKEND_HEADER, ROUTE_HEADER, UNAVAILABLE_HEADER
from gateway.datapath.aio.keys import HEALTH
from gateway.merge.cache import Merged, Replies
from gateway.runtime import Runtime
from gateway.pipeline.select import Source

log = logging.getLogger("comfy_gateway.merge")

P = ParamSpec("P")
T = TypeVar("T")


async def respond_merged(
    request: web.Request, rt: Runtime, exchange: Exchange, template: str, target: str
) -> web.StreamResponse:
    if template == "/history":
        try:
            max_items, offset = aggregate.parse_history_paging(request.query)
        except ValueError as exc:
            raise BadRequest(str(exc), details="max_items/offset") from None
        query = aggregate.backend_history_query(max_items, offset)
        path = "/history" + (f"?{urlencode(query)}" if query else "")
    else:
        path = target.partition("?")[0]
        max_items = offset = None
    replies, unavailable, failures = await _gather(rt, path, request.app[HEALTH].known_down())
    key = f"{template} {path} {max_items} {offset}"  # the merge is a function of this key and the replies
    merged = rt.merge_cache.get(key, replies)
    if merged is None:
        merged = without_collector(_merge_replies, rt, path, template, replies, max_items, offset)
        rt.merge_cache.put(key, replies, merged)
    for name, why in merged.not_json:
        unavailable[name] = why
        failures.append((name, "protocol"))
        log.warning("merge of %s leaves out backend %s: %s", path, name, why)
    exchange.upstream_errors += tuple(failures)
    if not merged.answered:
        raise UpstreamError(
            f"no backend answered {template}: {', '.join(f'{n} ({why})' for n, why in unavailable.items())}"
        )
    answered, merged_body = merged.answered, merged.body
    exchange.backend = ",".join(answered)
    exchange.source = Source.MERGED.value
    exchange.unavailable = tuple(unavailable)
    headers = {BACKEND_HEADER: exchange.backend, ROUTE_HEADER: Source.MERGED.value}
    if unavailable:
        headers[UNAVAILABLE_HEADER] = ",".join(unavailable)
    return web.Response(body=merged_body, content_type="application/json", headers=headers)


def without_collector(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """work(*args, **kwargs) with the cyclic garbage collector paused.

    For the merge: 2 × 10,000 history entries (2 × 14 MB) make millions of containers, and past each
    threshold the collector walks all of them again, in the parse, the merge and the dump alike (1.5 s with
    it, 0.7 s without). JSON values hold no reference cycles and the work never yields to the event loop, so
    the pause lasts one merge. Whatever `work` parsed lives only in its own frame, freed when it returns,
    before the collector is back: otherwise its first run would walk all of it once more (~0.2 s). What it
    keeps (history_parts) is one small tuple per entry around that entry's bytes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return work(*args, **kwargs)
    finally:
        if was_enabled:
            gc.enable()


def _merge_replies(
    rt: Runtime, path: str, template: str, replies: Replies, max_items: int | None, offset: int | None
) -> Merged:
    """The merged answer of the replies that are JSON; a reply that is not leaves its backend out, like one
    that did not answer (Merged.answered is empty when none is left)."""
    read = functools.partial(rt.history_parts.items, path=path) if template == "/history" else _parse
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
        merged = aggregate.merge_queue(parts)
    else:
        merged = aggregate.merge_prompt_info(parts)
    return Merged(answered, json_codec.dumps(merged), tuple(not_json))


def _parse(_backend: str, body: bytes) -> Any:
    return json_codec.loads_exact(body)


class _ErrorStatus(UpstreamError):
    """A backend answered a merge's read with a status other than 200."""

    def __init__(self, message: str, *, backend: str, answered: int) -> None:
        super().__init__(message, backend=backend)
        self.answered = answered


async def _gather(
    rt: Runtime, path: str, known_down: dict[str, str]
) -> tuple[list[tuple[str, bytes]], dict[str, str], list[tuple[str, str]]]:
    """The backends' answers as bytes, the ones left out (name → why) and, for the metrics, (name, failure
    kind). Backends the health checks found down are left out without being asked."""
    timeout = aiohttp.ClientTimeout(total=rt.policy.merge_timeout_seconds)
    backends = [b for b in rt.backends.values() if b.name not in known_down]
    results = await asyncio.gather(*(_read_body(rt, b, path, timeout) for b in backends), return_exceptions=True)
    replies: list[tuple[str, bytes]] = []
    unavailable: dict[str, str] = {name: f"down at the last health check: {why}" for name, why in known_down.items()}
    failures: list[tuple[str, str]] = []
    for backend, result in zip(backends, results):
        if isinstance(result, BaseException):
            if not isinstance(result, UpstreamError):
                raise result
            unavailable[backend.name] = str(result)
            failures.append((backend.name, _failure_kind(result)))
            log.warning("merge of %s leaves out backend %s: %s", path, backend.name, result)
        else:
            replies.append((backend.name, result))
    return replies, unavailable, failures


def _failure_kind(err: UpstreamError) -> str:
    if isinstance(err, _ErrorStatus):
        return "5xx" if err.answered >= 500 else "protocol"
    return failure_kind(err) or "protocol"


async def _read_body(rt: Runtime, backend: Backend, path: str, timeout: aiohttp.ClientTimeout) -> bytes:
    reply = await rt.forwarder.fetch(backend, "GET", path, timeout=timeout)
    if reply.status != 200:
        raise _ErrorStatus(
            f"backend {backend.name!r} answered {path} with {reply.status}", backend=backend.name, answered=reply.status
        )
    return reply.body

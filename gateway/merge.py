"""Merged answers for GET /history, /queue and /prompt when a request selects no backend: every backend is
asked at once, the ones that are down are left out and named in a header, and aggregate.py does the merge.
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from gateway import aggregate
from gateway.backends import Backend
from gateway.errors import BadRequest, UpstreamError
from gateway.exchange import Exchange
from gateway.forward import failure_kind
from gateway.headers import BACKEND_HEADER, ROUTE_HEADER, UNAVAILABLE_HEADER
from gateway.keys import HEALTH
from gateway.runtime import Runtime
from gateway.selection import Source

log = logging.getLogger("comfy_gateway.merge")


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
    parts, unavailable, failures = await _gather(rt, path, request.app[HEALTH].known_down())
    exchange.upstream_errors += failures
    if not parts:
        raise UpstreamError(
            f"no backend answered {template}: {', '.join(f'{n} ({why})' for n, why in unavailable.items())}"
        )
    if template == "/history":
        body = aggregate.merge_history(parts, max_items, offset)
    elif template == "/queue":
        body = aggregate.merge_queue(parts)
    else:
        body = aggregate.merge_prompt_info(parts)
    exchange.backend = ",".join(name for name, _ in parts)
    exchange.source = Source.MERGED.value
    exchange.unavailable = tuple(unavailable)
    headers = {BACKEND_HEADER: exchange.backend, ROUTE_HEADER: Source.MERGED.value}
    if unavailable:
        headers[UNAVAILABLE_HEADER] = ",".join(unavailable)
    return web.json_response(body, headers=headers)


class _ErrorStatus(UpstreamError):
    """A backend answered a merge's read with a status other than 200."""

    def __init__(self, message: str, *, backend: str, answered: int) -> None:
        super().__init__(message, backend=backend)
        self.answered = answered


async def _gather(
    rt: Runtime, path: str, known_down: dict[str, str]
) -> tuple[list[tuple[str, object]], dict[str, str], tuple[tuple[str, str], ...]]:
    """The backends' answers, the ones left out (name → why) and, for the metrics, (name, failure kind).
    Backends the health checks found down are left out without being asked."""
    timeout = aiohttp.ClientTimeout(total=rt.policy.merge_timeout_seconds)
    backends = [b for b in rt.backends.values() if b.name not in known_down]
    results = await asyncio.gather(*(_read_json(rt, b, path, timeout) for b in backends), return_exceptions=True)
    parts: list[tuple[str, object]] = []
    unavailable: dict[str, str] = {name: f"down at the last health check: {why}" for name, why in known_down.items()}
    failures: list[tuple[str, str]] = []
    for backend, result in zip(backends, results):
        if isinstance(result, BaseException):
            if not isinstance(result, (UpstreamError, ValueError)):
                raise result
            unavailable[backend.name] = str(result)
            failures.append((backend.name, _failure_kind(result)))
            log.warning("merge of %s leaves out backend %s: %s", path, backend.name, result)
        else:
            parts.append((backend.name, result))
    return parts, unavailable, tuple(failures)


def _failure_kind(err: UpstreamError | ValueError) -> str:
    if isinstance(err, _ErrorStatus):
        return "5xx" if err.answered >= 500 else "protocol"
    if isinstance(err, ValueError):
        return "protocol"  # not JSON
    return failure_kind(err) or "protocol"


async def _read_json(rt: Runtime, backend: Backend, path: str, timeout: aiohttp.ClientTimeout) -> object:
    reply = await rt.forwarder.fetch(backend, "GET", path, timeout=timeout)
    if reply.status != 200:
        raise _ErrorStatus(
            f"backend {backend.name!r} answered {path} with {reply.status}", backend=backend.name, answered=reply.status
        )
    return json.loads(reply.body)

"""Carrying out the decisions that need more than one backend, for both data paths, through the BackendCalls
seam: a Merge (every backend asked at once, the ones down left out and named) and a FanOut (each backend
sent the part of a call that names its own prompts).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping

from gateway.backends.table import Backend
from gateway.core.errors import UpstreamError
from gateway.core.exchange import Exchange
from gateway.core.headers import BACKEND_HEADER, ROUTE_HEADER, UNAVAILABLE_HEADER
from gateway.core.selection import Source
from gateway.merge.replies import merge_replies, without_collector
from gateway.pipeline.admit import callable_backends
from gateway.pipeline.decision import Answer, FanOut, Merge
from gateway.runtime import Runtime

log = logging.getLogger("comfy_gateway.merge")

# The headers a fan-out sends one backend: the client's, with the header policy applied for that backend.
HeadersFor = Callable[[Backend], Mapping[str, str]]


async def answer_merge(rt: Runtime, merge: Merge, exchange: Exchange) -> Answer:
    replies, unavailable, failures = await _gather(rt, merge.path, merge.only)
    # the merge is a function of this
    key = f"{merge.template} {merge.path} {merge.max_items} {merge.offset} {','.join(merge.only)}"
    merged = rt.merge_cache.get(key, replies)
    if merged is None:
        merged = without_collector(
            merge_replies, rt.history_parts, merge.path, merge.template, replies, merge.max_items, merge.offset
        )
        rt.merge_cache.put(key, replies, merged)
    for name, why in merged.not_json:
        unavailable[name] = why
        failures.append((name, "protocol"))
        log.warning("merge of %s leaves out backend %s: %s", merge.path, name, why)
    exchange.upstream_errors += tuple(failures)
    if not merged.answered:
        raise UpstreamError(
            f"no backend answered {merge.template}: {', '.join(f'{n} ({why})' for n, why in unavailable.items())}"
        )
    exchange.backend = ",".join(merged.answered)
    exchange.source = Source.MERGED.value
    exchange.unavailable = tuple(unavailable)
    headers = {BACKEND_HEADER: exchange.backend, ROUTE_HEADER: Source.MERGED.value}
    if unavailable:
        headers[UNAVAILABLE_HEADER] = ",".join(unavailable)
    return Answer(200, merged.body, headers={**headers, **merge.headers})


async def _gather(
    rt: Runtime, path: str, only: tuple[str, ...] = ()
) -> tuple[list[tuple[str, bytes]], dict[str, str], list[tuple[str, str]]]:
    """The backends' answers as bytes, the ones left out (name → why) and, for the metrics, (name, failure
    kind). Backends the health checks found down, and open ones, are left out without being asked."""
    backends, unavailable = callable_backends(rt, only)
    results = await asyncio.gather(
        *(_read_body(rt, b, path) for b in backends), return_exceptions=True
    )
    replies: list[tuple[str, bytes]] = []
    failures: list[tuple[str, str]] = []
    for backend, result in zip(backends, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, UpstreamError):
                raise result
            unavailable[backend.name] = str(result)
            failures.append((backend.name, result.kind))
            log.warning("merge of %s leaves out backend %s: %s", path, backend.name, result)
        else:
            replies.append((backend.name, result))
    return replies, unavailable, failures


async def _read_body(rt: Runtime, backend: Backend, path: str) -> bytes:
    reply = await rt.calls.fetch(backend, "GET", path)  # within the backend's own timeouts for an API call
    if reply.status != 200:
        raise UpstreamError(
            f"backend {backend.name!r} answered {path} with {reply.status}",
            backend=backend.name,
            kind="5xx" if reply.status >= 500 else "protocol",
        )
    return reply.body


async def answer_fan_out(rt: Runtime, fan_out: FanOut, exchange: Exchange, headers_for: HeadersFor) -> Answer:
    """A call naming prompts on several backends: each backend gets the part it holds, at once; the answer is
    the most severe status any of them gave."""

    async def send(name: str, ids: list[str]) -> int:
        part = dict(fan_out.payload)
        if fan_out.key is not None:
            part[fan_out.key] = ids[0] if fan_out.key == "prompt_id" else ids
        backend = rt.backends[name]
        reply = await rt.calls.fetch(
            backend, fan_out.method, fan_out.target, headers_for(backend), body=json.dumps(part).encode()
        )
        return reply.status

    statuses = await asyncio.gather(*(send(name, ids) for name, ids in fan_out.groups.items()))
    headers = {BACKEND_HEADER: ",".join(fan_out.groups), ROUTE_HEADER: Source.AFFINITY.value, **fan_out.headers}
    return Answer(max(statuses), b"", "application/octet-stream", headers)

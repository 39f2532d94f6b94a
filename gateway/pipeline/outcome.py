"""After the decision, for both data paths: the answers the gateway makes itself, and the bookkeeping that
every answer needs.

    error_answer       a gateway error as its Answer, its facts put on the exchange (code, backend, failure)
    unexpected_answer  anything else that escaped: logged once with its traceback, answered 500
    history_body       a /history answer's body with its output refs prefixed (None: pass the backend's on)
    settle_submission  POST /prompt once answered: its client's socket gets its events; a prompt the backend
                       did not take is forgotten
    fail_over_refused  POST /prompt refused by its backend's connection: the same prompt to its fallback
    observe_call       one call's outcome fed to its backend's circuit (backends/breaker.py)
    finish_exchange    the end of every request: duration fixed, metrics observed, the backends' circuits fed,
                       the access line logged
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace

from gateway.backends.breaker import Breakers
from gateway.core.errors import BackendOpen, GatewayError, PromptRefused, UpstreamError
from gateway.core.exchange import Exchange
from gateway.core.headers import BACKEND_HEADER, GUARDRAILS_HEADER, ROUTE_HEADER
from gateway.observe.logs import log_exchange
from gateway.observe.metrics import GatewayMetrics
from gateway.outputs import refs
from gateway.pipeline.decision import JSON_CONTENT_TYPE, Answer, Forward
from gateway.pipeline.guardrails import Guarded, guard_prompt
from gateway.runtime import Runtime
from gateway.state.store import StoreError

errors_log = logging.getLogger("comfy_gateway.errors")
submit_log = logging.getLogger("comfy_gateway.proxy")


def error_answer(err: GatewayError, exchange: Exchange | None) -> Answer:
    """The answer to a gateway error: ComfyUI's error shape, the backend it concerns and the route taken."""
    headers = err.headers()
    if err.backend:
        headers[BACKEND_HEADER] = err.backend
    if exchange is not None:
        exchange.error = err.code
        if err.backend:
            exchange.backend = exchange.backend or err.backend
            kind = err.failure_kind
            if kind is not None:
                exchange.upstream_errors += ((err.backend, kind),)
        if exchange.source:
            headers[ROUTE_HEADER] = exchange.source
        if err.status >= 500 and not isinstance(err, BackendOpen):  # an open circuit was said as it opened
            errors_log.warning("%s %s: %s", exchange.method, exchange.path, err.message)
    return Answer(err.status, json.dumps(err.body()).encode(), JSON_CONTENT_TYPE, headers)


def unexpected_answer(exc: BaseException, exchange: Exchange | None, method: str, path: str) -> Answer:
    """A bug, not a condition: its traceback logged once, the client told to look at the log."""
    backend = exchange.backend if exchange is not None else None
    errors_log.error("unexpected error on %s %s (backend %s)", method, path, backend, exc_info=exc)
    return error_answer(
        GatewayError("the gateway failed to handle this request; see its log", backend=backend), exchange
    )


def history_body(
    status: int, content_type: str, content_encoding: str | None, body: bytes, backend: str
) -> bytes | None:
    """A /history or /history/{id} answer's body with every output ref's subfolder prefixed by `backend`.

    None means the backend's answer goes on as it came (status, headers, body): it is not a JSON 200, it is
    compressed, or it holds no output ref. A JSON 200 that is not JSON is the backend breaking the protocol.
    """
    if status != 200 or not content_type.startswith("application/json"):
        return None
    if content_encoding and content_encoding.strip().lower() != "identity":
        return None
    # No output ref (an escaped key could spell one). find, not `in`: `in` on bytes first tries its needle as an
    # int, and formats the TypeError that fails, on every answer.
    if body.find(b'"filename"') < 0 and body.find(b"\\u") < 0:
        return None
    try:
        return refs.prefixed_history_text(body, backend)
    except (ValueError, RecursionError) as exc:
        raise UpstreamError(
            f"backend {backend!r} answered /history with invalid JSON: {exc}", backend=backend, kind="protocol"
        ) from exc


async def settle_submission(rt: Runtime, prompt_id: str, backend: str, source: str, status: int) -> None:
    """POST /prompt, once its answer is sent (status 0: none was): a prompt the backend did not take is
    forgotten, so no later call follows it there. Either way the events of the prompt held for its client's
    socket go on now."""
    rt.followers.answered(prompt_id)
    if status == 200:
        # The access line says it too (prompt_id=, backend=, route=); this one is for debugging.
        submit_log.debug("prompt %s recorded on backend %s (%s)", prompt_id, backend, source)
        return
    try:
        await rt.store.forget_prompt(prompt_id)
    except StoreError as exc:  # the answer is sent; a record left behind only points at the backend that refused
        submit_log.warning(
            "prompt %s rejected by backend %s (%d); forgetting it failed: %s", prompt_id, backend, status, exc
        )
        return
    submit_log.info("prompt %s rejected by backend %s (%d); affinity forgotten", prompt_id, backend, status)


async def fail_over_refused(rt: Runtime, forward: Forward, exchange: Exchange | None, why: str) -> Forward:
    """POST /prompt whose backend refused the connection, nothing of it sent: the same prompt (body and
    prompt_id) goes to `forward.fallback` instead, its affinity moved there first. The fallback's guardrails
    judge it first, as if it had been sent there from the start: a model or node class the fallback lacks
    raises PromptRefused, and the prompt goes nowhere."""
    assert forward.prompt_id is not None and forward.fallback is not None and forward.body is not None
    refused = forward.selection.backend
    if exchange is not None:
        exchange.upstream_errors += ((refused, "connect"),)
        exchange.backend, exchange.source = forward.fallback.backend, forward.fallback.source.value
    try:
        guarded = guard_prompt(rt, forward.fallback, forward.body)
    except PromptRefused as refusal:
        if exchange is not None:
            exchange.guardrails += (refusal.action,)
        submit_log.info(
            "prompt %s not sent to fallback backend %s after backend %s refused the connection (%s): %s",
            forward.prompt_id, forward.fallback.backend, refused, why, refusal.note,  # the note: encoded already
        )
        raise
    fallback = guarded.selection
    record = await rt.store.lookup_prompt(forward.prompt_id)
    if record is not None:
        await rt.store.record_prompt(replace(record, backend=fallback.backend))
        if record.client_id is not None:  # its socket must follow the server the prompt now runs on
            await rt.followers.prompt_routed(record.client_id, fallback.backend, forward.prompt_id)
    if exchange is not None:
        exchange.backend, exchange.source = fallback.backend, fallback.source.value
        exchange.guardrails += guarded.actions
    submit_log.info(
        "prompt %s goes to fallback backend %s: backend %s refused the connection (%s)",
        forward.prompt_id, fallback.backend, refused, why,
    )
    return forward.replaced(
        selection=fallback, fallback=None, body=guarded.body, headers=_guardrail_notes(forward, guarded)
    )


def _guardrail_notes(forward: Forward, guarded: Guarded) -> Mapping[str, str]:
    """The forward's answer headers with the fallback's guardrail notes after the first backend's."""
    notes = guarded.headers.get(GUARDRAILS_HEADER)
    if notes is None:
        return forward.headers
    before = forward.headers.get(GUARDRAILS_HEADER)
    return {**forward.headers, GUARDRAILS_HEADER: f"{before}, {notes}" if before else notes}


def observe_call(rt: Runtime, backend: str, failure: UpstreamError | None) -> None:
    """A call the pipeline made itself (an affinity probe): its outcome, for the backend's circuit."""
    if failure is None:
        rt.breakers.succeeded(backend)
    else:
        rt.breakers.failed(backend, f"{failure.kind}: {failure.message}")


def observe_backends(breakers: Breakers, exchange: Exchange) -> None:
    """What a finished request says of the backends it reached: each failed call (connect, timeout, protocol,
    or the backend's own 5xx) counts against its backend's circuit, each answer for it. A request the gateway
    answered itself before any call (bad input, an open circuit) says nothing of any backend."""
    failed: set[str] = set()
    for name, kind in exchange.upstream_errors:
        if name not in failed:
            failed.add(name)
            breakers.failed(name, kind)
    if exchange.error is not None or exchange.backend is None or exchange.status in (0, 499):
        return
    for name in exchange.backend.split(","):
        if name in failed or name not in breakers:
            continue
        if exchange.status >= 500 and exchange.source != "merged":
            breakers.failed(name, f"answered {exchange.status}")
        else:
            breakers.succeeded(name)


def finish_exchange(metrics: GatewayMetrics, exchange: Exchange, breakers: Breakers | None = None) -> None:
    """The end of every request, on either data path: the duration fixed, the metrics observed, the backends'
    circuits fed, the line logged."""
    exchange.finish()
    exchange.release()
    metrics.observe_exchange(exchange)
    if breakers is not None:
        observe_backends(breakers, exchange)
    log_exchange(exchange)

"""decide(): every request for a backend, decided once, as a value both data paths carry out.

    guard (loop, host, origin, CORS preflight, caller, rate) → selection (header, query) → by routing kind,
    where a selected pool becomes one of its members (place.py: a new prompt by queue length, else by caller):
        POST /prompt          mint or read its prompt id, fail over from an unavailable backend, guardrails
                              (guardrails.py), record affinity, tell the client's socket where it goes, Forward
                              (answer settled in outcome.py)
        GET /history/{id}     affinity, else the selection; Forward with its output refs rewritten
        prompt-scoped POSTs   the backends holding the prompts named: Forward to one, or FanOut
        GET /history, /queue, /prompt   the selection (a pool: a Merge of its members), or with none a Merge of
                              every backend
        /view                 the subfolder's first segment names the backend; else the selection
        /ws                   the clientId every backend gets (the client's, or minted); Forward as a WebSocket
        anything else         Forward to the selection: header → query → preference → default

This is the only place that branches on the routing kind. A gateway error raised by any step becomes its
Answer here, so a data path never renders an error of the pipeline's itself.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from urllib.parse import unquote_plus, urlencode

from gateway.core import json_codec
from gateway.core.errors import BadPromptBody, BadRequest, GatewayError, PromptRefused, StoreUnavailable
from gateway.core.exchange import Exchange
from gateway.core.headers import UNAVAILABLE_HEADER
from gateway.core.selection import SOURCE_TEXT, Selection, Source, selected
from gateway.merge.aggregate import backend_history_query, parse_history_paging
from gateway.outputs import refs
from gateway.pipeline import guard, outcome
from gateway.pipeline.admit import check_backend, fail_over
from gateway.pipeline.affinity import locate_prompt, locate_prompts
from gateway.pipeline.classify import Endpoint, RequestFacts, Routing, call_kind, prompt_ids_in_body
from gateway.pipeline.decision import Answer, Decision, FanOut, Forward, Merge, with_headers
from gateway.pipeline.guardrails import guard_prompt
from gateway.pipeline.identifiers import id_problem
from gateway.pipeline.place import place, place_prompt, standby
from gateway.pipeline.prompt_body import read_submission
from gateway.pipeline.select import base_selection, explicit_selection, preference_selection
from gateway.runtime import Runtime
from gateway.state.store import PromptRecord, StoreError

CLIENT_ID_PARAM = "clientId"
log = logging.getLogger("comfy_gateway.pipeline")


async def decide(
    rt: Runtime,
    request: RequestFacts,
    endpoint: Endpoint,
    exchange: Exchange,
    body: bytes | None,
    verdicts: guard.KeptVerdicts | None = None,
) -> Decision:
    """What to do with `request` (its body read already where classify.needs_body says so). `verdicts`: where
    the guard's verdicts on heads are kept, by a data path that can key them (RequestFacts.head_key)."""
    answer_headers: dict[str, str] = {}  # for any answer, errors included (CORS, so a page can read them)
    try:
        decision = await _decide(rt, request, endpoint, exchange, body, answer_headers, verdicts)
        if isinstance(decision, Forward) and decision.prompt_id is None:  # a submission was admitted already
            check_backend(rt, decision.selection.backend)
    except GatewayError as err:
        decision = outcome.error_answer(err, exchange)
    except StoreError as exc:
        decision = outcome.error_answer(StoreUnavailable(str(exc)), exchange)
    if isinstance(decision, Forward) and not decision.websocket:
        kind = call_kind(endpoint)
        if kind != decision.kind:
            decision = decision.replaced(kind=kind)
    # A Forward made with the answer headers carries them already (made once: a decision is a frozen value,
    # and making one again was a measurable share of a small request's cost).
    if not answer_headers or decision.headers is answer_headers:
        return decision
    return with_headers(decision, answer_headers)


async def _decide(
    rt: Runtime,
    request: RequestFacts,
    endpoint: Endpoint,
    exchange: Exchange,
    body: bytes | None,
    answer_headers: dict[str, str],
    verdicts: guard.KeptVerdicts | None,
) -> Decision:
    if verdicts is not None:
        verdict = verdicts.verdict(request, rt, endpoint, answer_headers)
    else:
        verdict = guard.head_verdict(request, rt, endpoint, answer_headers)
    if verdict.preflight is not None:
        return Answer(204, b"", headers=dict(verdict.preflight))
    caller = verdict.caller
    assert caller is not None  # a verdict names its caller unless it is a preflight's
    user = exchange.user = caller.user
    guard.check_rate(rt, caller, submission=endpoint.routing is Routing.SUBMIT)
    if verdict.cookie is not None:
        answer_headers.update(verdict.cookie)
    explicit = verdict.explicit if verdict.chosen else explicit_selection(request, rt)
    # who a pool keeps on one member (place.py); with no pool nothing reads it, so its address is not looked up
    caller_key = (user or request.client_ip or "") if rt.backends.pools else ""
    match endpoint.routing:
        case Routing.SUBMIT:
            return await _submit(rt, exchange, caller, body or b"", explicit, caller_key)
        case Routing.HISTORY:
            prompt_id = endpoint.prompt_id or ""
            valid = id_problem(prompt_id, rt.policy.max_id_chars) is None
            exchange.prompt_id = prompt_id if valid else None
            known = await _check_owner(rt, caller, prompt_id) if valid else None
            left_out: dict[str, str] = {}
            holder = await locate_prompt(rt, prompt_id, left_out, known=known) if valid else None  # else none can
            if left_out:  # the prompt may be on one of them: say the answer could not ask it
                answer_headers[UNAVAILABLE_HEADER] = ",".join(left_out)
                exchange.unavailable = tuple(left_out)
            held = selected(holder, Source.AFFINITY) if holder else explicit or await base_selection(rt, user)
            return _forward(exchange, place(rt, held, caller_key), rewrite_history=True, headers=answer_headers)
        case Routing.PROMPT_SCOPED:
            return await _prompt_scoped(rt, request, endpoint, exchange, caller, body or b"", explicit, caller_key)
        case Routing.MERGEABLE:
            chosen = explicit or await preference_selection(rt, user)
            if chosen is None:
                return _merge(request, endpoint)
            members = rt.backends.pools.get(chosen.backend)
            if members is not None:  # a pool's answer is its members' merged
                return _merge(request, endpoint, members)
            return _forward(
                exchange, chosen, rewrite_history=endpoint.template == "/history", headers=answer_headers
            )
        case Routing.VIEW:
            return await _view(rt, request, exchange, explicit, caller_key)
        case Routing.WEBSOCKET if request.websocket:
            # where the socket opens first; it follows every server its client's prompts go to
            selection = place(rt, fail_over(rt, explicit or await base_selection(rt, user)), caller_key)
            client_id, target = _socket_target(rt, request)
            key = guard.open_socket(rt, caller)  # last: nothing after it may fail and leave it counted
            exchange.on_finish = lambda: rt.admission.sockets.close(key)
            forward = _forward(exchange, selection, target=target, websocket=True)
            return forward.replaced(client_id=client_id, also_follow=_also_followed(rt, selection.backend))
        case _:
            selection = place(rt, explicit or await base_selection(rt, user), caller_key)
            return _forward(exchange, selection, headers=answer_headers)


def _forward(
    exchange: Exchange,
    selection: Selection,
    *,
    target: str | None = None,
    body: bytes | None = None,
    prompt_id: str | None = None,
    rewrite_history: bool = False,
    websocket: bool = False,
    headers: Mapping[str, str] | None = None,
) -> Forward:
    exchange.backend = selection.backend
    exchange.source = SOURCE_TEXT[selection.source]
    return Forward(selection, target, body, prompt_id, rewrite_history, websocket, headers or None)


# --- POST /prompt ---------------------------------------------------------------------------------------------


async def _submit(
    rt: Runtime, exchange: Exchange, caller: guard.Caller, body: bytes, explicit: Selection | None, caller_key: str
) -> Forward:
    """Remembered before it is forwarded: once the backend has the prompt, its WebSocket events can race our
    answer, and nothing may sit between the backend's answer and ours."""
    submission = read_submission(body, rt.policy.max_json_depth)
    for member, value in (("prompt_id", submission.prompt_id), ("client_id", submission.client_id)):
        problem = None if value is None else id_problem(value, rt.policy.max_id_chars)
        if problem is not None:
            raise BadPromptBody(f"{member} {problem}", details=member)
    if submission.body is body:  # the client chose the id (a minted one is spliced in): it may be taken
        guard.check_resubmission(await rt.store.lookup_prompt(submission.prompt_id), caller)
    chosen = fail_over(rt, explicit or await base_selection(rt, exchange.user))
    selection = place_prompt(rt, chosen, caller_key, submission.body, submission.nodes)
    exchange.prompt_id = submission.prompt_id
    try:
        guarded = guard_prompt(rt, selection, submission.body, submission.nodes)
    except PromptRefused as refused:  # never recorded: no backend has it
        exchange.guardrails = (refused.action,)
        exchange.source = selection.source.value
        raise
    selection, exchange.guardrails = guarded.selection, guarded.actions
    check_backend(rt, selection.backend)  # before it is recorded: an open backend takes no prompt
    rt.queues.sent(selection.backend)
    record = PromptRecord(
        prompt_id=submission.prompt_id,
        backend=selection.backend,
        user=exchange.user,
        client_id=submission.client_id,
        submitted_at=time.time(),
        route=selection.source.value,
        guardrails=guarded.actions,
    )
    try:
        await rt.store.record_prompt(record)
    except StoreError as exc:
        if not rt.policy.degrade_on_store_outage:
            raise
        # Nothing above needed the store (a client-chosen id or a user's preference would have raised already):
        # the prompt goes on, and later calls about it find it by asking every backend (affinity.locate_prompt).
        rt.metrics.affinity_unrecorded()
        log.warning(
            "state store unavailable: prompt %s goes to backend %s without its affinity record (%s)",
            record.prompt_id,
            record.backend,
            exc,
        )
    if submission.client_id is not None:
        # Before the backend has it: the client's socket must be following that backend when its events come.
        await rt.followers.prompt_routed(submission.client_id, selection.backend, submission.prompt_id)
    forward = _forward(exchange, selection, body=guarded.body, prompt_id=submission.prompt_id, headers=guarded.headers)
    fallback = standby(rt, chosen, selection, caller_key, guarded.body)
    return forward.replaced(fallback=fallback) if fallback is not None else forward


# --- /ws -----------------------------------------------------------------------------------------------------


def _socket_target(rt: Runtime, request: RequestFacts) -> tuple[str, str]:
    """The socket's clientId and its target for every backend it will follow. A client that gives none gets
    one minted, as ComfyUI mints one (and says it as `sid` in its first status): here the gateway mints it, so
    that every backend the socket follows knows it by the same id."""
    params = rt.policy.gateway_query_params
    client_id = request.query.get(CLIENT_ID_PARAM, "")
    if client_id:
        problem = id_problem(client_id, rt.policy.max_id_chars)
        if problem is not None:
            raise BadRequest(f"clientId {problem}", details=CLIENT_ID_PARAM)
        return client_id, forward_target(request.raw_target, params)
    client_id = uuid.uuid4().hex
    return client_id, with_client_id(forward_target(request.raw_target, params), client_id)


def _also_followed(rt: Runtime, opened_on: str) -> tuple[str, ...]:
    """The servers a new socket follows from the start beside `opened_on`: its pool's other members, so a prompt
    placed on any of them reaches it; with websocket.follow = "all", every server not known down."""
    if rt.policy.sockets_follow_all:
        down = rt.known_down()
        return tuple(name for name in rt.backends if name != opened_on and name not in down)
    members = rt.backends.pools.get(rt.backends[opened_on].pool or "", ())
    return tuple(member for member in members if member != opened_on)


def with_client_id(target: str, client_id: str) -> str:
    """`target` whose query names `client_id` (a minted one: URL-safe) as its one clientId, the rest kept."""
    path, _, query = target.partition("?")
    kept = [p for p in query.split("&") if p and unquote_plus(p.split("=", 1)[0]) != CLIENT_ID_PARAM]
    return f"{path}?{'&'.join([*kept, f'{CLIENT_ID_PARAM}={client_id}'])}"


# --- POST /queue, /history, /interrupt naming prompts -----------------------------------------------------------


async def _prompt_scoped(
    rt: Runtime,
    request: RequestFacts,
    endpoint: Endpoint,
    exchange: Exchange,
    caller: guard.Caller,
    body: bytes,
    explicit: Selection | None,
    caller_key: str,
) -> Decision:
    """Ids named in the body go to the backends that hold them; ids no backend holds, and a call naming none
    (clear, a global interrupt), go to the selected backend (a pool: every member)."""
    try:
        json_codec.check_depth(body, rt.policy.max_json_depth)
    except json_codec.JsonTooDeep as exc:
        raise BadRequest(f"request body is {exc}", details="body") from None
    try:
        payload = json.loads(body) if body.strip() else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        payload = None  # not ours to judge: the backend answers malformed bodies in its own way
    ids = prompt_ids_in_body(endpoint.template, payload)
    chosen = explicit or await base_selection(rt, exchange.user)
    members = rt.backends.pools.get(chosen.backend)
    if not ids and members is not None and isinstance(payload, dict):
        target = forward_target(request.raw_target, rt.policy.gateway_query_params)
        exchange.backend, exchange.source = ",".join(members), chosen.source.value
        return FanOut(request.method, target, None, payload, {member: [] for member in members})
    fallback = place(rt, chosen, caller_key)
    if not ids:
        return _forward(exchange, fallback, body=body)
    limit = rt.policy.max_id_chars
    valid = [i for i in ids if id_problem(i, limit) is None]
    exchange.prompt_id = valid[0] if valid else None
    await _check_owners(rt, caller, valid)
    groups, unknown = await locate_prompts(rt, valid)
    unknown += [i for i in ids if id_problem(i, limit) is not None]  # on no backend: looked up nowhere
    if unknown:
        groups.setdefault(fallback.backend, []).extend(unknown)
    if len(groups) == 1:
        (backend,) = groups
        source = Source.AFFINITY if not unknown or backend != fallback.backend else fallback.source
        return _forward(exchange, Selection(backend, source), body=body)
    assert isinstance(payload, dict)  # ids were found in it
    exchange.backend = ",".join(groups)
    exchange.source = Source.AFFINITY.value
    key = "prompt_id" if endpoint.template == "/interrupt" else "delete"
    target = forward_target(request.raw_target, rt.policy.gateway_query_params)
    return FanOut(request.method, target, key, payload, groups)


async def _check_owner(rt: Runtime, caller: guard.Caller, prompt_id: str) -> PromptRecord | None:
    """_check_owners for one prompt; the record it read, if it read one (so it is not read twice)."""
    if not rt.access.tokens_on or caller.admin:
        return None
    record = await rt.store.lookup_prompt(prompt_id)
    guard.check_owner(record, caller, rt, prompt_id)
    return record


async def _check_owners(rt: Runtime, caller: guard.Caller, prompt_ids: list[str]) -> None:
    if rt.access.tokens_on and not caller.admin:
        for prompt_id in prompt_ids:
            guard.check_owner(await rt.store.lookup_prompt(prompt_id), caller, rt, prompt_id)


# --- merged answers -----------------------------------------------------------------------------------------


def _merge(request: RequestFacts, endpoint: Endpoint, only: tuple[str, ...] = ()) -> Merge:
    if endpoint.template != "/history":
        return Merge(endpoint.template, request.raw_target.partition("?")[0], only=only)
    try:
        max_items, offset = parse_history_paging(request.query)
    except ValueError as exc:
        raise BadRequest(str(exc), details="max_items/offset") from None
    query = backend_history_query(max_items, offset)
    return Merge("/history", "/history" + (f"?{urlencode(query)}" if query else ""), max_items, offset, only=only)


# --- /view ------------------------------------------------------------------------------------------------------


async def _view(
    rt: Runtime, request: RequestFacts, exchange: Exchange, explicit: Selection | None, caller_key: str
) -> Forward:
    """A ref's subfolder may start with the backend's name (outputs/refs.py): that backend, prefix stripped."""
    query = request.query
    try:
        ref = refs.parse_view_ref(query.get("filename", ""), query.get("subfolder", ""), rt.backends)
    except ValueError as exc:
        raise BadRequest(f"invalid /view reference: {exc}", details="subfolder") from exc
    if ref.backend is None:
        return _forward(exchange, place(rt, explicit or await base_selection(rt, exchange.user), caller_key))
    params = rt.policy.gateway_query_params
    backend_query = urlencode(
        [(k, ref.subfolder if k == "subfolder" else v) for k, v in query.items() if k not in params]
    )
    target = forward_target(request.raw_target, params, query=backend_query)
    return _forward(exchange, Selection(ref.backend, Source.AFFINITY), target=target)


def forward_target(raw: str, params: tuple[str, ...], *, query: str | None = None) -> str:
    """The raw target (still percent-encoded, so `%2F` inside a segment survives) minus the gateway's own
    query parameters (`backend`, and `token` when credentials are on), which are for the gateway, not the
    backend. `query` replaces the query."""
    path, sep, raw_query = raw.partition("?")
    if query is not None:
        return f"{path}?{query}" if query else path
    if not sep:
        return path
    if "%" not in raw_query and "+" not in raw_query and not any(param in raw_query for param in params):
        return raw
    kept = [p for p in raw_query.split("&") if unquote_plus(p.split("=", 1)[0]) not in params]
    return f"{path}?{'&'.join(kept)}" if kept else path

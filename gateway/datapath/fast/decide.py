"""What the fast path does with a request: the same decisions as proxy.handle, from the same functions
(comfy_api.classify, gateway.pipeline.plan, selection, affinity, rewrite), returned as a small value instead of done.

A request ends as one of: forward to one backend (streamed, or read whole and rewritten, or a WebSocket
tunnel), or hand to the in-process aiohttp app (merged answers, fan-out, the gateway's own endpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pipeline import plan
from gateway.pipeline.classify import Endpoint, Routing
from gateway.core.exchange import Exchange
from gateway.datapath.fast.request import RequestHead
from gateway.pipeline.prompt_body import read_submission
from gateway.runtime import Runtime
from gateway.pipeline.select import Selection, Source


@dataclass(slots=True)
class Forward:
    """Send the request to one backend."""

    selection: Selection
    target: str | None = None  # None: the request's own target without the gateway's query parameter
    body: bytes | None = None  # already read (POST /prompt, prompt-scoped calls); else streamed
    prompt_id: str | None = None  # POST /prompt: recorded before, forgotten if the backend rejects it
    rewrite_history: bool = False  # read the answer whole and prefix its output refs
    websocket: bool = False


@dataclass(frozen=True, slots=True)
class Delegate:
    """Let the aiohttp app answer (it decides again, from the same request)."""

    body: bytes | None = None


Action = Forward | Delegate

# Routes whose body must be read before the backend can be chosen.
NEEDS_BODY = frozenset({Routing.SUBMIT, Routing.PROMPT_SCOPED})


async def decide(rt: Runtime, head: RequestHead, endpoint: Endpoint, exchange: Exchange, body: bytes | None) -> Action:
    """proxy.handle's `match`, case for case."""
    policy = rt.policy
    user = exchange.user = plan.user_of(head, rt)
    explicit = plan.explicit_selection(head.get(policy.backend_header), head.query_value(policy.backend_query_param), rt)
    routing = endpoint.routing
    if routing is Routing.PLAIN:
        return Forward(explicit or await plan.base_selection(rt, user))
    if routing is Routing.HISTORY:
        exchange.prompt_id = endpoint.prompt_id
        return Forward(await plan.history_selection(rt, endpoint.prompt_id or "", explicit, user), rewrite_history=True)
    if routing is Routing.MERGEABLE:
        selection = explicit or await plan.preference_selection(rt, user)
        if selection is None:
            return Delegate()
        return Forward(selection, rewrite_history=endpoint.template == "/history")
    if routing is Routing.SUBMIT:
        return await submit_prompt(rt, exchange, body or b"", explicit)
    if routing is Routing.PROMPT_SCOPED:
        return await prompt_scoped_call(rt, exchange, endpoint, body or b"", explicit)
    if routing is Routing.VIEW:
        return await view(rt, head, exchange, explicit)
    if routing is Routing.WEBSOCKET and head.websocket:
        return Forward(explicit or await plan.base_selection(rt, user), websocket=True)
    return Forward(explicit or await plan.base_selection(rt, user))


async def submit_prompt(rt: Runtime, exchange: Exchange, body: bytes, explicit: Selection | None) -> Forward:
    """Mint the prompt_id, record affinity before forwarding (nothing may sit between the backend's answer and
    ours); the dispatcher forgets it once a rejection has been sent."""
    exchange.bytes_in = len(body)
    submission = read_submission(body)
    selection = explicit or await plan.base_selection(rt, exchange.user)
    exchange.prompt_id = submission.prompt_id
    await rt.store.record_prompt(plan.prompt_record(submission, selection, exchange.user))
    return Forward(selection, body=submission.body, prompt_id=submission.prompt_id)


async def prompt_scoped_call(
    rt: Runtime, exchange: Exchange, endpoint: Endpoint, body: bytes, explicit: Selection | None
) -> Action:
    route = await plan.route_prompt_scoped(rt, endpoint.template, body, explicit, exchange.user)
    exchange.prompt_id = route.first_prompt_id
    if route.selection is None:
        return Delegate(body)  # several backends: the aiohttp app splits the call
    return Forward(route.selection, body=body)


async def view(rt: Runtime, head: RequestHead, exchange: Exchange, explicit: Selection | None) -> Forward:
    ref = plan.view_ref(head.query, rt)
    if ref.backend is None:
        return Forward(explicit or await plan.base_selection(rt, exchange.user))
    query = plan.view_query(list(head.query.items()), ref, rt.policy.backend_query_param)
    target = plan.forward_target(head.target.decode("latin-1"), rt.policy.backend_query_param, query=query)
    return Forward(Selection(ref.backend, Source.AFFINITY), target=target)

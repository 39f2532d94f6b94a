"""From a parsed request to its answer on the fast path: classify, read the body if routing needs it,
decide (gateway.pipeline; inline when the store's calls never wait), then carry the decision out: relay a
Forward to its backend, answer a Merge or FanOut through pipeline/merged.py, send an Answer as it is. The
gateway's own routes (/gateway/*, /metrics) are handed to the in-process aiohttp app, and so are client
sockets on /ws, their connections whole (handover.py): the app's fan-in follows each client's prompts on every
backend, for both data paths.

Every request the fast path answers itself gets the same Exchange as on the aiohttp path (endpoint, backend,
source, user, prompt_id, status, bytes, errors), passed to the same end-of-request step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.backends.table import Backend, Timeouts
from gateway.core.errors import GatewayError
from gateway.core.exchange import Exchange
from gateway.core.headers import PROMPT_ID_HEADER, instance_value, upstream_request_headers
from gateway.core.kept import Kept
from gateway.core.redact import shown_url
from gateway.core.selection import SOURCE_TEXT
from gateway.datapath.fast import wire
from gateway.datapath.fast.eager import run_eagerly
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.pool import UpstreamPool
from gateway.datapath.fast.relay import Destination, Relay, Route
from gateway.datapath.fast.request import IncomingRequest, RequestHead
from gateway.datapath.fast.tunnel import switch_to_tunnel
from gateway.pipeline import outcome
from gateway.pipeline.classify import Endpoint, Routing, classify, needs_body
from gateway.pipeline.decide import decide, forward_target
from gateway.pipeline.decision import Answer, Decision, FanOut, Forward, Merge
from gateway.pipeline.guard import KeptVerdicts
from gateway.pipeline.identifiers import header_text
from gateway.pipeline.merged import answer_fan_out, answer_merge
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.datapath.fast.connection import ClientConnection

log = logging.getLogger("comfy_gateway.fastpath")

# The in-process app answers within its own timeouts (its merges within each backend's); this only bounds a
# wedged one.
# Sets of routing lines with the gateway's own answer headers kept ready: their values come from the
# configuration (an allowed origin, a backend's name), so a handful are in use at once.
ROUTING_LINES_KEPT = 64
QUERY_MARK: Final = ord("?")
APP_TIMEOUTS = Timeouts(connect_seconds=5.0, first_byte_seconds=600.0, transfer_first_byte_seconds=600.0,
                        read_seconds=600.0)


class Dispatcher:
    def __init__(
        self,
        rt: Runtime,
        *,
        pools: dict[str, UpstreamPool],
        wires: dict[str, wire.BackendWire],
        app_pool: UpstreamPool,
        app_paths: tuple[frozenset[str], tuple[str, ...]],
        limits: Limits,
    ) -> None:
        self.rt = rt
        self.pools = pools
        self.wires = wires
        self.app_pool = app_pool
        self._app_exact, self._app_prefixes = app_paths
        self._answers_inline = rt.store.answers_inline  # decisions, and the store calls after them, run without a task
        self._verdicts = KeptVerdicts(limits.kept_heads)
        # The head sent to a backend for a head seen before (wire.backend_request_head is a function of the
        # head, the client's address, the backend, the target and whether the answer is read whole).
        self._upstream_heads: Kept[tuple[object, ...], bytes] = Kept(limits.kept_heads)
        self._gateway_headers = frozenset(name.lower().encode("latin-1") for name in rt.policy.gateway_headers)
        self._params = rt.policy.gateway_query_params
        self._params_bytes = tuple(param.encode("latin-1") for param in self._params)
        in_flight = rt.metrics.in_flight_updates()
        self._destinations = {
            name: Destination(
                pools[name],
                name,
                shown_url(backend.url),
                backend.timeouts,
                in_flight.get(name),
                rt.retries,
                switch_to_tunnel(name, rt.metrics.relay_meter(name)),
            )
            for name, backend in rt.backends.items()
        }
        self._app = Destination(app_pool, None, "", APP_TIMEOUTS)
        self._app_sockets = Destination(app_pool, None, "", APP_TIMEOUTS, switch=switch_to_tunnel(None, None))
        self._lines: dict[tuple[str, str], bytes] = {}  # X-Comfy-Backend/Route lines: backends x sources
        # the same with the gateway's answer headers
        self._lines_with: Kept[tuple[object, ...], bytes] = Kept(ROUTING_LINES_KEPT)

    # --- start ------------------------------------------------------------------------------------------------

    def start(self, client: ClientConnection, request: IncomingRequest) -> None:
        head = request.head
        path = head.path
        if path in self._app_exact or path.startswith(self._app_prefixes):
            self._to_app(client, request)
            return
        endpoint = classify(head.method, path)
        if endpoint.routing is Routing.WEBSOCKET and head.websocket and request.refusal is None:
            if not self._hand_socket_to_app(client, request):
                self._socket_to_app(client, request)
            return
        request.exchange = Exchange(head.method, path, endpoint.template, request.started)
        head.client_ip = client.client_ip.decode("latin-1") if client.client_ip else None
        if request.refusal is not None:
            client.answer_error(request, request.refusal)
            return
        if needs_body(endpoint):
            if head.expect_continue and not request.complete:
                request.continued = True
                client.write(wire.CONTINUE)
            client.body_flowing()
            request.read_whole(lambda body: self._decide(client, request, endpoint, body))
            return
        self._decide(client, request, endpoint, None)

    def _decide(
        self, client: ClientConnection, request: IncomingRequest, endpoint: Endpoint, body: bytes | None
    ) -> None:
        exchange = request.exchange
        assert exchange is not None
        run_eagerly(
            decide(self.rt, request.head, endpoint, exchange, body, self._verdicts),
            lambda decision: self._act(client, request, decision),
            lambda exc: self._failed(client, request, exc),
            inline=self._answers_inline,
        )

    def _act(self, client: ClientConnection, request: IncomingRequest, decision: Decision) -> None:
        if client.current is not request:  # the client left (or the request was refused) while deciding
            if isinstance(decision, Forward) and decision.prompt_id:
                self._settle(decision, 0)
            if request.exchange is not None:
                request.exchange.release()
            return
        exchange = request.exchange
        assert exchange is not None
        if isinstance(decision, Forward):
            self._forward(client, request, decision)
        elif isinstance(decision, Merge):
            self._answer_later(client, request, answer_merge(self.rt, decision, exchange))
        elif isinstance(decision, FanOut):
            headers = self._headers_for(client, request.head)
            self._answer_later(client, request, answer_fan_out(self.rt, decision, exchange, headers))
        else:
            client.answer_with(request, decision)

    def _answer_later(
        self, client: ClientConnection, request: IncomingRequest, work: Coroutine[Any, Any, Answer]
    ) -> None:
        def answered(answer: Answer) -> None:
            if client.current is request:
                client.answer_with(request, answer)

        run_eagerly(work, answered, lambda exc: self._failed(client, request, exc), inline=self._answers_inline)

    def _failed(self, client: ClientConnection, request: IncomingRequest, exc: BaseException) -> None:
        if client.current is not request:
            return
        if isinstance(exc, GatewayError):
            client.answer_error(request, exc)
            return
        head = request.head
        client.answer_with(request, outcome.unexpected_answer(exc, request.exchange, head.method, head.path))

    # --- forward to a backend ----------------------------------------------------------------------------------

    def _forward(self, client: ClientConnection, request: IncomingRequest, forward: Forward) -> None:
        selection = forward.selection
        name = selection.backend
        source = SOURCE_TEXT[selection.source]
        head = request.head
        target = forward.target.encode("latin-1") if forward.target is not None else self._target(head)
        prompt_id = forward.prompt_id
        route = Route(
            self._destinations[name],
            self._upstream_head(head, name, target, client.client_ip, forward),
            target.decode("latin-1"),
            wire.routing_lines(name, source, {PROMPT_ID_HEADER: header_text(prompt_id), **forward.headers})
            if prompt_id
            else self._routing_lines_with(name, source, forward.headers)
            if forward.headers
            else self._routing_lines(name, source),
            forward.body,
            forward.rewrite_history,
            forward.websocket,
            (lambda status: self._settle(forward, status)) if prompt_id else None,
            forward.kind,
            (lambda why: self._fail_over(client, request, forward, why)) if forward.fallback is not None else None,
        )
        relay = Relay(client, request, route)
        client.responder = relay
        relay.start()

    def _fail_over(self, client: ClientConnection, request: IncomingRequest, forward: Forward, why: str) -> None:
        """POST /prompt whose backend refused the connection: the same prompt to its fallback."""

        def go(moved: Forward) -> None:
            if client.current is request:
                self._forward(client, request, moved)
            else:  # the client left meanwhile
                self._settle(moved, 0)

        def failed(exc: BaseException) -> None:
            self._settle(forward, 0)
            self._failed(client, request, exc)

        fallback = outcome.fail_over_refused(self.rt, forward, request.exchange, why)
        run_eagerly(fallback, go, failed, inline=self._answers_inline)

    def _upstream_head(
        self, head: RequestHead, name: str, target: bytes, client_ip: bytes | None, forward: Forward
    ) -> bytes:
        """The request head for backend `name`, kept per request head for the last `kept_heads` (oldest out
        first) when it carries no body of the pipeline's."""
        key = head.head_key if forward.body is None and self._upstream_heads.size else None
        if key is not None:
            kept = self._upstream_heads.get((key, name, target, forward.rewrite_history))
            if kept is not None:
                return kept
        made = wire.backend_request_head(
            head,
            self.wires[name],
            target,
            client_ip=client_ip,
            drop_headers=self._gateway_headers,
            body=forward.body,
            read_whole=forward.rewrite_history,
        )
        if key is not None:
            self._upstream_heads.keep((key, name, target, forward.rewrite_history), made)
        return made

    def _routing_lines(self, name: str, source: str) -> bytes:
        lines = self._lines.get((name, source))
        if lines is None:
            lines = self._lines[(name, source)] = wire.routing_lines(name, source)
        return lines

    def _routing_lines_with(self, name: str, source: str, headers: Mapping[str, str]) -> bytes:
        """The routing lines and the gateway's own answer headers (CORS: the same for every request of a page),
        kept for the last ROUTING_LINES_KEPT sets, oldest out first."""
        key = (name, source, *headers.items())
        lines = self._lines_with.get(key)
        if lines is None:
            lines = self._lines_with.keep(key, wire.routing_lines(name, source, headers))
        return lines

    def _target(self, head: RequestHead) -> bytes:
        """The request's own target, without the gateway's query parameters."""
        target = head.target
        if QUERY_MARK not in target:  # an int: the search `in` tries first, where a bytes needle fails at a cost
            return target
        return forward_target(target.decode("latin-1"), self._params).encode("latin-1")

    def _settle(self, forward: Forward, status: int) -> None:
        """POST /prompt, once its answer is sent (or failed: 0)."""
        assert forward.prompt_id is not None
        selection = forward.selection
        run_eagerly(
            outcome.settle_submission(self.rt, forward.prompt_id, selection.backend, selection.source.value, status),
            lambda _: None,
            lambda exc: log.warning("settling prompt %s failed: %r", forward.prompt_id, exc),
            inline=self._answers_inline,
        )

    def _headers_for(self, client: ClientConnection, head: RequestHead) -> Callable[[Backend], Mapping[str, str]]:
        """The client's headers as a FanOut sends them to one backend (the header policy of core/headers.py)."""
        incoming = CIMultiDictProxy(
            CIMultiDict(
                (name.decode("latin-1"), value.decode("utf-8", "surrogateescape")) for _, name, value in head.headers
            )
        )
        client_ip = client.client_ip.decode("latin-1") if client.client_ip else None

        def headers_for(backend: Backend) -> Mapping[str, str]:
            return upstream_request_headers(
                incoming,
                backend_url=backend.url,
                client_ip=client_ip,
                scheme="http",
                drop=self.rt.policy.gateway_headers,
                instance=instance_value(self.rt.instance_id, backend.name) if self.rt.instance_id else None,
            )

        return headers_for

    # --- the gateway's own routes: the aiohttp app ---------------------------------------------------------------

    def _to_app(self, client: ClientConnection, request: IncomingRequest) -> None:
        """The app records these requests itself: it gets them as the client sent them."""
        head = request.head
        request.exchange = None
        route = Route(
            self._app,
            wire.app_request_head(head, client_ip=client.client_ip),
            head.target.decode("latin-1"),
            response_drop=wire.APP_RESPONSE_DROP_BYTES,
        )
        relay = Relay(client, request, route)
        client.responder = relay
        relay.start()

    def _hand_socket_to_app(self, client: ClientConnection, request: IncomingRequest) -> bool:
        """A client socket on /ws: the app decides it and follows the client's prompts on every backend
        (datapath/aio/fanin.py), on the client's own connection (handover.py). False: the connection cannot be
        given whole (an answer before it still being written): it goes through the app's socket instead."""
        taken = client.let_go()
        if taken is None:
            return False
        sock, rest = taken
        client.server.adopt(sock, wire.app_request_head(request.head, client_ip=client.client_ip, last=True) + rest)
        return True

    def _socket_to_app(self, client: ClientConnection, request: IncomingRequest) -> None:
        """A client socket on /ws, through the app's socket: its frames are spliced to the app's as they are to
        a backend's."""
        head = request.head
        request.exchange = None
        target = head.target.decode("latin-1")
        route = Route(
            self._app_sockets,
            wire.app_request_head(head, client_ip=client.client_ip),
            target,
            switch=True,
            response_drop=wire.APP_RESPONSE_DROP_BYTES,
        )
        relay = Relay(client, request, route)
        client.responder = relay
        relay.start()

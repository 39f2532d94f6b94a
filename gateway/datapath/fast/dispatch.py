"""From a parsed request to its answer on the fast path: classify, check, decide (decide.py, inline when the
store allows), then relay to the chosen backend or hand the request to the in-process aiohttp app.

Every request the fast path answers itself gets the same Exchange as on the aiohttp path (endpoint, backend,
source, user, prompt_id, status, bytes, errors), passed to the same end-of-request step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.pipeline import plan
from gateway.pipeline.classify import Endpoint, classify
from gateway.core.errors import ForbiddenOrigin, GatewayError
from gateway.core.exchange import Exchange
from gateway.datapath.fast import wire
from gateway.datapath.fast.decide import NEEDS_BODY, Action, Delegate, Forward, decide
from gateway.datapath.fast.eager import run_eagerly
from gateway.datapath.fast.relay import Destination, Relay, Route
from gateway.datapath.fast.request import IncomingRequest, RequestHead
from gateway.datapath.fast.history import history_rewriter
from gateway.datapath.fast.tunnel import switch_to_tunnel
from gateway.datapath.fast.pool import UpstreamPool
from gateway.core.headers import PROMPT_ID_HEADER, origin_allowed
from gateway.observe.logs import shown_url
from gateway.runtime import Runtime

if TYPE_CHECKING:
    from gateway.datapath.fast.connection import ClientConnection

log = logging.getLogger("comfy_gateway.fastpath")
errors_log = logging.getLogger("comfy_gateway.errors")
proxy_log = logging.getLogger("comfy_gateway.proxy")

# The in-process app answers within its own timeouts (merges, probes); this only bounds a wedged one.
DELEGATE_READ_SECONDS = 600.0
DELEGATE_CONNECT_SECONDS = 5.0


class Dispatcher:
    def __init__(
        self,
        rt: Runtime,
        *,
        pools: dict[str, UpstreamPool],
        wires: dict[str, wire.BackendWire],
        app_pool: UpstreamPool,
        app_paths: tuple[frozenset[str], tuple[str, ...]],
        inline: bool,
    ) -> None:
        self.rt = rt
        self.pools = pools
        self.wires = wires
        self.app_pool = app_pool
        self._app_exact, self._app_prefixes = app_paths
        self._inline = inline  # the store's calls never wait (SQLite): decisions run without a task
        self._selection_header = rt.policy.backend_header.lower().encode("latin-1")
        self._param = rt.policy.backend_query_param
        self._param_bytes = self._param.encode("latin-1")
        in_flight = rt.metrics.in_flight_gauges()
        self._destinations = {
            name: Destination(
                pools[name],
                name,
                shown_url(backend.url),
                backend.timeout.sock_connect or backend.timeout.total or DELEGATE_CONNECT_SECONDS,
                backend.timeout.sock_read,
                backend.timeout.total,
                in_flight.get(name),
                history_rewriter(name),
                switch_to_tunnel(name, rt.metrics.relay_meter(name)),
            )
            for name, backend in rt.backends.items()
        }
        self._app = Destination(app_pool, None, "", DELEGATE_CONNECT_SECONDS, DELEGATE_READ_SECONDS)
        self._lines: dict[tuple[str, str], bytes] = {}  # X-Comfy-Backend/Route lines: backends x sources

    # --- start ------------------------------------------------------------------------------------------------

    def start(self, client: ClientConnection, request: IncomingRequest) -> None:
        head = request.head
        path = head.path
        if path in self._app_exact or path.startswith(self._app_prefixes):
            self._delegate(client, request, None)
            return
        endpoint = classify(head.method, path)
        exchange = request.exchange = Exchange(head.method, path, endpoint.template, request.started)
        if request.refusal is not None:
            client.answer_error(request, request.refusal)
            return
        if b"origin" in head.index:
            host, origin = head.get("Host"), head.get("Origin")
            if not origin_allowed(host, origin):
                client.answer_error(request, ForbiddenOrigin(f"Origin {origin!r} does not match Host {host!r}"))
                return
        if endpoint.routing in NEEDS_BODY:
            if head.expect_continue and not request.complete:
                request.continued = True
                client.write(wire.CONTINUE)
            client.body_flowing()
            request.read_whole(lambda body: self._decide(client, request, endpoint, body))
            return
        self._decide(client, request, endpoint, None)

    def _decide(self, client: ClientConnection, request: IncomingRequest, endpoint: Endpoint, body: bytes | None) -> None:
        exchange = request.exchange
        assert exchange is not None
        run_eagerly(
            decide(self.rt, request.head, endpoint, exchange, body),
            lambda action: self._act(client, request, action),
            lambda exc: self._failed(client, request, exc),
            inline=self._inline,
        )

    def _act(self, client: ClientConnection, request: IncomingRequest, action: Action) -> None:
        if client.current is not request:  # the client left (or the request was refused) while deciding
            if isinstance(action, Forward) and action.prompt_id:
                self._forget(action.prompt_id)
            return
        if isinstance(action, Delegate):
            self._delegate(client, request, action.body)
        else:
            self._forward(client, request, action)

    def _failed(self, client: ClientConnection, request: IncomingRequest, exc: BaseException) -> None:
        if client.current is not request:
            return
        if not isinstance(exc, GatewayError):
            head = request.head
            backend = request.exchange.backend if request.exchange else None
            errors_log.error("unexpected error on %s %s (backend %s)", head.method, head.path, backend, exc_info=exc)
            exc = GatewayError("the gateway failed to handle this request; see its log", backend=backend)
        client.answer_error(request, exc)

    # --- forward to a backend ----------------------------------------------------------------------------------

    def _forward(self, client: ClientConnection, request: IncomingRequest, action: Forward) -> None:
        selection = action.selection
        name = selection.backend
        source = selection.source.value
        exchange = request.exchange
        assert exchange is not None
        exchange.backend, exchange.source = name, source
        head = request.head
        target = action.target.encode("latin-1") if action.target is not None else self._target(head)
        prompt_id = action.prompt_id
        route = Route(
            self._destinations[name],
            wire.backend_request_head(
                head, self.wires[name], target, client_ip=client.client_ip, drop_header=self._selection_header,
                body=action.body,
            ),
            target.decode("latin-1"),
            wire.routing_lines(name, source, {PROMPT_ID_HEADER: prompt_id}) if prompt_id else self._routing_lines(name, source),
            action.body,
            action.rewrite_history,
            action.websocket,
            self._after_submit(prompt_id, name, source) if prompt_id else None,
        )
        relay = Relay(client, request, route)
        client.responder = relay
        relay.start()

    def _routing_lines(self, name: str, source: str) -> bytes:
        lines = self._lines.get((name, source))
        if lines is None:
            lines = self._lines[(name, source)] = wire.routing_lines(name, source)
        return lines

    def _target(self, head: RequestHead) -> bytes:
        """The request's own target, without the gateway's `backend` query parameter."""
        target = head.target
        if b"?" not in target or self._param_bytes not in target:
            return target
        return plan.forward_target(target.decode("latin-1"), self._param).encode("latin-1")

    def _after_submit(self, prompt_id: str, backend: str, source: str) -> Callable[[int], None]:
        """POST /prompt, once the answer is sent: a rejected (or failed) prompt's affinity is forgotten."""

        def after(status: int) -> None:
            if status == 200:
                # The access line says it too (prompt_id=, backend=, route=); this one is for debugging.
                proxy_log.debug("prompt %s recorded on backend %s (%s)", prompt_id, backend, source)
                return
            self._forget(prompt_id)
            proxy_log.info("prompt %s rejected by backend %s (%d); affinity forgotten", prompt_id, backend, status)

        return after

    def _forget(self, prompt_id: str) -> None:
        run_eagerly(
            self.rt.store.forget_prompt(prompt_id),
            lambda _: None,
            lambda exc: log.warning("forgetting prompt %s failed: %r", prompt_id, exc),
            inline=self._inline,
        )

    # --- hand to the aiohttp app -------------------------------------------------------------------------------

    def _delegate(self, client: ClientConnection, request: IncomingRequest, body: bytes | None) -> None:
        """The app decides and records this request itself: it gets it as the client sent it."""
        head = request.head
        request.exchange = None
        route = Route(
            self._app, wire.delegate_request_head(head, client_ip=client.client_ip, body=body), head.target.decode("latin-1"),
            body=body,
        )
        relay = Relay(client, request, route)
        client.responder = relay
        relay.start()

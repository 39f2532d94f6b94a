"""The fast server: the public listening socket, its client connections, one connection pool per backend and
one to the in-process aiohttp app, the dispatcher, and a graceful drain at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.core.exchange import Exchange
from gateway.datapath.fast import wire
from gateway.datapath.fast.connection import ClientConnection
from gateway.datapath.fast.deadlines import Deadlines
from gateway.datapath.fast.dispatch import APP_TIMEOUTS, Dispatcher
from gateway.datapath.fast.handover import adopt
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.outbox import Outbox
from gateway.datapath.fast.pool import Connector, UpstreamPool
from gateway.runtime import Runtime

log = logging.getLogger("comfy_gateway.fastpath")

AppAddress = Path | tuple[str, int]  # a unix socket, or a TCP host and port


class FastServer:
    def __init__(
        self,
        app: web.Application,
        rt: Runtime,
        limits: Limits,
        *,
        app_address: AppAddress,
        app_protocol: Callable[[], asyncio.Protocol],
        record: Callable[[Exchange], None],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limits = limits
        self.record = record  # middlewares.finish_exchange, bound to the app
        self.connections: set[ClientConnection] = set()
        self.adopted = 0  # client connections given to the app (handover.py) and still open
        self._app_protocol = app_protocol  # the app's server: a protocol per connection
        self._adopting: set[asyncio.Task[None]] = set()
        self.draining = False
        timeouts = tuple(
            t
            for b in rt.backends.values()
            for t in (b.timeouts.connect_seconds, b.timeouts.first_byte_seconds, b.timeouts.read_seconds)
        )
        self.deadlines = Deadlines(self.loop, limits.tick_seconds(timeouts))
        self._servers: list[asyncio.Server] = []
        outbox = Outbox(self.loop)
        wires = {name: wire.BackendWire(name, backend.url, rt.instance_id) for name, backend in rt.backends.items()}
        pools = {
            name: UpstreamPool(
                name,
                tcp_connector(self.loop, w.host, w.port, tls=w.ssl),
                limits=limits,
                connect_seconds=rt.backends[name].timeouts.connect_seconds,
                deadlines=self.deadlines,
                outbox=outbox,
                loop=self.loop,
            )
            for name, w in wires.items()
        }
        app_pool = UpstreamPool(
            "gateway-app",
            unix_connector(self.loop, app_address)
            if isinstance(app_address, Path)
            else tcp_connector(self.loop, *app_address, tls=False),
            limits=limits,
            connect_seconds=APP_TIMEOUTS.connect_seconds,
            deadlines=self.deadlines,
            outbox=outbox,
            loop=self.loop,
        )
        self.pools = [*pools.values(), app_pool]
        self.dispatcher = Dispatcher(
            rt,
            pools=pools,
            wires=wires,
            app_pool=app_pool,
            app_paths=routes_of_app(app),
            limits=limits,
        )

    def open_connections(self) -> int:
        """What the cap on client connections counts: the fast path's own and those it gave the app."""
        return len(self.connections) + self.adopted

    def adopt(self, sock: socket.socket, first: bytes) -> None:
        """The app's server takes a client's connection (`first`: what it reads before the client's next bytes)."""
        self.adopted += 1
        task = self.loop.create_task(adopt(self.loop, self._app_protocol, sock, first, self._adopted_lost))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    def _adopted_lost(self) -> None:
        self.adopted -= 1

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start accepting on host:port; returns the port (useful with 0). reuse_port: share the port with other
        processes that set it too (SO_REUSEPORT; the kernel spreads new connections over them)."""
        server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=1024, reuse_port=reuse_port or None
        )
        self._servers.append(server)
        self.deadlines.start()
        sockets = server.sockets or ()
        return sockets[0].getsockname()[1] if sockets else port

    async def close(self) -> None:
        """Stop accepting, let what is in flight finish (Limits.drain_seconds at most), then cut the rest."""
        self.draining = True
        for server in self._servers:
            server.close()
        for task in list(self._adopting):
            task.cancel()
        for connection in list(self.connections):
            connection.drain()
        deadline = self.loop.time() + self.limits.drain_seconds
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.connections:
            log.warning(
                "shutdown: cutting %d connection(s) still open after %gs",
                len(self.connections),
                self.limits.drain_seconds,
            )
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for server in self._servers:
            await server.wait_closed()
        for pool in self.pools:
            await pool.close()
        self.deadlines.stop()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost


def tcp_connector(loop: asyncio.AbstractEventLoop, host: str, port: int, *, tls: bool) -> Connector:
    context = ssl.create_default_context() if tls else None

    def connect(factory):  # type: ignore[no-untyped-def]
        return loop.create_connection(factory, host, port, ssl=context, server_hostname=host if tls else None)

    return connect


def unix_connector(loop: asyncio.AbstractEventLoop, path: Path) -> Connector:
    def connect(factory):  # type: ignore[no-untyped-def]
        return loop.create_unix_connection(factory, str(path))

    return connect


def routes_of_app(app: web.Application) -> tuple[frozenset[str], tuple[str, ...]]:
    """Paths the aiohttp app answers itself (not through its catch-all proxy): exact paths and prefixes, read
    from its router so that a route added there (/metrics, /gateway/...) is delegated without a change here."""
    exact: set[str] = set()
    prefixes: set[str] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        if "path" in info:
            exact.add(info["path"])
        elif "formatter" in info:
            prefix = info["formatter"].split("{", 1)[0]
            if prefix != "/":  # the catch-all: that is the proxy, which the fast path replaces
                prefixes.add(prefix)
        elif "prefix" in info:
            prefixes.add(info["prefix"].rstrip("/") + "/")
    return frozenset(exact), tuple(sorted(prefixes))

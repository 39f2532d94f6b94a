"""The pool of connections to one upstream: reuses idle keep-alive connections (most recent first), caps how
many are open, queues requests past the cap, closes connections idle too long, and skips, before writing a
byte, any the upstream has closed meanwhile.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.core.errors import FailureKind
from gateway.datapath.fast.deadlines import Deadlines
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.outbox import Outbox
from gateway.datapath.fast.upstream import UpstreamConnection

Connector = Callable[[Callable[[], UpstreamConnection]], Awaitable[tuple[asyncio.BaseTransport, UpstreamConnection]]]


class Waiter(Protocol):
    """A request waiting for a connection (a Relay)."""

    waiting: bool

    def attach(self, connection: UpstreamConnection) -> None: ...

    def upstream_failed(self, reason: str, kind: FailureKind) -> None: ...


class UpstreamPool:
    """Keep-alive connections to one upstream: at most `max_connections_per_backend` open at once."""

    def __init__(
        self,
        name: str,
        connector: Connector,
        *,
        limits: Limits,
        connect_seconds: float,
        deadlines: Deadlines,
        outbox: Outbox,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.limits = limits
        self.outbox = outbox
        self._connector = connector
        self._connect_seconds = connect_seconds
        self._deadlines = deadlines
        self._loop = loop
        self._idle: list[UpstreamConnection] = []
        self._open = 0  # connecting, busy or idle: what the cap counts
        self._waiting: deque[Waiter] = deque()
        self._connecting: set[asyncio.Task[None]] = set()
        self.closed = False

    def acquire(self, waiter: Waiter) -> None:
        """Give `waiter` a connection now (idle), soon (connecting), or when one is released (queued)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            self._deadlines.forget(connection)
            if connection.usable:
                waiter.attach(connection)
                return
            connection.close()  # closed by the upstream while idle: never a byte was written to it
        if self.closed:
            waiter.upstream_failed("the gateway is shutting down", "connect")
        elif self._open < self.limits.max_connections_per_backend:
            self._connect(waiter)
        elif len(self._waiting) < self.limits.max_waiting_per_backend:
            self._waiting.append(waiter)
        else:
            waiter.upstream_failed(
                f"{len(self._waiting)} requests already wait for one of its "
                f"{self.limits.max_connections_per_backend} connections",
                "connect",
            )

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        """A request is done with `connection`: reuse it, pool it, or close it."""
        if not reusable or not connection.usable or self.closed:
            connection.close()
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if waiter.waiting:
                waiter.attach(connection)
                return
        if len(self._idle) >= self.limits.max_idle_per_backend:
            connection.close()
            return
        connection.deadline = self._loop.time() + self.limits.upstream_idle_seconds
        self._idle.append(connection)
        self._deadlines.watch(connection)

    def detach(self, connection: UpstreamConnection) -> None:
        """A WebSocket took `connection` over: it no longer counts against the cap."""
        self._open -= 1
        connection.pool = _DETACHED
        self._start_waiting()

    def lost(self, connection: UpstreamConnection) -> None:
        """Called once when a connection closes, whoever closed it."""
        if connection in self._idle:
            self._idle.remove(connection)
        self._deadlines.forget(connection)
        self._open -= 1
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and self._open < self.limits.max_connections_per_backend and not self.closed:
            waiter = self._waiting.popleft()
            if waiter.waiting:
                self._connect(waiter)

    def _connect(self, waiter: Waiter) -> None:
        self._open += 1
        task = self._loop.create_task(self._open_connection(waiter))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open_connection(self, waiter: Waiter) -> None:
        connection = UpstreamConnection(self)
        try:
            await asyncio.wait_for(self._connector(lambda: connection), self._connect_seconds)
        except BaseException as exc:
            if connection.transport is None:
                self._open -= 1  # never connected, so lost() will not count it out
            else:
                connection.abort()
            if isinstance(exc, asyncio.TimeoutError):
                self._fail(waiter, f"did not accept a connection within {self._connect_seconds:g} s", "timeout")
            elif isinstance(exc, (OSError, ssl.SSLError)):
                self._fail(waiter, f"{exc.__class__.__name__}: {exc}", "connect")
            else:
                self._fail(waiter, "the gateway is shutting down", "connect")
                raise
        else:
            if waiter.waiting and not self.closed:
                waiter.attach(connection)
            else:
                self.release(connection, True)

    def _fail(self, waiter: Waiter, reason: str, kind: FailureKind) -> None:
        if waiter.waiting:
            waiter.upstream_failed(reason, kind)
        self._start_waiting()

    async def close(self) -> None:
        self.closed = True
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()
        while self._waiting:
            waiter = self._waiting.popleft()
            if waiter.waiting:
                waiter.upstream_failed("the gateway is shutting down", "connect")


class _Detached:
    """The pool of a connection a WebSocket took over: nothing to give back."""

    limits = Limits()
    outbox: Outbox  # never used: a connection keeps the outbox of the pool that made it

    def lost(self, connection: UpstreamConnection) -> None:
        pass


_DETACHED = _Detached()

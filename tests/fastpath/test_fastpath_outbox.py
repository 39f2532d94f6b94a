"""Requests to backends leave at the end of the loop turn that made them: on real sockets, nothing reaches a
backend while the turn runs, every request of the turn reaches its backend when it ends, in order, and what a
request sends after its head (a body, a WebSocket's frames) always follows the head."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from gateway.core.errors import FailureKind
from gateway.datapath.fast.deadlines import Deadlines
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.outbox import Outbox
from gateway.datapath.fast.pool import UpstreamPool
from gateway.datapath.fast.server import tcp_connector
from gateway.datapath.fast.upstream import UpstreamConnection

GET = b"GET /queue HTTP/1.1\r\nHost: backend\r\n\r\n"


class Taker:
    """A request waiting for a connection from the pool."""

    def __init__(self) -> None:
        self.waiting = True
        self.got: asyncio.Future[UpstreamConnection] = asyncio.get_running_loop().create_future()

    def attach(self, connection: UpstreamConnection) -> None:
        self.waiting = False
        self.got.set_result(connection)

    def upstream_failed(self, reason: str, kind: FailureKind) -> None:
        self.waiting = False
        self.got.set_exception(ConnectionError(reason))


class Listener:
    """Hears nothing in these tests: no backend answers."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args, **kwargs: None


class Backend:
    """A listening socket whose accepted connections are read without the event loop, so that what has
    reached them can be looked at while the loop is busy with a turn."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accept(self) -> socket.socket:
        peer, _ = self.listener.accept()  # the client's connect completed: it waits in the accept queue
        peer.setblocking(False)
        self.accepted.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.accepted:
            peer.close()
        self.listener.close()


def arrived(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 20)
    except BlockingIOError:
        return b""


async def arrived_after_turn(peer: socket.socket) -> bytes:
    for _ in range(200):
        await asyncio.sleep(0)
        data = arrived(peer)
        if data:
            return data
    return b""


@pytest.fixture
async def pool_and_backend() -> AsyncIterator[tuple[UpstreamPool, Backend]]:
    loop = asyncio.get_running_loop()
    backend = Backend()
    deadlines = Deadlines(loop, 1.0)
    pool = UpstreamPool(
        "raw",
        tcp_connector(loop, "127.0.0.1", backend.port, tls=False),
        limits=Limits(),
        connect_seconds=5.0,
        deadlines=deadlines,
        outbox=Outbox(loop),
        loop=loop,
    )
    yield pool, backend
    await pool.close()
    backend.close()


async def connected(pool: UpstreamPool, backend: Backend) -> tuple[UpstreamConnection, socket.socket]:
    taker = Taker()
    pool.acquire(taker)
    connection = await taker.got
    return connection, backend.accept()


async def test_requests_of_one_turn_reach_their_backends_together_when_the_turn_ends(pool_and_backend) -> None:
    pool, backend = pool_and_backend
    pairs = [await connected(pool, backend) for _ in range(3)]
    for i, (connection, _) in enumerate(pairs):
        connection.send(Listener(), [GET.replace(b"/queue", b"/queue/%d" % i)], head_request=False)  # type: ignore[arg-type]
    assert [arrived(peer) for _, peer in pairs] == [b"", b"", b""]  # still this turn: nothing written
    received = [await arrived_after_turn(peer) for _, peer in pairs]
    assert received == [GET.replace(b"/queue", b"/queue/%d" % i) for i in range(3)]


async def test_a_small_body_sent_with_its_head_is_held_with_it(pool_and_backend) -> None:
    pool, backend = pool_and_backend
    connection, peer = await connected(pool, backend)
    head = b"POST /prompt HTTP/1.1\r\nHost: backend\r\nContent-Length: 13\r\n\r\n"
    connection.send(Listener(), [head, b'{"prompt": 1}'], head_request=False)  # type: ignore[arg-type]
    assert arrived(peer) == b""
    assert await arrived_after_turn(peer) == head + b'{"prompt": 1}'


async def test_what_follows_a_held_head_is_written_after_it(pool_and_backend) -> None:
    pool, backend = pool_and_backend
    connection, peer = await connected(pool, backend)
    head = b"POST /upload/image HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n"
    connection.send(Listener(), [head], head_request=False)  # type: ignore[arg-type]
    connection.write(b"5\r\nhello\r\n")  # the body's first bytes, in the same turn as the head
    connection.writelines([b"0\r\n", b"\r\n"])
    received = b""
    for _ in range(3):
        received += await arrived_after_turn(peer)
    assert received == head + b"5\r\nhello\r\n0\r\n\r\n"
    connection.write_held()  # the turn's end finds nothing left to write: nothing is written twice
    await asyncio.sleep(0)
    assert arrived(peer) == b""


async def test_a_request_closed_before_the_turn_ends_is_never_written(pool_and_backend) -> None:
    pool, backend = pool_and_backend
    kept, kept_peer = await connected(pool, backend)
    dropped, dropped_peer = await connected(pool, backend)
    dropped.send(Listener(), [GET], head_request=False)  # type: ignore[arg-type]
    kept.send(Listener(), [GET], head_request=False)  # type: ignore[arg-type]
    dropped.abort()  # its client went away in the same turn
    assert await arrived_after_turn(kept_peer) == GET
    dropped_peer.setblocking(True)
    dropped_peer.settimeout(5.0)
    assert dropped_peer.recv(1024) == b""  # closed without a byte: the backend never saw the request

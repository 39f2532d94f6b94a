"""A client's WebSocket given to the in-process aiohttp app whole: the app's fan-in (datapath/aio/fanin.py)
writes its frames to the client's own socket, with no hop between the fast path and the app.

The fast path reads and checks the upgrade's head as it does every request's, then lets its socket go: the
same connection, on a descriptor of its own, is adopted by the app's server, which reads the head the fast
path would have sent it (its extensions left out, X-Forwarded-For added), then whatever the client sends
next. Until the app has it, nothing of the client's is read: its next bytes wait in the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("comfy_gateway.fastpath")


class AdoptedSocket(asyncio.Protocol):
    """The app's protocol on an adopted socket, first told what the fast path read of it; counts it while open
    (FastServer.adopted, under the cap on client connections)."""

    __slots__ = ("_app", "_first", "_lost", "made")

    def __init__(self, app: asyncio.Protocol, first: bytes, lost: Callable[[], None]) -> None:
        self._app = app
        self._first = first
        self._lost = lost
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        first, self._first = self._first, b""
        self._app.connection_made(transport)
        self._app.data_received(first)

    def data_received(self, data: bytes) -> None:
        self._app.data_received(data)

    def eof_received(self) -> bool | None:
        return self._app.eof_received()

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self._app.connection_lost(exc)


async def adopt(
    loop: asyncio.AbstractEventLoop,
    app_protocol: Callable[[], asyncio.Protocol],
    sock: socket.socket,
    first: bytes,
    lost: Callable[[], None],
) -> None:
    """The app's server takes `sock`, reading `first` before anything else; `lost` is called once when the
    socket closes, or at once if the app never got it."""
    adopted: list[AdoptedSocket] = []

    def protocol() -> AdoptedSocket:
        adopted.append(AdoptedSocket(app_protocol(), first, lost))
        return adopted[0]

    try:
        await loop.connect_accepted_socket(protocol, sock)
    except BaseException as exc:
        if not (adopted and adopted[0].made):
            sock.close()
            lost()
        if not isinstance(exc, Exception):
            raise
        log.warning("the app could not take a client's WebSocket: %r", exc)

"""The client's own socket on /ws, as the fan-in (fanin.py) reads and writes it: aiohttp's WebSocketResponse, with
two things it lacks. Frames a client sends unmasked fail the socket with 1002 (RFC 6455 §5.1), as aiohttp fails
it for every other rule it checks; and a burst of messages queued for the client leaves in one write. Its 101
names no server software, as no other answer of the gateway does (the fast path drops the app's and the
backends' Server header; on the fast path the app answers the upgrade on the client's own connection).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, hdrs, web
from aiohttp.http import WebSocketWriter

_TEXT, _BINARY = 0x81, 0x82  # FIN and the opcode: every message is one frame
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")


def _frame_header(first: int, length: int) -> bytes:
    """A server's frame header (RFC 6455 §5.2: no mask), the length in its shortest form."""
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return _LENGTH_16.pack(first, 126, length)
    return _LENGTH_64.pack(first, 127, length)


class Frame:
    """A text message as a backend framed it: one final, unmasked, uncompressed text frame (RFC 6455 §5.2), as a
    server writes it to a client, so it is written to the client as it came. Its payload is ASCII (so valid
    UTF-8): `len` counts its characters as a str's would."""

    __slots__ = ("frame", "_start")

    def __init__(self, frame: bytes, header_bytes: int) -> None:
        self.frame = frame
        self._start = header_bytes

    def __len__(self) -> int:
        return len(self.frame) - self._start

    def text(self) -> str:
        return self.frame[self._start :].decode("ascii")


class ClientSocket(web.WebSocketResponse):
    """The client's socket, its frames checked for a mask before aiohttp's reader reads them, its messages
    written several to one write when a burst is queued for it."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self._headers.popall(hdrs.SERVER, None)

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: WebSocketWriter) -> None:
        handler = request.protocol
        # Bytes that came right after the handshake are fed to the reader as it is set: held back to be checked.
        early, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        assert self._reader is not None
        checked = _MaskedFramesOnly(handler._payload_parser, self._reader)
        handler._payload_parser = checked
        if early and checked.feed_data(early)[0]:
            handler.close()

    async def send_many(self, messages: Sequence[str | bytes | Frame]) -> None:
        """`messages` in order, each its own frame as send_str and send_bytes make it (a Frame as it is), written
        at once: a burst of a sampler's progress costs one system call, not one per message. Raises
        ConnectionResetError, with nothing written, once the socket is closing."""
        writer = self._writer
        if writer is None or writer.compress:  # compressed frames: aiohttp's own writer keeps the deflate state
            for message in messages:
                if isinstance(message, Frame):
                    await self.send_str(message.text())
                elif isinstance(message, str):
                    await self.send_str(message)
                else:
                    await self.send_bytes(message)
            return
        transport = writer.transport
        if self.closed or transport.is_closing():
            raise ConnectionResetError("the client's socket is closing")
        parts: list[bytes] = []
        for message in messages:
            if isinstance(message, Frame):
                parts.append(message.frame)
                continue
            payload, first = (message.encode("utf-8"), _TEXT) if isinstance(message, str) else (message, _BINARY)
            parts += (_frame_header(first, len(payload)), payload)
        transport.writelines(parts)
        protocol = writer.protocol
        if protocol.writing_paused:  # the client reads slower than we write: wait for its buffer to drain
            await protocol._drain_helper()


class _MaskedFramesOnly:
    """In front of aiohttp's WebSocketReader: the first frame that is not masked (RFC 6455 §5.1) fails the socket
    with 1002, as aiohttp fails it for what it checks itself; the frames before it are read as usual. Only
    frame headers are read here."""

    __slots__ = ("_reader", "_queue", "_skip", "_partial", "_failed")

    def __init__(self, reader: Any, queue: Any) -> None:
        self._reader = reader
        self._queue = queue
        self._skip = 0  # payload bytes of the current frame still to come
        self._partial = b""  # the start of a frame header split across reads
        self._failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        at = self._unmasked_at(data)
        if at < 0:
            result: tuple[bool, bytes] = self._reader.feed_data(data)
            return result
        if at:
            eof, tail = self._reader.feed_data(data[:at])
            if eof:
                return eof, tail
        self._failed = True
        self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, "an unmasked frame"))
        return True, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _unmasked_at(self, data: bytes) -> int:
        """Where in `data` the first unmasked frame starts (0 too when its header began in an earlier read); -1:
        none."""
        pos, end = 0, len(data)
        if self._skip:
            if end <= self._skip:
                self._skip -= end
                return -1
            pos, self._skip = self._skip, 0
        shift = 0
        if self._partial:
            shift = len(self._partial) - pos
            data, end = self._partial + data[pos:], len(self._partial) + end - pos
            pos, self._partial = 0, b""
        while pos < end:
            if end - pos < 2:
                self._partial = data[pos:end]
                break
            second = data[pos + 1]
            if not second & 0x80:
                return max(pos - shift, 0)
            length, header = second & 0x7F, 6
            if length == 126:
                length, header = int.from_bytes(data[pos + 2 : pos + 4], "big"), 8
            elif length == 127:
                length, header = int.from_bytes(data[pos + 2 : pos + 10], "big"), 14
            if end - pos < header - 4:  # the extended length is not all here yet
                self._partial = data[pos:end]
                break
            pos += header + length
            if pos > end:
                self._skip = pos - end
                break
        return -1

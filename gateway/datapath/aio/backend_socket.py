"""A backend's WebSocket as the fan-in reads it: aiohttp's client socket (the handshake, pings, the heartbeat,
the close), with its frames split as they arrive, in front of aiohttp's reader.

Through aiohttp, every message relayed costs a message object, a UTF-8 decode and an await of receive(), and
on the way out an encode and a frame header. The messages a backend sends by the thousand (a sampler's
progress, as ComfyUI writes them) need none of it: a backend writes server frames, as the gateway writes to
its client, so one of those goes to the client's queue as the frame it came in (client_socket.Frame). Every
other data message goes to the fan-in as aiohttp would have given it, at once, in the order its frames came.
Control frames (ping, pong, close) go to aiohttp's own reader, so aiohttp still answers pings, sees the pongs
its heartbeat waits for and closes; its receive() returns only the socket's end.

A frame not taken here (masked, an extension bit set, text that is not UTF-8), and every byte after it, goes to
aiohttp's reader, which fails the socket as it always did (1002, 1007); a fragmented message that breaks the
rules fails it with the same codes. Bytes that come before the fan-in takes the socket (a backend's
connect-time status, right behind its 101) wait for it, in order. When the client's queue is full, reading
stops (the transport is paused) until it has room, or until the fan-in's wait for room runs out.

aiohttp's session sets the reader it makes as the socket's `_parser`, then installs that on the connection;
BackendSocket puts its FrameSplitter there. An aiohttp release that does otherwise leaves `frames` None, and
the fan-in reads that socket through receive(), as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import WebSocketError, WSCloseCode
from mypy_extensions import mypyc_attr

from gateway.datapath.aio.client_socket import Frame

_FIN: Final = 0x80
_RSV: Final = 0x70  # the three reserved bits, for extensions
_OPCODE: Final = 0x0F
_MASKED: Final = 0x80
_LENGTH: Final = 0x7F
_CONTINUATION: Final = 0x0
_TEXT: Final = 0x1
_BINARY: Final = 0x2
_CLOSE: Final = 0x8
_FIRST_CONTROL: Final = 0x8
# The messages a backend sends by the thousand (a sampler's steps), as ComfyUI writes them: json.dumps of
# {"type": kind, "data": ...}, default separators, ASCII. Known by this opening, they need not be read.
SKIMMED_START: Final = b'{"type": "progress'
_PROGRESS: Final = '{"type": "progress", '
_PROGRESS_STATE: Final = '{"type": "progress_state", '
_TYPE_MEMBER: Final = '"type"'
# Before the fan-in takes the socket, what may wait for it before reading stops.
KEPT_BEFORE_PAUSE_BYTES: Final = 64 * 1024


def skimmed_kind(payload: bytes) -> str | None:
    """The type of a progress message, known without reading it: it opens as ComfyUI writes one, and holds no
    other "type" member, nor an escape that could spell one, nor anything but ASCII, so json.loads could not
    say otherwise. None: read it. (Text that opens so but is not JSON at all passes as a progress message:
    unread, as a relay would pass it anyway.)

    Checked on the payload as text: `in` on a str is a direct search, where on bytes it first tries the needle
    as an int (and formats the TypeError that fails), and bytes.count and find parse a tuple of arguments."""
    if not payload.isascii():
        return None
    text = payload.decode("ascii")
    if text.startswith(_PROGRESS):
        kind = "progress"
    elif text.startswith(_PROGRESS_STATE):
        kind = "progress_state"
    else:
        return None
    if _TYPE_MEMBER in text[2:] or "\\" in text:  # the opening's own "type" is at 1
        return None
    return kind


def _minimal(header: int, length: int) -> bool:
    return header == 2 or (header == 4 and length >= 126) or (header == 10 and length >= 1 << 16)


@mypyc_attr(allow_interpreted_subclasses=True)  # the tests' recording sink
class FrameSink:
    """Where a backend socket's messages go: the fan-in, for one backend (a base class, not a Protocol, so that
    the compiled splitter calls it directly, once for every message)."""

    def skims(self) -> bool:
        """Whether a progress message may pass unread now (none of the client's prompts is held)."""
        raise NotImplementedError

    def framed(self, kind: str, frame: Frame) -> None:
        raise NotImplementedError

    def text(self, text: str) -> None:
        raise NotImplementedError

    def binary(self, data: bytes) -> None:
        raise NotImplementedError

    def wait_for_room(self, resume: Callable[[], None]) -> bool:
        """True: the client's queue is full and the sink waits for room; `resume` is called once it has it, or
        the wait ran out. False: go on (there is room, or the client is lagging and its messages drop)."""
        raise NotImplementedError


class _Reading(Protocol):
    """What the splitter does with its connection's transport."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool: ...


class FrameSplitter:
    """In aiohttp's reader's place on a backend connection: splits the bytes into frames (RFC 6455 §5.2) and
    hands each message to the sink; control frames, and everything from a frame not taken on, to `reader`."""

    def __init__(self, reader: Any, queue: Any, transport: _Reading) -> None:
        self._reader = reader  # aiohttp's WebSocketReader
        self._queue = queue  # the queue aiohttp's receive() reads
        self._transport = transport
        self._sink: FrameSink | None = None
        # Bytes not split yet (a frame's start, or all that came while stopped), joined only when the frame they
        # begin is whole: a large binary frame (a full-size image) comes in many reads.
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._needed = 0  # what the frame begun in _kept needs in all, once its header is there
        self._stopped = True  # no sink yet, or waiting for room: bytes are kept, not split
        self._paused = False  # the transport's reading, paused here
        self._passing = False  # from a frame not taken on: every byte goes to aiohttp's reader
        self._ended = False  # the connection ended while bytes were kept
        self._fragments: list[bytes] = []  # a fragmented message's payloads so far
        self._fragmented = 0  # its opcode

    def attach(self, sink: FrameSink) -> None:
        """The fan-in takes the socket: what came before goes to it now, in order."""
        self._sink = sink
        self._go_on()

    def detach(self) -> None:
        """The fan-in lets the socket go (it is being closed): aiohttp's reader reads all of it from here on, what
        was kept first, so that the close handshake completes."""
        if self._passing:
            return
        self._sink = None
        self._pass_on(self._take_kept() if self._kept_bytes else b"")
        if self._paused and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    # --- aiohttp's protocol calls these, as it calls its own reader's ---------------------------------------

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._passing:
            passed: tuple[bool, bytes] = self._reader.feed_data(data)
            return passed
        if self._kept or self._stopped:
            self._kept.append(data)
            self._kept_bytes += len(data)
            if self._stopped:
                if self._sink is not None or self._kept_bytes > KEPT_BEFORE_PAUSE_BYTES:
                    self._pause()
                return False, b""
            if self._kept_bytes < self._needed:
                return False, b""
            data = self._take_kept()
        self._split(data)
        return (True, b"") if self._failed() else (False, b"")

    def _failed(self) -> bool:
        """Whether the socket has failed (aiohttp's protocol then stops feeding it)."""
        return self._passing and self._queue.exception() is not None

    def feed_eof(self) -> None:
        if self._stopped and self._kept_bytes and not self._passing:
            self._ended = True  # what was kept goes first; the end reaches aiohttp's reader after it
            return
        self._reader.feed_eof()

    # --- splitting -------------------------------------------------------------------------------------------

    def _split(self, data: bytes) -> None:
        sink = self._sink
        assert sink is not None
        if sink.wait_for_room(self._go_on):  # filled since the last read (a held prompt's events let go)
            self._stop(data)
            return
        pos, end = 0, len(data)
        needed = 0
        while end - pos >= 2:
            first, second = data[pos], data[pos + 1]
            length, header = second & _LENGTH, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, header = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, header = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            if second & _MASKED or first & _RSV:
                self._pass_on(data[pos:])
                return
            stop = pos + header + length
            if stop > end:
                needed = stop - pos
                break
            opcode = first & _OPCODE
            if opcode >= _FIRST_CONTROL:
                failed, _ = self._reader.feed_data(data[pos:stop])
                pos = stop
                if failed or opcode == _CLOSE:  # nothing may follow a close: aiohttp's reader has what does
                    self._pass_on(data[pos:])
                    return
                continue
            if opcode == _TEXT and first & _FIN and not self._fragments:
                payload = data[pos + header : stop]
                # Passed as it came only with its length in the fewest bytes (RFC 6455 §5.2), which browsers check
                skimmed = (
                    skimmed_kind(payload)
                    if payload.startswith(SKIMMED_START) and _minimal(header, length) and sink.skims()
                    else None
                )
                if skimmed is not None:
                    sink.framed(skimmed, Frame(data[pos:stop], header))
                else:
                    try:
                        text = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        self._pass_on(data[pos:])  # aiohttp fails the socket with 1007
                        return
                    sink.text(text)
            elif opcode == _BINARY and first & _FIN and not self._fragments:
                sink.binary(data[pos + header : stop])
            elif not self._fragment(first, opcode, data[pos + header : stop]):
                return
            pos = stop
            if sink.wait_for_room(self._go_on):
                self._stop(data[pos:])
                return
        if pos < end:
            self._keep(data[pos:] if pos else data, needed)

    def _fragment(self, first: int, opcode: int, payload: bytes) -> bool:
        """A frame of a fragmented message (RFC 6455 §5.4); the whole message to the sink with its last. False:
        the socket has failed."""
        sink = self._sink
        assert sink is not None
        if (opcode == _CONTINUATION) != bool(self._fragments):
            self._fail(WSCloseCode.PROTOCOL_ERROR, "a continuation frame out of place")
            return False
        if opcode != _CONTINUATION:
            self._fragmented = opcode
        self._fragments.append(payload)
        if not first & _FIN:
            return True
        message = b"".join(self._fragments)
        self._fragments = []
        if self._fragmented == _BINARY:
            sink.binary(message)
            return True
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(WSCloseCode.INVALID_TEXT, "a text message that is not UTF-8")
            return False
        sink.text(text)
        return True

    # --- stopping, going on, giving up ---------------------------------------------------------------------

    def _keep(self, rest: bytes, needed: int) -> None:
        self._kept = [rest]
        self._kept_bytes = len(rest)
        self._needed = needed

    def _take_kept(self) -> bytes:
        kept = self._kept[0] if len(self._kept) == 1 else b"".join(self._kept)
        self._kept, self._kept_bytes, self._needed = [], 0, 0
        return kept

    def _stop(self, rest: bytes) -> None:
        self._stopped = True
        if rest:
            self._keep(rest, 0)
        self._pause()

    def _go_on(self) -> None:
        """Split what was kept (the sink is there, and has room), then read again."""
        self._stopped = False
        if self._kept_bytes and self._kept_bytes >= self._needed:
            self._split(self._take_kept())
        if self._stopped:
            return
        if self._ended and not self._passing:
            self._reader.feed_eof()
        elif self._paused and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def _pass_on(self, rest: bytes) -> None:
        """From here on, every byte to aiohttp's reader, which reads (or fails) the socket as it always has."""
        self._passing = True
        self._kept, self._kept_bytes, self._needed = [], 0, 0
        self._fragments = []
        if rest:
            self._reader.feed_data(rest)
        if self._ended:
            self._reader.feed_eof()

    def _fail(self, code: int, reason: str) -> None:
        """The socket fails with `code`, as aiohttp's reader fails it: its receive() says so and closes."""
        self._passing = True
        self._kept, self._kept_bytes, self._needed = [], 0, 0
        self._fragments = []
        self._queue.set_exception(WebSocketError(code, reason))


class BackendSocket(aiohttp.ClientWebSocketResponse):
    """aiohttp's client socket with a FrameSplitter in front of its reader (`frames`; None: none could be put
    there, and the socket is read through receive()). A ClientSession makes these with
    `ws_response_class=BackendSocket`."""

    frames: FrameSplitter | None = None
    _own_parser: Any = None

    @property
    def _parser(self) -> Any:
        # What the session installs on the connection right after setting it: the splitter, reader behind it.
        return self.frames if self.frames is not None else self._own_parser

    @_parser.setter
    def _parser(self, reader: Any) -> None:
        self._own_parser = reader  # aiohttp holds its reader here for as long as the socket can be read
        if reader is None or self.frames is not None:
            return
        connection = getattr(self, "_conn", None)
        transport = getattr(connection, "transport", None)
        if transport is not None and hasattr(reader, "feed_data"):
            self.frames = FrameSplitter(reader, self._reader, transport)

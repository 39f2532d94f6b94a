"""WebSocket frames in a relayed byte stream (RFC 6455 §5): where messages begin and end; from client to
backend, the frames a client may not send (ClientFrames); from backend to client, the text messages that must
be rewritten (`executed`, whose output refs get the backend's prefix).

Everything else is passed on as the bytes it came as: a data chunk with nothing to rewrite goes out as the
same object, binary frames (full-size images) are never held, and only a text message that may need
rewriting is held until complete (up to Limits.max_rewrite_frame_bytes; larger ones pass untouched).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("comfy_gateway.fastpath")

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV = 0x70  # the three reserved bits, for extensions
PROTOCOL_ERROR, MESSAGE_TOO_BIG = 1002, 1009
# The marker rewrite.rewrite_ws_text looks for; frames without it are not even decoded.
EXECUTED = b'"executed"'

# Rewrites one text message's payload: the new payload, or None to keep the original bytes.
PayloadRewrite = Callable[[bytes], bytes | None]


def _frame_header(data: bytes, pos: int, end: int) -> tuple[int, int, int, int] | None:
    """(first byte, header length, payload length, mask offset or -1) of the frame at `pos`, or None when its
    header is not all in `data[pos:end]` yet."""
    if end - pos < 2:
        return None
    b0, b1 = data[pos], data[pos + 1]
    length = b1 & 0x7F
    header = 2
    if length == 126:
        if end - pos < 4:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        header = 4
    elif length == 127:
        if end - pos < 10:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        header = 10
    mask = -1
    if b1 & 0x80:
        if end - pos < header + 4:
            return None
        mask = pos + header
        header += 4
    return b0, header, length, mask


def _unmask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(len(payload), "little")


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (server to client)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A close frame from the server side (unmasked)."""
    payload = code.to_bytes(2, "big") + reason[:123]
    return bytes((0x88, len(payload))) + payload


def client_close_frame(code: int) -> bytes:
    """A close frame as a client sends it (masked): what the backend gets when the gateway ends a client's socket."""
    key = os.urandom(4)
    return b"\x88\x82" + key + _unmask(code.to_bytes(2, "big"), key)


class ClientFrames:
    """Client-to-backend frames, checked as they pass and never changed (RFC 6455 §5): every frame masked, no
    reserved bit set, a known opcode, control frames unfragmented and at most 125 bytes, continuations only
    inside a message, and every message within `max_message_bytes`. Frame headers alone are read.

    The upgrade is forwarded without Sec-WebSocket-Extensions (wire.py), so no extension is negotiated and a
    reserved bit is always an error; should a backend name one anyway (`extensions`), reserved bits are left
    to it, and a compressed message is measured as sent.

    On the first violation `error` holds the close code and why, `cut` where in the data just fed the offending
    frame starts (nothing from there on may be passed on), and `cut_at_boundary` whether what came before ends
    between two frames (so a close frame of the gateway's may follow it).
    """

    __slots__ = (
        "messages",
        "closed",
        "error",
        "cut",
        "cut_at_boundary",
        "_max",
        "_reserved",
        "_skip",
        "_partial",
        "_in_message",
        "_message_bytes",
    )

    def __init__(self, max_message_bytes: int, *, extensions: bool = False) -> None:
        self.messages = 0
        self.closed = False  # a close frame went by
        self.error: tuple[int, str] | None = None
        self.cut = 0
        self.cut_at_boundary = True
        self._max = max_message_bytes
        self._reserved = 0 if extensions else RSV
        self._skip = 0  # payload bytes of the current frame still to come
        self._partial = b""  # the start of a frame header split across reads (already passed on)
        self._in_message = False  # a data message has begun and not ended
        self._message_bytes = 0  # its payload so far

    def feed(self, data: bytes) -> int:
        """Messages completed in `data` (before the violation, when there is one)."""
        if self.error is not None:
            return 0
        count = 0
        pos, end = 0, len(data)
        if self._skip:
            if end <= self._skip:
                self._skip -= end
                return 0
            pos, self._skip = self._skip, 0
        shift = 0  # a frame header split across reads: positions below are `shift` past the caller's
        if self._partial:
            shift = len(self._partial) - pos
            data, end = self._partial + data[pos:], len(self._partial) + end - pos
            pos, self._partial = 0, b""
        while pos < end:
            found = _frame_header(data, pos, end)
            if found is None:
                self._partial = data[pos:end]
                break
            b0, header, length, mask = found
            if (b0 == 0x81 or b0 == 0x82) and mask >= 0 and length <= self._max and not self._in_message:
                count += 1  # what clients send: a whole text or binary message in one masked frame
            else:
                code, why = self._violation(b0, length, mask)
                if why:
                    start = pos - shift
                    self.error = (code, why)
                    self.cut, self.cut_at_boundary = max(start, 0), start >= 0
                    break
                if b0 & 0x80 and b0 & 0x0F < CLOSE:
                    count += 1
            pos += header + length
            if pos > end:
                self._skip = pos - end
                break
        self.messages += count
        return count

    def _violation(self, b0: int, length: int, mask: int) -> tuple[int, str]:
        """The close code and why this frame may not be sent ("": it may), its message's state updated."""
        opcode = b0 & 0x0F
        if mask < 0:
            return PROTOCOL_ERROR, "an unmasked frame"
        if b0 & self._reserved:
            return PROTOCOL_ERROR, "reserved bits set without an extension"
        if opcode >= CLOSE:
            if opcode > PONG:
                return PROTOCOL_ERROR, f"unknown opcode {opcode:#x}"
            if not b0 & 0x80:
                return PROTOCOL_ERROR, "a fragmented control frame"
            if length > 125:
                return PROTOCOL_ERROR, "a control frame longer than 125 bytes"
            if opcode == CLOSE:
                self.closed = True
            return 0, ""
        if opcode > BINARY:
            return PROTOCOL_ERROR, f"unknown opcode {opcode:#x}"
        if opcode == CONTINUATION:
            if not self._in_message:
                return PROTOCOL_ERROR, "a continuation frame outside a message"
            self._message_bytes += length
        elif self._in_message:
            return PROTOCOL_ERROR, "a new message before the fragmented one ended"
        else:
            self._message_bytes = length
        if self._message_bytes > self._max:
            return MESSAGE_TOO_BIG, f"a message larger than {self._max} bytes"
        self._in_message = not b0 & 0x80
        return 0, ""


class FrameRewriter:
    """Backend-to-client frames: passed on as they came, except text messages `rewrite` changes. With no
    `rewrite` (the app's socket, whose fan-in rewrote them already) every frame passes as a binary one does:
    its header read for the boundaries, its payload never copied."""

    __slots__ = ("messages", "closed", "_rewrite", "_max_held", "_skip", "_held", "_fragments", "_fragment_bytes")

    def __init__(self, rewrite: PayloadRewrite | None, max_held_bytes: int) -> None:
        self.messages = 0
        self.closed = False
        self._rewrite = rewrite
        self._max_held = max_held_bytes
        self._skip = 0  # payload bytes still to come of a frame being passed through
        self._held = b""  # a frame (or its header) not complete yet, that may need rewriting
        self._fragments: list[bytes] | None = None  # the frames of a fragmented text message being held
        self._fragment_bytes = 0

    @property
    def at_boundary(self) -> bool:
        """True between frames (a close frame of our own may be sent now)."""
        return not self._skip and not self._held and self._fragments is None

    def feed(self, data: bytes) -> list[bytes]:
        """The bytes to send for `data`, in order."""
        out: list[bytes] = []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return [data]
            out.append(data[: self._skip])
            data = data[self._skip :]
            self._skip = 0
        if self._held:
            data = self._held + data
            self._held = b""
        pos, run, end = 0, 0, len(data)  # run: where the bytes not yet placed in `out` start
        fragments = self._fragments
        rewriting = self._rewrite is not None
        while pos < end:
            found = _frame_header(data, pos, end)
            if found is None:
                break
            b0, header, length, mask = found
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            frame_end = pos + header + length
            held_text = rewriting and (opcode == TEXT or opcode == CONTINUATION and fragments is not None)
            if held_text and (b0 & 0x70 or length + self._fragment_bytes > self._max_held):
                # Compressed (RSV bits) or too large to hold whole: this message passes untouched.
                if fragments is not None:
                    if run < pos:
                        out.append(data[run:pos])
                    out += fragments
                    run = pos
                    fragments, self._fragment_bytes = None, 0
                    log.debug("a text message passed %d bytes: relayed without rewriting", self._max_held)
                held_text = False
            if not held_text:
                if fin and opcode < CLOSE:
                    self.messages += 1
                elif opcode == CLOSE:
                    self.closed = True
                if frame_end > end:
                    self._skip = frame_end - end
                    pos = end
                    break
                pos = frame_end
                continue
            if frame_end > end:
                break  # a text frame not complete yet: hold it from `pos`
            payload = data[pos + header : frame_end]
            if mask >= 0:
                payload = _unmask(payload, data[mask : mask + 4])
            if fragments is None and fin:  # the common case: a whole message in one frame
                self.messages += 1
                rewritten = self._rewritten(payload)
                if rewritten is not None:
                    if run < pos:
                        out.append(data[run:pos])
                    out.append(rewritten)
                    run = frame_end
                pos = frame_end
                continue
            # A fragment of a text message: held until its last one, then rewritten whole or let go as it was.
            if run < pos:
                out.append(data[run:pos])
            fragments = fragments if fragments is not None else []
            fragments.append(data[pos:frame_end])
            run = pos = frame_end
            self._fragment_bytes += length
            if fin:
                self.messages += 1
                rewritten = self._rewritten(b"".join(map(_payload_of, fragments)))
                out += [rewritten] if rewritten is not None else fragments
                fragments, self._fragment_bytes = None, 0
        self._fragments = fragments
        if run < pos:
            out.append(data[run:pos] if run or pos < end else data)
        if pos < end:
            self._held = data[pos:end]
        return out

    def _rewritten(self, payload: bytes) -> bytes | None:
        if EXECUTED not in payload or self._rewrite is None:
            return None
        new = self._rewrite(payload)
        return None if new is None else text_frame(new)


def _payload_of(frame: bytes) -> bytes:
    found = _frame_header(frame, 0, len(frame))
    assert found is not None
    _, header, length, mask = found
    payload = frame[header : header + length]
    return _unmask(payload, frame[mask : mask + 4]) if mask >= 0 else payload

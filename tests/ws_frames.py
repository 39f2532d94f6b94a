"""WebSocket frames as a backend (a server) writes them, and a progress message as ComfyUI writes it: built
byte for byte for the frame-splitting tests."""

from __future__ import annotations

import json
import struct

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A frame as RFC 6455 §5.2 lays it out; unmasked (a server's) unless `mask` is given."""
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if len(payload) < 126:
        header = bytes((first, masked | len(payload)))
    elif len(payload) < 1 << 16:
        header = struct.pack("!BBH", first, masked | 126, len(payload))
    else:
        header = struct.pack("!BBQ", first, masked | 127, len(payload))
    if mask is None:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def progress(step: int) -> bytes:
    return json.dumps({"type": "progress", "data": {"value": step, "max": 20, "prompt_id": "p", "node": "3"}}).encode()

"""The WebSocket outbox bound and the frame encoders, without a server."""

from __future__ import annotations

import json
import struct

from gateway.kerniegen.ws_frames import encode_preview_image, encode_preview_with_metadata, encode_text
from gateway.kerniegen.ws_hub import Outbox


async def test_outbox_cuts_off_a_client_that_falls_behind() -> None:
    outbox = Outbox(max_bytes=10)
    outbox.put("12345")
    outbox.put("67890")
    assert not outbox.overflowed
    outbox.put("x")
    assert outbox.overflowed and outbox.closed
    assert await outbox.next() is None  # nothing more is sent; the socket gets closed


async def test_outbox_lets_one_oversized_frame_through_alone() -> None:
    outbox = Outbox(max_bytes=4)
    outbox.put(b"a large image")
    assert await outbox.next() == b"a large image"
    outbox.close()
    assert await outbox.next() is None


def test_binary_frames_have_comfyuis_layout() -> None:
    assert encode_preview_image("PNG", b"img")[:8] == bytes.fromhex("0000000100000002")
    assert encode_preview_image("JPEG", b"img")[4:8] == struct.pack(">I", 1)
    frame = encode_text("12", "héllo")
    assert frame == struct.pack(">II", 3, 2) + b"12" + "héllo".encode()
    frame = encode_preview_with_metadata("PNG", b"img", {"node_id": "2"})
    length = struct.unpack(">I", frame[4:8])[0]
    assert frame[:4] == struct.pack(">I", 4) and frame[8 + length:] == b"img"
    assert json.loads(frame[8:8 + length]) == {"node_id": "2", "image_type": "image/png"}

"""The WebSocket outbox bound and the frame encoders, without a server."""

from __future__ import annotations

import json
import struct

from gateway.kerniegen.ws_frames import encode_preview_image, encode_preview_with_metadata, encode_text
from gateway.kerniegen.ws_hub import Outbox, wire_size


async def test_outbox_cuts_off_a_client_that_falls_behind() -> None:
    outbox = Outbox(max_bytes=14)  # two 5-byte text frames, each with its 2-byte header
    outbox.put("12345")
    outbox.put("67890")
    assert not outbox.overflowed and outbox.backlog() == 14
    outbox.put("x")
    assert outbox.overflowed and outbox.closed
    assert outbox.backlog() == 0 and outbox.peak_bytes == 14
    assert await outbox.next() is None  # nothing more is sent; the socket gets dropped


async def test_outbox_counts_what_the_transport_still_holds() -> None:
    unsent = [10]
    outbox = Outbox(max_bytes=14, unsent=lambda: unsent[0])
    outbox.put("1")  # 3 bytes on the wire: 13 in all
    assert not outbox.overflowed
    outbox.put("2")  # would make 16: a sender stuck in drain must not hide the transport's bytes
    assert outbox.overflowed


async def test_outbox_takes_one_oversized_frame_after_a_small_backlog() -> None:
    outbox = Outbox(max_bytes=20)
    outbox.put("progress")  # 10 bytes: queued in the same burst as the image
    outbox.put(b"i" * 40)  # 42: over the bound, but the backlog before it was within it
    outbox.put("progress")  # the small messages after it still fit beside it
    assert not outbox.overflowed and outbox.peak_bytes == 62
    outbox.put(b"j" * 40)  # a second oversized frame while the first is pending
    assert outbox.overflowed


async def test_outbox_bound_shrinks_back_once_the_oversized_frame_is_sent() -> None:
    outbox = Outbox(max_bytes=20)
    outbox.put(b"i" * 40)
    assert await outbox.next() == b"i" * 40
    outbox.put(b"j" * 40)  # the first one left: this one is taken too
    assert await outbox.next() == b"j" * 40
    for _ in range(2):
        outbox.put("x" * 8)  # 10 bytes each: 20, the bound
    assert not outbox.overflowed
    outbox.put("y")
    assert outbox.overflowed


def test_wire_size_counts_utf8_and_the_frame_header() -> None:
    assert [wire_size(frame) for frame in ("é", b"x" * 125, b"x" * 126, b"x" * 65536)] == [4, 127, 130, 65546]


def test_binary_frames_have_comfyuis_layout() -> None:
    assert encode_preview_image("PNG", b"img")[:8] == bytes.fromhex("0000000100000002")
    assert encode_preview_image("JPEG", b"img")[4:8] == struct.pack(">I", 1)
    frame = encode_text("12", "héllo")
    assert frame == struct.pack(">II", 3, 2) + b"12" + "héllo".encode()
    frame = encode_preview_with_metadata("PNG", b"img", {"node_id": "2"})
    length = struct.unpack(">I", frame[4:8])[0]
    assert frame[:4] == struct.pack(">I", 4) and frame[8 + length:] == b"img"
    assert json.loads(frame[8:8 + length]) == {"node_id": "2", "image_type": "image/png"}

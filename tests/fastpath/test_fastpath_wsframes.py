"""WebSocket frames in a byte stream: boundaries found however the bytes are split, only `executed` text
messages rewritten, everything else passed on as the same bytes."""

from __future__ import annotations

import json
import os

import pytest

from gateway.datapath.fast.tunnel import payload_rewriter
from gateway.datapath.fast.wsframes import ClientFrames, FrameRewriter, close_frame, text_frame


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = bytes((first, size | (0x80 if mask else 0)))
    elif size < 65536:
        head = bytes((first, 126 | (0x80 if mask else 0))) + size.to_bytes(2, "big")
    else:
        head = bytes((first, 127 | (0x80 if mask else 0))) + size.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


def executed(subfolder: str) -> bytes:
    return json.dumps(
        {
            "type": "executed",
            "data": {
                "node": "9",
                "output": {"images": [{"filename": "a.png", "subfolder": subfolder, "type": "output"}]},
            },
        }
    ).encode()


def progress(i: int) -> bytes:
    return json.dumps({"type": "progress", "data": {"value": i, "max": 20}}).encode()


def messages_of(stream: bytes) -> list[tuple[int, bytes]]:
    """Decode a server-to-client stream (unmasked) into (opcode, payload) of whole messages."""
    out, pos, parts, opcode = [], 0, [], 0
    while pos < len(stream):
        b0, b1 = stream[pos], stream[pos + 1]
        size, head = b1 & 0x7F, 2
        if size == 126:
            size, head = int.from_bytes(stream[pos + 2 : pos + 4], "big"), 4
        elif size == 127:
            size, head = int.from_bytes(stream[pos + 2 : pos + 10], "big"), 10
        payload = stream[pos + head : pos + head + size]
        pos += head + size
        if b0 & 0x0F >= 8:  # control frames may come between the fragments of a message
            out.append((b0 & 0x0F, payload))
            continue
        if b0 & 0x0F:
            opcode = b0 & 0x0F
        parts.append(payload)
        if b0 & 0x80:
            out.append((opcode, b"".join(parts)))
            parts = []
    return out


def run(rewriter: FrameRewriter, stream: bytes, cut: int) -> bytes:
    """Feed `stream` in pieces of `cut` bytes and join what comes out."""
    return b"".join(b"".join(rewriter.feed(stream[i : i + cut])) for i in range(0, len(stream), cut))


STREAM = b"".join(
    [
        frame(1, progress(1)),
        frame(2, os.urandom(70_000)),  # a binary image: never held
        frame(1, executed("sub")),
        frame(9, b"ping"),
        frame(1, executed("")[:30], fin=False),  # a fragmented executed message, with a ping in between
        frame(9, b"p2"),
        frame(0, executed("")[30:]),
        frame(1, progress(2)),
        frame(8, (1000).to_bytes(2, "big")),
    ]
)


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 100, 4096, len(STREAM)])
def test_rewrites_executed_only_however_the_bytes_are_split(cut: int) -> None:
    rewriter = FrameRewriter(payload_rewriter("comfyui"), 1 << 20)
    out = run(rewriter, STREAM, cut)
    got = messages_of(out)
    want = messages_of(STREAM)
    assert [op for op, _ in want] == [1, 2, 1, 9, 9, 1, 1, 8]
    assert [op for op, _ in got] == [1, 2, 1, 9, 9, 1, 1, 8]
    # ping p2 overtakes the held fragments, which go out as one rewritten frame
    assert got[3:5] == [(9, b"ping"), (9, b"p2")]
    assert json.loads(got[2][1])["data"]["output"]["images"][0]["subfolder"] == "comfyui/sub"
    assert json.loads(got[5][1])["data"]["output"]["images"][0]["subfolder"] == "comfyui"
    assert got[1] == want[1] and got[0] == want[0] and got[6] == want[6]
    assert rewriter.messages == 5 and rewriter.closed and rewriter.at_boundary  # data messages, as aiohttp counts


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 100, 4096, len(STREAM)])
def test_without_a_rewrite_every_frame_passes_as_it_came_its_boundaries_still_known(cut: int) -> None:
    """The app's socket: its fan-in rewrote `executed` already, so text is neither held nor read again."""
    rewriter = FrameRewriter(None, 1 << 20)
    sent = b""
    for i in range(0, len(STREAM), cut):
        sent += b"".join(rewriter.feed(STREAM[i : i + cut]))
        # what came goes on at once: at most a frame header not yet whole waits for the next read
        assert 0 <= min(i + cut, len(STREAM)) - len(sent) < 14
    assert sent == STREAM
    assert rewriter.messages == 5 and rewriter.closed and rewriter.at_boundary


def test_without_a_rewrite_a_boundary_is_known_inside_a_text_frame() -> None:
    rewriter = FrameRewriter(None, 1 << 20)
    whole = frame(1, executed("sub"))
    rewriter.feed(whole[:10])
    assert not rewriter.at_boundary  # a close frame of our own now would cut a message
    rewriter.feed(whole[10:])
    assert rewriter.at_boundary and rewriter.messages == 1


def test_a_chunk_with_nothing_to_rewrite_goes_out_as_the_same_object() -> None:
    rewriter = FrameRewriter(payload_rewriter("comfyui"), 1 << 20)
    chunk = frame(1, progress(1)) + frame(2, b"\x00" * 10)
    assert rewriter.feed(chunk)[0] is chunk


def test_text_messages_past_the_hold_limit_pass_untouched() -> None:
    big = executed("x" * 5000)
    rewriter = FrameRewriter(payload_rewriter("comfyui"), 1000)
    stream = frame(1, big) + frame(1, big[:600], fin=False) + frame(0, big[600:])
    assert run(rewriter, stream, 333) == stream


def test_masked_frames_and_non_json_text_are_handled() -> None:
    rewriter = FrameRewriter(payload_rewriter("comfyui"), 1 << 20)
    masked = frame(1, executed("m"), mask=b"\x01\x02\x03\x04")
    odd = frame(1, b'"executed" but not json')
    out = messages_of(run(rewriter, masked + odd, 5))
    assert json.loads(out[0][1])["data"]["output"]["images"][0]["subfolder"] == "comfyui/m"
    assert out[1][1] == b'"executed" but not json'


def test_client_frames_count_messages_however_the_bytes_are_split() -> None:
    counter = ClientFrames(1 << 20)
    stream = frame(1, b"a", mask=b"abcd") + frame(2, b"b" * 300, fin=False, mask=b"abcd") + frame(0, b"c", mask=b"abcd")
    stream += frame(8, b"\x03\xe8", mask=b"abcd")
    total = sum(counter.feed(stream[i : i + 3]) for i in range(0, len(stream), 3))
    assert total == 2 and counter.closed and counter.error is None


def test_frame_builders() -> None:
    assert messages_of(text_frame(b"x" * 70_000)) == [(1, b"x" * 70_000)]
    assert close_frame(1001, b"bye") == b"\x88\x05\x03\xe9bye"


# --- client frames: what a client may not send ------------------------------------------------------------------

KEY = b"abcd"
GOOD = frame(1, b"hello", mask=KEY) + frame(2, b"b" * 300, fin=False, mask=KEY) + frame(9, b"p", mask=KEY)
GOOD += frame(0, b"c" * 70_000, mask=KEY)


def feed_in_pieces(frames: ClientFrames, stream: bytes, cut: int) -> tuple[int, int]:
    """(messages counted, offset in `stream` where passing on must stop: len(stream) when nothing was refused)."""
    count = 0
    for start in range(0, len(stream), cut):
        count += frames.feed(stream[start : start + cut])
        if frames.error is not None:
            return count, start + frames.cut
    return count, len(stream)


FRAGMENT = frame(2, b"x" * 600, fin=False, mask=KEY) + frame(9, b"", mask=KEY)


@pytest.mark.parametrize(
    ("allowed", "offending", "code"),
    [
        (b"", frame(1, b"x", mask=None), 1002),
        (b"", bytes((0xC1, 0x81)) + KEY + b"x", 1002),  # RSV1, no extension
        (b"", bytes((0x91, 0x81)) + KEY + b"x", 1002),  # RSV3
        (b"", frame(3, b"x", mask=KEY), 1002),
        (b"", frame(0xF, b"x", mask=KEY), 1002),
        (b"", frame(9, b"x", fin=False, mask=KEY), 1002),
        (b"", frame(10, b"x" * 126, mask=KEY), 1002),
        (b"", frame(0, b"x", mask=KEY), 1002),  # a continuation outside a message (GOOD's last one ended)
        (FRAGMENT, frame(1, b"x", mask=KEY), 1002),  # a new message inside a fragmented one
        (b"", frame(2, b"x" * 70_301, mask=KEY), 1009),
        (FRAGMENT, frame(0, b"x" * 69_701, mask=KEY), 1009),  # the limit passed across fragments
    ],
)
@pytest.mark.parametrize("cut", [1, 3, 7, 64, 1 << 20])
def test_client_frames_stop_at_the_first_forbidden_frame(allowed: bytes, offending: bytes, code: int, cut: int) -> None:
    frames = ClientFrames(70_300)
    before = GOOD + allowed
    count, stop = feed_in_pieces(frames, before + offending + frame(1, b"after", mask=KEY), cut)
    assert frames.error is not None and frames.error[0] == code
    assert count == 2
    # Nothing from the offending frame on is passed; a header split across reads was passed in part already.
    if frames.cut_at_boundary:
        assert stop == len(before)
    else:
        assert len(before) < stop <= len(before) + 14
    if cut > len(before) + 14:
        assert frames.cut_at_boundary


def test_client_frames_allow_a_message_at_the_limit_across_fragments() -> None:
    frames = ClientFrames(1000)
    stream = frame(1, b"a" * 500, fin=False, mask=KEY) + frame(10, b"pong", mask=KEY) + frame(0, b"b" * 500, mask=KEY)
    assert frames.feed(stream) == 1 and frames.error is None


def test_client_frames_leave_reserved_bits_to_an_extension_the_backend_named() -> None:
    frames = ClientFrames(1000, extensions=True)
    assert frames.feed(bytes((0xC1, 0x81)) + KEY + b"x") == 1 and frames.error is None

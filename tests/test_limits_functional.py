"""What a client may send, bounded by settings.limits, on both data paths (each test runs on `fast` and `aiohttp`):
request-target, header count and head size; how deep a JSON body nests; how large a WebSocket message is, and
which frames a client may not send at all. Real sockets on 127.0.0.1, crafted bytes where a well-behaved
client library would refuse to send them.

Where the aiohttp path cannot give the fast path's answer, the test says so: aiohttp's own parser refuses an
over-long target or too many headers with a plain-text 400 at the same threshold (the fast path: 414 and 431
in ComfyUI's error shape), and it bounds no head's total size, only each header's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from gateway.config.settings import LimitSettings, Settings
from gateway.core import json_codec
from gateway.datapath.fast.limits import Limits
from gateway.serve import limits_for
from tests.json_shapes import json_depth
from tests.recording_backend import RecordingBackend

MIB = 1024 * 1024
SMALL = LimitSettings(max_target_bytes=1024, max_header_count=20, max_head_bytes=4096)


# --- what the gateway answers on a raw socket ------------------------------------------------------------------


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_type(self) -> str | None:
        try:
            return json.loads(self.body)["error"]["type"]
        except (ValueError, KeyError, TypeError):
            return None


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def exchange(url: str, *parts: bytes, pause: float = 0.0) -> RawReply:
    """Send `parts` (with `pause` between them, so that each arrives in a read of its own), read the answer."""
    reader, writer = await connect(url)
    try:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        return RawReply(int(lines[0].split()[1]), headers, body)
    finally:
        writer.close()


def http_get(target: str = "/limits", headers: list[tuple[str, str]] = (), *, host: str = "gw") -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def extra_headers(count: int) -> list[tuple[str, str]]:
    return [(f"X-Extra-{i}", "v") for i in range(count)]


# --- request-target, header count, head size -------------------------------------------------------------------


async def test_a_target_at_the_limit_is_served_and_one_byte_more_is_refused(start_backend, start_gateway) -> None:
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url}, limits=SMALL)
    at_limit = "/limits?" + "a" * (SMALL.max_target_bytes - len("/limits?"))
    assert (await exchange(gateway.url, http_get(at_limit))).status == 200
    refused = await exchange(gateway.url, http_get(at_limit + "a"))
    if gateway.data_path == "fast":
        assert refused.status == 414 and refused.error_type() == "target_too_long"
        assert refused.headers["content-type"].startswith("application/json")
    else:  # aiohttp's parser refuses it before the app sees it: a 400 of its own, in text
        assert refused.status == 400 and refused.error_type() is None
    assert backend.seen[-1].raw_path == at_limit  # the refused one never reached the backend


async def test_headers_up_to_the_count_are_served_and_one_more_is_refused(start_backend, start_gateway) -> None:
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url}, limits=SMALL)
    # Host and Connection count too.
    allowed = http_get(headers=extra_headers(SMALL.max_header_count - 2))
    assert (await exchange(gateway.url, allowed)).status == 200
    refused = await exchange(gateway.url, http_get(headers=extra_headers(SMALL.max_header_count - 1)))
    if gateway.data_path == "fast":
        assert refused.status == 431 and refused.error_type() == "headers_too_large"
    else:
        assert refused.status == 400 and b"Too many headers" in refused.body


async def test_one_header_larger_than_the_head_limit_is_refused(start_backend, start_gateway) -> None:
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url}, limits=SMALL)
    refused = await exchange(gateway.url, http_get(headers=[("Cookie", "c" * (SMALL.max_head_bytes + 1))]))
    if gateway.data_path == "fast":
        assert refused.status == 431 and refused.error_type() == "headers_too_large"
    else:  # aiohttp bounds each header by max_field_size (set to max_head_bytes), its value all but exactly
        assert refused.status == 400 and refused.error_type() is None


async def test_a_head_over_the_limit_in_many_small_headers(start_backend, start_gateway) -> None:
    """The one bound aiohttp's parser does not have: a head's total size. The fast path refuses it (431); the
    aiohttp path serves it (each header is under max_field_size and there are few enough of them)."""
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url}, limits=SMALL)
    data = http_get(headers=[(f"X-Part-{i}", "p" * 400) for i in range(12)])
    assert len(data) > SMALL.max_head_bytes
    reply = await exchange(gateway.url, data)
    if gateway.data_path == "fast":
        assert reply.status == 431 and reply.error_type() == "headers_too_large"
    else:
        assert reply.status == 200


async def test_a_large_head_split_across_reads_is_counted_once(start_backend, start_gateway) -> None:
    """A head under the limit is served however it arrives (the fast path once counted a head's later reads
    twice, refusing a 20 KB head sent in two pieces under the 32 KB default)."""
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url})
    data = http_get(headers=[(f"X-Part-{i}", "p" * 1000) for i in range(20)])
    assert 20_000 < len(data) < Settings().limits.max_head_bytes
    middle = len(data) // 3
    reply = await exchange(gateway.url, data[:middle], data[middle:], pause=0.05)
    assert reply.status == 200


# --- JSON depth ------------------------------------------------------------------------------------------------


def nested_prompt(depth: int) -> bytes:
    """A POST /prompt body whose arrays and objects nest `depth` deep (the body's own object is the first)."""
    inner = b"[" * (depth - 1) + b"1" + b"]" * (depth - 1)
    return b'{"client_id": "deep", "prompt": ' + inner + b"}"


async def post(url: str, path: str, body: bytes) -> RawReply:
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\n"
    return await exchange(url, head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def test_a_prompt_at_the_depth_limit_is_forwarded(start_backend, start_gateway) -> None:
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url})
    reply = await post(gateway.url, "/prompt", nested_prompt(Settings().limits.max_json_depth))
    assert reply.status == 200, reply.body
    # Brackets inside strings are text, not nesting.
    text = json.dumps({"prompt": {"6": {"inputs": {"text": "[" * 500 + '\\"]' * 300}}}}).encode()
    assert (await post(gateway.url, "/prompt", text)).status == 200
    assert [s.raw_path for s in backend.seen] == ["/prompt", "/prompt"]


@pytest.mark.parametrize("depth", [65, 950, 200_000])
async def test_a_prompt_nested_deeper_is_a_400_in_comfyuis_shape(start_backend, start_gateway, depth: int) -> None:
    """Past max_json_depth (64), as deep as the recursion limit, or far past it: never a RecursionError or 500."""
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url})
    reply = await post(gateway.url, "/prompt", nested_prompt(depth))
    assert reply.status == 400
    body = json.loads(reply.body)
    assert body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
    assert body["error"]["message"] == "request body is JSON nested deeper than 64 levels"
    assert backend.seen == []


async def test_max_json_depth_is_read_from_the_settings(start_backend, start_gateway) -> None:
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url}, limits=LimitSettings(max_json_depth=8))
    assert (await post(gateway.url, "/prompt", nested_prompt(8))).status == 200
    assert (await post(gateway.url, "/prompt", nested_prompt(9))).status == 400


async def test_a_prompt_scoped_body_nested_deeper_is_a_400(start_backend, start_gateway) -> None:
    backend = await start_backend("kg")
    gateway = await start_gateway({"kg": backend.url})
    deep = b'{"delete": ' + b"[" * 70 + b'"p"' + b"]" * 70 + b"}"
    reply = await post(gateway.url, "/queue", deep)
    assert reply.status == 400 and reply.error_type() is not None
    assert backend.seen == []


def random_json(rng: random.Random, depth: int) -> Any:
    text = "".join(rng.choice('[]{}"\\ab\n/u') for _ in range(rng.randint(0, 6)))
    roll = rng.random()
    if depth <= 0 or roll < 0.2:
        return rng.choice([text, 1, None, True, 2.5])
    if roll < 0.6:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"{text}{i}": random_json(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_check_depth_agrees_with_the_parsed_depth() -> None:
    """Strings full of brackets, quotes and backslashes, escaped or not, at every depth around the bound."""
    rng = random.Random(16)
    for _ in range(3000):
        value = random_json(rng, rng.randint(0, 14))
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        depth = json_depth(value)
        for bound in (4, 6, 9, 12):
            if depth <= bound:
                json_codec.check_depth(body, bound)
            else:
                with pytest.raises(json_codec.JsonTooDeep):
                    json_codec.check_depth(body, bound)


@pytest.mark.parametrize(
    "body",
    [
        b'["]",' * 100 + b"1" + b"]" * 100,  # closing brackets in strings do not hide the nesting
        b'[["[" ,' * 40 + b'"\\\\"' + b"]" * 80,  # an escaped backslash before a closing quote
        b"[" * 100_000 + b"]" * 100_000,
        b"[" + b"[]," * 70 + b"[" * 70 + b"]" * 71,  # a wide level first, then a deep one
    ],
)
def test_check_depth_refuses_what_nests_deeper(body: bytes) -> None:
    with pytest.raises(json_codec.JsonTooDeep):
        json_codec.check_depth(body, 64)
    with pytest.raises(json_codec.JsonTooDeep):
        json_codec.loads_within_depth(body, 64)


def test_loads_within_depth_reads_what_is_within_it() -> None:
    body = b'{"a": "[[[[[\\"]]]]", "b": ' + b"[" * 63 + b"]" * 63 + b"}"
    assert json_codec.loads_within_depth(body, 64) == json.loads(body)
    with pytest.raises(ValueError):
        json_codec.loads_within_depth(b'{"a": ', 64)  # not JSON: json's own error
    many = b"[" + b",".join([b"[" * 63 + b"]" * 63] * 10_000) + b"]"  # nests just past the bound, many times
    with pytest.raises(json_codec.JsonTooDeep):
        json_codec.check_depth(many, 63)
    json_codec.check_depth(many, 64)


# --- WebSocket messages and frames from clients ----------------------------------------------------------------


@dataclass
class WsBackend(RecordingBackend):
    """Records every WebSocket message it gets and the code its socket closed with; `big:N` asks for N bytes."""

    messages: list[Any] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_json({"type": "status", "data": {"sid": "raw"}})
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and msg.data.startswith("big:"):
                await ws.send_bytes(b"b" * int(msg.data.removeprefix("big:")))
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.messages.append(msg.data)
        self.close_codes.append(ws.close_code)
        self.closed.set()
        return ws


KEY = b"\x11\x22\x33\x44"


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    mask: bytes | None = KEY,
    rsv: int = 0,
    declared: int | None = None,
) -> bytes:
    """One frame as a client writes it (masked unless mask=None); `declared` claims another payload length."""
    size = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 65536:
        head = bytes((first, bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + size.to_bytes(8, "big")
    if not mask:
        return head + payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return head + mask + bytes(a ^ b for a, b in zip(payload, repeated, strict=True))


def big_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """frame() for megabytes: masked with an all-zero key, which leaves the payload as it is."""
    return frame(opcode, b"", fin=fin, mask=b"\0\0\0\0", declared=len(payload)) + payload


def deflated(payload: bytes) -> bytes:
    """permessage-deflate's compression of one message (RFC 7692 §7.2.1: the sync flush's tail removed)."""
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


class RawSocket:
    """A WebSocket client that writes whatever bytes it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, url: str, *, deflate: bool = False) -> RawSocket:
        reader, writer = await connect(url)
        key = os.urandom(16).hex()[:22] + "=="
        extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
        writer.write(
            (
                f"GET /ws?clientId=raw HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 101 " in head.split(b"\r\n")[0], head
        socket_ = cls(reader, writer, head)
        opcode, _ = await socket_.read_frame()  # the backend's status message
        assert opcode == 1
        return socket_

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(size), 10)

    async def close_code(self) -> int:
        """The code of the close frame the gateway sends (frames before it are skipped); then the socket ends."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 8:
                break
        code = int.from_bytes(payload[:2], "big")
        self.writer.write(frame(8, payload[:2]))
        rest = await asyncio.wait_for(self.reader.read(), 5)  # the gateway closes its side
        assert rest == b""
        return code


async def ws_gateway(start_backend, start_gateway, **overrides: Any) -> tuple[WsBackend, Any]:
    backend = await start_backend("kg", WsBackend)
    gateway = await start_gateway({"kg": backend.url}, **overrides)
    return backend, gateway


@pytest.fixture
async def open_ws():
    """RawSocket.open, each socket closed at the end of the test whatever became of it."""
    sockets: list[RawSocket] = []

    async def open_(url: str, *, deflate: bool = False) -> RawSocket:
        ws = await RawSocket.open(url, deflate=deflate)
        sockets.append(ws)
        return ws

    yield open_
    for ws in sockets:
        ws.writer.close()
        with contextlib.suppress(ConnectionError):
            await ws.writer.wait_closed()


async def backend_close_code(backend: WsBackend) -> int | None:
    await asyncio.wait_for(backend.closed.wait(), 5)
    return backend.close_codes[-1]


LIMIT = Settings().limits.max_ws_message_bytes


async def test_a_message_at_the_limit_passes_and_one_byte_more_closes_with_1009(
    start_backend, start_gateway, open_ws
) -> None:
    backend, gateway = await ws_gateway(start_backend, start_gateway)
    ws = await open_ws(gateway.url)
    await ws.send(big_frame(2, b"x" * LIMIT))
    # Only the header of the one too large: both paths refuse it from its declared length.
    await ws.send(frame(2, b"y" * 10, declared=LIMIT + 1))
    assert await ws.close_code() == 1009
    assert await backend_close_code(backend) == 1009
    assert [len(m) for m in backend.messages] == [LIMIT]


async def test_a_fragmented_message_is_measured_whole(start_backend, start_gateway, open_ws) -> None:
    backend, gateway = await ws_gateway(start_backend, start_gateway)
    ws = await open_ws(gateway.url)
    half = LIMIT // 2
    await ws.send(frame(1, b"first") + big_frame(2, b"a" * half, fin=False) + frame(9, b"ping between"))
    await ws.send(big_frame(0, b"b" * half, fin=False))
    await ws.send(frame(0, b"c", declared=1))  # one byte past the limit, across three frames
    assert await ws.close_code() == 1009
    assert await backend_close_code(backend) == 1009
    assert backend.messages == ["first"]


async def test_a_compressed_message_is_measured_inflated(start_backend, start_gateway, open_ws) -> None:
    """The aiohttp path negotiates permessage-deflate with a client that offers it, and measures a message
    inflated (its bound is one byte looser there: aiohttp refuses past max_msg_size, set one past the limit).
    The fast path forwards the upgrade without the offer, so nothing is negotiated and a compressed frame is
    a protocol error."""
    backend, gateway = await ws_gateway(start_backend, start_gateway)
    ws = await open_ws(gateway.url, deflate=True)
    negotiated = b"permessage-deflate" in ws.head.lower()
    assert negotiated == (gateway.data_path == "aiohttp")
    await ws.send(frame(1, b"plain"))
    if negotiated:
        await ws.send(frame(1, deflated(b"z" * LIMIT), rsv=0x40))
        await ws.send(frame(2, deflated(b"z" * 2 * LIMIT), rsv=0x40))  # tiny on the wire, twice the limit inflated
        assert await ws.close_code() == 1009
        assert await backend_close_code(backend) == 1009
        assert backend.messages == ["plain", "z" * LIMIT]
    else:
        await ws.send(frame(1, deflated(b"z" * 100), rsv=0x40))
        assert await ws.close_code() == 1002
        assert await backend_close_code(backend) == 1002
        assert backend.messages == ["plain"]


async def test_messages_from_the_backend_have_no_size_limit(start_backend, start_gateway, open_ws) -> None:
    backend, gateway = await ws_gateway(start_backend, start_gateway)
    ws = await open_ws(gateway.url)
    await ws.send(frame(1, f"big:{LIMIT + MIB}".encode()))
    opcode, payload = await ws.read_frame()
    assert opcode == 2 and len(payload) == LIMIT + MIB
    await ws.send(frame(8, (1000).to_bytes(2, "big")))
    assert await backend_close_code(backend) == 1000


BAD_FRAMES = {
    "unmasked": frame(1, b"hello", mask=None),
    "rsv1 without an extension": frame(1, b"hello", rsv=0x40),
    "rsv2": frame(1, b"hello", rsv=0x20),
    "rsv3": frame(2, b"hello", rsv=0x10),
    "reserved data opcode": frame(3, b"hello"),
    "reserved control opcode": frame(0xB, b"hello"),
    "fragmented ping": frame(9, b"ping", fin=False),
    "long ping": frame(9, b"p" * 126),
    "continuation outside a message": frame(0, b"tail"),
    "new message inside a fragmented one": frame(1, b"part", fin=False) + frame(1, b"again"),
}


@pytest.mark.parametrize("bad", list(BAD_FRAMES), ids=list(BAD_FRAMES))
async def test_a_frame_a_client_may_not_send_closes_with_1002(start_backend, start_gateway, open_ws, bad: str) -> None:
    backend, gateway = await ws_gateway(start_backend, start_gateway)
    ws = await open_ws(gateway.url)
    await ws.send(frame(1, b"before"))
    await asyncio.sleep(0.05)
    # The message right before it, in the same write, still goes on; nothing after it does.
    await ws.send(frame(1, b"just before") + BAD_FRAMES[bad] + frame(1, b"after"))
    assert await ws.close_code() == 1002
    assert await backend_close_code(backend) == 1002
    assert backend.messages == ["before", "just before"]


async def test_a_bad_frame_split_across_writes_is_still_found(start_backend, start_gateway, open_ws) -> None:
    backend, gateway = await ws_gateway(start_backend, start_gateway)
    ws = await open_ws(gateway.url)
    good, bad = frame(2, b"k" * 300), frame(1, b"x" * 200, mask=None)
    for piece in [good[i : i + 7] for i in range(0, len(good), 7)] + [bad[:1], bad[1:]]:
        await ws.send(piece)
        await asyncio.sleep(0.01)
    assert await ws.close_code() == 1002
    assert await backend_close_code(backend) == 1002  # told why, on both data paths
    assert backend.messages == [b"k" * 300]


async def test_frames_sent_with_the_handshake_are_checked_too(start_backend, start_gateway) -> None:
    """A client that writes frames before the 101 (RFC 6455 says it must wait): they wait for the tunnel, and
    are checked like any other."""
    backend, gateway = await ws_gateway(start_backend, start_gateway)
    reader, writer = await connect(gateway.url)
    try:
        writer.write(
            b"GET /ws?clientId=raw HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + frame(1, b"early")
            + frame(1, b"unmasked", mask=None)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 101 " in head.split(b"\r\n")[0]
        assert await RawSocket(reader, writer, head).close_code() == 1002
    finally:
        writer.close()
    assert await backend_close_code(backend) == 1002
    assert backend.messages == ["early"]


async def test_max_ws_message_bytes_is_read_from_the_settings(start_backend, start_gateway, open_ws) -> None:
    backend, gateway = await ws_gateway(start_backend, start_gateway, limits=LimitSettings(max_ws_message_bytes=4096))
    ws = await open_ws(gateway.url)
    await ws.send(frame(2, b"x" * 4096) + frame(2, b"x" * 4097))
    assert await ws.close_code() == 1009
    assert [len(m) for m in backend.messages] == [4096]


# --- the settings reach the fast path --------------------------------------------------------------------------


def test_limits_defaults_are_the_settings_defaults() -> None:
    settings = Settings()
    assert limits_for(settings) == Limits()
    for name, value in LimitSettings().model_dump().items():
        if hasattr(Limits, name):
            assert getattr(Limits(), name) == value, name


def test_limits_for_takes_every_limit_that_has_a_setting() -> None:
    changed = {
        name: value * 2 if isinstance(value, int) else value + 1
        for name, value in LimitSettings().model_dump().items()
        if hasattr(Limits, name)
    }
    limits = limits_for(Settings(limits=LimitSettings(**changed), max_body_bytes=12345))
    assert {name: getattr(limits, name) for name in changed} == changed
    assert limits.max_body_bytes == 12345


_BRACKET_FREE = st.text(alphabet="ab \\\"/\n", max_size=6)  # escapes and quotes, never a bracket
_ANY_TEXT = st.text(alphabet='[]{}"\\ab\n/u', max_size=6)


def _values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        text | st.integers() | st.none(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=40,
    )


@given(st.one_of(_values(_BRACKET_FREE), _values(_ANY_TEXT)), st.booleans(), st.integers(1, 12))
def test_check_depth_is_the_parsed_depth_whether_or_not_strings_hold_brackets(
    value: Any, ascii_only: bool, bound: int
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    if json_depth(value) <= bound:
        json_codec.check_depth(body, bound)
    else:
        with pytest.raises(json_codec.JsonTooDeep):
            json_codec.check_depth(body, bound)

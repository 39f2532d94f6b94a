"""A backend socket's frames split as they arrive (datapath/aio/backend_socket.py): whatever the read boundaries
and wherever the fan-in takes the socket, every data message reaches it once, whole and in order (a progress
message as the very frame the backend sent), every control frame reaches aiohttp's reader byte for byte, a
full client queue stops reading until it has room, and a frame the splitter does not take goes, with all after
it, to aiohttp's reader."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import WebSocketError, web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.datapath.aio.backend_socket import BackendSocket, FrameSink, FrameSplitter
from gateway.datapath.aio.client_socket import Frame
from tests.ws_frames import BINARY, CLOSE, CONTINUATION, PING, TEXT, progress, server_frame


class Recorded(FrameSink):
    """What the fan-in gets, in order; `full_every`: say the queue is full after that many messages."""

    def __init__(self, *, skims: bool = True, full_every: int = 0) -> None:
        self.got: list[tuple[str, object]] = []
        self._skims = skims
        self._full_every = full_every
        self.resume: Callable[[], None] | None = None
        self._full_at = 0  # said full once at this count: room has been made since

    def skims(self) -> bool:
        return self._skims

    def framed(self, kind: str, frame: Frame) -> None:
        self.got.append(("framed", (kind, frame.frame, frame.text())))

    def text(self, text: str) -> None:
        self.got.append(("text", text))

    def binary(self, data: bytes) -> None:
        self.got.append(("binary", data))

    def wait_for_room(self, resume: Callable[[], None]) -> bool:
        count = len(self.got)
        if self._full_every and count and count % self._full_every == 0 and count != self._full_at:
            assert self.resume is None  # one wait at a time
            self.resume, self._full_at = resume, count
            return True
        return False


class AiohttpReaderSide:
    """Stands where aiohttp's WebSocketReader and its queue are: records what the splitter passes them."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []
        self.ended = False
        self.error: BaseException | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed.append(data)
        return False, b""

    def feed_eof(self) -> None:
        self.ended = True

    def exception(self) -> BaseException | None:
        return self.error

    def set_exception(self, exc: BaseException) -> None:
        self.error = exc


class Transport:
    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False


def splitter() -> tuple[FrameSplitter, AiohttpReaderSide, Transport]:
    side, transport = AiohttpReaderSide(), Transport()
    return FrameSplitter(side, side, transport), side, transport


def feed_in_pieces(frames: FrameSplitter, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
        frames.feed_data(data[start:cut])
        start = cut


MESSAGES = st.lists(
    st.one_of(
        st.tuples(st.just("progress"), st.integers(0, 10**6)),
        st.tuples(st.just("text"), st.text(max_size=300)),
        st.tuples(st.just("binary"), st.binary(max_size=70_000)),
        st.tuples(st.just("ping"), st.binary(max_size=125)),
    ),
    max_size=25,
)


def encode(messages: list[tuple[str, object]], fragments: int) -> tuple[bytes, list[tuple[str, object]], list[bytes]]:
    """The stream, the messages the sink must get, the control frames aiohttp's reader must get. Every
    `fragments`-th data message is sent in fragments, a ping between them."""
    stream, expected, controls = b"", [], []
    for index, (kind, value) in enumerate(messages):
        if kind == "ping":
            assert isinstance(value, bytes)
            frame = server_frame(PING, value)
            stream += frame
            controls.append(frame)
            continue
        payload = progress(value) if kind == "progress" else value.encode() if isinstance(value, str) else value
        assert isinstance(payload, bytes)
        opcode = BINARY if kind == "binary" else TEXT
        if fragments and index % fragments == 0 and len(payload) > 2:
            third = len(payload) // 3
            ping = server_frame(PING, b"between")
            stream += server_frame(opcode, payload[:third], fin=False) + ping
            stream += server_frame(CONTINUATION, payload[third : 2 * third], fin=False)
            stream += server_frame(CONTINUATION, payload[2 * third :])
            controls.append(ping)
            expected.append(("binary", payload) if kind == "binary" else ("text", payload.decode()))
        elif kind == "progress":
            frame = server_frame(TEXT, payload)
            stream += frame
            expected.append(("framed", ("progress", frame, payload.decode())))
        else:
            stream += server_frame(opcode, payload)
            expected.append(("binary", payload) if kind == "binary" else ("text", payload.decode()))
    return stream, expected, controls


@settings(max_examples=150, deadline=None)
@given(MESSAGES, st.lists(st.integers(0, 10**7), max_size=12), st.integers(0, 3), st.integers(0, 12))
def test_every_message_arrives_once_whole_and_in_order_however_the_bytes_are_cut(
    messages: list[tuple[str, object]], cuts: list[int], fragments: int, attach_after: int
) -> None:
    stream, expected, controls = encode(messages, fragments)
    frames, side, transport = splitter()
    sink = Recorded()
    pieces = sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)})
    start = 0
    for number, cut in enumerate(pieces):
        if number == attach_after:
            frames.attach(sink)
        frames.feed_data(stream[start:cut])
        start = cut
    if attach_after >= len(pieces):
        frames.attach(sink)  # the fan-in took the socket after every byte came: they waited for it
    assert sink.got == expected
    assert b"".join(side.fed) == b"".join(controls)
    assert side.error is None and not transport.paused


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 60), st.integers(1, 7), st.lists(st.integers(0, 10**6), max_size=8))
def test_a_full_queue_stops_reading_until_it_has_room_and_nothing_is_lost(
    count: int, full_every: int, cuts: list[int]
) -> None:
    stream = b"".join(server_frame(TEXT, progress(step)) for step in range(count))
    stream += server_frame(CLOSE, struct.pack("!H", 1000))
    frames, side, transport = splitter()
    sink = Recorded(full_every=full_every)
    frames.attach(sink)
    feed_in_pieces(frames, stream, cuts)
    while sink.resume is not None:
        assert transport.paused  # nothing more is read while the client's queue is full
        resume, sink.resume = sink.resume, None
        resume()
    assert [value[2] for _, value in sink.got] == [progress(step).decode() for step in range(count)]  # type: ignore[index]
    assert side.fed == [server_frame(CLOSE, struct.pack("!H", 1000))]  # the close, after every message
    assert not transport.paused


def test_what_comes_before_the_fan_in_takes_the_socket_waits_for_it_and_a_flood_pauses_reading() -> None:
    frames, side, transport = splitter()
    early = server_frame(TEXT, b'{"type": "status", "data": {}}')
    flood = server_frame(BINARY, b"x" * 70_000)
    frames.feed_data(early)
    assert not transport.paused
    frames.feed_data(flood)
    assert transport.paused  # more than KEPT_BEFORE_PAUSE_BYTES: the backend waits
    sink = Recorded()
    frames.attach(sink)
    assert sink.got == [("text", '{"type": "status", "data": {}}'), ("binary", b"x" * 70_000)]
    assert not transport.paused


def test_the_connection_ending_while_bytes_wait_reaches_aiohttp_after_them() -> None:
    frames, side, _ = splitter()
    sink = Recorded(full_every=1)
    frames.attach(sink)
    frames.feed_data(server_frame(TEXT, progress(1)) + server_frame(TEXT, progress(2)))
    frames.feed_eof()
    assert not side.ended  # the second message is still to go
    while sink.resume is not None:
        resume, sink.resume = sink.resume, None
        resume()
    assert len(sink.got) == 2 and side.ended


def test_progress_is_read_while_a_prompt_is_held() -> None:
    frames, _, _ = splitter()
    sink = Recorded(skims=False)
    frames.attach(sink)
    frames.feed_data(server_frame(TEXT, progress(1)))
    assert sink.got == [("text", progress(1).decode())]


@pytest.mark.parametrize(
    "bad",
    [
        server_frame(TEXT, b"masked", mask=b"abcd"),
        bytes((0x80 | 0x40 | TEXT, 1)) + b"x",  # an extension bit, none negotiated
        server_frame(TEXT, b"\xff\xfe not UTF-8"),
    ],
    ids=["masked", "extension bit", "not UTF-8"],
)
def test_a_frame_not_taken_goes_with_everything_after_it_to_aiohttps_reader(bad: bytes) -> None:
    frames, side, _ = splitter()
    sink = Recorded()
    frames.attach(sink)
    before, after = server_frame(TEXT, b'"before"'), server_frame(TEXT, b'"after"')
    frames.feed_data(before + bad + after)
    frames.feed_data(after)
    assert sink.got == [("text", '"before"')]
    assert side.fed == [bad + after, after]  # aiohttp's reader fails the socket as it always has


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (server_frame(CONTINUATION, b"nothing began"), 1002),
        (server_frame(TEXT, b"one", fin=False) + server_frame(TEXT, b"two"), 1002),
        (server_frame(TEXT, b"\xe2\x82", fin=False) + server_frame(CONTINUATION, b"\xff"), 1007),
    ],
    ids=["continuation first", "new message inside one", "fragments not UTF-8"],
)
def test_a_fragmented_message_that_breaks_the_rules_fails_the_socket_as_aiohttp_would(stream: bytes, code: int) -> None:
    frames, side, _ = splitter()
    frames.attach(Recorded())
    assert frames.feed_data(stream) == (True, b"")
    assert isinstance(side.error, WebSocketError) and side.error.code == code


async def test_a_session_made_for_backend_sockets_splits_their_frames_with_this_aiohttp(aiohttp_server) -> None:
    """The splitter sits where this aiohttp release keeps its reader: the fast relay is on, not silently off."""

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(progress(1).decode())
        await ws.send_str('{"type": "executing", "data": {"node": null}}')
        await ws.ping(b"hello")
        await ws.send_bytes(b"\x00\x01" * 100_000)
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/ws", websocket)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession(ws_response_class=BackendSocket) as session:
        ws = await session.ws_connect(server.make_url("/ws"))
        assert isinstance(ws, BackendSocket) and ws.frames is not None
        sink = Recorded()
        ws.frames.attach(sink)
        for _ in range(200):
            if len(sink.got) == 3:
                break
            await asyncio.sleep(0.01)
        assert [kind for kind, _ in sink.got] == ["framed", "text", "binary"]
        assert sink.got[2] == ("binary", b"\x00\x01" * 100_000)
        await ws.close()
        assert ws.closed


def test_a_socket_let_go_while_reading_waits_is_read_whole_by_aiohttp_so_its_close_completes() -> None:
    frames, side, transport = splitter()
    sink = Recorded(full_every=1)
    frames.attach(sink)
    close = server_frame(CLOSE, struct.pack("!H", 1000))
    frames.feed_data(server_frame(TEXT, progress(1)) + server_frame(TEXT, progress(2)) + close)
    assert transport.paused and sink.resume is not None
    frames.detach()  # the fan-in ends: its wait for room is dropped
    assert side.fed == [server_frame(TEXT, progress(2)) + close] and not transport.paused
    frames.feed_data(b"more")
    assert side.fed[-1] == b"more" and len(sink.got) == 1


def test_a_progress_frame_with_its_length_in_more_bytes_than_needed_is_sent_on_framed_again() -> None:
    """Browsers fail a socket whose frame spends more bytes on its length than needed: such a frame from a
    backend is read, and the client gets it framed by the gateway."""
    frames, _, _ = splitter()
    sink = Recorded()
    frames.attach(sink)
    payload = progress(1)
    frames.feed_data(struct.pack("!BBH", 0x80 | TEXT, 126, len(payload)) + payload)
    assert sink.got == [("text", payload.decode())]

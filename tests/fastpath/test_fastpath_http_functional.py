"""HTTP/1.1 edge cases against the fast server on real sockets: framing a proxy must refuse (request
smuggling), limits, pipelining, HTTP/1.0, garbage, half-closed sockets, 100-continue, trailers, HEAD, 1xx,
and Upgrade headers that are not WebSocket."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.datapath.fast.limits import Limits
from tests.fastpath.conftest import ok, parse_responses, raw_connection, read_all, read_response, send_raw


@pytest.fixture
async def backend(start_backend):
    return await start_backend("kerniegen")


@pytest.fixture
async def gateway(backend, start_fast):
    return await start_fast({"kerniegen": backend.url}, limits=Limits(max_body_bytes=64 * 1024, max_target_bytes=1024))


def error_type(response) -> str:
    return json.loads(response.body)["error"]["type"]


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: +3\r\n",
    ],
    ids=["cl-te", "te-cl", "cl-twice", "cl-differ", "te-gzip", "te-twice", "cl-sign"],
)
async def test_ambiguous_framing_is_refused_before_anything_is_forwarded(gateway, backend, head) -> None:
    data = await send_raw(
        gateway.url, b"POST /upload/image HTTP/1.1\r\nHost: gw\r\n" + head + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    (response,) = parse_responses(data)
    assert response.status == 400 and error_type(response) == "bad_request"
    assert not backend.seen
    assert (
        await send_raw(gateway.url, b"GET /system_stats HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    ).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(
    "request_bytes, status, kind",
    [
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 414, "target_too_long"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431, "headers_too_large"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"POST /upload/image HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000, 413, "body_too_large"),
        (
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"8000\r\n" + b"y" * 0x8000 + b"\r\n" * 1,
            413,
            None,
        ),
    ],
    ids=["target", "header-count", "head-size", "declared-body", "chunked-body"],
)
async def test_limits_are_answered_with_their_status(gateway, backend, request_bytes, status, kind) -> None:
    if kind is None:  # a chunked body passes the limit mid-way: keep sending until the answer comes
        request_bytes = request_bytes + (b"8000\r\n" + b"y" * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n"
    data = await send_raw(gateway.url, request_bytes)
    (response,) = parse_responses(data)
    assert response.status == status
    assert response.header("Connection") == b"close"
    if kind:
        assert error_type(response) == kind


async def test_pipelined_requests_are_answered_in_order(gateway, backend) -> None:
    requests = b"".join(
        [
            b"GET /one HTTP/1.1\r\nHost: gw\r\n\r\n",
            b"POST /two HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /three HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"GET /four HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        ]
    )
    responses = parse_responses(await send_raw(gateway.url, requests))
    assert [json.loads(r.body)["raw_path"] for r in responses] == ["/one", "/two", "/three", "/four"]
    assert [s.body for s in backend.seen] == [b"", b"hello", b"abc", b""]


async def test_too_many_pipelined_requests_are_answered_then_the_connection_closes(backend, start_fast) -> None:
    gateway = await start_fast({"kerniegen": backend.url}, limits=Limits(max_pipelined_requests=3))
    data = await send_raw(gateway.url, b"GET /p HTTP/1.1\r\nHost: gw\r\n\r\n" * 10)
    assert 3 <= len(parse_responses(data)) < 10


async def test_http10_closes_unless_kept_alive_and_gets_no_chunks(gateway, raw_backend, start_fast) -> None:
    data = await send_raw(gateway.url, b"GET /a HTTP/1.0\r\n\r\n")
    (response,) = parse_responses(data)
    assert response.status == 200 and response.header("Connection") == b"close"

    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert b"Connection: keep-alive" in await read_response(reader)
        writer.write(b"GET /c HTTP/1.0\r\n\r\n")  # the same connection serves a second request
        assert b'"/c"' in await read_all(reader)

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await backend_of_chunks.read_request(reader, writer)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()

    backend_of_chunks = await raw_backend(chunked)
    chunks = await start_fast({"raw": backend_of_chunks.url})
    data = await send_raw(chunks.url, b"GET /x HTTP/1.0\r\n\r\n")
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head and body == b"hello world"  # an HTTP/1.0 client reads to the close
    data = await send_raw(chunks.url, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
    (response,) = parse_responses(data)
    assert response.header("Transfer-Encoding") == b"chunked" and response.body == b"hello world"


@pytest.mark.parametrize(
    "garbage", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"HELLO\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"]
)
async def test_garbage_gets_a_400_and_the_gateway_keeps_serving(gateway, garbage) -> None:
    data = await send_raw(gateway.url, garbage)
    assert data.startswith(b"HTTP/1.1 400") or data == b""
    assert (await send_raw(gateway.url, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_a_half_closed_socket_still_gets_its_answers(gateway) -> None:
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(b"GET /one HTTP/1.1\r\nHost: gw\r\n\r\nGET /two HTTP/1.1\r\nHost: gw\r\n\r\n")
        writer.write_eof()  # shutdown(SHUT_WR): nothing more will be sent
        responses = parse_responses(await read_all(reader))
    assert [json.loads(r.body)["raw_path"] for r in responses] == ["/one", "/two"]


@pytest.mark.parametrize("path", [b"/upload/image", b"/prompt"], ids=["streamed", "read-whole"])
async def test_expect_100_continue_is_answered_before_the_body_is_sent(gateway, backend, path) -> None:
    body = b'{"prompt": {}}'
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (path, len(body))
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
    seen = backend.seen[-1]
    assert "Expect" not in seen.headers and (path == b"/upload/image" or json.loads(seen.body)["prompt"] == {})


async def test_an_early_refusal_is_not_followed_by_a_100(gateway) -> None:
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(
            b"POST /upload/image HTTP/1.1\r\nExpect: 100-continue\r\nX-Comfy-Backend: nope\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        assert (await read_response(reader)).startswith(b"HTTP/1.1 400")


async def test_chunked_request_with_trailers(gateway, backend) -> None:
    requests = (
        b"POST /upload/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    responses = parse_responses(await send_raw(gateway.url, requests))
    assert [r.status for r in responses] == [200, 200]
    upload, after = backend.seen[-2:]
    assert json.loads(responses[0].body)["received_bytes"] == 9
    assert not {"X-Checksum", "X-Other", "Trailer"} & set(upload.headers)
    assert not {"X-Checksum", "X-Other"} & set(after.headers)  # trailers never leak into the next request


async def test_head_gets_the_headers_and_no_body(gateway) -> None:
    async with raw_connection(gateway.url) as (reader, writer):
        writer.write(b"HEAD /big/1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 1048576" in head
        writer.write(b"GET /next HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        rest = await read_all(reader)
    assert rest.startswith(b"HTTP/1.1 200") and b'"/next"' in rest  # no body bytes came between


async def test_interim_answers_reach_http11_clients(raw_backend, start_fast) -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await backend.read_request(reader, writer)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + ok(b'{"a": 1}'))
        await writer.drain()

    backend = await raw_backend(early_hints)
    gateway = await start_fast({"raw": backend.url})
    hints, final = parse_responses(await send_raw(gateway.url, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert hints.status == 103 and hints.header("Link") == b"</a.css>; rel=preload"
    assert final.status == 200 and final.body == b'{"a": 1}'


async def test_an_upgrade_other_than_websocket_is_ignored(gateway, backend) -> None:
    data = await send_raw(
        gateway.url, b"GET /plain HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nGET /next HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    first, second = parse_responses(data)
    assert first.status == second.status == 200
    assert not {"Upgrade", "HTTP2-Settings"} & set(backend.seen[0].headers)
    body = await send_raw(
        gateway.url, b"POST /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx"
    )
    assert body.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("pieces", [1, 3, 40])
async def test_the_head_limit_is_exact_however_the_head_arrives(backend, start_fast, pieces: int) -> None:
    """The head's size is its request line, its `name: value` lines and the closing CRLF: at the limit it is
    served, one byte over it is a 431, in one read or many."""
    gateway = await start_fast({"kerniegen": backend.url}, limits=Limits(max_head_bytes=2048))

    def head_of(size: int) -> bytes:
        base = b"GET /limit HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Pad: \r\n\r\n"
        return base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (size - len(base)))

    for size, status in ((2048, 200), (2049, 431)):
        data = head_of(size)
        assert len(data) == size
        async with raw_connection(gateway.url) as (reader, writer):
            step = -(-len(data) // pieces)
            for start in range(0, len(data), step):
                writer.write(data[start : start + step])
                await writer.drain()
                await asyncio.sleep(0.005)
            response = parse_responses(await read_response(reader))[0]
        assert response.status == status

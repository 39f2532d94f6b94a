"""The fast path's request checks and header policy as bytes agree with headers.py, which defines the policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.core.errors import BadRequest
from gateway.core.exchange import Exchange
from gateway.core.headers import client_response_headers, upstream_request_headers
from gateway.datapath.fast import wire
from gateway.datapath.fast.request import RequestHead, framing_of
from gateway.pipeline import outcome


def head(
    headers: list[tuple[str, str]], *, method: str = "GET", target: bytes = b"/x?a=1", upgrade: bool = False
) -> RequestHead:
    triples = [(n.lower().encode(), n.encode(), v.encode()) for n, v in headers]
    index: dict[bytes, bytes] = {}
    for lower, _, value in triples:
        index.setdefault(lower, value)
    return RequestHead(method, target, triples, index, http10=False, keep_alive=True, upgrade=upgrade)


def parse_head(raw: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    line, *lines = raw.decode().split("\r\n")
    return line.encode(), [tuple(item.split(": ", 1)) for item in lines if item]  # type: ignore[misc]


@pytest.mark.parametrize(
    "index, expected",
    [
        ({}, (None, False)),
        ({b"content-length": b"12"}, (12, False)),
        ({b"transfer-encoding": b"Chunked"}, (None, True)),
    ],
)
def test_framing(index: dict, expected: tuple) -> None:
    assert framing_of(index) == expected


@pytest.mark.parametrize(
    "index",
    [
        {b"content-length": b"3", b"transfer-encoding": b"chunked"},  # both: request smuggling
        {b"content-length": b"3, 3"},  # repeated (joined by the connection)
        {b"content-length": b"-1"},
        {b"transfer-encoding": b"gzip, chunked"},  # a coding the gateway would have to undo
        {b"transfer-encoding": b"chunked, chunked"},
    ],
)
def test_ambiguous_framing_is_refused(index: dict) -> None:
    with pytest.raises(BadRequest):
        framing_of(index)


def test_only_websocket_upgrades_count() -> None:
    ws = [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "x")]
    assert head(ws, upgrade=True).websocket
    assert not head([("Connection", "Upgrade"), ("Upgrade", "h2c")], upgrade=True).websocket
    assert not head(ws[1:], upgrade=True).websocket


def test_backend_request_head_follows_headers_py() -> None:
    incoming = [
        ("Host", "gw:8190"),
        ("Origin", "http://gw:8190"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "dropped because Connection names it"),
        ("Keep-Alive", "timeout=5"),
        ("X-Comfy-Backend", "comfyui"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Comfy-User", "ana"),
        ("Accept", "*/*"),
        ("Content-Length", "5"),
        ("Expect", "100-continue"),
    ]
    url = URL("http://127.0.0.1:8188/base/")
    raw = wire.backend_request_head(
        head(incoming, method="POST", target=b"/prompt"),
        wire.BackendWire("comfyui", url),
        b"/prompt",
        client_ip=b"127.0.0.2",
        drop_headers=frozenset({b"x-comfy-backend"}),
    )
    line, got = parse_head(raw[:-2])
    assert line == b"POST /base/prompt HTTP/1.1"
    reference = upstream_request_headers(
        CIMultiDictProxy(CIMultiDict(incoming)), backend_url=url, client_ip="127.0.0.2", scheme="http",
        drop=("X-Comfy-Backend",),
    )
    reference.popall("Expect", None)  # the fast server answers 100-continue itself
    reference["Content-Length"] = "5"  # the aiohttp client adds this; the fast path writes it
    assert sorted((k.lower(), v) for k, v in got) == sorted((k.lower(), v) for k, v in reference.items())


def test_credentials_in_a_backend_url_go_as_basic_auth_and_stay_out_of_host() -> None:
    url = URL("http://alice:s%3Acret@10.0.0.5:8188")
    raw = wire.backend_request_head(
        head([("Host", "gw"), ("Authorization", "Bearer client")]), wire.BackendWire("b", url), b"/x", client_ip=None,
        drop_headers=frozenset({b"x-comfy-backend"}),
    )
    _, got = parse_head(raw[:-2])
    assert dict(got)["Host"] == "10.0.0.5:8188"
    assert [v for k, v in got if k == "Authorization"] == ["Basic YWxpY2U6czpjcmV0"]  # alice:s:cret


def test_requests_for_the_app_keep_host_origin_and_selection() -> None:
    incoming = [("Host", "gw"), ("Origin", "http://gw"), ("X-Comfy-Backend", "a"), ("Connection", "close"), ("TE", "x")]
    line, got = parse_head(wire.app_request_head(head(incoming), client_ip=b"1.2.3.4")[:-2])
    assert line == b"GET /x?a=1 HTTP/1.1"
    assert dict(got) == {
        "Host": "gw",
        "Origin": "http://gw",
        "X-Comfy-Backend": "a",
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "gw",
    }


def test_response_headers_follow_headers_py() -> None:
    upstream = [
        (b"Content-Type", b"image/png"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"hop"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Date", b"yesterday"),
        (b"Server", b"Python/3.11 aiohttp"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"3"),
    ]
    _, got = parse_head(b"HTTP/1.1 200 OK\r\n" + wire.response_headers([(n.lower(), n, v) for n, v in upstream]))
    reference = client_response_headers(CIMultiDictProxy(CIMultiDict((k.decode(), v.decode()) for k, v in upstream)))
    assert got == list(reference.items())


def test_requests_for_the_app_without_host_get_one() -> None:
    line, got = parse_head(wire.app_request_head(head([]), client_ip=None)[:-2])
    assert line == b"GET /x?a=1 HTTP/1.1" and dict(got)["Host"] == "localhost"


def test_gateway_answers_have_the_aiohttp_shapes() -> None:
    exchange = Exchange("GET", "/x", "other")
    exchange.source = "header"
    answer = outcome.error_answer(BadRequest("nope", details="x"), exchange)
    raw = wire.answer_of(answer, keep_alive=False, http10=False)
    head_part, body = raw.split(b"\r\n\r\n", 1)
    assert head_part.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Type: application/json; charset=utf-8" in head_part and b"Connection: close" in head_part
    assert b"X-Comfy-Route: header" in head_part and b"Content-Length: %d" % len(body) in head_part
    assert body == b'{"error": {"type": "bad_request", "message": "nope", "details": "x", "extra_info": {}}}'


class _Parsed:
    """What a RequestReader tells its connection, kept."""

    accepting = True

    def __init__(self) -> None:
        self.requests: list = []

    def head_started(self) -> None: ...

    def request_parsed(self, request) -> None:  # type: ignore[no-untyped-def]
        self.requests.append(request)

    def body_received(self, request) -> None: ...  # type: ignore[no-untyped-def]

    def message_done(self) -> None: ...


def parsed_heads(raw: bytes, **limits: int) -> list[RequestHead]:
    from gateway.datapath.fast.limits import Limits
    from gateway.datapath.fast.reader import RequestReader

    events = _Parsed()
    RequestReader(events, Limits(**limits)).feed(raw)
    return [request.head for request in events.requests]


def test_a_head_key_is_equal_exactly_when_every_byte_of_the_head_and_the_address_are() -> None:
    base = b"GET /history/p1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\n"
    variants = [
        base,
        base.replace(b"Bearer t", b"Bearer u"),
        base.replace(b"Authorization", b"authorization"),  # case is the client's: kept apart, never equal
        base.replace(b"/p1", b"/p2"),
        base.replace(b"GET", b"HEAD"),
        base.replace(b"Host: h\r\n", b"Host: h\r\nX-Comfy-Backend: a\r\n"),
    ]
    heads = [parsed_heads(raw)[0] for raw in variants]
    for head_ in heads:
        head_.client_ip = "203.0.113.7"
    keys = [head_.head_key for head_ in heads]
    assert len(set(keys)) == len(keys)
    again = parsed_heads(base + base + base)
    for head_, address in zip(again, ("203.0.113.7", "203.0.113.7", "198.51.100.1"), strict=True):
        head_.client_ip = address  # as the dispatcher sets it, before the key is asked for
    assert again[0].head_key == again[1].head_key == keys[0]
    assert again[2].head_key != keys[0]


def test_a_head_larger_than_the_bound_has_no_key() -> None:
    small = b"GET /queue HTTP/1.1\r\nHost: h\r\n\r\n"
    large = b"GET /queue HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 5000 + b"\r\n\r\n"
    assert parsed_heads(small)[0].head_key is not None
    assert parsed_heads(large)[0].head_key is None
    assert parsed_heads(small, max_kept_head_bytes=16)[0].head_key is None


def test_a_released_head_holds_no_header_and_gives_no_key() -> None:
    """A WebSocket's head once its socket is open (ClientConnection.become_tunnel): let go, never keyed."""
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head_ = parsed_heads(upgrade)[0]
    assert head_.websocket and head_.head_key is not None
    head_.release()
    assert head_.headers == [] and head_.index == {} and head_.head_key is None
    assert head_.path == "/ws" and head_.websocket  # what the tunnel's record still reads


_PART = st.binary(max_size=12)
_HEAD = st.tuples(
    st.sampled_from(["GET", "POST"]),
    _PART,
    st.none() | st.sampled_from(["127.0.0.1", "::1", ""]),
    st.lists(st.tuples(_PART, _PART), max_size=4),
)


@given(_HEAD, _HEAD)
def test_head_keys_are_equal_exactly_when_the_heads_are(one: tuple, other: tuple) -> None:
    """Whatever bytes the parts hold (LF included, which the parser refuses, so a key must not rely on it)."""

    def head(method: str, target: bytes, client_ip: str | None, headers: list[tuple[bytes, bytes]]) -> RequestHead:
        made = RequestHead(method, target, [(name.lower(), name, value) for name, value in headers], {},
                           http10=False, keep_alive=True, upgrade=False, keyed=True)
        made.client_ip = client_ip
        return made

    assert (head(*one).head_key == head(*other).head_key) == (one == other)

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.core.headers import client_response_headers, instance_of, instance_value, upstream_request_headers
from gateway.core.origins import same_origin


def _proxy(pairs):
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_request_headers_strip_hop_by_hop_and_fix_host_origin():
    incoming = _proxy(
        [
            ("Host", "gw.example:8190"),
            ("Origin", "http://gw.example:8190"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "12"),
            ("X-Comfy-Backend", "comfyui"),
            ("comfy-user", "ana"),
            ("Cookie", "a=b"),
        ]
    )
    out = upstream_request_headers(
        incoming,
        backend_url=URL("http://127.0.0.1:8188"),
        client_ip="10.1.2.3",
        scheme="http",
        drop=("X-Comfy-Backend",),
    )
    assert out["Host"] == "127.0.0.1:8188"
    assert out["Origin"] == "http://127.0.0.1:8188"
    assert out["X-Forwarded-For"] == "10.1.2.3"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "gw.example:8190"
    assert out["comfy-user"] == "ana" and out["Cookie"] == "a=b"
    for gone in ("Connection", "X-Secret-Hop", "Keep-Alive", "Transfer-Encoding", "Content-Length", "X-Comfy-Backend"):
        assert gone not in out


def test_forwarded_for_is_appended():
    incoming = _proxy([("Host", "h"), ("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-Proto", "https")])
    out = upstream_request_headers(incoming, backend_url=URL("https://b.example"), client_ip="2.2.2.2", scheme="http")
    assert out["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["Host"] == "b.example"


def test_response_headers_drop_hop_by_hop_and_server_set_ones():
    upstream = _proxy(
        [
            ("Content-Type", "image/png"),
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked"),
            ("Date", "x"),
            ("Server", "Python/3.11 aiohttp"),
            ("ETag", '"1"'),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )
    out = client_response_headers(upstream)
    assert out["Content-Type"] == "image/png" and out["ETag"] == '"1"'
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    for gone in ("Content-Length", "Transfer-Encoding", "Date", "Server"):
        assert gone not in out


@pytest.mark.parametrize(
    ("host", "origin", "same"),
    [
        ("127.0.0.1:8188", "http://127.0.0.1:8188", True),
        ("127.0.0.1:8188", "http://evil.example", False),
        ("127.0.0.1:8188", "http://127.0.0.1:9000", False),
        ("localhost:9000", "http://localhost:9000", True),
        ("LocalHost.:9000", "http://localhost:9000", True),
        ("localhost.:9000", "http://evil.example", False),
        ("gateway.example:9000", "http://other.example", False),
        ("gateway.example", "https://gateway.example", True),
        ("gateway.example:443", "https://GATEWAY.example.", True),
        ("gateway.example:80", "https://gateway.example", False),
        ("[::1]:8190", "http://[::1]:8190", True),
        ("[::1]:8190", "http://evil.example", False),
        ("127.0.0.1:8188", "null", False),
        ("127.0.0.1:8188", "http://127.0.0.1:8188/path", False),
        ("", "http://evil.example", False),
        ("[::1", "http://[::1]", False),
        ("127.0.0.1:8188", "http://127.0.0.1:99999", False),
    ],
)
def test_same_origin_compares_the_parsed_normalised_host(host, origin, same):
    assert same_origin(origin, host) is same


# --- the gateway's instance header ------------------------------------------------------------------------------


@given(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";="), min_size=1),
    st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True),
)
def test_the_instance_value_reads_back(instance: str, backend: str) -> None:
    assert instance_of(instance_value(instance, backend)) == (instance, backend)


@given(st.text())
def test_any_instance_header_a_client_sends_is_read_without_failing(value: str) -> None:
    instance, backend = instance_of(value)
    assert isinstance(instance, str) and (backend is None or isinstance(backend, str))

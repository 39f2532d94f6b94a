"""Where a backend URL really goes: every spelling of one server compared as one (config/addresses.py), the
rules that refuse two backends on one server or a backend at the gateway's own address (config/rules.py), and
the start-up resolution of host names (backends/reach.py)."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.backends.reach import is_local, reach_problems
from gateway.config.addresses import LOOPBACK, ServerAddress, canonical_host, ipv4_numeric, server_address
from gateway.config.settings import Settings
from tests.ports import free_port

P = 18189


# --- the normaliser -----------------------------------------------------------------------------------------------

LOOPBACK_SPELLINGS = [
    f"http://localhost:{P}",
    f"http://LocalHost.:{P}",
    f"http://0.0.0.0:{P}",
    f"http://127.1:{P}",
    f"http://2130706433:{P}",
    f"http://0x7f.1:{P}",
    f"http://0x7F000001:{P}",
    f"http://0177.0.0.1:{P}",
    f"http://127.0.1:{P}",
    f"http://127.0.0.1:{P}/api",
    f"http://127.0.0.1:{P}/",
    f"http://[::1]:{P}",
    f"http://[0:0:0:0:0:0:0:1]:{P}",
    f"http://[::]:{P}",
    f"http://[::ffff:127.0.0.1]:{P}",
    f"http://[::ffff:7f00:1]:{P}",
    f"HTTP://127.0.0.1:{P}",
]


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_one_server(url: str) -> None:
    assert server_address(url) == ServerAddress(LOOPBACK, P)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("http://gpu-box", "http://gpu-box:80"),
        ("https://gpu-box", "https://GPU-BOX.:443/"),
        ("http://10.0.0.5:8188", "http://167772165:8188"),
        ("http://10.0.0.5:8188", "http://[::ffff:10.0.0.5]:8188/api/"),
        ("http://[2001:db8::1]:8188", "http://[2001:0db8:0:0::1]:8188"),
    ],
)
def test_equal_servers(first: str, second: str) -> None:
    assert server_address(first) == server_address(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("http://gpu:8188", "http://gpu:8189"),
        ("http://gpu", "https://gpu"),
        ("http://127.0.0.1:8188", "http://127.0.0.2:8188"),
        ("http://10.0.0.5:8188", "http://10.0.0.6:8188"),
        ("http://gpu-a:8188", "http://gpu-b:8188"),
    ],
)
def test_other_servers(first: str, second: str) -> None:
    assert server_address(first) != server_address(second)


@pytest.mark.parametrize("text", ["", "1.2.3.4.5", "256.1.1.1", "1.16777216", "08", "0x", "1..2", "a.b", "-1", "１"])
def test_what_is_not_a_numeric_ipv4(text: str) -> None:
    # "0x" alone is 0 to inet_aton; the rest are not addresses (so they stay names)
    assert (ipv4_numeric(text) is None) is (text != "0x")


@given(st.ip_addresses(v=4))
def test_every_numeric_form_of_an_ipv4_address_reads_back(ip: ipaddress.IPv4Address) -> None:
    n = int(ip)
    b = ip.packed
    forms = [
        str(ip),
        str(n),
        hex(n),
        f"{b[0]}.{b[1]}.{(b[2] << 8) | b[3]}",
        f"{b[0]}.{(b[1] << 16) | (b[2] << 8) | b[3]}",
        ".".join(f"0{byte:o}" if byte else "0" for byte in b),
        ".".join(hex(byte) for byte in b),
    ]
    for form in forms:
        assert ipv4_numeric(form) == ip, form
        mapped = f"[::ffff:{ip}]"
        assert canonical_host(form) == canonical_host(mapped)


@given(
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,2}", fullmatch=True),
    ),
    port=st.integers(1, 65535),
    path=st.sampled_from(["", "/", "/api", "/api/", "/a/b"]),
    upper=st.booleans(),
    dot=st.booleans(),
)
def test_spellings_of_one_url_are_one_server(host: str, port: int, path: str, upper: bool, dot: bool) -> None:
    plain = server_address(f"http://{host}:{port}")
    spelled = host.upper() if upper else host
    if dot and not spelled.startswith("[") and ipv4_numeric(host) is None:
        spelled += "."
    assert server_address(f"HTTP://{spelled}:{port}{path}") == plain
    if port == 80:
        assert server_address(f"http://{spelled}{path}") == plain
    assert server_address(f"http://{host}:{port % 65535 + 1}") != plain


@given(st.text(max_size=40))
def test_the_normaliser_never_fails_on_junk(text: str) -> None:
    try:
        address = server_address(text)
    except ValueError:
        return
    assert address.port > 0 and address.host == canonical_host(address.host)


# --- the rules: refused at start-up, whatever the spelling ----------------------------------------------------------

ALIASES_OF_ONE_URL = [
    f"http://localhost:{P}",
    f"http://0.0.0.0:{P}",
    f"http://127.1:{P}",
    f"http://2130706433:{P}",
    f"http://127.0.0.1:{P}/api",
    f"http://[::1]:{P}",
    f"http://[::ffff:127.0.0.1]:{P}",
]


@pytest.mark.parametrize("alias", ALIASES_OF_ONE_URL)
def test_a_second_backend_on_the_same_server_is_refused_naming_both_and_the_address(alias: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Settings(
            backends={"kerniegen": {"url": f"http://127.0.0.1:{P}"}, "comfyui": {"url": alias}},
            default_backend="kerniegen",
        )
    assert f"backends.comfyui.url and backends.kerniegen.url both reach the same server, 127.0.0.1:{P}" in str(
        excinfo.value
    )


def test_default_port_80_and_an_explicit_80_are_one_server() -> None:
    with pytest.raises(ValidationError, match="both reach the same server, gpu-box:80"):
        Settings(
            backends={"a": {"url": "http://gpu-box"}, "b": {"url": "http://GPU-box:80/"}},
            default_backend="a",
        )


@pytest.mark.parametrize(
    ("listen_host", "backend_url"),
    [
        ("127.0.0.1", f"http://localhost:{P}"),
        ("127.0.0.1", f"http://127.1:{P}"),
        ("0.0.0.0", f"http://127.0.0.1:{P}/api"),
        ("0.0.0.0", f"http://[::1]:{P}"),
        ("::", f"http://2130706433:{P}"),
        ("localhost", f"http://0.0.0.0:{P}"),
    ],
)
def test_a_backend_at_the_gateways_own_address_is_refused(listen_host: str, backend_url: str) -> None:
    with pytest.raises(ValidationError, match="reaches the gateway itself"):
        Settings(
            listen_host=listen_host,
            listen_port=P,
            backends={"kerniegen": {"url": backend_url}},
            default_backend="kerniegen",
        )


def test_a_backend_on_another_port_of_this_host_is_allowed() -> None:
    settings = Settings(
        listen_host="0.0.0.0", listen_port=P, backends={"k": {"url": f"http://127.0.0.1:{P + 1}"}}, default_backend="k"
    )
    assert settings.backends["k"].url.endswith(str(P + 1))


# --- start-up resolution ------------------------------------------------------------------------------------------


def _a_name_for_this_host() -> tuple[str, str] | None:
    """This machine's host name and an address it resolves to, when it resolves."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return (name, str(infos[0][4][0])) if infos and canonical_host(name) == name.lower() else None


async def test_a_host_name_and_its_address_are_one_server() -> None:
    found = _a_name_for_this_host()
    if found is None:
        pytest.skip("this machine's host name does not resolve")
    name, address = found
    shown = f"[{address}]" if ":" in address else address
    problems = await reach_problems(
        {"a": f"http://{name}:{P}", "b": f"http://{shown}:{P}/api"}, "127.0.0.1", 0, timeout_seconds=2
    )
    assert [str(p) for p in problems] == [
        f"backends.a.url and backends.b.url both reach the same server, {server_address(f'http://{shown}:{P}')}"
    ]


async def test_a_host_name_for_the_gateway_itself_is_refused_when_listening_everywhere() -> None:
    found = _a_name_for_this_host()
    if found is None:
        pytest.skip("this machine's host name does not resolve")
    name, _ = found
    problems = await reach_problems({"a": f"http://{name}:{P}"}, "0.0.0.0", P, timeout_seconds=2)
    assert len(problems) == 1 and problems[0].loop and problems[0].backends == ("a",)
    assert "backends.a.url reaches the gateway itself" in str(problems[0])


async def test_a_gateway_listening_on_a_host_name_is_reached_by_that_names_address() -> None:
    found = _a_name_for_this_host()
    if found is None:
        pytest.skip("this machine's host name does not resolve")
    name, address = found
    shown = f"[{address}]" if ":" in address else address
    problems = await reach_problems({"a": f"http://{shown}:{P}"}, name, P, timeout_seconds=2)
    assert [p.loop for p in problems] == [True]
    assert await reach_problems({"a": f"http://{shown}:{P + 1}"}, name, P, timeout_seconds=2) == []


async def test_a_name_that_does_not_resolve_is_no_error() -> None:
    problems = await reach_problems(
        {"a": "http://no-such-host.invalid:8188", "b": "http://127.0.0.1:8188"}, "0.0.0.0", 8190, timeout_seconds=2
    )
    assert problems == []


def test_local_addresses() -> None:
    assert is_local(LOOPBACK) and is_local("127.0.0.9") and is_local("::1")
    assert not is_local("192.0.2.1")  # TEST-NET-1: never this host's
    assert not is_local("no-such-host.invalid")


# --- `comfy-gateway serve` refuses them: one line, exit 2 ----------------------------------------------------------

REFUSAL = "comfy-gateway: refusing to start: "


def serve(tmp_path: Path, config_text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.toml"
    store = f'[store]\npath = "{tmp_path / "g.sqlite3"}"\n'
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nlog_batch_seconds = 0\n{config_text}{store}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


def refusal_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if REFUSAL in line] == [lines[-1]], result.stderr
    return lines[-1].removeprefix(REFUSAL)


def test_serve_refuses_a_backend_whose_host_name_is_the_gateway_itself(tmp_path: Path) -> None:
    found = _a_name_for_this_host()
    if found is None or not is_local(canonical_host(found[1])):
        pytest.skip("this machine's host name does not resolve to one of its addresses")
    name, _ = found
    port = free_port()
    result = serve(
        tmp_path,
        f'listen_host = "0.0.0.0"\nlisten_port = {port}\ndefault_backend = "k"\n[backends.k]\nurl = "http://{name}:{port}"\n',
    )
    assert refusal_of(result).startswith("backends.k.url reaches the gateway itself at ")
    assert refusal_of(result).endswith(f":{port}: every request would loop back to it")


def test_serve_refuses_a_host_name_beside_its_address(tmp_path: Path) -> None:
    found = _a_name_for_this_host()
    if found is None:
        pytest.skip("this machine's host name does not resolve")
    name, address = found
    shown = f"[{address}]" if ":" in address else address
    port = free_port()
    result = serve(
        tmp_path,
        f'listen_port = {free_port()}\ndefault_backend = "a"\n[backends.a]\nurl = "http://{name}:{port}"\n'
        f'[backends.b]\nurl = "http://{shown}:{port}/api"\n',
    )
    assert refusal_of(result) == (
        f"backends.a.url and backends.b.url both reach the same server, {server_address(f'http://{shown}:{port}')}"
    )


def test_serve_refuses_a_numeric_alias_of_its_own_address_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    result = serve(
        tmp_path,
        f'listen_port = {port}\ndefault_backend = "k"\n[backends.k]\nurl = "http://2130706433:{port}"\n'
        "embedded = true\n",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "backends.k.url 'http://2130706433:" in result.stderr and "reaches the gateway itself" in result.stderr

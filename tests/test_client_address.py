"""Where a request to the app came from (datapath/aio/facts.client_ip_of), on real sockets: a peer's own address,
except on the app's private listener, whose peer is the fast path and whose client is the one the fast path
appended to X-Forwarded-For. On a platform without unix sockets that listener is a loopback port; taking its
peer's address there would make every client look local (and local clients may write the gateway's settings)."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.datapath.aio.facts import client_ip_of
from gateway.datapath.aio.keys import RELAY_LISTENERS
from gateway.serve import listen_privately

CLAIMED = "X-Forwarded-For"


async def seen_from(request: web.Request) -> web.Response:
    return web.Response(text=str(client_ip_of(request)))


@pytest.fixture
async def runner():
    app = web.Application()
    app[RELAY_LISTENERS] = set()
    app.router.add_get("/who", seen_from)
    runner = web.AppRunner(app)
    await runner.setup()
    yield runner
    await runner.cleanup()


async def ask(url: str, forwarded: str | None) -> str:
    async with aiohttp.ClientSession() as http, http.get(
        url + "/who", headers={CLAIMED: forwarded} if forwarded else {}
    ) as answer:
        return await answer.text()


async def test_on_a_public_listener_the_peer_is_the_client_whatever_it_claims(runner) -> None:
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[-1][:2]
    assert await ask(f"http://{host}:{port}", "198.51.100.7") == "127.0.0.1"
    assert await ask(f"http://{host}:{port}", None) == "127.0.0.1"


async def test_on_the_private_loopback_listener_the_client_is_the_last_one_forwarded(runner, monkeypatch) -> None:
    monkeypatch.delattr(socket, "AF_UNIX", raising=False)  # a platform without unix sockets
    host, port = await listen_privately(runner, Path("unused"))
    assert runner.app[RELAY_LISTENERS] == {(host, port)}
    url = f"http://{host}:{port}"
    assert await ask(url, "203.0.113.5, 198.51.100.7") == "198.51.100.7"  # what the client claimed comes first
    assert await ask(url, None) == "None"  # not named: unknown, never the relay's own address
    public = web.TCPSite(runner, "127.0.0.1", 0)  # the same app on another port keeps its peers' addresses
    await public.start()
    other_host, other_port = runner.addresses[-1][:2]
    assert await ask(f"http://{other_host}:{other_port}", "198.51.100.7") == "127.0.0.1"


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="unix sockets only")
async def test_on_the_private_unix_socket_the_client_is_the_last_one_forwarded(runner, tmp_path) -> None:
    path = await listen_privately(runner, tmp_path / "app.sock")
    assert runner.app[RELAY_LISTENERS] == set()
    connector = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=connector) as http, http.get(
        "http://app/who", headers={CLAIMED: "203.0.113.5, 198.51.100.7"}
    ) as answer:
        assert await answer.text() == "198.51.100.7"

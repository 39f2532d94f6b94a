"""Credentials, ownership, origins, hosts and allowances through a running gateway, on both data paths: who may
change routing, whose prompts a user sees, which pages may call the gateway, and what one client may take."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.recording_backend import RecordingBackend

ADMIN = "admin-token-0123456789abcdef"
ANA = "ana-token-0123456789abcdef"
BO = "bo-token-0123456789abcdef"
TOKENS = {"ana": ANA, "bo": BO}

Start = Callable[..., Awaitable[Any]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(
    method: str, url: str, *, headers: dict[str, str] | None = None, json: Any = None, cookies: dict | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession(cookies=cookies) as session:
        async with session.request(method, url, headers=headers or {}, json=json) as r:
            text = await r.text()
            try:
                body: Any = await r.json(content_type=None) if text else None
            except ValueError:
                body = text
            return r.status, body, dict(r.headers)


async def gateway_with(start_backend: Start, start_gateway: Start, **settings: Any) -> tuple[Any, RecordingBackend]:
    backend: RecordingBackend = await start_backend("comfyui")
    running = await start_gateway({"comfyui": backend.url}, **settings)
    return running, backend


# --- the admin API ---------------------------------------------------------------------------------------------


async def test_without_an_admin_token_writes_are_taken_from_this_host(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(start_backend, start_gateway)
    status, body, _ = await call("PUT", f"{gateway.url}/gateway/preferences/ana", json={"backend": "comfyui"})
    assert (status, body) == (200, {"user": "ana", "backend": "comfyui"})


async def test_the_admin_token_guards_every_write_and_the_owner_reads(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(start_backend, start_gateway, security={"admin_token": ADMIN})
    pref = f"{gateway.url}/gateway/preferences/ana"
    for headers in ({}, bearer("wrong-token-0123456789abcdef"), {"Authorization": f"Basic {ADMIN}"}):
        status, body, answer_headers = await call("PUT", pref, headers=headers, json={"backend": "comfyui"})
        assert status == 401, headers
        assert body["error"]["type"] == "unauthorized"
        assert answer_headers["WWW-Authenticate"].startswith("Bearer")
        assert ADMIN not in str(body)
        assert (await call("DELETE", pref, headers=headers))[0] == 401
    status, body, _ = await call("PUT", pref, headers=bearer(ADMIN), json={"backend": "comfyui"})
    assert (status, body) == (200, {"user": "ana", "backend": "comfyui"})
    # Reads that show no owner stay open; the prompt read shows the owner and needs the token.
    assert (await call("GET", pref))[0] == 200
    assert (await call("GET", f"{gateway.url}/gateway/backends"))[0] == 200
    status, _, _ = await call("POST", f"{gateway.url}/prompt", json={"prompt": {}, "prompt_id": "p-1"})
    assert status == 200
    assert (await call("GET", f"{gateway.url}/gateway/prompts/p-1"))[0] == 401
    status, body, _ = await call("GET", f"{gateway.url}/gateway/prompts/p-1", headers=bearer(ADMIN))
    assert status == 200 and body["backend"] == "comfyui"
    # The liveness, readiness and metrics routes stay open for probes and scrapers.
    for path in ("/gateway/health", "/metrics"):
        assert (await call("GET", gateway.url + path))[0] == 200


async def test_the_admin_api_takes_no_write_from_another_origin(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(
        start_backend,
        start_gateway,
        security={"admin_token": ADMIN, "allowed_origins": ["http://app.example"]},
    )
    for origin in ("http://app.example", "http://evil.example"):
        status, body, _ = await call(
            "PUT",
            f"{gateway.url}/gateway/preferences/ana",
            headers={"Origin": origin, **bearer(ADMIN)},
            json={"backend": "comfyui"},
        )
        assert status == 403, origin
        assert body["error"]["type"] in ("forbidden", "forbidden_origin")


# --- API tokens ---------------------------------------------------------------------------------------------------


@pytest.fixture
async def tokens_on(start_backend, start_gateway) -> tuple[Any, RecordingBackend]:
    return await gateway_with(start_backend, start_gateway, security={"admin_token": ADMIN, "api_tokens": TOKENS})


async def test_with_api_tokens_every_comfyui_route_needs_one(tokens_on) -> None:
    gateway, _ = tokens_on
    for method, path in (("GET", "/queue"), ("POST", "/prompt"), ("GET", "/history/x"), ("GET", "/object_info")):
        payload = {"prompt": {}} if method == "POST" else None
        status, body, headers = await call(method, gateway.url + path, json=payload)
        assert status == 401, path
        assert body["error"]["type"] == "unauthorized"
        assert "WWW-Authenticate" in headers
    status, body, _ = await call("GET", f"{gateway.url}/queue", headers=bearer("not-a-token-0123456789abcdef"))
    assert status == 401


async def test_a_token_names_its_user_in_a_header_the_query_or_a_cookie(tokens_on) -> None:
    gateway, backend = tokens_on
    await call("PUT", f"{gateway.url}/gateway/preferences/ana", headers=bearer(ADMIN), json={"backend": "comfyui"})
    sent = [
        {"headers": bearer(ANA)},
        {"query": f"?token={ANA}"},
        {"cookies": {"comfy_gateway_token": ANA}},
    ]
    for way in sent:
        url = f"{gateway.url}/object_info{way.get('query', '')}"
        status, _, headers = await call("GET", url, headers=way.get("headers"), cookies=way.get("cookies"))
        assert status == 200, way
        assert headers["X-Comfy-Route"] == "preference", way  # ana's stored preference: the token named her
        seen = backend.last("/object_info")
        assert "Authorization" not in seen.headers and "token=" not in seen.raw_path  # the gateway's, not theirs


async def test_a_user_header_naming_another_user_than_the_token_is_refused(tokens_on) -> None:
    gateway, _ = tokens_on
    status, body, _ = await call("GET", f"{gateway.url}/queue", headers={**bearer(ANA), "comfy-user": "bo"})
    assert status == 403 and body["error"]["type"] == "forbidden"
    status, _, _ = await call("GET", f"{gateway.url}/queue", headers={**bearer(ANA), "comfy-user": "ana"})
    assert status == 200


async def test_the_web_page_opened_with_a_token_gets_it_as_a_cookie(tokens_on) -> None:
    gateway, _ = tokens_on
    status, _, headers = await call("GET", f"{gateway.url}/?token={ANA}")
    assert status == 200
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"comfy_gateway_token={ANA};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_a_websocket_needs_a_token_too(tokens_on) -> None:
    gateway, _ = tokens_on
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{gateway.url}/ws?clientId=c1")
        assert refused.value.status == 401
        async with session.ws_connect(f"{gateway.url}/ws?clientId=c1&token={ANA}") as ws:
            message = await asyncio.wait_for(ws.receive_json(), 5)
            assert message["type"] == "status"


async def test_view_takes_the_token_in_its_query_for_img_tags(tokens_on) -> None:
    gateway, backend = tokens_on
    backend.files[("output", "", "a.png")] = b"\x89PNG-bytes"
    assert (await call("GET", f"{gateway.url}/view?filename=a.png&type=output"))[0] == 401
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/view?filename=a.png&type=output&token={ANA}") as r:
            assert r.status == 200 and await r.read() == b"\x89PNG-bytes"
    assert "token=" not in backend.last("/view").raw_path


async def test_self_service_lets_users_set_only_their_own_preference(tokens_on) -> None:
    gateway, _ = tokens_on
    own = f"{gateway.url}/gateway/preferences/ana"
    assert (await call("PUT", own, headers=bearer(ANA), json={"backend": "comfyui"}))[0] == 200
    assert (await call("GET", own, headers=bearer(ANA)))[0] == 200
    other = f"{gateway.url}/gateway/preferences/bo"
    assert (await call("PUT", other, headers=bearer(ANA), json={"backend": "comfyui"}))[0] == 403
    assert (await call("GET", other, headers=bearer(ANA)))[0] == 403
    assert (await call("DELETE", own, headers=bearer(ANA)))[0] == 200


async def test_without_self_service_only_the_admin_sets_preferences(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(
        start_backend,
        start_gateway,
        security={"admin_token": ADMIN, "api_tokens": TOKENS, "allow_self_service": False},
    )
    own = f"{gateway.url}/gateway/preferences/ana"
    assert (await call("PUT", own, headers=bearer(ANA), json={"backend": "comfyui"}))[0] == 403
    assert (await call("PUT", own, headers=bearer(ADMIN), json={"backend": "comfyui"}))[0] == 200
    assert (await call("GET", own, headers=bearer(ANA)))[0] == 200  # reading one's own stays allowed


# --- ownership ----------------------------------------------------------------------------------------------------


async def test_another_users_prompt_id_cannot_be_taken_over(start_backend, start_gateway) -> None:
    gateway, backend = await gateway_with(start_backend, start_gateway)
    url = f"{gateway.url}/prompt"
    assert (await call("POST", url, headers={"comfy-user": "ana"}, json={"prompt": {}, "prompt_id": "p-7"}))[0] == 200
    status, body, _ = await call("POST", url, headers={"comfy-user": "bo"}, json={"prompt": {}, "prompt_id": "p-7"})
    assert status == 409
    assert body["error"]["type"] == "prompt_id_taken" and "message" in body["error"]
    assert len([s for s in backend.seen if s.raw_path == "/prompt"]) == 1  # never reached the backend
    # The owner may send it again, as with ComfyUI itself.
    assert (await call("POST", url, headers={"comfy-user": "ana"}, json={"prompt": {}, "prompt_id": "p-7"}))[0] == 200
    status, body, _ = await call("GET", f"{gateway.url}/gateway/prompts/p-7")
    assert body["user"] == "ana"


async def test_with_tokens_another_users_prompt_is_not_found(tokens_on) -> None:
    gateway, backend = tokens_on
    submission = {"prompt": {}, "prompt_id": "a1"}
    status, _, _ = await call("POST", f"{gateway.url}/prompt", headers=bearer(ANA), json=submission)
    assert status == 200
    backend.history["a1"] = {"prompt": [], "outputs": {}, "status": {"completed": True}}
    assert (await call("GET", f"{gateway.url}/history/a1", headers=bearer(ANA)))[1] != {}
    status, body, _ = await call("GET", f"{gateway.url}/history/a1", headers=bearer(BO))
    assert status == 404 and body["error"]["type"] == "not_found"
    status, _, _ = await call("POST", f"{gateway.url}/queue", headers=bearer(BO), json={"delete": ["a1"]})
    assert status == 404
    status, _, _ = await call("POST", f"{gateway.url}/interrupt", headers=bearer(BO), json={"prompt_id": "a1"})
    assert status == 404
    assert not [s for s in backend.seen if s.raw_path in ("/queue", "/interrupt") and s.method == "POST"]
    status, body, _ = await call("GET", f"{gateway.url}/history/a1", headers=bearer(ADMIN))
    assert status == 200 and "a1" in body
    status, _, _ = await call("POST", f"{gateway.url}/prompt", headers=bearer(BO), json=submission)
    assert status == 409


# --- origins, CORS and hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost.:{port}", "LocalHost.:{port}", "127.0.0.1:{port}", "gateway.example"])
async def test_a_foreign_page_cannot_submit_however_the_host_is_spelled(start_backend, start_gateway, host) -> None:
    gateway, backend = await gateway_with(start_backend, start_gateway)
    port = gateway.url.rsplit(":", 1)[1]
    headers = {"Host": host.format(port=port), "Origin": "http://evil.example"}
    status, body, _ = await call("POST", f"{gateway.url}/prompt", headers=headers, json={"prompt": {}})
    assert status == 403 and body["error"]["type"] == "forbidden_origin"
    assert not [s for s in backend.seen if s.raw_path == "/prompt"]


async def test_an_allowed_origin_gets_cors_answers(start_backend, start_gateway) -> None:
    gateway, backend = await gateway_with(
        start_backend, start_gateway, security={"allowed_origins": ["https://App.example:443"]}
    )
    status, body, headers = await call(
        "OPTIONS",
        f"{gateway.url}/prompt",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-comfy-backend, bad header, x(y)",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "content-type, x-comfy-backend"
    assert not [s for s in backend.seen if s.method == "OPTIONS"]  # the gateway answers preflights itself
    status, _, headers = await call("GET", f"{gateway.url}/queue", headers={"Origin": "https://app.example"})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "https://app.example" and headers["Vary"] == "Origin"
    assert "X-Comfy-Backend" in headers["Access-Control-Expose-Headers"]
    # An error is readable by the page too.
    status, _, headers = await call(
        "GET", f"{gateway.url}/queue", headers={"Origin": "https://app.example", "X-Comfy-Backend": "nope"}
    )
    assert status == 400 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, _, headers = await call("GET", f"{gateway.url}/queue", headers={"Origin": "https://other.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


async def test_allowed_hosts_refuse_a_rebound_name(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(start_backend, start_gateway, security={"allowed_hosts": ["127.0.0.1"]})
    port = gateway.url.rsplit(":", 1)[1]
    status, body, _ = await call("GET", f"{gateway.url}/queue", headers={"Host": f"attacker.example:{port}"})
    assert status == 400 and body["error"]["type"] == "host_not_allowed"
    assert (await call("GET", f"{gateway.url}/gateway/backends", headers={"Host": "attacker.example"}))[0] == 400
    assert (await call("GET", f"{gateway.url}/queue"))[0] == 200
    assert (await call("GET", f"{gateway.url}/gateway/health", headers={"Host": "10.1.2.3"}))[0] == 200


# --- allowances ---------------------------------------------------------------------------------------------------


async def test_prompt_rate_limit_is_a_429_with_retry_after_per_client(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(
        start_backend,
        start_gateway,
        security={"api_tokens": TOKENS},
        limits={"prompts_per_minute": 6, "prompt_burst": 2},
    )
    statuses = []
    for _ in range(3):
        status, body, headers = await call("POST", f"{gateway.url}/prompt", headers=bearer(ANA), json={"prompt": {}})
        statuses.append(status)
    assert statuses == [200, 200, 429]
    assert body["error"]["type"] == "too_many_requests" and int(headers["Retry-After"]) >= 1
    # Another client has its own allowance, and other requests are not prompt submissions.
    assert (await call("POST", f"{gateway.url}/prompt", headers=bearer(BO), json={"prompt": {}}))[0] == 200
    assert (await call("GET", f"{gateway.url}/queue", headers=bearer(ANA)))[0] == 200


async def test_request_rate_limit_covers_every_other_route(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(
        start_backend, start_gateway, limits={"requests_per_second": 0.5, "request_burst": 3}
    )
    statuses = [(await call("GET", f"{gateway.url}/queue"))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert (await call("GET", f"{gateway.url}/gateway/backends"))[0] == 429
    assert (await call("GET", f"{gateway.url}/gateway/health"))[0] == 200


async def test_open_websockets_per_client_are_capped(start_backend, start_gateway) -> None:
    gateway, _ = await gateway_with(start_backend, start_gateway, limits={"max_websockets_per_client": 2})
    async with aiohttp.ClientSession() as session:
        first = await session.ws_connect(f"{gateway.url}/ws?clientId=a")
        second = await session.ws_connect(f"{gateway.url}/ws?clientId=b")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{gateway.url}/ws?clientId=c")
        assert refused.value.status == 429
        await first.close()
        for _ in range(100):  # the gateway sees the close, then counts the socket out
            try:
                third = await session.ws_connect(f"{gateway.url}/ws?clientId=d")
                break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("a closed socket was never counted out")
        await third.close()
        await second.close()


# --- a head sent again -----------------------------------------------------------------------------------------


async def test_a_head_sent_again_is_judged_the_same_and_still_takes_its_allowance(
    start_backend, start_gateway
) -> None:
    """The fast path keeps what the guard made of a head: a client polling with the same head gets the same
    answers, refusals included (never kept, made again), its allowance taken on every request."""
    gateway, backend = await gateway_with(
        start_backend,
        start_gateway,
        security={"api_tokens": TOKENS, "allowed_origins": ["https://app.example"]},
        limits={"requests_per_second": 0.5, "request_burst": 4},
    )
    page = {"Origin": "https://app.example", **bearer(ANA)}
    answers = [await call("GET", f"{gateway.url}/queue", headers=page) for _ in range(2)]
    assert [status for status, _, _ in answers] == [200, 200]
    assert all(headers["Access-Control-Allow-Origin"] == "https://app.example" for _, _, headers in answers)
    for _ in range(2):  # a wrong token: refused each time, and no allowance of ana's taken
        status, body, headers = await call("GET", f"{gateway.url}/queue", headers={**page, **bearer("x" * 26)})
        assert status == 401 and body["error"]["type"] == "unauthorized"
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    unknown = {**page, "X-Comfy-Backend": "nope"}
    status, body, headers = await call("GET", f"{gateway.url}/queue", headers=unknown)
    assert status == 400 and body["error"]["type"] == "unknown_backend"
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert (await call("GET", f"{gateway.url}/queue", headers=page))[0] == 200  # the fourth of the burst
    # The burst is spent: the allowance comes before the backend's name is looked at, kept head or not.
    status, body, headers = await call("GET", f"{gateway.url}/queue", headers=unknown)
    assert status == 429 and body["error"]["type"] == "too_many_requests"
    assert (await call("GET", f"{gateway.url}/queue", headers=page))[0] == 429
    assert len([s for s in backend.seen if s.raw_path == "/queue"]) == 3


async def test_a_backend_gets_the_same_head_for_a_head_sent_again_and_a_new_one_for_any_change(
    start_backend, start_gateway
) -> None:
    """The fast path keeps the head it sends a backend for a head sent again: every header of each request still
    reaches the backend as that request had it, the address the gateway adds included."""
    gateway, backend = await gateway_with(start_backend, start_gateway, security={"api_tokens": TOKENS})
    first = {**bearer(ANA), "X-Trace": "one", "X-Forwarded-For": "198.51.100.9"}
    variants = [first, first, {**first, "X-Trace": "two"}, first, {**bearer(BO), "X-Trace": "one"}]
    for headers in variants:
        assert (await call("GET", f"{gateway.url}/system_stats?x=1", headers=headers))[0] == 200
    seen = [s for s in backend.seen if s.raw_path == "/system_stats?x=1"]
    assert [s.headers.get("X-Trace") for s in seen] == ["one", "one", "two", "one", "one"]
    assert all(s.headers["X-Forwarded-For"] == "198.51.100.9, 127.0.0.1" for s in seen[:4])
    assert "X-Forwarded-For" not in variants[4] and seen[4].headers["X-Forwarded-For"] == "127.0.0.1"
    assert all("Authorization" not in s.headers for s in seen)  # a gateway token never reaches a backend

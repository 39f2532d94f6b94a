"""The gateway end to end on real sockets, with two recording backends that show exactly what reached them."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import pytest
from yarl import URL

from tests.conftest import both_data_paths

# Every test here runs on both data paths: the fast path must behave exactly as the aiohttp one.
pytestmark = both_data_paths


@pytest.fixture
async def pair(start_backend):
    return await start_backend("kerniegen"), await start_backend("comfyui")


@pytest.fixture
async def gateway(pair, start_gateway):
    a, b = pair
    return await start_gateway({"kerniegen": a.url, "comfyui": b.url})


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def served_by(http, url, **kwargs):
    async with http.get(url, **kwargs) as r:
        body = await r.json()
        return r.status, r.headers.get("X-Comfy-Backend"), r.headers.get("X-Comfy-Route"), body


# --- selection ---------------------------------------------------------------------------------------------


async def test_default_header_query_and_precedence(gateway, http):
    u = gateway.url + "/object_info"
    assert (await served_by(http, u))[1:3] == ("kerniegen", "default")
    assert (await served_by(http, u, headers={"X-Comfy-Backend": "comfyui"}))[1:3] == ("comfyui", "header")
    assert (await served_by(http, u + "?backend=comfyui"))[1:3] == ("comfyui", "query")
    both = await served_by(http, u + "?backend=comfyui", headers={"X-Comfy-Backend": "kerniegen"})
    assert both[1:3] == ("kerniegen", "header")


async def test_preference_applies_to_the_user_and_loses_to_header(gateway, http):
    async with http.put(gateway.url + "/gateway/preferences/ana", json={"backend": "comfyui"}) as r:
        assert r.status == 200
    u = gateway.url + "/system_stats"
    assert (await served_by(http, u, headers={"comfy-user": "ana"}))[1:3] == ("comfyui", "preference")
    assert (await served_by(http, u, headers={"comfy-user": "bob"}))[1:3] == ("kerniegen", "default")
    overridden = await served_by(http, u, headers={"comfy-user": "ana", "X-Comfy-Backend": "kerniegen"})
    assert overridden[1:3] == ("kerniegen", "header")
    async with http.get(gateway.url + "/gateway/preferences/ana") as r:
        assert await r.json() == {"user": "ana", "backend": "comfyui"}
    async with http.delete(gateway.url + "/gateway/preferences/ana") as r:
        assert r.status == 200
    assert (await served_by(http, u, headers={"comfy-user": "ana"}))[1:3] == ("kerniegen", "default")
    async with http.get(gateway.url + "/gateway/preferences/ana") as r:
        assert r.status == 404


async def test_unknown_backend_is_a_400_naming_the_valid_ones(gateway, pair, http):
    for kwargs in ({"headers": {"X-Comfy-Backend": "comfy"}}, {"params": {"backend": "nope"}}):
        async with http.get(gateway.url + "/queue", **kwargs) as r:
            assert r.status == 400
            assert r.content_type == "application/json"
            error = (await r.json())["error"]
            assert error["type"] == "unknown_backend"
            assert error["details"] == ["comfyui", "kerniegen"]
    async with http.put(gateway.url + "/gateway/preferences/ana", json={"backend": "gpu9"}) as r:
        assert r.status == 400 and (await r.json())["error"]["type"] == "unknown_backend"
    assert not [s for s in pair[0].seen + pair[1].seen if "/queue" in s.raw_path]


async def test_backends_listing(gateway, pair, http):
    async with http.get(gateway.url + "/gateway/backends") as r:
        body = await r.json()
    assert body["default"] == "kerniegen"
    assert [(b["name"], b["url"]) for b in body["backends"]] == [("kerniegen", pair[0].url), ("comfyui", pair[1].url)]


# --- forwarding ----------------------------------------------------------------------------------------------


async def test_raw_path_query_and_api_prefix_are_kept(gateway, pair, http):
    url = URL(gateway.url + "/api/userdata/workflows%2Fmy%20flow.json?x=1&y=%2F", encoded=True)
    status, backend, _, body = await served_by(http, url)
    assert status == 200 and backend == "kerniegen"
    assert body["raw_path"] == "/api/userdata/workflows%2Fmy%20flow.json?x=1&y=%2F"


async def test_backend_query_param_is_not_forwarded(gateway, pair, http):
    _, _, _, body = await served_by(http, gateway.url + "/custom?a=1&backend=comfyui&b=2")
    assert body["raw_path"] == "/custom?a=1&b=2"


async def test_host_origin_and_forwarded_headers(gateway, pair, http):
    host = gateway.url.removeprefix("http://")
    _, _, _, body = await served_by(
        http, gateway.url + "/echo", headers={"Origin": gateway.url, "Connection": "keep-alive"}
    )
    seen = {k.lower(): v for k, v in body["headers"].items()}
    backend_host = pair[0].url.removeprefix("http://")
    assert seen["host"] == backend_host
    assert seen["origin"] == pair[0].url
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == host
    assert "x-comfy-backend" not in seen


async def test_foreign_origin_on_loopback_is_refused_like_comfyui(gateway, pair, http):
    async with http.get(gateway.url + "/queue", headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 403
    assert not pair[0].seen


async def test_redirects_are_passed_through_not_followed(gateway, http):
    async with http.get(gateway.url + "/redirect", allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/elsewhere"


async def test_unreachable_backend_is_a_502_naming_it(start_backend, start_gateway, http):
    alive = await start_backend("kerniegen")
    gateway = await start_gateway({"kerniegen": alive.url, "comfyui": "http://127.0.0.1:9"})
    async with http.get(gateway.url + "/system_stats", headers={"X-Comfy-Backend": "comfyui"}) as r:
        assert r.status == 502
        body = await r.json()
        assert body["error"]["type"] == "backend_unavailable"
        assert "comfyui" in body["error"]["message"]
        assert r.headers["X-Comfy-Backend"] == "comfyui"
    assert (await served_by(http, gateway.url + "/system_stats"))[0] == 200


async def test_slow_backend_is_a_504(start_backend, start_gateway, http):
    slow = await start_backend("kerniegen")
    gateway = await start_gateway({"kerniegen": {"url": slow.url, "timeouts": {"read_seconds": 0.3}}})
    async with http.get(gateway.url + "/slow?seconds=2") as r:
        assert r.status == 504
        assert (await r.json())["error"]["type"] == "backend_timeout"


async def test_large_download_streams(gateway, http):
    total = 0
    async with http.get(gateway.url + "/big/64") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(64 * 1024 * 1024)
        async for chunk in r.content.iter_chunked(1 << 20):
            total += len(chunk)
    assert total == 64 * 1024 * 1024


async def test_upload_streams_and_oversized_body_is_413(pair, start_gateway, http):
    gateway = await start_gateway({"kerniegen": pair[0].url}, max_body_bytes=1024 * 1024)
    data = aiohttp.FormData()
    data.add_field("image", b"x" * 500_000, filename="a.png", content_type="image/png")
    async with http.post(gateway.url + "/upload/image", data=data) as r:
        assert r.status == 200
        assert (await r.json())["received_bytes"] > 500_000

    async def chunks():
        for _ in range(40):
            yield b"y" * 65536

    async with http.post(gateway.url + "/upload/image", data=chunks()) as r:
        assert r.status == 413
    async with http.post(gateway.url + "/upload/image", data=io.BytesIO(b"z" * (2 * 1024 * 1024))) as r:
        assert r.status == 413
    assert (await served_by(http, gateway.url + "/system_stats"))[0] == 200


# --- POST /prompt and affinity -------------------------------------------------------------------------------


async def submit(http, gateway, body, headers=None, content_type="application/json"):
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    h = {"Content-Type": content_type} if content_type else {}
    async with http.post(gateway.url + "/prompt", data=raw, headers=h | (headers or {})) as r:
        return r.status, r.headers.get("X-Comfy-Backend"), await r.json()


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/x-www-form-urlencoded"])
async def test_prompt_id_minted_and_body_kept_byte_for_byte(gateway, pair, http, content_type):
    raw = b'{"prompt": {"3": {"inputs": {"seed": 18446744073709551615}}}, "client_id": "c1"}'
    status, backend, body = await submit(http, gateway, raw, content_type=content_type)
    assert status == 200 and backend == "kerniegen"
    pid = body["prompt_id"]
    seen = pair[0].last("/prompt").body
    assert seen.endswith(raw[1:])
    assert json.loads(seen)["prompt_id"] == pid
    assert json.loads(seen)["prompt"]["3"]["inputs"]["seed"] == 2**64 - 1
    async with http.get(gateway.url + f"/gateway/prompts/{pid}") as r:
        info = await r.json()
    assert info["backend"] == "kerniegen" and info["client_id"] == "c1"


async def test_client_prompt_id_is_kept(gateway, pair, http):
    status, _, body = await submit(
        http, gateway, {"prompt": {}, "prompt_id": "mine-1"}, headers={"X-Comfy-Backend": "comfyui"}
    )
    assert body["prompt_id"] == "mine-1"
    assert json.loads(pair[1].last("/prompt").body)["prompt_id"] == "mine-1"


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b"", b'"text"', b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}"],
    ids=["not-json", "array", "empty", "string", "nested-too-deep"],
)
async def test_bad_prompt_body_is_a_clear_400_and_nothing_is_forwarded(gateway, pair, http, raw):
    status, _, body = await submit(http, gateway, raw)
    assert status == 400
    assert body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
    assert not pair[0].seen


async def test_rejected_prompt_is_forgotten(gateway, pair, http):
    pair[0].reject_prompts = True
    status, _, body = await submit(http, gateway, {"prompt": {}, "prompt_id": "bad-1"})
    assert status == 400 and body["error"]["type"] == "prompt_no_outputs"
    async with http.get(gateway.url + "/gateway/prompts/bad-1") as r:
        assert r.status == 404


async def test_affinity_beats_header_for_prompt_scoped_calls(gateway, pair, http):
    kerniegen, comfyui = pair
    await submit(http, gateway, {"prompt": {}, "prompt_id": "p-1"}, headers={"X-Comfy-Backend": "comfyui"})
    comfyui.history["p-1"] = {"prompt": [1, "p-1", {}, {}, []], "outputs": {}, "status": {"status_str": "success"}}
    status, backend, route, body = await served_by(
        http, gateway.url + "/history/p-1", headers={"X-Comfy-Backend": "kerniegen"}
    )
    assert (backend, route) == ("comfyui", "affinity") and "p-1" in body
    for path, payload in (
        ("/queue", {"delete": ["p-1"]}),
        ("/history", {"delete": ["p-1"]}),
        ("/interrupt", {"prompt_id": "p-1"}),
    ):
        async with http.post(gateway.url + path, json=payload) as r:
            assert r.status == 200, path
            assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("comfyui", "affinity")
        assert json.loads(comfyui.last(path).body) == payload
    assert not [s for s in kerniegen.seen if s.raw_path in ("/queue", "/history", "/interrupt")]


async def test_global_interrupt_without_body_goes_to_the_selected_backend(gateway, pair, http):
    async with http.post(gateway.url + "/interrupt", headers={"X-Comfy-Backend": "comfyui"}) as r:
        assert r.status == 200 and r.headers["X-Comfy-Route"] == "header"
    assert pair[1].last("/interrupt").body == b""


async def test_delete_spanning_two_backends_is_split(gateway, pair, http):
    await submit(http, gateway, {"prompt": {}, "prompt_id": "on-k"})
    await submit(http, gateway, {"prompt": {}, "prompt_id": "on-c"}, headers={"X-Comfy-Backend": "comfyui"})
    async with http.post(gateway.url + "/queue", json={"delete": ["on-k", "on-c"]}) as r:
        assert r.status == 200
        assert set(r.headers["X-Comfy-Backend"].split(",")) == {"kerniegen", "comfyui"}
    assert json.loads(pair[0].last("/queue").body) == {"delete": ["on-k"]}
    assert json.loads(pair[1].last("/queue").body) == {"delete": ["on-c"]}


async def test_unknown_prompt_is_probed_on_every_backend_and_remembered(gateway, pair, http):
    pair[1].history["elsewhere"] = {
        "prompt": [1, "elsewhere", {}, {}, []],
        "outputs": {},
        "status": {"status_str": "success"},
    }
    _, backend, route, body = await served_by(http, gateway.url + "/history/elsewhere")
    assert (backend, route) == ("comfyui", "affinity") and "elsewhere" in body
    async with http.get(gateway.url + "/gateway/prompts/elsewhere") as r:
        assert (await r.json())["state"] == "done"
    _, backend, route, body = await served_by(http, gateway.url + "/history/nowhere")
    assert body == {} and route == "default"


async def test_affinity_survives_a_gateway_restart(pair, start_gateway, tmp_path, http):
    state = tmp_path / "affinity.sqlite3"
    first = await start_gateway({"kerniegen": pair[0].url, "comfyui": pair[1].url}, state_file=state)
    await submit(http, first, {"prompt": {}, "prompt_id": "kept"}, headers={"X-Comfy-Backend": "comfyui"})
    await first.close()
    pair[1].seen.clear()
    second = await start_gateway({"kerniegen": pair[0].url, "comfyui": pair[1].url}, state_file=state)
    _, backend, route, _ = await served_by(http, second.url + "/history/kept")
    assert (backend, route) == ("comfyui", "affinity")
    # found from the store, not by probing: only the affinity backend was asked
    assert not [s for s in pair[0].seen if "kept" in s.raw_path]


async def test_prompt_state_is_read_live(gateway, pair, http):
    await submit(
        http, gateway, {"prompt": {}, "prompt_id": "q1"}, headers={"X-Comfy-Backend": "comfyui", "comfy-user": "ana"}
    )
    comfyui = pair[1]
    comfyui.queue_pending.append([1, "q1", {}, {}, []])
    async with http.get(gateway.url + "/gateway/prompts/q1") as r:
        info = await r.json()
    assert info["state"] == "queued" and info["user"] == "ana" and info["backend"] == "comfyui"
    assert isinstance(info["submitted_at"], float) and info["route"] == "header"
    comfyui.queue_pending.clear()
    comfyui.queue_running.append([1, "q1", {}, {}, []])
    async with http.get(gateway.url + "/gateway/prompts/q1") as r:
        assert (await r.json())["state"] == "running"
    comfyui.queue_running.clear()
    comfyui.history["q1"] = {"prompt": [1, "q1", {}, {}, []], "outputs": {}, "status": {"status_str": "error"}}
    async with http.get(gateway.url + "/gateway/prompts/q1") as r:
        assert (await r.json())["state"] == "failed"


# --- merging and rewriting -----------------------------------------------------------------------------------


def _entry(pid, ts, subfolder=""):
    return {
        "prompt": [1, pid, {}, {}, ["9"]],
        "outputs": {"9": {"images": [{"filename": f"{pid}.png", "subfolder": subfolder, "type": "output"}]}},
        "status": {"status_str": "success", "completed": True,
                   "messages": [["execution_start", {"prompt_id": pid, "timestamp": ts}]]},
        "meta": {},
    }


async def test_merged_history_queue_and_prompt(gateway, pair, http):
    kerniegen, comfyui = pair
    kerniegen.history = {"k1": _entry("k1", 1000), "k2": _entry("k2", 3000)}
    comfyui.history = {"c1": _entry("c1", 2000, "sub")}
    kerniegen.queue_pending.append([5, "k3", {}, {}, []])
    comfyui.queue_running.append([2, "c2", {}, {}, []])
    status, backend, route, body = await served_by(http, gateway.url + "/history")
    assert route == "merged" and set(backend.split(",")) == {"kerniegen", "comfyui"}
    assert list(body) == ["k1", "c1", "k2"]
    assert body["c1"]["outputs"]["9"]["images"][0]["subfolder"] == "comfyui/sub"
    assert body["k1"]["outputs"]["9"]["images"][0]["subfolder"] == "kerniegen"
    assert list((await served_by(http, gateway.url + "/history?max_items=2"))[3]) == ["c1", "k2"]
    _, _, _, queue = await served_by(http, gateway.url + "/queue")
    assert queue == {"queue_running": [[2, "c2", {}, {}, []]], "queue_pending": [[5, "k3", {}, {}, []]]}
    _, _, _, info = await served_by(http, gateway.url + "/prompt")
    assert info == {"exec_info": {"queue_remaining": 2}}
    # with an explicit choice only that backend answers, still rewritten
    _, backend, route, body = await served_by(http, gateway.url + "/history", headers={"X-Comfy-Backend": "comfyui"})
    assert (backend, route) == ("comfyui", "header") and list(body) == ["c1"]
    assert body["c1"]["outputs"]["9"]["images"][0]["subfolder"] == "comfyui/sub"


async def test_merge_leaves_out_a_backend_that_is_down(start_backend, start_gateway, http):
    alive = await start_backend("kerniegen")
    alive.history = {"k1": _entry("k1", 1)}
    gateway = await start_gateway({"kerniegen": alive.url, "comfyui": "http://127.0.0.1:9"})
    async with http.get(gateway.url + "/history") as r:
        assert r.status == 200
        assert r.headers["X-Comfy-Unavailable-Backends"] == "comfyui"
        assert list(await r.json()) == ["k1"]


async def test_bad_history_param_in_merge_is_a_clear_400(gateway, http):
    async with http.get(gateway.url + "/history?max_items=abc") as r:
        assert r.status == 400
        assert "max_items" in (await r.json())["error"]["message"]


async def test_view_routes_by_subfolder_prefix_and_strips_it(gateway, pair, http):
    pair[1].files[("output", "sub", "c1.png")] = b"\x89PNG-comfyui"
    pair[1].files[("output", "", "c0.png")] = b"\x89PNG-root"
    async with http.get(
        gateway.url + "/view", params={"filename": "c1.png", "subfolder": "comfyui/sub", "type": "output"}
    ) as r:
        assert r.status == 200 and await r.read() == b"\x89PNG-comfyui"
        assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("comfyui", "affinity")
    async with http.get(gateway.url + "/view?filename=c0.png&subfolder=comfyui&type=output") as r:
        assert await r.read() == b"\x89PNG-root"
    # not prefixed: normal selection
    async with http.get(gateway.url + "/view?filename=c0.png&type=output", headers={"X-Comfy-Backend": "comfyui"}) as r:
        assert r.status == 200 and r.headers["X-Comfy-Route"] == "header"


async def test_view_of_a_windows_backends_nested_subfolder_reaches_it_as_written(gateway, pair, http):
    """ComfyUI on Windows names a nested subfolder with backslashes (os.path); its clients send that back."""
    pair[1].files[("output", "run\\day 2", "c1.png")] = b"\x89PNG-windows"
    query = "filename=c1.png&subfolder=comfyui%2Frun%5Cday%202&type=output"
    async with http.get(gateway.url + "/view?" + query) as r:
        assert r.status == 200 and await r.read() == b"\x89PNG-windows"
        assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("comfyui", "affinity")
    (seen,) = [s for s in pair[1].seen if s.raw_path.startswith("/view")]
    assert URL(seen.raw_path).query["subfolder"] == "run\\day 2"
    async with http.get(gateway.url + "/view?filename=c1.png&subfolder=comfyui%2Frun%5C..%5C..%5Csecret") as r:
        assert r.status == 400
    assert len([s for s in pair[1].seen if s.raw_path.startswith("/view")]) == 1


@pytest.mark.parametrize(
    "query",
    [
        "filename=a.png&subfolder=comfyui/../../etc",
        "filename=../secret&subfolder=comfyui",
        "filename=a.png&subfolder=/etc",
        "filename=a.png&subfolder=comfyui%5C..%5C..",
    ],
)
async def test_view_escape_attempts_are_refused(gateway, pair, http, query):
    async with http.get(gateway.url + "/view?" + query) as r:
        assert r.status == 400
    assert not [s for s in pair[1].seen if s.raw_path.startswith("/view")]


# --- websocket ---------------------------------------------------------------------------------------------


async def test_websocket_relay_both_ways_with_rewrite_and_close_code(gateway, pair, http):
    async with http.ws_connect(gateway.url + "/ws?clientId=abc&backend=comfyui", origin=gateway.url) as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "status" and first["data"]["sid"] == "abc"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive(timeout=5)).data == b"echo:\x00\x01"
        await ws.send_str("executed:sub")
        executed = await ws.receive_json(timeout=5)
        assert executed["data"]["output"]["images"][0]["subfolder"] == "comfyui/sub"
        await ws.send_str("close-4001")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001
    seen = pair[1].last("/ws")
    assert seen.raw_path == "/ws?clientId=abc"
    assert seen.headers["Origin"] == pair[1].url


async def test_websocket_to_a_down_backend_is_a_502(start_backend, start_gateway, http):
    alive = await start_backend("kerniegen")
    gateway = await start_gateway({"kerniegen": alive.url, "comfyui": "http://127.0.0.1:9"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(gateway.url + "/ws?backend=comfyui")
    assert info.value.status == 502


async def test_gateway_keeps_serving_after_client_aborts(gateway, http):
    for _ in range(3):
        async with http.get(gateway.url + "/big/64") as r:
            await r.content.read(1024)
    assert (await served_by(http, gateway.url + "/system_stats"))[0] == 200


async def test_unknown_gateway_path_is_a_json_404(gateway, http):
    async with http.get(gateway.url + "/gateway/nope") as r:
        assert r.status == 404 and (await r.json())["error"]["type"] == "not_found"


async def test_health_and_readiness(start_backend, start_gateway, http):
    alive = await start_backend("kerniegen")
    gateway = await start_gateway({"kerniegen": alive.url, "comfyui": "http://127.0.0.1:9"})
    async with http.get(gateway.url + "/gateway/health") as r:
        assert r.status == 200
    async with http.get(gateway.url + "/gateway/ready") as r:
        body = await r.json()
        assert r.status == 200 and body["ready"] is True
        assert body["backends"]["comfyui"]["up"] is False and body["backends"]["kerniegen"]["up"] is True


async def test_concurrent_requests(gateway, http):
    results = await asyncio.gather(*(served_by(http, gateway.url + f"/item/{i}") for i in range(50)))
    assert [r[3]["raw_path"] for r in results] == [f"/item/{i}" for i in range(50)]


async def test_merge_skips_a_backend_the_health_checks_found_down(start_backend, start_gateway, http):
    alive = await start_backend("kerniegen")
    alive.history = {"k1": _entry("k1", 1)}
    gateway = await start_gateway({"kerniegen": alive.url, "comfyui": "http://127.0.0.1:9"})
    async with http.get(gateway.url + "/gateway/ready") as r:
        assert (await r.json())["backends"]["comfyui"]["up"] is False

    async def connect_errors() -> float:
        async with http.get(gateway.url + "/metrics") as r:
            text = await r.text()
        line = next(
            (row for row in text.splitlines() if row.startswith("comfy_gateway_upstream_errors_total{")
             and 'backend="comfyui"' in row and 'kind="connect"' in row),
            None,
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = await connect_errors()
    for _ in range(3):
        async with http.get(gateway.url + "/history") as r:
            assert r.status == 200 and r.headers["X-Comfy-Unavailable-Backends"] == "comfyui"
            assert list(await r.json()) == ["k1"]
    assert await connect_errors() == before  # left out without being asked again

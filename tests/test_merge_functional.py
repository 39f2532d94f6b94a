"""A merged GET /history through the real gateway when one backend's answer is not JSON: that backend is left
out and named, as one that did not answer, and the others' entries are served."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import serve_app


def _entry(prompt_id: str, timestamp: int) -> dict:
    return {
        "prompt": [1, prompt_id, {}, {}, ["9"]],
        "outputs": {"9": {"images": [{"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}]}},
        "status": {"status_str": "success", "completed": True,
                   "messages": [["execution_start", {"prompt_id": prompt_id, "timestamp": timestamp}]]},
    }


@pytest.fixture
async def garbled_backend() -> AsyncIterator[str]:
    """Answers GET /history with a 200 whose body is not JSON; everything else as an idle ComfyUI."""

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/history":
            return web.Response(body=b"<html>proxy error</html>", content_type="application/json")
        if request.path == "/prompt":
            return web.json_response({"exec_info": {"queue_remaining": 0}})
        return web.json_response({})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner, url = await serve_app(app)
    yield url
    await runner.cleanup()


async def test_a_backend_answering_history_with_no_json_is_left_out(start_backend, start_gateway, garbled_backend):
    good = await start_backend("good")
    good.history = {"g1": _entry("g1", 1000), "g2": _entry("g2", 2000)}
    gateway = await start_gateway({"good": good.url, "garbled": garbled_backend})
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/history") as response:
            assert response.status == 200
            assert response.headers["X-Comfy-Route"] == "merged"
            assert response.headers["X-Comfy-Backend"] == "good"
            assert response.headers["X-Comfy-Unavailable-Backends"] == "garbled"
            body = await response.json()
        assert list(body) == ["g1", "g2"]
        assert body["g1"]["outputs"]["9"]["images"][0]["subfolder"] == "good"
        async with http.get(gateway.url + "/metrics") as response:
            metrics = await response.text()
    assert any(line.startswith("comfy_gateway_upstream_errors_total{")
               and 'backend="garbled"' in line and 'kind="protocol"' in line and not line.endswith(" 0.0")
               for line in metrics.splitlines())


async def test_no_backend_with_json_is_a_502_naming_them(start_gateway, garbled_backend):
    gateway = await start_gateway({"garbled": garbled_backend})
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/history") as response:
            assert response.status == 502
            assert "garbled" in (await response.json())["error"]["message"]


@pytest.mark.parametrize(
    ("merge_cache_bytes", "history_parts_bytes"),
    [(64 * 1024 * 1024, 64 * 1024 * 1024), (0, 64 * 1024 * 1024), (0, 0)],
    ids=["both-caches", "parts-only", "no-cache"],
)
async def test_polls_see_every_change_of_a_backend_s_history(
    start_backend, start_gateway, merge_cache_bytes, history_parts_bytes
):
    alpha, beta = await start_backend("alpha"), await start_backend("beta")
    alpha.history = {"a1": _entry("a1", 1000)}
    beta.history = {"b1": _entry("b1", 2000)}
    gateway = await start_gateway({"alpha": alpha.url, "beta": beta.url}, merge_cache_bytes=merge_cache_bytes,
                                  history_parts_bytes=history_parts_bytes)
    async with aiohttp.ClientSession() as http:

        async def poll(query: str = "") -> list[str]:
            async with http.get(gateway.url + "/history" + query) as response:
                assert response.status == 200 and response.headers["X-Comfy-Backend"] == "alpha,beta"
                body = await response.json()
            assert all(entry["outputs"]["9"]["images"][0]["subfolder"] in ("alpha", "beta") for entry in body.values())
            return list(body)

        assert await poll() == await poll() == ["a1", "b1"]
        alpha.history["a2"] = _entry("a2", 3000)  # a prompt finished on alpha
        assert await poll() == ["a1", "b1", "a2"]
        assert await poll("?max_items=2") == ["b1", "a2"]
        alpha.history["a3"] = _entry("a3", 1500)  # a clock that stepped back: alpha's own order still holds
        alpha.history["a4"] = {**_entry("a4", 0), "status": {"messages": []}}  # no time: takes a3's
        assert await poll() == ["a1", "b1", "a2", "a3", "a4"]
        del alpha.history["a3"], alpha.history["a4"]
        del beta.history["b1"]  # history cleared on beta
        assert await poll() == await poll() == ["a1", "a2"]
        assert await poll("?max_items=2") == ["a1", "a2"]


async def test_a_kept_answer_still_names_the_backend_left_out(start_backend, start_gateway, garbled_backend):
    good = await start_backend("good")
    good.history = {"g1": _entry("g1", 1000)}
    gateway = await start_gateway({"good": good.url, "garbled": garbled_backend})
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # made, then kept
            async with http.get(gateway.url + "/history") as response:
                assert response.status == 200
                assert response.headers["X-Comfy-Unavailable-Backends"] == "garbled"
                assert list(await response.json()) == ["g1"]

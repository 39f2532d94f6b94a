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

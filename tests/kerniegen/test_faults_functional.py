"""Fault injection on a real socket: prompts that fail at run time, endpoints answered with 500 or
delayed (bare and /api alike), sockets dropped after their first frame, and faults changed on a
running KernieGen."""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import WSMsgType

from gateway.kerniegen.config import Faults
from gateway.kerniegen.executor import INJECTED_FAULT_MESSAGE
from gateway.kerniegen.responses import SERVER_ERROR_TEXT
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import frames_until_done, get_json, history_entry, next_json, submit
from tests.kerniegen.workflows import save_image


async def test_next_prompts_fail_at_run_time(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(faults=Faults(fail_next_prompts=2))
    async with http.ws_connect(f"{server.url}/ws?clientId=f") as ws:
        await next_json(ws)
        results = []
        for color in range(3):
            prompt_id = (await submit(http, server, save_image(color=color), client_id="f"))["prompt_id"]
            frames = await frames_until_done(ws, prompt_id)
            results.append([frame["type"] for frame in frames if frame["type"].startswith("execution_")])
            assert (await history_entry(http, server, prompt_id))["status"]["completed"] is (color == 2)
    assert results[:2] == [["execution_start", "execution_cached", "execution_error"]] * 2
    assert results[2] == ["execution_start", "execution_cached", "execution_success"]
    first_entry = next(iter((await get_json(http, f"{server.url}/history")).values()))
    error = first_entry["status"]["messages"][2][1]
    assert error["exception_message"] == INJECTED_FAULT_MESSAGE + "\n"
    assert (error["node_id"], error["node_type"], error["executed"]) == ("1", "EmptyImage", [])


@pytest.mark.parametrize("path", ["/queue", "/api/queue"])
async def test_endpoint_answers_500(path: str, start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(faults=Faults(error_endpoints=frozenset({"/queue", "/history/{prompt_id}"})))
    async with http.get(server.url + path) as response:
        assert (response.status, await response.text()) == (500, SERVER_ERROR_TEXT)
    async with http.get(f"{server.url}/history/abc") as response:
        assert response.status == 500
    assert await get_json(http, f"{server.url}/history") == {}  # other endpoints are untouched


async def test_endpoint_is_delayed(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(faults=Faults(delay_endpoints={"/prompt": 0.2}))
    started = time.perf_counter()
    await get_json(http, f"{server.url}/api/prompt")
    assert time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    await get_json(http, f"{server.url}/queue")
    assert time.perf_counter() - started < 0.2


async def test_sockets_are_dropped_after_the_status_frame(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(faults=Faults(drop_websockets=True))
    async with http.ws_connect(f"{server.url}/ws?clientId=d") as ws:
        first = await next_json(ws)
        assert (first["type"], first["data"]["sid"]) == ("status", "d")
        assert (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    prompt_id = (await submit(http, server, save_image(), client_id="d"))["prompt_id"]
    assert (await history_entry(http, server, prompt_id))["status"]["completed"] is True


async def test_faults_can_change_while_running(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    kerniegen.state.faults.error_endpoints.add("/system_stats")
    async with http.get(f"{kerniegen.url}/system_stats") as response:
        assert response.status == 500
    kerniegen.state.faults.error_endpoints.clear()
    assert "system" in await get_json(http, f"{kerniegen.url}/system_stats")


def test_fault_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Faults(fail_next_prompts=-1)
    with pytest.raises(ValueError):
        Faults(delay_endpoints={"/queue": -1.0})

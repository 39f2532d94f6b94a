"""Health, readiness and logs of a real gateway: readiness flips when the default backend goes down and comes
back on the same port, answers from recent checks, and names each backend's state; every access line carries
backend and selection source in both log formats; start-up logs the routing table and where settings came
from; and no password ever reaches a log line or an answer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.observe.access import exchange_fields
from gateway.observe.logs import JsonFormatter, TextFormatter
from tests.conftest import serve_app
from tests.ports import free_port

SECRET = "s3cret-pw"


class CheckedBackend:
    """Answers GET /prompt like ComfyUI and counts the gateway's health checks."""

    def __init__(self) -> None:
        self.health_checks = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        agent = request.headers.get("User-Agent", "")
        if "health-check" in agent and "metrics poll" not in agent and "identity" not in agent:
            self.health_checks += 1
        path = request.path.removeprefix("/api")
        if path == "/prompt" and request.method == "GET":
            return web.json_response({"exec_info": {"queue_remaining": 0}})
        if path == "/prompt":
            body = await request.json()
            return web.json_response({"prompt_id": body["prompt_id"], "number": 0, "node_errors": {}})
        return web.json_response({"ok": True, "authorization": request.headers.get("Authorization")})


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def readiness(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with http.get(url + "/gateway/ready") as r:
        return r.status, await r.json()


async def wait_until_ready_is(http: aiohttp.ClientSession, url: str, status: int) -> dict:
    deadline = time.monotonic() + 5
    while True:
        got, body = await readiness(http, url)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"readiness stayed {got}: {body}"
        await asyncio.sleep(0.02)


async def backend_up(http: aiohttp.ClientSession, url: str, name: str) -> str:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    series = f'comfy_gateway_backend_up{{backend="{name}"}}'
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(series))


# --- health and readiness ------------------------------------------------------------------------------------


async def test_readiness_flips_when_the_default_backend_goes_down_and_comes_back(start_gateway, http) -> None:
    runner, backend_url = await serve_app(CheckedBackend().app())
    port = int(backend_url.rsplit(":", 1)[1])
    gateway = await start_gateway(
        {"kerniegen": backend_url}, health_check_interval_seconds=0.05, health_check_timeout_seconds=1.0
    )
    try:
        body = await wait_until_ready_is(http, gateway.url, 200)
        assert body["backends"]["kerniegen"]["up"] is True and body["store"] == {"ok": True}
        assert await backend_up(http, gateway.url, "kerniegen") == "1.0"

        await runner.cleanup()
        body = await wait_until_ready_is(http, gateway.url, 503)
        assert body["ready"] is False
        state = body["backends"]["kerniegen"]
        assert state["up"] is False and "kerniegen" in state["last_error"] and state["default"] is True
        assert await backend_up(http, gateway.url, "kerniegen") == "0.0"

        runner, _ = await serve_app(CheckedBackend().app(), port)  # back, on the same port
        body = await wait_until_ready_is(http, gateway.url, 200)
        assert body["backends"]["kerniegen"]["last_error"] is None
        assert await backend_up(http, gateway.url, "kerniegen") == "1.0"
    finally:
        await runner.cleanup()


async def test_readiness_answers_from_recent_checks_without_checking_again(start_gateway, http) -> None:
    backend = CheckedBackend()
    runner, backend_url = await serve_app(backend.app())
    try:
        gateway = await start_gateway({"kerniegen": backend_url}, health_check_interval_seconds=60)
        await wait_until_ready_is(http, gateway.url, 200)
        checks = backend.health_checks
        for _ in range(20):
            status, body = await readiness(http, gateway.url)
            assert status == 200
        assert backend.health_checks == checks
        assert 0 <= body["backends"]["kerniegen"]["checked_seconds_ago"] < 60
    finally:
        await runner.cleanup()


async def test_readiness_checks_again_when_the_last_check_is_too_old(start_gateway, http) -> None:
    from gateway.datapath.aio.keys import HEALTH

    backend = CheckedBackend()
    runner, backend_url = await serve_app(backend.app())
    try:
        gateway = await start_gateway({"kerniegen": backend_url}, health_check_interval_seconds=60)
        await wait_until_ready_is(http, gateway.url, 200)
        gateway.app[HEALTH].max_age_seconds = 0  # as if the background checks had fallen behind
        checks = backend.health_checks
        for _ in range(3):
            assert (await readiness(http, gateway.url))[0] == 200
        assert backend.health_checks == checks + 3
    finally:
        await runner.cleanup()


async def test_readiness_names_the_backend_that_is_down_but_only_the_default_decides(start_gateway, http) -> None:
    runner, backend_url = await serve_app(CheckedBackend().app())
    try:
        gateway = await start_gateway({"kerniegen": backend_url, "comfyui": f"http://127.0.0.1:{free_port()}"})
        status, body = await readiness(http, gateway.url)
        assert status == 200 and body["ready"] is True
        assert body["backends"]["comfyui"]["up"] is False and body["backends"]["comfyui"]["last_error"]
        async with http.get(gateway.url + "/gateway/health") as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
    finally:
        await runner.cleanup()


# --- the access line -----------------------------------------------------------------------------------------


async def test_access_line_carries_backend_selection_source_and_the_request_facts(
    start_gateway, http, caplog
) -> None:
    runner, backend_url = await serve_app(CheckedBackend().app())
    try:
        gateway = await start_gateway({"kerniegen": f"http://127.0.0.1:{free_port()}", "comfyui": backend_url})
        body = b'{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}'
        with caplog.at_level(logging.INFO, logger="comfy_gateway"):
            async with http.post(gateway.url + "/api/prompt", data=body,
                                 headers={"X-Comfy-Backend": "comfyui", "comfy-user": "ana"}) as r:
                assert r.status == 200
                answer = await r.read()
                prompt_id = json.loads(answer)["prompt_id"]
            async with http.get(gateway.url + "/object_info", headers={"comfy-user": "ana"}) as r:
                assert r.status == 502  # the default backend is down
    finally:
        await runner.cleanup()

    access = [(rec, exchange_fields(rec.exchange)) for rec in caplog.records if rec.name == "comfy_gateway.access"]
    (submit, submitted), (failed, failure) = access
    assert submitted == {
        "method": "POST",
        "path": "/api/prompt",
        "endpoint": "/prompt",
        "status": 200,
        "duration_ms": submitted["duration_ms"],
        "backend": "comfyui",
        "route": "header",
        "bytes_in": len(body),
        "bytes_out": len(answer),
        "prompt_id": prompt_id,
        "user": "ana",
        "guardrails": "skipped",  # this backend's /object_info lists no node class: nothing to check by
    }
    assert 0 < submitted["duration_ms"] < 5000
    assert failure["backend"] == "kerniegen" and failure["route"] == "default"
    assert failure["error"] == "backend_unavailable" and failure["upstream_errors"] == "kerniegen:connect"

    text = TextFormatter().format(submit)
    assert "POST /api/prompt 200 " in text
    assert f"endpoint=/prompt backend=comfyui route=header bytes_in={len(body)} bytes_out={len(answer)} " \
           f"prompt_id={prompt_id} user=ana" in text
    line = json.loads(JsonFormatter().format(submit))
    assert line["time"].endswith("Z") and line["level"] == "info" and line["logger"] == "comfy_gateway.access"
    assert {k: line[k] for k in submitted} == submitted
    assert json.loads(JsonFormatter().format(failed))["upstream_errors"] == "kerniegen:connect"


# --- no secrets ----------------------------------------------------------------------------------------------


async def test_no_password_reaches_logs_or_answers(start_gateway, http, caplog) -> None:
    backend = CheckedBackend()
    runner, backend_url = await serve_app(backend.app())
    with_password = backend_url.replace("http://", f"http://alice:{SECRET}@")
    down_with_password = f"http://bob:{SECRET}@127.0.0.1:{free_port()}"
    try:
        with caplog.at_level(logging.DEBUG, logger="comfy_gateway"):
            gateway = await start_gateway({"kerniegen": with_password, "comfyui": down_with_password})
            async with http.get(gateway.url + "/object_info") as r:
                served = await r.json()
            async with http.get(gateway.url + "/object_info", headers={"X-Comfy-Backend": "comfyui"}) as r:
                assert r.status == 502
                error = await r.text()
            status, ready = await readiness(http, gateway.url)
            async with http.get(gateway.url + "/queue") as r:  # merged: the down backend is named, not its password
                merged_header = r.headers.get("X-Comfy-Unavailable-Backends")
    finally:
        await runner.cleanup()
    assert served["authorization"].startswith("Basic ")  # the credentials still work, they are just not shown
    assert merged_header == "comfyui"
    assert status == 200 and ready["backends"]["comfyui"]["url"].startswith("http://***@127.0.0.1:")
    assert "127.0.0.1" in error and "***@" in error
    for shown in (caplog.text, error, json.dumps(ready)):
        assert SECRET not in shown
    assert "routing table" in caplog.text and "kerniegen    -> http://***@127.0.0.1:" in caplog.text


def test_startup_logs_routing_table_settings_sources_and_no_secrets(tmp_path: Path) -> None:
    """The real `comfy-gateway serve`, with JSON logs: one object per line, nothing secret in any of them."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'listen_port = {port}\nlog_format = "json"\ndefault_backend = "remote"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[store]\npath = "{tmp_path / "gateway.sqlite3"}"\nredis_url = "redis://:{SECRET}@redis:6379/0"\n'
        f'[backends.remote]\nurl = "http://carol:{SECRET}@127.0.0.1:{free_port()}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    env["COMFY_GATEWAY_HEALTH_CHECK_INTERVAL_SECONDS"] = "30"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=tmp_path, text=True,
    )
    lines: list[dict] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        while not any(line["message"].startswith("listening on") for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, lines
            raw = process.stderr.readline()
            if raw:
                lines.append(json.loads(raw))
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)[::-1]
    lines += [json.loads(raw) for raw in rest.splitlines() if raw.strip()]
    messages = [line["message"] for line in lines]
    assert any(m == f"  setting backends.remote.url from {config}" for m in messages)
    assert any(m == "  setting health_check_interval_seconds from env COMFY_GATEWAY_HEALTH_CHECK_INTERVAL_SECONDS"
               for m in messages)
    assert any(m.startswith("routing table (default remote") for m in messages)
    assert any(m.startswith("  remote       -> http://***@127.0.0.1:") for m in messages)
    assert any(m.startswith("state store: sqlite ") for m in messages)
    assert any(m.startswith("health checks every 30s") for m in messages)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert SECRET not in json.dumps(lines)

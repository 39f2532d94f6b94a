"""Backend identity on real sockets: a backend whose /system_stats says it is another kind than configured (a
KernieGen declared as `comfyui`, a ComfyUI declared as `kerniegen`: two URLs swapped) is reported by the
start-up log, /gateway/ready, /gateway/backends and the metric, and refused at start-up under
guardrails.strict_identity; a backend of its configured kind is ready."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.observe.identity import identity_of
from tests.conftest import serve_app
from tests.ports import free_port

REFUSAL = "comfy-gateway: refusing to start: "

# What a real ComfyUI 0.3.64 answers to GET /system_stats (CPU build), in its shape.
COMFYUI_SYSTEM_STATS = {
    "system": {
        "os": "posix",
        "ram_total": 25276502016,
        "ram_free": 24278900736,
        "comfyui_version": "0.3.64",
        "required_frontend_version": "1.27.10",
        "installed_templates_version": "0.1.95",
        "required_templates_version": "0.1.95",
        "python_version": "3.11.7 (main) [GCC 12.2.0]",
        "pytorch_version": "2.14.1+cu130",
        "embedded_python": False,
        "argv": ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", "8188"],
    },
    "devices": [
        {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": 25276502016,
            "vram_free": 24278900736,
            "torch_vram_total": 25276502016,
            "torch_vram_free": 24278900736,
        }
    ],
}


def fake_comfyui() -> web.Application:
    """Answers like a real ComfyUI where the gateway asks what a backend is and whether it is up."""

    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response(COMFYUI_SYSTEM_STATS)

    async def prompt(request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": 0}})

    app = web.Application()
    app.router.add_get("/system_stats", system_stats)
    app.router.add_get("/prompt", prompt)
    return app


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


def embedded(kind: str) -> dict[str, Any]:
    return {"url": f"http://127.0.0.1:{free_port()}", "embedded": True, "kind": kind, "kerniegen": {"step_delay_ms": 0}}


async def wait_for(http: aiohttp.ClientSession, url: str, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        async with http.get(url) as r:
            body = await r.json()
            body["_status"] = r.status
        if check(body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def metric(http: aiohttp.ClientSession, url: str, series: str) -> str:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(series + " "))


async def test_a_kerniegen_declared_as_comfyui_is_reported_and_not_ready(
    start_gateway, http, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comfy_gateway")
    runner, comfyui_url = await serve_app(fake_comfyui())
    try:
        gateway = await start_gateway(
            {"kerniegen": embedded("comfyui"), "comfyui": {"url": comfyui_url, "kind": "comfyui"}},
            health_check_interval_seconds=0.1,
            ready_requires="default",
        )
        body = await wait_for(
            http, gateway.url + "/gateway/ready", lambda b: b["backends"]["kerniegen"]["seen_kind"] is not None
        )
        # the default backend runs on the wrong server: not usable, so with ready_requires = default not ready
        assert body["_status"] == 503 and body["ready"] is False
        wrong = body["backends"]["kerniegen"]
        assert wrong["up"] is True and wrong["ready"] is False and wrong["usable"] is False
        assert wrong["kind"] == "comfyui" and wrong["seen_kind"] == "kerniegen" and wrong["seen_version"] == "0.1.0"
        assert (
            wrong["reason"]
            == wrong["identity_problem"]
            == ("configured as kind 'comfyui' but answers as KernieGen 0.1.0")
        )
        right = (await wait_for(http, gateway.url + "/gateway/ready", lambda b: b["backends"]["comfyui"]["ready"]))[
            "backends"
        ]["comfyui"]
        assert (right["seen_kind"], right["seen_version"], right["reason"]) == ("comfyui", "0.3.64", None)

        assert await metric(http, gateway.url, 'comfy_gateway_backend_identity_mismatch{backend="kerniegen"}') == "1.0"
        assert await metric(http, gateway.url, 'comfy_gateway_backend_identity_mismatch{backend="comfyui"}') == "0.0"

        async with http.get(gateway.url + "/gateway/backends") as r:
            listed = {b["name"]: b for b in (await r.json())["backends"]}
        assert (listed["kerniegen"]["kind"], listed["kerniegen"]["seen_kind"]) == ("comfyui", "kerniegen")
        assert (listed["comfyui"]["seen_kind"], listed["comfyui"]["seen_version"]) == ("comfyui", "0.3.64")

        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "configured as kind" in r.getMessage()
        ]
        # loudly, once: the first time it is seen, not on every check after
        assert warnings == [
            "backend kerniegen is configured as kind 'comfyui' but answers as KernieGen 0.1.0: "
            "routing to it runs on the wrong server"
        ]
    finally:
        await runner.cleanup()


async def test_a_comfyui_declared_as_kerniegen_is_reported(start_gateway, http) -> None:
    runner, comfyui_url = await serve_app(fake_comfyui())
    try:
        gateway = await start_gateway({"kerniegen": {"url": comfyui_url, "kind": "kerniegen"}})
        body = await wait_for(
            http, gateway.url + "/gateway/ready", lambda b: b["backends"]["kerniegen"]["seen_kind"] is not None
        )
        assert body["_status"] == 503
        assert body["backends"]["kerniegen"]["reason"] == "configured as kind 'kerniegen' but answers as ComfyUI 0.3.64"
    finally:
        await runner.cleanup()


async def test_backends_of_their_configured_kind_are_ready(start_gateway, http) -> None:
    runner, comfyui_url = await serve_app(fake_comfyui())
    try:
        gateway = await start_gateway(
            {"kerniegen": embedded("kerniegen"), "comfyui": {"url": comfyui_url, "kind": "comfyui"}},
            guardrails={"strict_identity": True},
        )
        body = await wait_for(http, gateway.url + "/gateway/ready", lambda b: b["_status"] == 200)
        assert {name: b["ready"] for name, b in body["backends"].items()} == {"kerniegen": True, "comfyui": True}
        assert await metric(http, gateway.url, 'comfy_gateway_backend_identity_mismatch{backend="kerniegen"}') == "0.0"
    finally:
        await runner.cleanup()


def test_kerniegen_and_comfyui_are_told_apart_by_their_system_stats() -> None:
    import json

    assert identity_of(json.dumps(COMFYUI_SYSTEM_STATS).encode()).kind == "comfyui"
    assert identity_of(b"not json").kind == "unknown"
    assert identity_of(b'{"system": {"comfyui_version": 3}}').kind == "unknown"
    assert identity_of(b'{"system": {"comfyui_version": "0.3.64\\r\\nX: y"}}').version == "unreadable"


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.parent,
        timeout=60,
    )


def test_strict_identity_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    kerniegen_port, listen_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""listen_port = {listen_port}
state_dir = "{tmp_path / "state"}"
log_batch_seconds = 0
[store]
path = "{tmp_path / "state" / "gateway.sqlite3"}"
[guardrails]
strict_identity = true
[backends.kerniegen]
url = "http://127.0.0.1:{kerniegen_port}"
embedded = true
kind = "comfyui"
"""
    )
    result = serve(config)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    refusals = [line for line in lines if REFUSAL in line]
    assert refusals == [lines[-1]], result.stderr
    assert lines[-1] == (
        f"{REFUSAL}backend kerniegen is configured as kind 'comfyui' but answers as KernieGen 0.1.0 "
        "(guardrails.strict_identity is on)"
    )

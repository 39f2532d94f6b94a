"""`comfy-gateway check` run as a user runs it (a subprocess) against real backends: an embedded KernieGen it
starts itself and a ComfyUI-shaped server. Its table and exit status when all is well (0), when a backend is
down, of another kind, or lacks an alias's target (1), and when the configuration cannot be loaded (2)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import serve_app
from tests.ports import free_port
from tests.test_identity_functional import COMFYUI_SYSTEM_STATS

OBJECT_INFO = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["sd_xl_base_1.0.safetensors", "v1-5-pruned.safetensors"], {}]}},
        "output": ["MODEL", "CLIP", "VAE"],
    },
    "LoraLoader": {
        "input": {"required": {"lora_name": [["detail.safetensors"], {}], "strength_model": ["FLOAT", {}]}},
        "output": ["MODEL", "CLIP"],
    },
    "KSampler": {"input": {"required": {"seed": ["INT", {"min": 0}]}}, "output": ["LATENT"]},
}


def fake_comfyui() -> web.Application:
    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response(COMFYUI_SYSTEM_STATS)

    async def object_info(request: web.Request) -> web.Response:
        return web.json_response(OBJECT_INFO)

    app = web.Application()
    app.router.add_get("/system_stats", system_stats)
    app.router.add_get("/object_info", object_info)
    return app


async def check(tmp_path: Path, backends: str, *args: str) -> tuple[int, str, str]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'listen_port = {free_port()}\nstate_dir = "{tmp_path / "state"}"\ndefault_backend = "kerniegen"\n{backends}'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "check",
        "--config",
        str(config),
        "--timeout",
        "5",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def embedded_kerniegen(kind: str = "kerniegen") -> str:
    return f"""
[backends.kerniegen]
url = "http://127.0.0.1:{free_port()}"
embedded = true
kind = "{kind}"
[backends.kerniegen.kerniegen]
checkpoints = ["sd_xl_base_1.0.safetensors"]
"""


def comfyui(url: str, aliases: dict[str, str] | None = None) -> str:
    table = "".join(f'"{k}" = "{v}"\n' for k, v in (aliases or {}).items())
    return f'[backends.comfyui]\nurl = "{url}"\nkind = "comfyui"\n[backends.comfyui.aliases]\n{table}'


def row(out: str, name: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith(name + " ")).split()


async def test_all_well_exits_0_with_one_table(tmp_path: Path) -> None:
    runner, url = await serve_app(fake_comfyui())
    try:
        code, out, err = await check(
            tmp_path,
            embedded_kerniegen() + comfyui(url, {"illustriousXL_v01.safetensors": "sd_xl_base_1.0.safetensors"}),
        )
    finally:
        await runner.cleanup()

    assert code == 0, out + err
    assert out.splitlines()[0] == f"comfy-gateway check: configuration from {tmp_path / 'gateway.toml'}"
    assert "BACKEND" in out and "ANSWERS AS" in out and "MODEL FILES" in out
    kerniegen = row(out, "kerniegen")
    assert kerniegen[:6] == ["kerniegen", "*", kerniegen[2], "kerniegen", "KernieGen", "0.1.0"]
    assert kerniegen[-1] == "ok" and int(kerniegen[6]) > 10
    assert row(out, "comfyui") == [
        "comfyui",
        url,
        "comfyui",
        "ComfyUI",
        "0.3.64",
        "3",
        "checkpoints",
        "2,",
        "loras",
        "1",
        "ok",
    ]
    assert "kerniegen: embedded KernieGen, started for this check and stopped after, as serve starts it" in out
    assert "comfyui: illustriousXL_v01.safetensors -> sd_xl_base_1.0.safetensors (present)" in out
    assert out.rstrip().endswith("all 2 backends are well")


async def test_a_backend_down_exits_1_and_says_why(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    code, out, _ = await check(tmp_path, embedded_kerniegen() + comfyui(down))

    assert code == 1
    assert row(out, "comfyui")[-1] == "UNREACHABLE" and row(out, "kerniegen")[-1] == "ok"
    assert "  comfyui: unreachable: backend 'comfyui' at " in out
    assert "(is it running? serve starts without it, and answers 502 for what is sent to it)" in out
    assert out.rstrip().endswith("1 of 2 backends need attention")


async def test_a_kind_mismatch_exits_1(tmp_path: Path) -> None:
    runner, url = await serve_app(fake_comfyui())
    try:
        swapped = embedded_kerniegen(kind="comfyui") + comfyui(url).replace('kind = "comfyui"', 'kind = "kerniegen"')
        code, out, _ = await check(tmp_path, swapped, "--json")
    finally:
        await runner.cleanup()

    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    by_name: dict[str, Any] = {b["name"]: b for b in report["backends"]}
    assert by_name["kerniegen"]["problems"] == ["configured as kind 'comfyui' but answers as KernieGen 0.1.0"]
    assert by_name["comfyui"]["problems"] == ["configured as kind 'kerniegen' but answers as ComfyUI 0.3.64"]
    assert (by_name["comfyui"]["seen_kind"], by_name["comfyui"]["seen_version"]) == ("comfyui", "0.3.64")
    assert by_name["comfyui"]["node_classes"] == 3 and by_name["comfyui"]["files"]["checkpoints"] == 2


async def test_a_missing_alias_target_exits_1(tmp_path: Path) -> None:
    runner, url = await serve_app(fake_comfyui())
    try:
        code, out, _ = await check(tmp_path, embedded_kerniegen() + comfyui(url, {"a.safetensors": "gone.safetensors"}))
    finally:
        await runner.cleanup()

    assert code == 1
    assert row(out, "comfyui")[-1] == "WRONG"
    assert "comfyui: a.safetensors -> gone.safetensors (MISSING)" in out
    assert (
        "comfyui: alias 'a.safetensors' -> 'gone.safetensors': 'gone.safetensors' is not among its model files" in out
    )


async def test_a_configuration_it_cannot_load_exits_2(tmp_path: Path) -> None:
    port = free_port()
    code, out, err = await check(
        tmp_path,
        f'[backends.kerniegen]\nurl = "http://127.0.0.1:{port}"\n[backends.comfyui]\nurl = "http://127.1:{port}/api"\n',
    )

    assert (code, out) == (2, "")
    assert err.startswith("comfy-gateway check: invalid configuration:")
    assert f"backends.comfyui.url and backends.kerniegen.url both reach the same server, 127.0.0.1:{port}" in err


async def test_an_embedded_port_taken_by_another_server_is_checked_as_it_answers(tmp_path: Path) -> None:
    runner, url = await serve_app(fake_comfyui())  # a ComfyUI where the embedded KernieGen should listen
    try:
        kerniegen = f'[backends.kerniegen]\nurl = "{url}"\nembedded = true\nkind = "kerniegen"\n'
        code, out, _ = await check(tmp_path, kerniegen, "--json")
    finally:
        await runner.cleanup()

    assert code == 1
    (report,) = json.loads(out)["backends"]
    assert report["embedded"] == "already running (its port is taken)"
    assert report["problems"] == ["configured as kind 'kerniegen' but answers as ComfyUI 0.3.64"]


async def test_two_names_for_one_server_are_what_serve_refuses(tmp_path: Path) -> None:
    name = socket.gethostname()
    try:
        address = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        pytest.skip("this machine's host name does not resolve")
    shown = f"[{address}]" if ":" in str(address) else str(address)
    runner, url = await serve_app(fake_comfyui())
    port = url.rsplit(":", 1)[1]
    try:
        backends = (
            embedded_kerniegen()
            + f'[backends.comfyui]\nurl = "http://{name}:{port}"\n[backends.again]\nurl = "http://{shown}:{port}"\n'
        )
        code, out, _ = await check(tmp_path, backends)
    finally:
        await runner.cleanup()

    assert code == 1
    assert row(out, "comfyui")[-1] == "REFUSED" and row(out, "again")[-1] == "REFUSED"
    assert "`comfy-gateway serve` refuses to start with this configuration:" in out
    assert "backends.again.url and backends.comfyui.url both reach the same server" in out

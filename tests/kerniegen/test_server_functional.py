"""KernieGen as a whole on real sockets: start_kerniegen on port 0, every route under /api too,
txt2img outputs (valid PNGs of the asked size and count, identical bytes for the same prompt),
the temp area's lifetime, configurable inventories, /system_stats, and the command line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from gateway.kerniegen import cli
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import ROUTES, KernieGenServer
from gateway.kerniegen.version import KERNIEGEN_VERSION
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import get_json, history_entry, post_raw, submit, wait_idle
from tests.kerniegen.workflows import save_image, txt2img


async def test_port_zero_reports_the_real_port(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", kerniegen.url) and not kerniegen.url.endswith(":0")
    assert await get_json(http, f"{kerniegen.url}/prompt") == {"exec_info": {"queue_remaining": 0}}


async def test_every_route_answers_alike_with_and_without_api(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    params = {"{folder}": "checkpoints", "{node_class}": "EmptyImage", "{prompt_id}": "unknown"}
    for method, path, _ in ROUTES:
        if path == "/ws":
            continue
        for template, value in params.items():
            path = path.replace(template, value)
        answers = []
        for spelling in (path, "/api" + path):
            async with http.request(method, kerniegen.url + spelling, data=b"{}") as response:
                answers.append((response.status, response.headers.get("Content-Type")))
        # The same answer both ways, and never the unknown-path 404 of the catch-all route.
        assert answers[0] == answers[1] and answers[0] != (404, "application/octet-stream"), (method, path, answers)
    for spelling in ("/ws", "/api/ws"):
        async with http.ws_connect(kerniegen.url + spelling) as ws:
            assert (await ws.receive_json())["type"] == "status"


async def test_txt2img_writes_valid_pngs_of_the_asked_size_and_count(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    prompt = txt2img(seed=7, width=512, height=384)
    prompt["5"]["inputs"]["batch_size"] = 3
    entry = await history_entry(http, kerniegen, (await submit(http, kerniegen, prompt))["prompt_id"])
    refs = entry["outputs"]["9"]["images"]
    assert [ref["filename"] for ref in refs] == [f"txt2img_{index:05d}_.png" for index in (1, 2, 3)]
    for ref in refs:
        path = kerniegen.state.dirs.output / ref["subfolder"] / ref["filename"]
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (512, 384))
            assert '"KSampler"' in image.text["prompt"]  # the prompt travels in the PNG, as in ComfyUI
        async with http.get(f"{kerniegen.url}/view", params={**ref}) as response:
            assert await response.read() == path.read_bytes()


async def test_the_same_prompt_gives_identical_bytes(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    prompt = txt2img(seed=123, width=128, height=128)
    files = []
    for _ in range(2):
        entry = await history_entry(http, kerniegen, (await submit(http, kerniegen, prompt))["prompt_id"])
        ref = entry["outputs"]["9"]["images"][0]
        files.append(kerniegen.state.dirs.output / ref["subfolder"] / ref["filename"])
        await post_raw(http, f"{kerniegen.url}/free", b'{"free_memory": true}', "application/json")  # no cache hit
    assert files[0] != files[1] and files[0].read_bytes() == files[1].read_bytes()
    other_id = (await submit(http, kerniegen, txt2img(seed=124, width=128, height=128)))["prompt_id"]
    other = await history_entry(http, kerniegen, other_id)
    ref = other["outputs"]["9"]["images"][0]
    assert (kerniegen.state.dirs.output / ref["subfolder"] / ref["filename"]).read_bytes() != files[0].read_bytes()


async def test_temp_outputs_live_until_restart(
    start_kg: StartKernieGen, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    server = await start_kg(data_dir=data_dir)
    preview = {"1": save_image()["1"], "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    entry = await history_entry(http, server, (await submit(http, server, preview))["prompt_id"])
    ref = entry["outputs"]["2"]["images"][0]
    assert ref["type"] == "temp" and (data_dir / "temp" / ref["filename"]).is_file()
    await server.close()
    assert list((data_dir / "temp").iterdir()) == []
    (data_dir / "temp" / "stale.png").write_bytes(b"x")
    await start_kg(data_dir=data_dir)
    assert list((data_dir / "temp").iterdir()) == []


async def test_inventory_is_configurable(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(inventory=Inventory(checkpoints=("a.safetensors", "b.safetensors"), loras=()))
    assert await get_json(http, f"{server.url}/models/checkpoints") == ["a.safetensors", "b.safetensors"]
    assert await get_json(http, f"{server.url}/models/loras") == []
    info = await get_json(http, f"{server.url}/object_info/CheckpointLoaderSimple")
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.safetensors", "b.safetensors"]
    status, text, _ = await post_raw(http, f"{server.url}/prompt", json.dumps({"prompt": txt2img()}), None)
    assert status == 400 and "value_not_in_list" in text
    async with http.get(f"{server.url}/view_metadata/checkpoints", params={"filename": "a.safetensors"}) as response:
        assert response.status == 200


async def test_system_stats_names_kerniegen(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    stats = await get_json(http, f"{kerniegen.url}/system_stats")
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert KERNIEGEN_VERSION in stats["system"]["pytorch_version"]
    assert stats["devices"][0]["name"].startswith("KernieGen")


async def test_close_while_busy_leaves_no_running_work(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(step_delay_ms=50)
    for color in range(3):
        await submit(http, server, save_image(color=color))
    await server.close()
    await server.close()  # twice is harmless
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_json(http, f"{server.url}/prompt")


async def test_queue_keeps_working_after_many_prompts(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    answers = await asyncio.gather(*(submit(http, kerniegen, save_image(color=color)) for color in range(30)))
    await wait_idle(http, kerniegen)
    history = await get_json(http, f"{kerniegen.url}/history")
    assert sorted(history) == sorted(answer["prompt_id"] for answer in answers)
    assert all(entry["status"]["completed"] for entry in history.values())


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--port", "99999"]) == 2
    assert cli.main(["--step-delay-ms", "-1"]) == 2
    assert cli.main(["--version"]) == 0
    assert "KernieGen" in capsys.readouterr().out


def test_cli_reports_a_taken_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["--port", str(port), "--data-dir", str(tmp_path)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_cli_config_from_flags(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args([
        "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out"),
        "--step-delay-ms", "0", "--checkpoint", "x.safetensors", "--checkpoint", "y.safetensors",
        "--lora", "l.safetensors",
    ])
    config = cli.config_from_args(args)
    assert (config.host, config.port, config.step_delay_ms) == ("0.0.0.0", 0, 0.0)
    assert config.inventory.checkpoints == ("x.safetensors", "y.safetensors")
    assert config.inventory.loras == ("l.safetensors",)
    assert config.output_dir == tmp_path / "out"


def test_python_dash_m_serves_until_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.kerniegen", "--port", "0", "--data-dir", str(tmp_path), "--step-delay-ms", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = None
        for line in process.stdout:
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None

        async def probe() -> object:
            async with aiohttp.ClientSession() as http:
                return await get_json(http, f"{url}/system_stats")

        assert "devices" in asyncio.run(probe())  # type: ignore[operator]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert (tmp_path / "output").is_dir() and (tmp_path / "input").is_dir()

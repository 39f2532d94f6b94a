"""KernieGen's own speed with --step-delay-ms 0: how long POST /prompt takes to answer, and how
long a 512x512 txt2img prompt takes from POST to its final `executing` (node null) frame, by which
time its history entry is written and its PNG is on disk. Every prompt has its own seed, so none
is served from cache.

    python bench/kerniegen_speed.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import KernieGenServer, start_kerniegen


def txt2img(seed: int, size: int) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "illustriousXL_v01.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bench/txt2img"}},
    }


async def one_run(http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, server: KernieGenServer,
                  seed: int, size: int) -> tuple[float, float]:
    """(ms until POST /prompt answered, ms until the prompt was done), checking the PNG exists."""
    body = json.dumps({"prompt": txt2img(seed, size), "client_id": "bench"})
    started = time.perf_counter()
    async with http.post(f"{server.url}/prompt", data=body) as response:
        assert response.status == 200, await response.text()
        prompt_id = (await response.json())["prompt_id"]
    answered = time.perf_counter()
    while True:
        frame = json.loads((await ws.receive(timeout=30)).data)
        if frame["type"] == "executing" and frame["data"]["node"] is None and frame["data"]["prompt_id"] == prompt_id:
            break
    done = time.perf_counter()
    entry = server.state.history.get(prompt_id)[prompt_id]
    ref = entry["outputs"]["9"]["images"][0]
    assert (server.state.dirs.output / ref["subfolder"] / ref["filename"]).stat().st_size > 0
    return (answered - started) * 1000, (done - started) * 1000


def describe(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{label:<34} median {statistics.median(ordered):7.2f} ms   p95 {p95:7.2f} ms   max {ordered[-1]:7.2f} ms"


async def main(runs: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        server = await start_kerniegen(KernieGenConfig(port=0, data_dir=Path(data_dir), step_delay_ms=0))
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(f"{server.url}/ws?clientId=bench") as ws:
                await ws.receive()  # the connect-time status
                await one_run(http, ws, server, seed=0, size=size)  # warm-up: imports, first PNG encoder use
                results = [await one_run(http, ws, server, seed=seed, size=size) for seed in range(1, runs + 1)]
        finally:
            await server.close()
    print(f"KernieGen, step delay 0, {runs} runs of a {size}x{size} txt2img prompt (20 steps), each a new seed")
    print(describe("POST /prompt answered", [answered for answered, _ in results]))
    print(describe("prompt done (history + PNG on disk)", [done for _, done in results]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.size))

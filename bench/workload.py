"""The ComfyUI-shaped workload every benchmark target serves: bodies, files, frames and their checks.

The fake upstream builds its answers from here and run.py checks the targets' answers against the same
functions, so what is served and what is expected cannot drift apart. Shapes follow the recorded
ComfyUI 0.3.64 transcripts in shared/comfyui-reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
BACKENDS = ("alpha", "beta")
BACKEND_HEADER = "X-Comfy-Backend"
# Every load sends a configured API token and a foreign origin the gateway allows (targets.gateway_config), so
# the gateway's token and origin checks run on every request; the other targets ignore both headers.
API_USER = "bench"
API_TOKEN = "bench-token-0123456789abcdef"
ORIGIN = "http://bench.example"
VIEW_SUBFOLDER = "bench"
SMALL_VIEW_FILENAME = "bench_small_00001_.png"
LARGE_VIEW_FILENAME = "bench_large_00001_.png"
SMALL_VIEW_BYTES = 1 * MIB
WS_CLIENT_ID = "bench-client"
WS_MAX_BURST = 100_000  # bounds what one "burst N" may make the upstream buffer (~11 MB)
PROMPT_TARGET_BYTES = 20_000
POSITIVE_TEXT = ("a lighthouse on a cliff at dusk, volumetric light, crashing waves, dramatic clouds, highly detailed, "
                 "masterpiece, best quality")
NEGATIVE_TEXT = ("blurry, lowres, watermark, jpeg artifacts, bad anatomy, extra fingers, text, signature, cropped, "
                 "out of frame, oversaturated, noise, grain")


def client_headers() -> dict[str, str]:
    """What every benchmarked request carries besides its backend header."""
    return {"Authorization": f"Bearer {API_TOKEN}", "Origin": ORIGIN}


def history_prompt_id(backend: str) -> str:
    """The finished prompt a backend's history holds. Ids differ per backend, as real prompt ids do, so a
    gateway that finds prompts by asking every backend finds each on exactly one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfy-gateway-bench/{backend}"))


def output_filename(backend: str, index: int = 1) -> str:
    """An image a backend's history names: carrying the backend proves the request was routed right."""
    return f"bench_{backend}_{index:05d}_.png"


def history_entry(prompt_id: str, backend: str) -> dict[str, Any]:
    """One finished history entry of ~2 KB, like a txt2img run: a 5-element prompt, outputs, status, meta."""
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "illustriousXL_v01.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE_TEXT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE_TEXT, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                                   "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench/out", "images": ["8", 0]}},
    }
    started = 1795503638630
    return {
        "prompt": [7, prompt_id, graph, {"client_id": WS_CLIENT_ID, "create_time": started - 120}, ["9"]],
        "outputs": {"9": {"images": [
            {"filename": output_filename(backend, index), "subfolder": VIEW_SUBFOLDER, "type": "output"}
            for index in (1, 2)
        ]}},
        "status": {"status_str": "success", "completed": True, "messages": [
            ["execution_start", {"prompt_id": prompt_id, "timestamp": started}],
            ["execution_cached", {"nodes": ["4", "6", "7"], "prompt_id": prompt_id, "timestamp": started + 1}],
            ["execution_success", {"prompt_id": prompt_id, "timestamp": started + 8412}],
        ]},
        "meta": {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}},
    }


def history_body(prompt_id: str, backend: str) -> bytes:
    return json.dumps({prompt_id: history_entry(prompt_id, backend)}).encode()


def prompt_info_body() -> bytes:
    """GET /prompt: what a gateway's health check may ask for."""
    return json.dumps({"exec_info": {"queue_remaining": 0}}).encode()


def queue_body() -> bytes:
    return json.dumps({"queue_running": [], "queue_pending": []}).encode()


def prompt_graph(target_bytes: int = PROMPT_TARGET_BYTES) -> dict[str, Any]:
    """An API-format graph of about target_bytes: a txt2img chain with a long prompt and a stack of LoRAs."""
    graph: dict[str, Any] = dict(history_entry("x", "x")["prompt"][2])
    graph["6"] = {"class_type": "CLIPTextEncode",
                  "inputs": {"text": ", ".join(["masterpiece", "best quality", "lighthouse", "dusk"] * 40),
                             "clip": ["4", 1]}}
    model_link: list[Any] = ["4", 0]
    node = 100
    while len(json.dumps(graph)) < target_bytes:
        graph[str(node)] = {"class_type": "LoraLoader", "_meta": {"title": f"LoRA {node}"},
                            "inputs": {"lora_name": f"style_{node}.safetensors", "strength_model": 0.75,
                                       "strength_clip": 0.6, "model": model_link, "clip": ["4", 1]}}
        model_link = [str(node), 0]
        node += 1
    graph["3"]["inputs"]["model"] = model_link
    return graph


def prompt_request_body() -> bytes:
    return json.dumps({"prompt": prompt_graph(), "client_id": WS_CLIENT_ID}).encode()


def object_info_body() -> bytes:
    """GET /object_info listing every node class the benchmark's prompt uses, its model files among the
    loaders' options: what the gateway's guardrails check each POST /prompt against."""
    graph = prompt_graph()
    checkpoints = sorted({node["inputs"]["ckpt_name"] for node in graph.values()
                          if node["class_type"] == "CheckpointLoaderSimple"})
    loras = sorted({node["inputs"]["lora_name"] for node in graph.values() if node["class_type"] == "LoraLoader"})
    seed = ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}]
    size = ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}]
    strength = ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}]

    def node(required: dict[str, Any], outputs: list[str], output_node: bool = False) -> dict[str, Any]:
        return {"input": {"required": required}, "output": outputs, "output_node": output_node}

    info = {
        "CheckpointLoaderSimple": node({"ckpt_name": [checkpoints]}, ["MODEL", "CLIP", "VAE"]),
        "EmptyLatentImage": node({"width": size, "height": size,
                                  "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}, ["LATENT"]),
        "CLIPTextEncode": node({"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}, ["CONDITIONING"]),
        "KSampler": node({"model": ["MODEL"], "seed": seed, "steps": ["INT", {"default": 20, "min": 1}],
                          "cfg": ["FLOAT", {"default": 8.0}], "sampler_name": [["euler", "euler_ancestral"]],
                          "scheduler": [["normal", "karras"]], "positive": ["CONDITIONING"],
                          "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
                          "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}]}, ["LATENT"]),
        "VAEDecode": node({"samples": ["LATENT"], "vae": ["VAE"]}, ["IMAGE"]),
        "SaveImage": node({"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, [],
                          output_node=True),
        "LoraLoader": node({"model": ["MODEL"], "clip": ["CLIP"], "lora_name": [loras],
                            "strength_model": strength, "strength_clip": strength}, ["MODEL", "CLIP"]),
    }
    return json.dumps(info).encode()


def progress_frame(value: int, maximum: int, prompt_id: str) -> bytes:
    return json.dumps({"type": "progress", "data": {"value": value, "max": maximum,
                                                    "prompt_id": prompt_id, "node": "3"}}).encode()


def executed_data(prompt_id: str, backend: str) -> dict[str, Any]:
    return {"node": "9", "display_node": "9",
            "output": {"images": [{"filename": output_filename(backend), "subfolder": VIEW_SUBFOLDER,
                                   "type": "output"}]},
            "prompt_id": prompt_id}


def executed_frame(prompt_id: str, backend: str) -> bytes:
    return json.dumps({"type": "executed", "data": executed_data(prompt_id, backend)}).encode()


def status_frame(sid: str) -> bytes:
    return json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                  "sid": sid}}).encode()


def strip_backend_prefix(value: Any, backend: str) -> Any:
    """Undo a gateway's output-ref rewrite (subfolder "bench" → "alpha/bench") so answers compare equal.

    A proxy that leaves refs alone passes unchanged; any other difference still shows up in the comparison.
    """
    if isinstance(value, dict):
        if "filename" in value and "type" in value and isinstance(value.get("subfolder"), str):
            subfolder: str = value["subfolder"]
            if subfolder == backend:
                subfolder = ""
            elif subfolder.startswith(backend + "/"):
                subfolder = subfolder[len(backend) + 1:]
            return {**value, "subfolder": subfolder}
        return {key: strip_backend_prefix(item, backend) for key, item in value.items()}
    if isinstance(value, list):
        return [strip_backend_prefix(item, backend) for item in value]
    return value


def write_view_files(directory: Path, large_bytes: int) -> dict[str, tuple[int, str]]:
    """Writes the two /view files of random (incompressible) bytes; returns name → (size, sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[int, str]] = {}
    for name, size in ((SMALL_VIEW_FILENAME, SMALL_VIEW_BYTES), (LARGE_VIEW_FILENAME, large_bytes)):
        digest = hashlib.sha256()
        with open(directory / name, "wb") as handle:
            for chunk in _random_chunks(size):
                digest.update(chunk)
                handle.write(chunk)
        written[name] = (size, digest.hexdigest())
    return written


def _random_chunks(size: int, chunk_bytes: int = 4 * MIB) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        chunk = os.urandom(min(chunk_bytes, remaining))
        remaining -= len(chunk)
        yield chunk

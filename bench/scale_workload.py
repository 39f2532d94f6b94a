"""What the scale benchmark serves and expects: the backends' names, the prompt ids in the gateway's affinity
store (which backend holds which), the ids the load asks for, and the two large histories a merged
GET /history combines. The fake upstreams build their answers from here and scale.py checks against the same.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from typing import Any

import workload

# Twenty backends; the two-backend cases use the first two, so `alpha` stays the default everywhere.
ALL_BACKENDS: tuple[str, ...] = workload.BACKENDS + tuple(f"backend{n:02d}" for n in range(3, 21))
MERGE_BACKENDS: tuple[str, ...] = workload.BACKENDS  # they hold the large histories
# Distinct ids a load run asks for, spread over the whole store: the same count in every case (but the one-entry
# store), since how many different answers go round changes the cost of every process on the path by itself.
REQUEST_SAMPLE = 500
HISTORY_START_MS = 1795503638630  # execution_start of the first merged entry


def affinity_prompt_id(index: int) -> str:
    """The index-th prompt in a store; a store of N entries holds indices 0..N-1, the same ids in every store."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfy-gateway-bench/scale/{index}"))


def holder(index: int, backends: Sequence[str]) -> str:
    """The backend a store records for the index-th prompt: round robin, so every backend gets its share."""
    return backends[index % len(backends)]


def request_indices(store_size: int, backends: int, spread: bool, sample: int = REQUEST_SAMPLE) -> list[int]:
    """Which stored prompts the load asks for, in the order it asks: a fixed random sample of the whole store,
    so lookups land all over the index rather than on its first pages. `spread`: prompts on every backend;
    else only those on the first, so that what changes between stores is the store, not how many upstreams
    share the work."""
    held = range(store_size) if spread else range(0, store_size, backends)
    chosen = random.Random(store_size).sample(held, min(sample, len(held)))
    random.Random(store_size + 1).shuffle(chosen)
    return chosen


def merge_prompt_id(backend: str, index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfy-gateway-bench/merge/{backend}/{index}"))


def merge_entry(backend: str, index: int) -> dict[str, Any]:
    """A finished txt2img entry of ~1.4 KB with two output refs (without the `meta` key 0.3.64 adds). The
    backends' start times interleave (alpha's i-th, then beta's i-th), so the merged order is known without
    running the merge."""
    prompt_id = merge_prompt_id(backend, index)
    started = HISTORY_START_MS + index * 2000 + MERGE_BACKENDS.index(backend) * 1000
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "illustriousXL_v01.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286 + index, "steps": 20, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                                   "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench/out", "images": ["8", 0]}},
    }
    return {
        "prompt": [index, prompt_id, graph, {"client_id": workload.WS_CLIENT_ID}, ["9"]],
        "outputs": {"9": {"images": [
            {"filename": workload.output_filename(backend, 2 * index + n), "subfolder": workload.VIEW_SUBFOLDER,
             "type": "output"} for n in (1, 2)
        ]}},
        "status": {"status_str": "success", "completed": True, "messages": [
            ["execution_start", {"prompt_id": prompt_id, "timestamp": started}],
            ["execution_success", {"prompt_id": prompt_id, "timestamp": started + 8412}],
        ]},
    }


def history_fragments(backend: str, entries: int) -> list[bytes]:
    """Each entry as the `"id": {...}` text json.dumps writes inside the history object, oldest first."""
    return [json.dumps({merge_prompt_id(backend, i): merge_entry(backend, i)}).encode()[1:-1]
            for i in range(entries)]


def page(count: int, max_items: int | None, offset: int | None) -> range:
    """Which of `count` entries ComfyUI's get_history(max_items, offset) returns (GET /history passes
    offset -1 when absent; a negative offset with max_items means the newest max_items)."""
    start = -1 if offset is None else offset
    if start < 0 and max_items is not None:
        start = count - max_items
    start = max(start, 0)
    stop = count if max_items is None else min(count, start + max(max_items, 1))
    return range(start, max(start, stop))


def merged_order(entries_each: int, max_items: int | None) -> list[tuple[str, int]]:
    """(backend, index) of every entry a merged GET /history answers, in order."""
    every = [(backend, i) for i in range(entries_each) for backend in MERGE_BACKENDS]
    return [every[position] for position in page(len(every), max_items, None)]

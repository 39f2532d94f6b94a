"""Checks, before any load, that each target of the scale benchmark answers right; a target that does not is
refused. Through the gateway, GET /history/{id} must come from the backend the store names (route
"affinity", that backend's output refs) and a merged GET /history must hold both backends' entries in time
order; directly, a backend's GET /history must be its own entries. Output refs may carry the backend prefix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

import scale_workload
import workload
from gateway.core.headers import BACKEND_HEADER, ROUTE_HEADER

CHECKED_IDS = 20  # per gateway: the first ids its load asks for
TIMEOUT = aiohttp.ClientTimeout(total=120)


async def check_affinity_routing(base_url: str, holders: Mapping[str, str]) -> list[str]:
    """GET /history/{id} without any selection, for the first CHECKED_IDS ids; what went wrong, if anything."""
    problems = []
    async with _session() as session:
        for prompt_id, backend in list(holders.items())[:CHECKED_IDS]:
            try:
                async with session.get(f"{base_url}/history/{prompt_id}") as response:
                    body, headers = await response.read(), response.headers
            except (aiohttp.ClientError, TimeoutError) as error:
                problems.append(f"/history/{prompt_id}: {type(error).__name__}: {error}")
                continue
            route = (headers.get(BACKEND_HEADER), headers.get(ROUTE_HEADER))
            if response.status != 200 or route != (backend, "affinity"):
                problems.append(f"/history/{prompt_id}: status {response.status}, routed {route}, expected "
                                f"{(backend, 'affinity')}")
            elif not _same_history(body, json.loads(workload.history_body(prompt_id, backend)), backend):
                problems.append(f"/history/{prompt_id}: wrong body {body[:120]!r}")
    return problems


async def check_history(url: str, *, entries_each: int, max_items: int | None, merged: bool) -> list[str]:
    """A whole or paged (`url` asks for max_items) GET /history: one backend's own entries (direct), or both
    backends' merged."""
    try:
        async with _session() as session:
            async with session.get(url) as response:
                body, route = await response.read(), response.headers.get(ROUTE_HEADER)
    except (aiohttp.ClientError, TimeoutError) as error:
        return [f"{url}: {type(error).__name__}: {error}"]
    if response.status != 200 or (merged and route != "merged"):
        return [f"{url}: status {response.status}, route {route}: {body[:160]!r}"]
    if merged:
        order = scale_workload.merged_order(entries_each, max_items)
    else:
        order = [(scale_workload.MERGE_BACKENDS[0], i) for i in scale_workload.page(entries_each, max_items, None)]
    try:
        answer = json.loads(body)
    except ValueError:
        return [f"{url}: not JSON: {body[:120]!r}"]
    ids = [scale_workload.merge_prompt_id(backend, index) for backend, index in order]
    if not isinstance(answer, dict) or list(answer) != ids:
        return [f"{url}: wrong entries or order ({len(answer)} entries, expected {len(ids)})"]
    for prompt_id, (backend, index) in zip(ids, order, strict=True):
        if workload.strip_backend_prefix(answer[prompt_id], backend) != scale_workload.merge_entry(backend, index):
            return [f"{url}: entry {prompt_id} of {backend} differs"]
    return []


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False, headers=workload.client_headers())


def _same_history(body: bytes, expected: Any, backend: str) -> bool:
    try:
        return bool(workload.strip_backend_prefix(json.loads(body), backend) == expected)
    except ValueError:
        return False

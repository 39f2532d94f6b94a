"""Checks that a target answers every benchmarked request with the right body before it is measured.

A target that fails any check is refused: its numbers would describe something other than proxying.
Output refs may come back prefixed with the backend name (the gateway's rewrite); nothing else may differ.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

import workload

GUARDRAILS_HEADER = "X-Comfy-Guardrails"
INVENTORY_WAIT_TRIES = 60
INVENTORY_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class Route:
    """How to reach one backend through a target: its base URL and the header value, if any."""

    base_url: str
    backend: str
    send_header: bool = True

    def headers(self) -> dict[str, str]:
        backend = {workload.BACKEND_HEADER: self.backend} if self.send_header else {}
        return {**workload.client_headers(), **backend}


async def verify_target(routes: Mapping[str, Route], *, files: Mapping[str, tuple[int, str]],
                        prompt_body: bytes, unknown_backend_url: str | None) -> list[str]:
    """Returns what the target got wrong (empty when every answer was right)."""
    problems: list[str] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        for route in routes.values():
            for check in (check_history, check_queue, check_prompt, check_view, check_websocket):
                try:
                    problem = await check(session, route, files=files, prompt_body=prompt_body)
                except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as error:
                    problem = f"{type(error).__name__}: {error}"
                if problem:
                    problems.append(f"{check.__name__.removeprefix('check_')} via {route.backend}: {problem}")
        if unknown_backend_url is not None:
            try:
                async with session.get(unknown_backend_url + "/queue", headers={
                        **workload.client_headers(), workload.BACKEND_HEADER: "no-such-backend"}) as response:
                    await response.read()
                if not 400 <= response.status < 500:
                    problems.append(f"unknown backend answered {response.status}, expected a 4xx")
            except (aiohttp.ClientError, TimeoutError) as error:
                problems.append(f"unknown backend: {type(error).__name__}: {error}")
    return problems


async def check_history(session: aiohttp.ClientSession, route: Route, **_: Any) -> str | None:
    prompt_id = workload.history_prompt_id(route.backend)
    url = f"{route.base_url}/history/{prompt_id}"
    async with session.get(url, headers=route.headers()) as response:
        body = await response.read()
    expected = json.loads(workload.history_body(prompt_id, route.backend))
    if response.status != 200:
        return f"status {response.status}"
    if workload.strip_backend_prefix(json.loads(body), route.backend) != expected:
        return f"wrong body: {body[:120]!r}"
    return None


async def check_queue(session: aiohttp.ClientSession, route: Route, **_: Any) -> str | None:
    async with session.get(f"{route.base_url}/queue", headers=route.headers()) as response:
        body = await response.read()
    if response.status != 200 or json.loads(body) != json.loads(workload.queue_body()):
        return f"status {response.status}, body {body[:120]!r}"
    return None


async def check_prompt(session: aiohttp.ClientSession, route: Route, *, prompt_body: bytes,
                       **_: Any) -> str | None:
    headers = {**route.headers(), "Content-Type": "application/json"}
    for _ in range(INVENTORY_WAIT_TRIES):
        async with session.post(f"{route.base_url}/prompt", data=prompt_body, headers=headers) as response:
            body = await response.read()
        # A gateway reads each backend's /object_info in the background after it starts: until then its
        # guardrails skip the prompt, and a load measured then would not pay for them.
        guardrails = response.headers.get(GUARDRAILS_HEADER, "")
        if "skipped" not in guardrails:
            break
        await asyncio.sleep(INVENTORY_WAIT_SECONDS)
    else:
        return f"the guardrails skipped every prompt ({GUARDRAILS_HEADER}: {guardrails})"
    if response.status != 200:
        return f"status {response.status}, body {body[:160]!r}"
    answer = json.loads(body)
    if not (isinstance(answer, dict) and set(answer) == {"prompt_id", "number", "node_errors"}
            and isinstance(answer["prompt_id"], str) and isinstance(answer["number"], int)
            and answer["node_errors"] == {}):
        return f"wrong body: {body[:160]!r}"
    return None


async def check_view(session: aiohttp.ClientSession, route: Route, *, files: Mapping[str, tuple[int, str]],
                     **_: Any) -> str | None:
    for filename, (size, sha256) in files.items():
        query = {"filename": filename, "subfolder": workload.VIEW_SUBFOLDER, "type": "output"}
        async with session.get(f"{route.base_url}/view", params=query, headers=route.headers()) as response:
            digest, received = hashlib.sha256(), 0
            async for chunk in response.content.iter_chunked(1024 * 1024):
                digest.update(chunk)
                received += len(chunk)
        if response.status != 200 or received != size or digest.hexdigest() != sha256:
            return f"{filename}: status {response.status}, {received} of {size} bytes, sha256 differs or short"
    return None


async def check_websocket(session: aiohttp.ClientSession, route: Route, **_: Any) -> str | None:
    url = f"{route.base_url}/ws?clientId={workload.WS_CLIENT_ID}"
    burst = 3
    prompt_id = workload.history_prompt_id(route.backend)
    async with session.ws_connect(url, headers=route.headers(), compress=0) as socket:
        greeting = json.loads((await socket.receive(timeout=10)).data)
        expected_greeting = json.loads(workload.status_frame(workload.WS_CLIENT_ID))
        if greeting != expected_greeting:
            return f"wrong greeting {greeting}"
        await socket.send_str(f"burst {burst} {route.backend}")
        for value in range(burst):
            frame = json.loads((await socket.receive(timeout=10)).data)
            if frame != json.loads(workload.progress_frame(value, burst, prompt_id)):
                return f"wrong progress frame {frame}"
        executed = json.loads((await socket.receive(timeout=10)).data)
        expected = json.loads(workload.executed_frame(prompt_id, route.backend))
        if workload.strip_backend_prefix(executed, route.backend) != expected:
            return f"wrong executed frame {executed}"
    return None

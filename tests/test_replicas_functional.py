"""Several gateways, one truth: two real `comfy-gateway serve` processes sharing one real Redis (127.0.0.1:6379,
a key prefix of this test's own, removed after it). A prompt submitted through one is followed through the other
(/history/{id}, /view of its outputs, /gateway/prompts/{id}); a preference set on one applies on the other at
once. And a Redis that goes away while the gateway runs, and comes back, through a real TCP relay in front of it.

Skipped when Redis is unreachable, except with CI set in the environment, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import asyncio as aioredis

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import start_kerniegen
from tests.gateway_process import GatewayProcess
from tests.ports import free_port
from tests.redis_keys import REDIS_URL
from tests.redis_keys import redis_prefix as fresh_redis_prefix

DATA_PATHS = ["fast", "aiohttp"]


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    async with fresh_redis_prefix() as prefix:
        yield prefix


@pytest.fixture
async def kerniegen(tmp_path: Path) -> AsyncIterator[Any]:
    server = await start_kerniegen(KernieGenConfig(port=0, data_dir=tmp_path / "kg", step_delay_ms=0))
    yield server
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def write_config(
    directory: Path, port: int, redis_url: str, prefix: str, backends: dict[str, str], **extra: Any
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        f"listen_port = {port}",
        'default_backend = "kg"',
        f"state_dir = {json.dumps(str(directory / 'state'))}",
        "health_check_interval_seconds = 0.5",
        *(f"{key} = {json.dumps(value)}" for key, value in extra.items()),
        "[store]",
        'kind = "redis"',
        f"redis_url = {json.dumps(redis_url)}",
        f"key_prefix = {json.dumps(prefix)}",
        "redis_connect_seconds = 1.0",
        "redis_command_seconds = 1.0",
    ]
    for name, url in backends.items():
        lines += [f"[backends.{name}]", f"url = {json.dumps(url)}"]
    path = directory / "gateway.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def image_prompt() -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "replicas"}},
    }


async def history_of(http: aiohttp.ClientSession, url: str, prompt_id: str) -> tuple[dict[str, str], dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        async with http.get(f"{url}/history/{prompt_id}") as r:
            assert r.status == 200
            body = await r.json()
            if body.get(prompt_id, {}).get("outputs"):
                return dict(r.headers), body[prompt_id]
        assert time.monotonic() < deadline, f"prompt {prompt_id} did not finish within 20 s"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("data_path", DATA_PATHS)
async def test_a_prompt_submitted_through_one_gateway_is_followed_through_the_other(
    tmp_path: Path, redis_prefix: str, kerniegen: Any, start_backend: Any, http: aiohttp.ClientSession,
    data_path: str,
) -> None:
    other = await start_backend("other")
    backends = {"kg": kerniegen.url, "other": other.url}
    ports = free_port(), free_port()
    a_url, b_url = (f"http://127.0.0.1:{port}" for port in ports)
    a = GatewayProcess(["--config", str(write_config(tmp_path / "a", ports[0], REDIS_URL, redis_prefix, backends))],
                       tmp_path, "a", COMFY_GATEWAY_DATA_PATH=data_path)
    b = GatewayProcess(["--config", str(write_config(tmp_path / "b", ports[1], REDIS_URL, redis_prefix, backends))],
                       tmp_path, "b", COMFY_GATEWAY_DATA_PATH=data_path)
    try:
        await a.wait_listening(a_url)
        await b.wait_listening(b_url)

        async with http.post(f"{a_url}/prompt", json={"prompt": image_prompt(), "client_id": "c-1"}) as r:
            assert r.status == 200, await r.text()
            prompt_id = (await r.json())["prompt_id"]

        headers, entry = await history_of(http, b_url, prompt_id)
        assert (headers["X-Comfy-Backend"], headers["X-Comfy-Route"]) == ("kg", "affinity")
        (image,) = entry["outputs"]["2"]["images"]
        assert image["subfolder"] == "kg"
        async with http.get(f"{b_url}/view", params=image) as r:
            assert r.status == 200 and r.content_type == "image/png"
            assert (await r.read()).startswith(b"\x89PNG")
        async with http.get(f"{b_url}/gateway/prompts/{prompt_id}") as r:
            where = await r.json()
        assert r.status == 200 and (where["backend"], where["state"]) == ("kg", "done")

        async with http.put(f"{a_url}/gateway/preferences/ana", json={"backend": "other"}) as r:
            assert r.status == 200
        async with http.get(f"{b_url}/system_stats", headers={"comfy-user": "ana"}) as r:
            assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("other", "preference")
        async with http.delete(f"{b_url}/gateway/preferences/ana") as r:
            assert r.status == 200
        async with http.get(f"{a_url}/system_stats", headers={"comfy-user": "ana"}) as r:
            assert (r.headers["X-Comfy-Backend"], r.headers["X-Comfy-Route"]) == ("kg", "default")

        assert await a.stop() == 0 and await b.stop() == 0
    finally:
        a.kill()
        b.kill()


# --- Redis going away while the gateway runs ---------------------------------------------------------------------


class Relay:
    """A TCP relay to Redis that the test can cut (closing every connection and the listener) and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


@pytest.mark.parametrize("data_path", DATA_PATHS)
async def test_a_redis_outage_answers_503_in_bounded_time_and_heals_without_a_restart(
    tmp_path: Path, redis_prefix: str, kerniegen: Any, http: aiohttp.ClientSession, data_path: str
) -> None:
    """The documented behaviour (README, "Running several gateways"): while Redis is away, a request that needs
    the store is answered 503 store_unavailable within the store's bounded waits and readiness fails; a request
    that needs nothing from it (a backend chosen by header, a /view of a rewritten ref) is still served; once
    Redis is back, the same gateway records and finds prompts again."""
    redis = aioredis.Redis.from_url(REDIS_URL)
    host = redis.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    port = redis.connection_pool.connection_kwargs.get("port", 6379)
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    await redis.aclose()
    relay = Relay(host, port)
    await relay.start()
    gateway_port = free_port()
    url = f"http://127.0.0.1:{gateway_port}"
    config = write_config(tmp_path / "g", gateway_port, f"redis://127.0.0.1:{relay.port}/{db}", redis_prefix,
                          {"kg": kerniegen.url})
    gateway = GatewayProcess(["--config", str(config)], tmp_path, "g", COMFY_GATEWAY_DATA_PATH=data_path)
    try:
        await gateway.wait_listening(url)
        async with http.post(f"{url}/prompt", json={"prompt": image_prompt()}) as r:
            assert r.status == 200
            before = (await r.json())["prompt_id"]
        _, entry = await history_of(http, url, before)
        (image,) = entry["outputs"]["2"]["images"]

        await relay.cut()
        started = time.monotonic()
        async with http.post(f"{url}/prompt", json={"prompt": image_prompt()}) as r:
            assert r.status == 503, await r.text()
            assert (await r.json())["error"]["type"] == "store_unavailable"
        async with http.get(f"{url}/history/{uuid.uuid4()}") as r:
            assert r.status == 503
        assert time.monotonic() - started < 10  # two bounded waits (1 s each here), never a hang
        async with http.get(f"{url}/gateway/ready") as r:
            assert r.status == 503
        async with http.get(f"{url}/system_stats", headers={"X-Comfy-Backend": "kg"}) as r:
            assert r.status == 200
        async with http.get(f"{url}/view", params=image) as r:
            assert r.status == 200

        await relay.start()
        deadline = time.monotonic() + 15
        while True:
            async with http.post(f"{url}/prompt", json={"prompt": image_prompt()}) as r:
                if r.status == 200:
                    after = (await r.json())["prompt_id"]
                    break
            assert time.monotonic() < deadline, "the gateway did not use Redis again within 15 s of its return"
            await asyncio.sleep(0.2)
        headers, _ = await history_of(http, url, after)
        assert headers["X-Comfy-Route"] == "affinity"
        async with http.get(f"{url}/gateway/ready") as r:
            assert r.status == 200
        assert await gateway.stop() == 0
        assert "Traceback" not in gateway.log
    finally:
        gateway.kill()
        if relay.server is not None:
            await relay.cut()


async def unrecorded_count(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "comfy_gateway_affinity_unrecorded_total"
    )


@pytest.mark.parametrize("data_path", DATA_PATHS)
async def test_with_on_outage_degrade_new_prompts_go_on_and_are_found_by_asking_the_backends(
    tmp_path: Path, redis_prefix: str, kerniegen: Any, http: aiohttp.ClientSession, data_path: str
) -> None:
    """store.on_outage = "degrade": while Redis is away a prompt that needs no stored fact is forwarded without
    its record (counted, logged) and followed by asking every backend; one whose owner or user's preference
    cannot be read is still refused; once Redis is back, the next lookup records it."""
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    kwargs = redis.connection_pool.connection_kwargs
    relay = Relay(kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379))
    await relay.start()
    gateway_port = free_port()
    url = f"http://127.0.0.1:{gateway_port}"
    config = write_config(tmp_path / "g", gateway_port, f"redis://127.0.0.1:{relay.port}/{kwargs.get('db', 0)}",
                          redis_prefix, {"kg": kerniegen.url})
    gateway = GatewayProcess(["--config", str(config)], tmp_path, "g", COMFY_GATEWAY_DATA_PATH=data_path,
                             COMFY_GATEWAY_STORE__ON_OUTAGE="degrade")
    try:
        await gateway.wait_listening(url)
        await relay.cut()

        async with http.post(f"{url}/prompt", json={"prompt": image_prompt()}) as r:
            assert r.status == 200, await r.text()
            prompt_id = (await r.json())["prompt_id"]
        headers, entry = await history_of(http, url, prompt_id)
        assert (headers["X-Comfy-Backend"], headers["X-Comfy-Route"]) == ("kg", "affinity")
        assert entry["outputs"]["2"]["images"]
        assert await unrecorded_count(http, url) == 1
        chosen = {"prompt": image_prompt(), "prompt_id": str(uuid.uuid4())}
        async with http.post(f"{url}/prompt", json=chosen) as r:
            assert r.status == 503  # a client-chosen id: whose it is cannot be checked
        async with http.post(f"{url}/prompt", json={"prompt": image_prompt()}, headers={"comfy-user": "ana"}) as r:
            assert r.status == 503  # ana's preference cannot be read
        assert await redis.exists(f"{redis_prefix}prompt:{prompt_id}") == 0

        await relay.start()
        deadline = time.monotonic() + 15
        while not await redis.exists(f"{redis_prefix}prompt:{prompt_id}"):
            assert time.monotonic() < deadline, "the prompt was not recorded within 15 s of Redis's return"
            await history_of(http, url, prompt_id)
            await asyncio.sleep(0.2)
        assert await gateway.stop() == 0
        assert f"state store unavailable: prompt {prompt_id} goes to backend kg without its affinity record" \
            in gateway.log
        assert "Traceback" not in gateway.log
    finally:
        gateway.kill()
        await redis.aclose()
        if relay.server is not None:
            await relay.cut()

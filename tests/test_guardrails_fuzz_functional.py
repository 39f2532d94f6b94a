"""Hypothesis over prompt bodies through a running gateway, on both data paths, with guardrails acting on them: a
recording backend that serves a real KernieGen's /object_info sees exactly the client's bytes but for the values
X-Comfy-Guardrails reports; a refusal is ComfyUI's error shape; nothing else is ever answered.

Hypothesis drives plain sockets from the test's thread; the gateway and the backend run on an event loop of
their own in a background thread, started once per data path (as in test_hostile_fuzz_functional.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import ClientSession, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.settings import BackendSettings, Settings, StoreSettings
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import start_kerniegen
from gateway.pipeline.prompt_nodes import splice, value_spans
from tests.recording_backend import RecordingBackend
from tests.test_hostile_fuzz_functional import BackgroundGateway, Target, check

CKPTS = ("one.safetensors", "two.safetensors")


class InventoriedBackend(RecordingBackend):
    object_info: bytes = b"{}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/object_info":
            return web.Response(body=self.object_info, content_type="application/json")
        return await super().handle(request)


class Running(BackgroundGateway):
    """A recording backend serving a real KernieGen's /object_info, and a gateway in front of it."""

    def __init__(self, tmp: Path, data_path: str) -> None:
        self.backend = InventoriedBackend("recording")
        super().__init__(tmp, data_path)

    async def _start(self) -> Target:
        kerniegen = await start_kerniegen(KernieGenConfig(
            port=0, data_dir=self.tmp / "kg", step_delay_ms=0, frontend_dir=None, inventory=Inventory(checkpoints=CKPTS)
        ))
        self.closing(kerniegen.close)
        async with ClientSession() as http, http.get(f"{kerniegen.url}/object_info") as r:
            self.backend.object_info = await r.read()
        runner = web.AppRunner(self.backend.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.closing(runner.cleanup)
        self.backend.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return await self.serve(
            Settings(
                backends={"recording": BackendSettings(url=self.backend.url, aliases={"alias.safetensors": CKPTS[0]})},
                default_backend="recording",
                state_dir=self.tmp / "state",
                store=StoreSettings(path=self.tmp / "state" / "gateway.sqlite3"),
                data_path=self.data_path,
                log_level="WARNING",
            )
        )


@pytest.fixture(scope="module", params=["fast", "aiohttp"])
def running(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    started = Running(tmp_path_factory.mktemp(f"guard-{request.param}"), request.param)
    deadline = time.monotonic() + 10
    while True:  # until the gateway has read the backend's inventory
        answer = started.target.request("GET", b"/gateway/backends/recording/models", [])
        if json.loads(answer.body)["known"]:
            break
        assert time.monotonic() < deadline, "no inventory read"
        time.sleep(0.05)
    yield started
    started.close()


seeds = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([-1, 2**64 - 1, -1.0, "-1", ["1", 0]]))
ckpts = st.sampled_from([*CKPTS, "alias.safetensors", "none.safetensors", ["9", 0]])
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
node = st.one_of(
    st.builds(lambda seed, text: {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 2, "text": text}},
              seeds, texts),
    st.builds(lambda ckpt: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}, ckpts),
    st.builds(lambda text: {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": text}},
              texts),
    st.just({"class_type": "NoSuchNode", "inputs": {}}),
)
prompts = st.dictionaries(st.sampled_from(["1", "3", "4", "9", "é", "a b"]), node, max_size=4)
spellings = st.sampled_from([{}, {"indent": 1}, {"separators": (",", ":")}, {"ensure_ascii": False}])


def reported(header: str) -> dict[tuple[str, str], bytes]:
    changes = {}
    for entry in filter(None, header.split(", ")):
        action, *pairs = entry.split(" ")
        fields = {key: unquote(value) for key, _, value in (pair.partition("=") for pair in pairs)}
        if action == "seed_normalized":
            changes[(fields["node"], fields["input"])] = fields["value"].encode()
        elif action == "alias_applied":
            changes[(fields["node"], fields["input"])] = json.dumps(fields["to"]).encode()
    return changes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts, spellings)
def test_the_backend_gets_the_clients_bytes_but_for_what_is_reported(
    running: Running, prompt: dict[str, Any], spelling: dict[str, Any]
) -> None:
    body = json.dumps({"prompt_id": "p", "prompt": prompt}, **spelling).encode()
    before = len(running.backend.seen)
    answer = running.target.request("POST", b"/prompt", [(b"Content-Type", b"application/json")], body)
    check(answer, body)
    headers = dict(answer.headers)
    if answer.status == 400:
        error = json.loads(answer.body)
        assert error["error"]["type"] in ("invalid_prompt", "prompt_outputs_failed_validation")
        assert error["error"]["extra_info"]["gateway"]["backend"] == "recording" and "node_errors" in error
        assert all(seen.raw_path != "/prompt" for seen in running.backend.seen[before:])  # never forwarded
        return
    assert answer.status == 200, answer
    sent = running.backend.last("/prompt").body
    changes = reported(headers.get("x-comfy-guardrails", ""))
    wanted: dict[str, list[str]] = {}
    for node_id, name in changes:
        wanted.setdefault(node_id, []).append(name)
    spans = value_spans(body, wanted)
    assert sent == splice(body, {spans[key]: value for key, value in changes.items()})

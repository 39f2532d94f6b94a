"""POST /prompt on a real socket: bodies in every Content-Type clients use, ComfyUI's number
counter (front, explicit numbers), client-chosen ids, sensitive extra_data, every malformed body
answered in ComfyUI's shape, a bounded queue, and the queue still working afterwards."""

from __future__ import annotations

import json

import aiohttp
import pytest

from gateway.kerniegen.responses import SERVER_ERROR_TEXT
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import get_json, history_entry, post_raw, submit
from tests.kerniegen.workflows import save_image, slow_chain

NO_PROMPT = {"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                       "extra_info": {}}, "node_errors": {}}


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/x-www-form-urlencoded",
                                          "application/json", "text/plain"])
async def test_body_is_json_whatever_the_content_type(
    content_type: str | None, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({"prompt": save_image(), "client_id": "c1"})
    status, text, answer_type = await post_raw(http, f"{kerniegen.url}/prompt", body, content_type)
    assert (status, answer_type) == (200, "application/json; charset=utf-8")
    answer = json.loads(text)
    assert set(answer) == {"prompt_id", "number", "node_errors"}
    entry = await history_entry(http, kerniegen, answer["prompt_id"])
    assert entry["prompt"][3] == {"client_id": "c1"}


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        pytest.param(b"{not json", 500, SERVER_ERROR_TEXT, id="not-json"),
        pytest.param(b"", 500, SERVER_ERROR_TEXT, id="empty"),
        pytest.param(b"\xff\xfe\x00", 500, SERVER_ERROR_TEXT, id="not-utf8"),
        pytest.param(b"null", 500, SERVER_ERROR_TEXT, id="null"),
        pytest.param(b"42", 500, SERVER_ERROR_TEXT, id="number"),
        pytest.param(b'["a", "list"]', 400, NO_PROMPT, id="list"),
        pytest.param(b'["prompt"]', 500, SERVER_ERROR_TEXT, id="list-naming-prompt"),
        pytest.param(b'"text"', 400, NO_PROMPT, id="string"),
        pytest.param(b'{"client_id": "x"}', 400, NO_PROMPT, id="no-prompt"),
        pytest.param(b'{"prompt": [{"1": {}}]}', 500, SERVER_ERROR_TEXT, id="prompt-is-list"),
        pytest.param(b'{"prompt": {}, "number": "abc"}', 500, SERVER_ERROR_TEXT, id="number-not-numeric"),
    ],
)
async def test_malformed_bodies_get_comfyuis_answer_and_the_queue_keeps_working(
    body: bytes, status: int, answer: object, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    got_status, text, content_type = await post_raw(http, f"{kerniegen.url}/prompt", body, "application/json")
    assert got_status == status
    if isinstance(answer, str):
        assert (text, content_type) == (answer, "text/plain; charset=utf-8")
    else:
        assert (json.loads(text), content_type) == (answer, "application/json; charset=utf-8")
    accepted = await submit(http, kerniegen, save_image())
    assert (await history_entry(http, kerniegen, accepted["prompt_id"]))["status"]["completed"] is True


async def test_extra_data_that_is_not_an_object_is_refused(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({"prompt": save_image(), "extra_data": ["x"], "client_id": "c"})
    assert (await post_raw(http, f"{kerniegen.url}/prompt", body, "application/json"))[:2] == (500, SERVER_ERROR_TEXT)


async def test_number_counter_front_and_explicit_numbers(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(step_delay_ms=20)
    first = await submit(http, server, slow_chain(color=1, scales=8))
    assert first["number"] == 0
    await post_raw(http, f"{server.url}/prompt", b'{"no": "prompt"}', "application/json")  # counts, as in ComfyUI
    later = await submit(http, server, save_image(color=2, prefix="kg/later"))
    front = await submit(http, server, save_image(color=3, prefix="kg/front"), front=True)
    explicit = await submit(http, server, save_image(color=4, prefix="kg/explicit"), number=7.5)
    assert (later["number"], front["number"], explicit["number"]) == (2, -3, 7.5)
    order = []
    for answer in (first, later, front, explicit):
        entry = await history_entry(http, server, answer["prompt_id"])
        order.append((entry["status"]["messages"][0][1]["timestamp"], entry["prompt"][0]))
    # The running prompt finishes first; then the negative number jumps ahead, then 2, then 7.5.
    assert [number for _, number in sorted(order)] == [0, -3, 2, 7.5]


async def test_client_chosen_prompt_id_is_kept_verbatim(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    assert (await submit(http, kerniegen, save_image(), prompt_id="mine-1"))["prompt_id"] == "mine-1"
    assert (await submit(http, kerniegen, save_image(color=9), prompt_id=12))["prompt_id"] == "12"  # str()'d
    entry = await history_entry(http, kerniegen, "mine-1")
    assert entry["prompt"][1] == "mine-1"


async def test_sensitive_extra_data_never_shows(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    extra = {"api_key_comfy_org": "secret", "auth_token_comfy_org": "secret", "mine": 1}
    answer = await submit(http, kerniegen, save_image(), extra_data=extra)
    entry = await history_entry(http, kerniegen, answer["prompt_id"])
    assert entry["prompt"][3] == {"mine": 1}
    assert "secret" not in json.dumps(await get_json(http, f"{kerniegen.url}/history"))


async def test_partial_execution_targets_limit_the_outputs(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    prompt = {**save_image(prefix="kg/a"),
              "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kg/b"}}}
    answer = await submit(http, kerniegen, prompt, partial_execution_targets=["3"])
    entry = await history_entry(http, kerniegen, answer["prompt_id"])
    assert entry["prompt"][4] == ["3"] and list(entry["outputs"]) == ["3"]
    assert not (kerniegen.state.dirs.output / "kg" / "a_00001_.png").exists()


async def test_queue_is_bounded(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(step_delay_ms=50, max_pending_prompts=2)
    for color in range(3):  # one running, two pending
        await submit(http, server, slow_chain(color=color, scales=6))
        if color == 0:
            while server.state.queue.running is None:
                await http.get(f"{server.url}/prompt")
    status, text, _ = await post_raw(http, f"{server.url}/prompt", json.dumps({"prompt": save_image()}), None)
    assert status == 503 and json.loads(text)["error"]["type"] == "queue_full"


async def test_validation_errors_reach_the_client_and_nothing_is_queued(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    prompt = save_image()
    prompt["1"]["inputs"]["width"] = -5
    status, text, _ = await post_raw(http, f"{kerniegen.url}/prompt", json.dumps({"prompt": prompt}), None)
    assert status == 400
    assert json.loads(text)["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"
    assert await get_json(http, f"{kerniegen.url}/queue") == {"queue_running": [], "queue_pending": []}

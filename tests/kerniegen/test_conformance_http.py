"""Shape conformance of KernieGen's HTTP answers with the recorded ComfyUI 0.3.64 exchanges:
submissions and rejections, queue and history, model and feature listings, /api twins, the
Host/Origin check and the body size cap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.transcript_replay import (
    FIXTURES,
    Replayer,
    assert_same_shape,
    check_reply,
    exchange,
    exchanges,
    load,
)
from tests.kerniegen.workflows import recorded_prompt, save_image, slow_chain

PROMPT_ANSWERS = sorted(
    path.name for path in FIXTURES.glob("02_prompt_*.json") if path.name != "02_prompt_error_seed_minus1.json"
)
# Recorded routes KernieGen leaves to a later issue (frontend support) or cannot have (model files).
NOT_COVERED = {"/experiment/models", "/experiment/models/checkpoints"}


async def post_prompt(http: aiohttp.ClientSession, server: KernieGenServer, prompt: dict[str, Any],
                      **extra: Any) -> str:
    async with http.post(f"{server.url}/prompt", json={"prompt": prompt, **extra}) as response:
        assert response.status == 200, await response.text()
        prompt_id: str = (await response.json())["prompt_id"]
        return prompt_id


async def run_interrupted_prompt(http: aiohttp.ClientSession, server: KernieGenServer, replayer: Replayer,
                                 **extra: Any) -> str:
    """A slow prompt, interrupted globally while it runs (the server needs a step delay)."""
    prompt_id = await post_prompt(http, server, slow_chain(color=4540, scales=10), **extra)
    while server.state.queue.running is None or server.state.queue.running.prompt_id != prompt_id:
        await asyncio.sleep(0.005)
    async with http.post(f"{server.url}/interrupt") as response:
        assert response.status == 200
    entry = await replayer.wait_for_history(prompt_id)
    assert entry["status"]["status_str"] == "error"
    return prompt_id


async def test_accepted_submissions_and_their_history_match_the_recording(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    replayer = Replayer(http, kerniegen.url)
    recorded = exchanges(load("01_prompt_success.json"))
    for item in recorded:
        if item["request"]["method"] == "POST":
            await replayer.replay(item)
    for item in recorded:
        if item["request"]["method"] == "GET":
            await replayer.wait_for_history(replayer.translate(item["request"]["path"].rsplit("/", 1)[1]))
            reply = await replayer.replay(item)
            entry = next(iter(reply.json().values()))
            recorded_entry = next(iter(item["response"]["body"]["json"].values()))
            assert entry["prompt"][4] == recorded_entry["prompt"][4]  # the same outputs ran
            assert entry["outputs"] == recorded_entry["outputs"]  # same file names on a fresh backend


@pytest.mark.parametrize("name", PROMPT_ANSWERS)
async def test_rejected_and_lenient_submissions_match_the_recording(
    name: str, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    replayer = Replayer(http, kerniegen.url)
    for item in exchanges(load(name)):
        await replayer.replay(item)
    # Nothing about a rejected body breaks the queue.
    prompt_id = await post_prompt(http, kerniegen, save_image())
    assert (await replayer.wait_for_history(prompt_id))["status"]["completed"] is True


async def test_seed_minus_one_with_the_checkpoint_installed(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(inventory=Inventory(checkpoints=("gwref-dummy.safetensors",)))
    replayer = Replayer(http, server.url)
    transcript = load("02_prompt_error_seed_minus1.json")
    for item in exchanges(transcript):
        if item["request"]["path"].startswith("/view_metadata/"):
            reply = await replayer.send(item["request"])  # a file's own metadata: any JSON object
            assert (reply.status, type(reply.json())) == (200, dict)
        else:
            await replayer.replay(item)
    rejection = exchange(transcript, "txt2img, ckpt exists, seed -1")["response"]["body"]["json"]
    reply = await replayer.send(exchange(transcript, "txt2img, ckpt exists, seed -1")["request"])
    assert reply.json() == rejection  # exactly, down to the 64-bit seed maximum in input_config


async def test_idle_queue_and_prompt_info(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    replayer = Replayer(http, kerniegen.url)
    for item in exchanges(load("02_queue_idle.json")):
        reply = await replayer.replay(item)
        assert reply.json() == item["response"]["body"]["json"]


async def test_history_listing_paging_and_lookup(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(step_delay_ms=20)
    replayer = Replayer(http, server.url)
    # The recorded history began with these three prompts (none with a client_id)...
    for source in ("06_ws_connect_and_broadcast.json", "06_ws_prompt_without_client_id.json"):
        await replayer.wait_for_history(await post_prompt(http, server, recorded_prompt(source)))
    await run_interrupted_prompt(http, server, replayer)
    # ...and its lookups name three later EmptyImage -> SaveImage prompts.
    for recorded_id, color in (("b951de1f-9106-4548-82ea-3f02cae32f98", 655360),
                               ("6a2c1959-ad01-45be-b471-a69cae2cf8a3", 655361),
                               ("50ff6f0a-2ee6-43f5-8c42-707fc2c6d2f3", 655362)):
        replayer.ids[recorded_id] = await post_prompt(http, server, save_image(color, "gwref/hist"))
        await replayer.wait_for_history(replayer.ids[recorded_id])
    for item in exchanges(load("03_history_get.json")):
        reply = await replayer.replay(item)
        if item["label"].startswith("max_items"):
            assert len(reply.json()) == len(item["response"]["body"]["json"])
    await replayer.replay(exchanges(load("03_history_bad_param.json"))[0])
    for item in exchanges(load("03_history_post.json")):
        await replayer.replay(item)


@pytest.mark.parametrize(
    ("name", "label"),
    [
        (name, item.get("label"))
        for name in ("07_embeddings.json", "07_extensions.json", "07_features.json", "07_models.json",
                     "07_models_after_cleanup.json", "07_object_info_single.json", "07_system_stats.json")
        for item in exchanges(load(name))
        if item["request"]["path"] not in NOT_COVERED
    ],
)
async def test_listings_match_the_recording(
    name: str, label: str | None, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    item = next(entry for entry in exchanges(load(name)) if entry.get("label") == label)
    reply = await Replayer(http, kerniegen.url).replay(item)
    if item["request"]["path"] in ("/models", "/features"):
        assert reply.json() == item["response"]["body"]["json"]


async def test_object_info_describes_the_recorded_classes_alike(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    transcript = load("07_object_info_subset.json")
    reply = await Replayer(http, kerniegen.url).send(transcript["request"])
    assert reply.status == 200
    assert reply.headers["Content-Type"] == transcript["response"]["headers"]["Content-Type"]
    ours = reply.json()
    for class_name in ("EmptyImage", "SaveImage", "PreviewImage", "LoadImage", "ImageInvert", "ImageScale",
                       "KSampler", "CheckpointLoaderSimple", "CLIPTextEncode"):
        if class_name in transcript["subset"]:
            assert_same_shape(transcript["subset"][class_name], ours[class_name], class_name)


async def test_api_twins_answer_like_the_bare_routes(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(step_delay_ms=20)
    replayer = Replayer(http, server.url)
    form = aiohttp.FormData()
    form.add_field("image", b"\x89PNG\r\n\x1a\n not really", filename="gwref_upload.png", content_type="image/png")
    async with http.post(f"{server.url}/api/upload/image", data=form) as response:
        assert response.status == 200
    # The recorded newest entry was an interrupted prompt with a client_id.
    await run_interrupted_prompt(http, server, replayer, client_id="gwref-client-queue")
    recorded = exchanges(load("09_api_prefix.json"))
    for item in recorded:
        if item["request"]["path"].startswith("/api/history/"):
            await replayer.wait_for_history(replayer.translate(item["request"]["path"].rsplit("/", 1)[1]))
        await replayer.replay(item)


async def test_root_and_unknown_paths(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    replayer = Replayer(http, kerniegen.url)
    for item in exchanges(load("09_root_and_static.json")):
        path = item["request"]["path"]
        if path in ("/", "/api/"):
            reply = await replayer.send(item["request"])  # a page of our own, not ComfyUI's frontend
            recorded = item["response"]["headers"]
            assert (reply.status, reply.headers["Content-Type"]) == (200, recorded["Content-Type"])
            assert reply.headers["Cache-Control"] == recorded["Cache-Control"]
        elif path == "/no_such_file.js":
            await replayer.replay(item)


async def test_host_origin_check_matches_the_recording(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    replayer = Replayer(http, kerniegen.url)
    for item in exchanges(load("10_origin_check.json")):
        await replayer.replay(item)


async def test_bodies_over_the_cap_get_413_as_recorded(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    cap = 64 * 1024
    server = await start_kg(max_upload_bytes=cap)
    recorded = exchanges(load("05_upload_too_large.json"))
    expected_text = recorded[0]["response"]["body"]["text"].replace("104857600", str(cap))
    form = aiohttp.FormData()
    form.add_field("image", b"\0" * (cap + 1024), filename="too_big.png", content_type="image/png")
    async with http.post(f"{server.url}/upload/image", data=form) as response:
        assert (response.status, await response.text()) == (413, expected_text)
        assert response.headers["Content-Type"] == recorded[0]["response"]["headers"]["Content-Type"]
    body = json.dumps({"prompt": "x" * (cap + 1024)})
    async with http.post(f"{server.url}/prompt", data=body, headers={"Content-Type": "application/json"}) as response:
        assert (response.status, await response.text()) == (413, expected_text)
    async with http.get(f"{server.url}/prompt") as response:  # still serving
        assert response.status == 200


def test_every_recorded_route_kerniegen_covers_has_a_test() -> None:
    """Guards against a transcript file quietly falling out of the conformance suite."""
    covered_elsewhere = {"04_view.json", "04_view_source_prompt.json", "04_view_source_prompt_temp.json",
                         "05_upload_image.json", "05_upload_mask.json", "05_upload_then_loadimage.json"}
    covered_here = {"01_prompt_success.json", "02_queue_idle.json", "02_prompt_error_seed_minus1.json",
                    "03_history_get.json", "03_history_bad_param.json", "03_history_post.json",
                    "05_upload_too_large.json", "07_object_info_subset.json", "09_api_prefix.json",
                    "09_root_and_static.json", "10_origin_check.json", *PROMPT_ANSWERS}
    ws_files = {path.name for path in FIXTURES.glob("06_ws_*.json")} | {"08_queue_busy_interrupt_delete.json"}
    listed = {path.name for path in FIXTURES.glob("0*.json")} | {path.name for path in FIXTURES.glob("1*.json")}
    listings = {"07_embeddings.json", "07_extensions.json", "07_features.json", "07_models.json",
                "07_models_after_cleanup.json", "07_object_info_single.json", "07_system_stats.json"}
    not_kerniegens = {"00_versions.json", "07_frontend_support_routes.json", "07_userdata.json",
                      "07_object_info_mock_classes.json"}
    assert listed - covered_here - covered_elsewhere - ws_files - listings - not_kerniegens == set()


def test_replay_reports_shape_differences() -> None:
    recorded = {"status": 200, "headers": {"Content-Type": "application/json; charset=utf-8"},
                "body": {"json": {"a": 1}}}
    from multidict import CIMultiDict, CIMultiDictProxy

    from tests.kerniegen.transcript_replay import Reply

    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json; charset=utf-8"}))
    check_reply(recorded, Reply(200, headers, b'{"a": 2}'))
    with pytest.raises(AssertionError):
        check_reply(recorded, Reply(200, headers, b'{"a": "2"}'))
    with pytest.raises(AssertionError):
        check_reply(recorded, Reply(200, headers, b'{"a": 1, "b": 2}'))

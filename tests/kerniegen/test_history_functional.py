"""GET/POST /history on a real socket: {} while a prompt is queued or running, paging with
ComfyUI's quirks, the bound on entries, reused prompt ids, and odd delete bodies."""

from __future__ import annotations

import json

import aiohttp
import pytest

from gateway.kerniegen.responses import SERVER_ERROR_TEXT
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import get_json, history_entry, post_raw, submit, wait_idle
from tests.kerniegen.workflows import save_image, slow_chain


async def test_history_is_empty_until_the_prompt_finishes(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(step_delay_ms=25)
    running = (await submit(http, server, slow_chain(scales=4)))["prompt_id"]
    queued = (await submit(http, server, save_image()))["prompt_id"]
    assert await get_json(http, f"{server.url}/history/{running}") == {}
    assert await get_json(http, f"{server.url}/history/{queued}") == {}
    entry = await history_entry(http, server, queued)
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    assert [message[0] for message in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"]


@pytest.fixture
async def five_done(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> list[str]:
    ids = []
    for color in range(5):
        ids.append((await submit(http, kerniegen, save_image(color=color), prompt_id=f"p{color}"))["prompt_id"])
        await history_entry(http, kerniegen, ids[-1])
    return ids


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["p0", "p1", "p2", "p3", "p4"]),
        ("?max_items=2", ["p3", "p4"]),  # max_items alone: the newest N
        ("?max_items=2&offset=1", ["p1", "p2"]),
        ("?offset=3", ["p3", "p4"]),
        ("?offset=-2", ["p0", "p1", "p2", "p3", "p4"]),
        ("?max_items=0", []),
        ("?max_items=0&offset=0", ["p0"]),  # ComfyUI adds an entry before it checks the count
        ("?max_items=9", ["p0", "p1", "p2", "p3", "p4"]),
        ("?max_items=%2B2", ["p3", "p4"]),  # int() accepts "+2"
    ],
)
async def test_history_paging(
    query: str, expected: list[str], five_done: list[str], kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    assert list(await get_json(http, f"{kerniegen.url}/history{query}")) == expected


@pytest.mark.parametrize("query", ["?max_items=abc", "?offset=1.5", "?max_items="])
async def test_history_bad_numbers_are_a_500(
    query: str, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{kerniegen.url}/history{query}") as response:
        assert (response.status, await response.text()) == (500, SERVER_ERROR_TEXT)


async def test_history_delete_and_clear(
    five_done: list[str], kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    url = f"{kerniegen.url}/history"
    assert (await post_raw(http, url, json.dumps({"delete": ["p1", "nope"]}), "application/json"))[:2] == (200, "")
    assert list(await get_json(http, url)) == ["p0", "p2", "p3", "p4"]
    for body, status in ((b"", 500), (b"[]", 200), (b'{"delete": 3}', 500), (b'{"delete": [["p2"]]}', 500)):
        assert (await post_raw(http, url, body, "application/json"))[0] == status
    assert (await post_raw(http, url, b'{"clear": true}', "application/json"))[0] == 200
    assert await get_json(http, url) == {}


async def test_history_keeps_the_newest_entries_up_to_its_bound(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    server = await start_kg(max_history_items=3)
    for color in range(5):
        await submit(http, server, save_image(color=color), prompt_id=f"p{color}")
        await history_entry(http, server, f"p{color}")
    assert list(await get_json(http, f"{server.url}/history")) == ["p2", "p3", "p4"]


async def test_reused_prompt_id_keeps_its_place(
    five_done: list[str], kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    await submit(http, kerniegen, save_image(color=99), prompt_id="p1")
    await wait_idle(http, kerniegen)
    history = await get_json(http, f"{kerniegen.url}/history")
    assert list(history) == ["p0", "p1", "p2", "p3", "p4"]
    assert history["p1"]["prompt"][2]["1"]["inputs"]["color"] == 99

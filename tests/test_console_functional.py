"""The console's page and data endpoints through a real gateway in front of two real KernieGens, on both data
paths: what each endpoint shows (what the guardrails did to a prompt too, kept by either store), who may see it,
live backend states as Server-Sent Events, and hostile values kept as data."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config.settings import StoreSettings
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import KernieGenServer, start_kerniegen
from gateway.state.store import StateStore, StoreError, open_store
from tests.kerniegen import workflows
from tests.redis_keys import REDIS_URL, delete_keys, fresh_prefix, unreachable
from tests.switchable_backend import SwitchableBackend

ADMIN = "console-admin-token-0123456789"
HOSTILE_USER = '<img src=x onerror="alert(1)">&amp;'
HOSTILE_PROMPT_ID = "<script>alert('id')</script>"
FAST_CHECKS = {"health_check_interval_seconds": 0.2, "queue_poll_interval_seconds": 0.2}
CHECKPOINT = Inventory().checkpoints[0]  # what a KernieGen has unless told otherwise


def tiny_prompt(prefix: str = "console") -> dict[str, Any]:
    return workflows.save_image(255, prefix, size=16)


def seeded_prompt(checkpoint: str = CHECKPOINT, seed: Any = -1) -> dict[str, Any]:
    """A txt2img prompt whose KSampler seed is `seed` (-1, "random", is what the guardrails replace)."""
    return workflows.txt2img(seed, width=16, height=16, steps=1, prefix="seeded", ckpt_name=checkpoint)


@pytest.fixture(params=["sqlite", "redis"])
async def state_store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore | None]:
    """None: the gateway opens its own SQLite file. Else a Redis store under a fresh key prefix, whose keys are
    deleted afterwards (the test fails under CI, and is skipped elsewhere, when Redis is unreachable)."""
    if request.param == "sqlite":
        yield None
        return
    prefix = fresh_prefix()
    try:
        store = await open_store(StoreSettings(kind="redis", redis_url=REDIS_URL, key_prefix=prefix))
    except StoreError as exc:
        unreachable(exc)
    try:
        yield store
    finally:
        await store.close()
        await delete_keys(prefix)


@pytest.fixture
async def kerniegens(tmp_path: Path) -> Any:
    servers = [
        await start_kerniegen(KernieGenConfig(port=0, data_dir=tmp_path / name, step_delay_ms=0))
        for name in ("one", "two")
    ]
    yield servers
    for server in servers:
        await server.close()


async def gateway_for(start_gateway: Any, kerniegens: list[KernieGenServer], **overrides: Any) -> Any:
    first, second = kerniegens
    return await start_gateway({"one": first.url, "two": second.url}, **{**FAST_CHECKS, **overrides})


def bearer(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def submit(http: aiohttp.ClientSession, gateway_url: str, headers: dict[str, str], **body: Any) -> str:
    async with http.post(f"{gateway_url}/prompt", json={"prompt": tiny_prompt(), **body}, headers=headers) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["prompt_id"])


async def wait_for_prompt(http: aiohttp.ClientSession, url: str, prompt_id: str, state: str, **kwargs: Any) -> Any:
    deadline = time.monotonic() + 10
    while True:
        status, body = await get_json(http, url, **kwargs)
        assert status == 200, body
        found = [p for p in body["prompts"] if p["prompt_id"] == prompt_id]
        if found and found[0]["state"] == state:
            return found[0]
        assert time.monotonic() < deadline, f"prompt {prompt_id} never {state}: {body}"
        await asyncio.sleep(0.05)


async def test_the_page_and_its_files_are_served_with_a_strict_policy(start_gateway, kerniegens) -> None:
    gateway = await gateway_for(start_gateway, kerniegens, security={"admin_token": ADMIN})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/gateway/console") as page:
            html = await page.text()
            assert page.status == 200
            assert page.headers["Content-Type"].startswith("text/html")
            policy = page.headers["Content-Security-Policy"]
        for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
            async with http.get(f"{gateway.url}/gateway/console/static/{name}") as asset:
                assert asset.status == 200 and asset.headers["Content-Type"].startswith(kind)
                assert len(await asset.read()) > 1000
        async with http.get(f"{gateway.url}/gateway/console/static/..%2Fconsole.py") as missing:
            assert missing.status == 404

    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert '<script src="/gateway/console/static/console.js" defer></script>' in html
    assert "http://" not in html and "https://" not in html  # nothing loaded from elsewhere
    assert ADMIN not in html


async def test_backends_show_state_identity_queue_and_default_with_credentials_masked(
    start_gateway, kerniegens
) -> None:
    first, second = kerniegens
    with_password = second.url.replace("http://", "http://ops:hunter2@")
    gateway = await start_gateway({"one": first.url, "two": with_password}, **FAST_CHECKS)
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 10
        while True:
            status, body = await get_json(http, f"{gateway.url}/gateway/console/backends")
            shown = {b["name"]: b for b in body["backends"]}
            if all("queue_depth" in b and "seen_kind" in b for b in shown.values()):
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.05)

    assert status == 200 and list(shown) == ["one", "two"]
    one, two = shown["one"], shown["two"]
    assert one["default"] is True and two["default"] is False
    assert one["up"] is True and one["url"] == first.url and one["kind"] == "any"
    assert one["seen_kind"] == "kerniegen" and one["seen_version"]
    assert one["queue_depth"] == 0 and one["latency_ms"] >= 0 and "last_error" not in one
    assert two["url"] == with_password.replace("ops:hunter2@", "***@")
    assert "hunter2" not in json.dumps(body)


async def test_a_backend_that_stops_is_shown_down_with_its_error_and_no_queue(start_gateway, kerniegens) -> None:
    two = await SwitchableBackend(kerniegens[1].url).start()
    gateway = await start_gateway({"one": kerniegens[0].url, "two": two.url}, **FAST_CHECKS)
    url = f"{gateway.url}/gateway/console/backends"
    async with aiohttp.ClientSession() as http:
        before = await backend_when(http, url, lambda b: b.get("up") is True and "seen_kind" in b)
        await two.stop()
        after = await backend_when(http, url, lambda b: b.get("up") is False)

    assert "queue_depth" in before and "last_error" not in before
    assert after["ready"] is False and "queue_depth" not in after
    assert after["last_error"].startswith("backend 'two' at http://127.0.0.1:")
    assert after["seen_kind"] == "kerniegen"  # what it said it was, kept while it cannot be asked


async def backend_when(http: aiohttp.ClientSession, url: str, condition: Any) -> Any:
    """Backend two's state once `condition` holds for it."""
    deadline = time.monotonic() + 10
    while True:
        _, body = await get_json(http, url)
        two = body["backends"][1]
        if condition(two):
            return two
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_the_event_stream_sends_the_state_at_once_then_each_change(start_gateway, kerniegens) -> None:
    two = await SwitchableBackend(kerniegens[1].url).start()
    gateway = await start_gateway({"one": kerniegens[0].url, "two": two.url}, **FAST_CHECKS)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/gateway/console/events") as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            first = await next_event(stream)
            await two.stop()
            while True:  # the stream goes on by itself until backend two is seen down
                later = await next_event(stream)
                if later["backends"][1].get("up") is False:
                    break

    assert [b["name"] for b in first["backends"]] == ["one", "two"]
    assert later["backends"][0]["up"] is True


async def next_event(stream: aiohttp.ClientResponse, seconds: float = 10.0) -> Any:
    """The data of the next `backends` event (comments and retry lines skipped)."""
    event = None
    async with asyncio.timeout(seconds):
        while True:
            line = (await stream.content.readline()).decode().rstrip("\n")
            if line == "event: backends":
                event = "backends"
            elif line.startswith("data: ") and event == "backends":
                return json.loads(line.removeprefix("data: "))


async def test_open_streams_are_capped_and_a_closed_one_frees_its_place(start_gateway, kerniegens) -> None:
    gateway = await gateway_for(start_gateway, kerniegens, console={"max_streams": 1, "heartbeat_seconds": 0.1})
    url = f"{gateway.url}/gateway/console/events"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as stream:
            await next_event(stream)
            heartbeat = await asyncio.wait_for(stream.content.readline(), 5)
            status, refused = await get_json(http, url)
        deadline = time.monotonic() + 15
        while True:  # the server sees the first stream closed at its next writes (heartbeats)
            async with http.get(url) as again:
                if again.status == 200:
                    break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

    assert heartbeat in (b": heartbeat\n", b"\n")
    assert status == 503 and "console.max_streams" in json.dumps(refused)


async def test_a_prompt_is_listed_with_route_state_duration_and_outputs_viewable(start_gateway, kerniegens) -> None:
    gateway = await gateway_for(start_gateway, kerniegens)
    listing = f"{gateway.url}/gateway/console/prompts"
    async with aiohttp.ClientSession() as http:
        by_header = await submit(http, gateway.url, {"X-Comfy-Backend": "two", "comfy-user": "ana"})
        by_default = await submit(http, gateway.url, {"comfy-user": "bo"})
        item = await wait_for_prompt(http, listing, by_header, "done")
        await wait_for_prompt(http, listing, by_default, "done")
        _, everything = await get_json(http, listing)
        _, only_two = await get_json(http, listing, params={"backend": "two"})
        _, only_bo = await get_json(http, listing, params={"user": "bo"})
        _, failed = await get_json(http, listing, params={"state": "failed"})
        _, one = await get_json(http, listing, params={"limit": "1"})
        output = item["outputs"][0]
        async with http.get(f"{gateway.url}/view", params=output) as view:
            picture = await view.read()
            assert view.status == 200 and view.headers["X-Comfy-Backend"] == "two"

    assert [p["prompt_id"] for p in everything["prompts"]] == [by_default, by_header]
    assert item["backend"] == "two" and item["user"] == "ana" and item["route"] == "header"
    assert "X-Comfy-Backend header" in item["route_reason"]
    assert everything["prompts"][0]["route"] == "default" and everything["prompts"][0]["backend"] == "one"
    assert item["output_count"] == 1 and output["subfolder"] == "two" and output["type"] == "output"
    assert item["duration_seconds"] >= 0 and item["submitted_at"] <= time.time()
    assert picture.startswith(b"\x89PNG")
    assert [p["prompt_id"] for p in only_two["prompts"]] == [by_header]
    assert [p["prompt_id"] for p in only_bo["prompts"]] == [by_default]
    assert failed["prompts"] == []
    assert [p["prompt_id"] for p in one["prompts"]] == [by_default]


async def inventories_known(http: aiohttp.ClientSession, gateway_url: str, *names: str) -> None:
    """Wait until the gateway has read each backend's inventory: the guardrails act only then."""
    deadline = time.monotonic() + 10
    for name in names:
        while not (await get_json(http, f"{gateway_url}/gateway/backends/{name}/models"))[1]["known"]:
            assert time.monotonic() < deadline, f"the inventory of {name} was never read"
            await asyncio.sleep(0.05)


async def test_a_prompt_shows_what_the_guardrails_did_to_it_only_to_the_admin(
    state_store: StateStore | None, start_gateway: Any, kerniegens: list[KernieGenServer]
) -> None:
    gateway = await gateway_for(start_gateway, kerniegens, store=state_store, security={"admin_token": ADMIN})
    listing = f"{gateway.url}/gateway/console/prompts"
    async with aiohttp.ClientSession() as http:
        await inventories_known(http, gateway.url, "one")
        async with http.post(f"{gateway.url}/prompt", json={"prompt": seeded_prompt()}) as r:
            assert r.status == 200, await r.text()
            seeded = (await r.json())["prompt_id"]
            said = r.headers["X-Comfy-Guardrails"]
        calm = await submit(http, gateway.url, {})
        item = await wait_for_prompt(http, listing, seeded, "done", headers=bearer())
        calm_item = await wait_for_prompt(http, listing, calm, "done", headers=bearer())
        _, prompt = await get_json(http, f"{gateway.url}/gateway/prompts/{seeded}", headers=bearer())
        _, calm_prompt = await get_json(http, f"{gateway.url}/gateway/prompts/{calm}", headers=bearer())
        refused = [
            await get_json(http, url, headers=headers)
            for url in (f"{gateway.url}/gateway/prompts/{seeded}", listing)
            for headers in ({}, bearer("not-the-token"))
        ]

    assert said.startswith("seed_normalized node=3 input=seed value=")
    assert item["guardrails"] == ["seed_normalized"] and item["route"] == "default" and item["backend"] == "one"
    assert len(item["guardrail_notes"]) == 1 and "seed" in item["guardrail_notes"][0]
    assert (calm_item["guardrails"], calm_item["guardrail_notes"]) == ([], [])
    assert (prompt["guardrails"], prompt["route"], prompt["state"]) == (["seed_normalized"], "default", "done")
    assert calm_prompt["guardrails"] == []
    assert [status for status, _ in refused] == [401, 401, 401, 401]
    assert "seed_normalized" not in json.dumps([body for _, body in refused])


async def test_a_prompt_placed_by_model_says_why_and_what_was_done(
    start_gateway: Any, kerniegens: list[KernieGenServer], tmp_path: Path
) -> None:
    other = await start_kerniegen(
        KernieGenConfig(port=0, data_dir=tmp_path / "other", step_delay_ms=0,
                        inventory=Inventory(checkpoints=("other_v1.safetensors",)))
    )
    try:
        gateway = await start_gateway(
            {"one": kerniegens[0].url, "other": other.url}, **FAST_CHECKS, guardrails={"place_by_model": True}
        )
        async with aiohttp.ClientSession() as http:
            await inventories_known(http, gateway.url, "one", "other")
            async with http.post(f"{gateway.url}/prompt", json={"prompt": seeded_prompt("other_v1.safetensors")}) as r:
                assert r.status == 200, await r.text()
                prompt_id = (await r.json())["prompt_id"]
            item = await wait_for_prompt(http, f"{gateway.url}/gateway/console/prompts", prompt_id, "done")
            _, prompt = await get_json(http, f"{gateway.url}/gateway/prompts/{prompt_id}")
    finally:
        await other.close()

    assert (item["backend"], item["route"]) == ("other", "model")
    assert "lacks a model file" in item["route_reason"]
    assert item["guardrails"] == ["placed_by_model", "seed_normalized"] == prompt["guardrails"]
    assert [("model file" in note, "seed" in note) for note in item["guardrail_notes"]] == [(True, False),
                                                                                              (False, True)]


async def test_a_preference_route_is_recorded_and_the_users_listing_shows_it(start_gateway, kerniegens) -> None:
    gateway = await gateway_for(start_gateway, kerniegens)
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{gateway.url}/gateway/preferences/carla", json={"backend": "two"}) as put:
            assert put.status == 200
        prompt_id = await submit(http, gateway.url, {"comfy-user": "carla"})
        item = await wait_for_prompt(http, f"{gateway.url}/gateway/console/prompts", prompt_id, "done")
        status, users = await get_json(http, f"{gateway.url}/gateway/console/users")

    assert item["route"] == "preference" and item["backend"] == "two"
    assert status == 200
    assert users == {"users": [{"user": "carla", "backend": "two"}], "truncated": False,
                     "backends": ["one", "two"], "default": "one"}


@pytest.mark.parametrize(
    ("query", "member"),
    [
        ({"state": "sleeping"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100000"}, "limit"),
        ({"limit": "½"}, "limit"),
        ({"user": "a\x00b"}, "user"),
        ({"backend": "nope"}, "backend"),
    ],
)
async def test_bad_filters_are_a_clear_400(start_gateway, kerniegens, query: dict[str, str], member: str) -> None:
    gateway = await gateway_for(start_gateway, kerniegens)
    async with aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{gateway.url}/gateway/console/prompts", params=query)

    assert status == 400, body
    assert member in json.dumps(body)


async def test_only_the_admin_sees_owners_while_the_page_and_backends_stay_open(start_gateway, kerniegens) -> None:
    gateway = await gateway_for(start_gateway, kerniegens, security={"admin_token": ADMIN})
    base = f"{gateway.url}/gateway/console"
    async with aiohttp.ClientSession() as http:
        await submit(http, gateway.url, {"comfy-user": "ana"})
        open_paths = [await get_json(http, f"{base}/backends")]
        async with http.get(base) as page:
            open_paths.append((page.status, None))
        async with http.get(f"{base}/events") as stream:
            open_paths.append((stream.status, None))
        anonymous = [await get_json(http, f"{base}/{p}") for p in ("prompts", "users")]
        wrong = [await get_json(http, f"{base}/{p}", headers=bearer("not-the-token")) for p in ("prompts", "users")]
        in_query = [await get_json(http, f"{base}/{p}", params={"token": ADMIN}) for p in ("prompts", "users")]
        admin = [await get_json(http, f"{base}/{p}", headers=bearer()) for p in ("prompts", "users")]
        async with http.put(f"{gateway.url}/gateway/preferences/ana", json={"backend": "two"}) as write:
            refused_write = write.status
        async with http.put(f"{gateway.url}/gateway/preferences/ana", json={"backend": "two"}, headers=bearer()) as w:
            admin_write = w.status

    assert [status for status, _ in open_paths] == [200, 200, 200]
    assert [status for status, _ in anonymous] == [401, 401]
    assert [status for status, _ in wrong] == [401, 401]  # a token that is not one of the gateway's
    assert all(status == 200 for status, _ in in_query)  # ?token= names the admin too, as on every route
    assert "ana" not in json.dumps([body for _, body in anonymous + wrong])
    assert [status for status, _ in admin] == [200, 200]
    assert admin[0][1]["prompts"][0]["user"] == "ana"
    assert refused_write == 401 and admin_write == 200


async def test_with_no_admin_token_a_client_on_this_host_sees_owners(start_gateway, kerniegens) -> None:
    gateway = await gateway_for(start_gateway, kerniegens)
    async with aiohttp.ClientSession() as http:
        await submit(http, gateway.url, {"comfy-user": "ana"})
        status, body = await get_json(http, f"{gateway.url}/gateway/console/prompts")

    assert status == 200 and body["prompts"][0]["user"] == "ana"


async def test_hostile_user_names_and_prompt_ids_come_back_as_plain_json_strings(start_gateway, kerniegens) -> None:
    gateway = await gateway_for(start_gateway, kerniegens)
    async with aiohttp.ClientSession() as http:
        prompt_id = await submit(http, gateway.url, {"comfy-user": HOSTILE_USER}, prompt_id=HOSTILE_PROMPT_ID)
        async with http.put(
            f"{gateway.url}/gateway/preferences/{aiohttp.helpers.quote(HOSTILE_USER, safe='')}", json={"backend": "two"}
        ) as put:
            assert put.status == 200
        item = await wait_for_prompt(http, f"{gateway.url}/gateway/console/prompts", prompt_id, "done")
        _, filtered = await get_json(http, f"{gateway.url}/gateway/console/prompts", params={"user": HOSTILE_USER})
        async with http.get(f"{gateway.url}/gateway/console/users") as users:
            raw_users = await users.text()
            content_type = users.headers["Content-Type"]

    assert prompt_id == HOSTILE_PROMPT_ID
    assert item["user"] == HOSTILE_USER and item["prompt_id"] == HOSTILE_PROMPT_ID
    assert [p["prompt_id"] for p in filtered["prompts"]] == [HOSTILE_PROMPT_ID]
    assert content_type.startswith("application/json")
    assert json.loads(raw_users)["users"] == [{"user": HOSTILE_USER, "backend": "two"}]


def test_every_file_of_the_page_is_package_data() -> None:
    """`pip install .` ships what the console serves: pyproject's package-data covers each of its files."""
    import fnmatch
    import tomllib

    import gateway.admin

    root = Path(__file__).resolve().parents[1]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    admin = Path(gateway.admin.__file__).parent
    files = [p.relative_to(admin).as_posix() for p in (admin / "console_static").iterdir()]

    assert sorted(files) == ["console_static/console.css", "console_static/console.html", "console_static/console.js"]
    assert all(any(fnmatch.fnmatch(f, glob) for glob in package_data["gateway.admin"]) for f in files)

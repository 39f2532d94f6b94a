"""One client socket follows its prompts on every backend (the WebSocket fan-in), on both data paths: prompts
sent to two KernieGens by header and by a switched preference, the merged status, binary frames byte for byte,
no event before its POST /prompt answer, a backend restarted under a connected client, no backend socket left
behind, two sockets with one clientId, heartbeats, and a client that stops reading."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.settings import LimitSettings, WebSocketSettings
from gateway.datapath.aio.keys import RUNTIME
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import start_kerniegen
from tests.ports import free_port
from tests.ws_events_backend import EventsBackend, preview_frames


def slow_chain(color: int, prefix: str = "fanin") -> dict:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}}}
    for i in range(2, 8):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}}
    return prompt


def websocket_image(color: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def kerniegens(tmp_path):
    servers = {}
    for name in ("a", "b"):
        servers[name] = await start_kerniegen(KernieGenConfig(port=0, data_dir=tmp_path / name, step_delay_ms=20))
    yield servers["a"], servers["b"]
    for server in servers.values():
        await server.close()


@pytest.fixture
async def gateway(kerniegens, start_gateway, tmp_path):
    a, b = kerniegens
    return await start_gateway(
        {
            "kerniegen": {"url": a.url, "output_dir": str(tmp_path / "a" / "output")},
            "comfyui": {"url": b.url, "output_dir": str(tmp_path / "b" / "output")},
        },
        queue_poll_interval_seconds=60,
    )


class Follow:
    """A client socket read in the background: every message with the time it arrived."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[tuple[float, Any]] = []  # (monotonic time, dict for text / bytes for binary)
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append((time.monotonic(), json.loads(msg.data)))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.messages.append((time.monotonic(), msg.data))
            self.changed.set()

    def texts(self) -> list[dict]:
        return [m for _, m in self.messages if isinstance(m, dict)]

    def events(self, prompt_id: str) -> list[dict]:
        return [m for m in self.texts() if isinstance(m.get("data"), dict) and m["data"].get("prompt_id") == prompt_id]

    async def until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"not seen in time; got {[m.get('type') for m in self.texts()]}"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass

    async def finished(self, prompt_id: str, seconds: float = 10.0) -> list[dict]:
        def done() -> bool:
            return any(m["type"] == "executing" and m["data"]["node"] is None for m in self.events(prompt_id))

        await self.until(done, seconds)
        return self.events(prompt_id)

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def submit(http, url: str, prompt: dict, client_id: str, headers: dict | None = None) -> str:
    async with http.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}, headers=headers or {}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["prompt_id"]


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def metrics(http, url: str) -> str:
    async with http.get(url + "/metrics") as r:
        return await r.text()


async def eventually(check: Callable[[], Any], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def complete_sequence(events: list[dict]) -> None:
    types = [e["type"] for e in events]
    assert types[0] == "execution_start"
    assert types.index("execution_start") < types.index("executed") < types.index("execution_success")
    assert types[-1] == "executing" and events[-1]["data"]["node"] is None


# --- one socket, every backend ----------------------------------------------------------------------------------


async def test_one_socket_follows_prompts_sent_to_each_backend_by_header(gateway, http) -> None:
    async with http.ws_connect(f"{gateway.url}/ws?clientId=one") as ws:
        assert ws._response.headers["X-Comfy-Backend"] == "kerniegen"
        assert ws._response.headers["X-Comfy-Route"] == "default"
        follow = Follow(ws)
        on_b = await submit(http, gateway.url, slow_chain(0x112233, "hdr/b"), "one", {"X-Comfy-Backend": "comfyui"})
        on_a = await submit(http, gateway.url, slow_chain(0x445566, "hdr/a"), "one")
        events_b, events_a = await follow.finished(on_b), await follow.finished(on_a)
        await follow.close()
    complete_sequence(events_b)
    complete_sequence(events_a)
    executed_b = next(e for e in events_b if e["type"] == "executed")["data"]["output"]["images"]
    executed_a = next(e for e in events_a if e["type"] == "executed")["data"]["output"]["images"]
    assert executed_b[0]["subfolder"] == "comfyui/hdr" and executed_a[0]["subfolder"] == "kerniegen/hdr"
    async with http.get(f"{gateway.url}/history/{on_b}") as r:
        assert (await r.json())[on_b]["outputs"]["8"]["images"] == executed_b
    sids = [m["data"]["sid"] for m in follow.texts() if m["type"] == "status" and "sid" in m["data"]]
    assert sids == ["one"]


async def test_one_socket_follows_a_switched_preference_with_a_minted_client_id(gateway, http) -> None:
    user = {"comfy-user": "ana"}
    async with http.ws_connect(f"{gateway.url}/api/ws", headers=user) as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "status"
        client_id = first["data"]["sid"]
        assert len(client_id) == 32
        follow = Follow(ws)
        on_a = await submit(http, gateway.url, slow_chain(0x010203, "pref/a"), client_id, user)
        async with http.put(f"{gateway.url}/gateway/preferences/ana", json={"backend": "comfyui"}) as r:
            assert r.status == 200
        on_b = await submit(http, gateway.url, slow_chain(0x040506, "pref/b"), client_id, user)
        events_a, events_b = await follow.finished(on_a), await follow.finished(on_b)
        await follow.close()
    complete_sequence(events_a)
    complete_sequence(events_b)
    assert next(e for e in events_b if e["type"] == "executed")["data"]["output"]["images"][0]["subfolder"] == (
        "comfyui/pref"
    )
    assert not [m for m in follow.texts() if m["type"] == "status" and "sid" in m["data"]]  # the first one only


async def test_status_sums_the_queues_of_every_backend_followed(gateway, http) -> None:
    async with http.ws_connect(f"{gateway.url}/ws?clientId=sum") as ws:
        follow = Follow(ws)
        await follow.until(lambda: bool(follow.texts()))
        on_b = await submit(http, gateway.url, slow_chain(0x0A0B0C, "sum/b"), "sum", {"X-Comfy-Backend": "comfyui"})
        on_a = await submit(http, gateway.url, slow_chain(0x0D0E0F, "sum/a"), "sum")
        await follow.finished(on_b)
        await follow.finished(on_a)
        await follow.close()
    texts = follow.texts()
    statuses = [m["data"]["status"]["exec_info"]["queue_remaining"] for m in texts if m["type"] == "status"]
    assert max(statuses) == 2  # each backend holds one prompt at once: only the sum says 2
    assert statuses[-1] == 0
    # While either prompt runs (execution_start to execution_success; the status saying 0 comes after), the status
    # never says 0.
    first_start = min(i for i, m in enumerate(texts) if m["type"] == "execution_start")
    last_end = max(i for i, m in enumerate(texts) if m["type"] == "execution_success")
    assert all(m["data"]["status"]["exec_info"]["queue_remaining"] > 0
               for m in texts[first_start:last_end] if m["type"] == "status")


async def test_binary_frames_from_a_second_backend_pass_byte_for_byte(kerniegens, start_gateway, start_backend,
                                                                       http) -> None:
    a, _ = kerniegens
    events = await start_backend("events", EventsBackend)
    events.previews, events.preview_bytes = 3, 70_000
    gateway = await start_gateway({"kerniegen": a.url, "events": events.url})
    async with http.ws_connect(f"{gateway.url}/ws?clientId=bin", max_msg_size=0) as ws:
        follow = Follow(ws)
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        await follow.until(lambda: any(m["type"] == "feature_flags" for m in follow.texts()))
        on_events = await submit(http, gateway.url, {}, "bin", {"X-Comfy-Backend": "events"})
        on_a = await submit(http, gateway.url, websocket_image(0x123456), "bin")
        await follow.finished(on_events)
        await follow.finished(on_a)
        await follow.close()
    binaries = [m for _, m in follow.messages if isinstance(m, bytes)]
    sent = preview_frames(on_events, 3, 70_000)
    assert [b for b in binaries if b in sent] == sent
    kernie_png = [b for b in binaries if b not in sent]
    # KernieGen was told the client's flags too: its image came as a frame with metadata (type 4).
    assert len(kernie_png) == 1 and int.from_bytes(kernie_png[0][:4], "big") == 4
    assert b"\x89PNG\r\n\x1a\n" in kernie_png[0]
    # The client's feature_flags reached the backend opened later too; its answer was not passed twice.
    assert [json.loads(m)["type"] for m in events.client_messages] == ["feature_flags"]
    assert len([m for m in follow.texts() if m["type"] == "feature_flags"]) == 1


# --- order: no event before its answer ---------------------------------------------------------------------------


@pytest.mark.parametrize("follow_from", ["events", "kerniegen"])
async def test_no_event_reaches_the_client_before_the_answer_naming_its_prompt(
    kerniegens, start_gateway, start_backend, http, follow_from
) -> None:
    a, _ = kerniegens
    events = await start_backend("events", EventsBackend)
    events.answer_delay = 0.3  # the events are all sent before the answer
    gateway = await start_gateway({"kerniegen": a.url, "events": events.url}, default="kerniegen")
    async with http.ws_connect(f"{gateway.url}/ws?clientId=order&backend={follow_from}") as ws:
        follow = Follow(ws)
        await follow.until(lambda: bool(follow.texts()))
        prompt_id = await submit(http, gateway.url, {}, "order", {"X-Comfy-Backend": "events"})
        answered = time.monotonic()
        await follow.finished(prompt_id)
        await follow.close()
    times = [t for t, m in follow.messages if isinstance(m, dict) and m.get("data", {}).get("prompt_id") == prompt_id]
    assert times and min(times) >= answered
    previews = [(t, m) for t, m in follow.messages if isinstance(m, bytes)]
    assert [m for _, m in previews] == preview_frames(prompt_id, 2, 1024)  # they wait with the prompt's events
    assert min(t for t, _ in previews) >= answered
    complete_sequence(follow.events(prompt_id))
    text = await metrics(http, gateway.url)
    assert metric(text, "comfy_gateway_websocket_messages_held_total") >= 5
    assert metric(text, "comfy_gateway_websocket_holds_released_total", reason="answered") == 1


async def test_held_events_are_released_after_hold_seconds(kerniegens, start_gateway, start_backend, http) -> None:
    a, _ = kerniegens
    events = await start_backend("events", EventsBackend)
    events.answer_delay = 3.0
    gateway = await start_gateway(
        {"kerniegen": a.url, "events": events.url}, websocket=WebSocketSettings(hold_seconds=0.3)
    )
    async with http.ws_connect(f"{gateway.url}/ws?clientId=late") as ws:
        follow = Follow(ws)
        await follow.until(lambda: bool(follow.texts()))
        posted = asyncio.create_task(submit(http, gateway.url, {}, "late", {"X-Comfy-Backend": "events"}))
        await follow.until(lambda: any(m["type"] == "executed" for m in follow.texts()), 2.5)
        assert not posted.done()  # released by the hold's time, not by the answer
        await posted
        await follow.close()
    text = await metrics(http, gateway.url)
    assert metric(text, "comfy_gateway_websocket_holds_released_total", reason="timeout") == 1


# --- drops, disconnects, heartbeats, slow readers ----------------------------------------------------------------


async def test_a_prompt_sent_to_a_backend_that_is_down_is_answered_at_once(kerniegens, start_gateway, http) -> None:
    a, _ = kerniegens
    gateway = await start_gateway(
        {"kerniegen": a.url, "comfyui": {"url": f"http://127.0.0.1:{free_port()}", "timeouts": {"connect_seconds": 60}}}
    )
    async with http.ws_connect(f"{gateway.url}/ws?clientId=hopeful") as ws:
        follow = Follow(ws)
        body = {"prompt": slow_chain(0x101010), "client_id": "hopeful"}
        posted = http.post(f"{gateway.url}/prompt", json=body, headers={"X-Comfy-Backend": "comfyui"})
        async with await asyncio.wait_for(posted, 10) as r:  # not after the 60 s connect timeout
            assert r.status == 502
        on_a = await submit(http, gateway.url, slow_chain(0x202020), "hopeful")
        complete_sequence(await follow.finished(on_a))
        await follow.close()


async def test_shutdown_closes_client_sockets_going_away(gateway, http) -> None:
    async with http.ws_connect(f"{gateway.url}/ws?clientId=bye") as ws:
        follow = Follow(ws)
        prompt_id = await submit(http, gateway.url, slow_chain(0x654321), "bye", {"X-Comfy-Backend": "comfyui"})
        await follow.finished(prompt_id)
        await gateway.close()
        await asyncio.wait_for(follow.task, 10)
        assert ws.close_code == 1001


async def test_a_backend_restarted_mid_prompt_is_followed_again(kerniegens, start_gateway, http, tmp_path) -> None:
    a, _ = kerniegens
    port = free_port()
    config = KernieGenConfig(port=port, data_dir=tmp_path / "restarted", step_delay_ms=50)
    b = await start_kerniegen(config)
    gateway = await start_gateway(
        {"kerniegen": a.url, "comfyui": b.url},
        websocket=WebSocketSettings(reconnect_initial_seconds=0.05, reconnect_max_seconds=0.2),
    )
    try:
        async with http.ws_connect(f"{gateway.url}/ws?clientId=survivor") as ws:
            follow = Follow(ws)
            lost = await submit(
                http, gateway.url, slow_chain(0x777777, "lost"), "survivor", {"X-Comfy-Backend": "comfyui"}
            )
            await follow.until(lambda: any(m["type"] == "execution_start" for m in follow.events(lost)))
            await b.close()
            b = await start_kerniegen(config)

            async def reopened() -> bool:
                text = await metrics(http, gateway.url)
                return metric(text, "comfy_gateway_websocket_upstream_reconnects_total", backend="comfyui",
                              event="reopened") >= 1

            await eventually(reopened)
            later = await submit(http, gateway.url, slow_chain(0x888888, "later"), "survivor",
                                 {"X-Comfy-Backend": "comfyui"})
            complete_sequence(await follow.finished(later))
            on_a = await submit(http, gateway.url, slow_chain(0x999999, "still"), "survivor")
            complete_sequence(await follow.finished(on_a))
            assert not ws.closed
            await follow.close()
        text = await metrics(http, gateway.url)
        assert metric(text, "comfy_gateway_websocket_upstream_reconnects_total", backend="comfyui",
                      event="dropped") >= 1
    finally:
        await b.close()


async def test_a_client_that_leaves_leaves_no_backend_socket_open(gateway, http) -> None:
    async with http.ws_connect(f"{gateway.url}/ws?clientId=leaver") as ws:
        follow = Follow(ws)
        prompt_id = await submit(http, gateway.url, slow_chain(0x123123), "leaver", {"X-Comfy-Backend": "comfyui"})
        await follow.finished(prompt_id)
        text = await metrics(http, gateway.url)
        assert metric(text, "comfy_gateway_websocket_connections", side="upstream") == 2
        assert metric(text, "comfy_gateway_websocket_connections", side="client") == 1
        await follow.close()

    async def none_open() -> bool:
        return metric(await metrics(http, gateway.url), "comfy_gateway_websocket_connections") == 0

    await eventually(none_open)
    assert len(gateway.app[RUNTIME].followers) == 0  # POST /prompt finds no socket for it any more


async def test_an_idle_socket_keeps_no_sender_and_the_next_message_still_arrives(gateway, http) -> None:
    """A web UI holds its socket for hours, mostly idle: the task that writes to it runs only while something
    is queued (each idle socket saved its memory)."""

    def senders() -> int:
        return sum(task.get_name() == "ws->client" and not task.done() for task in asyncio.all_tasks())

    async with http.ws_connect(f"{gateway.url}/ws?clientId=idler") as ws:
        follow = Follow(ws)
        await follow.until(lambda: any(m.get("type") == "status" for m in follow.texts()))  # the greeting

        async def no_sender() -> bool:
            return senders() == 0

        await eventually(no_sender)
        prompt_id = await submit(http, gateway.url, slow_chain(0x5EED), "idler", {"X-Comfy-Backend": "comfyui"})
        events = await follow.finished(prompt_id)  # through senders started again as they came
        kinds = [event["type"] for event in events]
        assert kinds[0] == "execution_start" and "executed" in kinds and kinds[-1] == "executing"
        await eventually(no_sender)
        await follow.close()


async def test_two_sockets_with_one_client_id_the_newest_follows_and_nothing_waits(gateway, http) -> None:
    """A page open in two tabs: two sockets with one clientId. As in ComfyUI the newest one gets the clientId's
    prompts; POST /prompt never waits on the older one, nor on one that has closed, and neither is held open."""
    on_b = {"X-Comfy-Backend": "comfyui"}
    async with http.ws_connect(f"{gateway.url}/ws?clientId=twin") as older_ws:
        older = Follow(older_ws)
        await older.until(lambda: bool(older.texts()))
        async with http.ws_connect(f"{gateway.url}/ws?clientId=twin") as newer_ws:
            newer = Follow(newer_ws)
            await newer.until(lambda: bool(newer.texts()))
            first = await asyncio.wait_for(submit(http, gateway.url, slow_chain(0x0F0F0F, "twin"), "twin", on_b), 10)
            complete_sequence(await newer.finished(first))
            await asyncio.wait_for(newer.close(), 10)
        assert not older.events(first)
        second = await asyncio.wait_for(submit(http, gateway.url, slow_chain(0x0E0E0E, "twin"), "twin", on_b), 10)
        async with http.get(f"{gateway.url}/gateway/prompts/{second}") as r:
            assert (await r.json())["backend"] == "comfyui"
        assert not older_ws.closed
        await asyncio.wait_for(older.close(), 10)

    async def none_open() -> bool:
        return metric(await metrics(http, gateway.url), "comfy_gateway_websocket_connections") == 0

    await eventually(none_open)
    assert len(gateway.app[RUNTIME].followers) == 0


async def test_heartbeats_reach_an_idle_client_and_its_backends(kerniegens, start_gateway, start_backend,
                                                                http) -> None:
    events = await start_backend("events", EventsBackend)
    gateway = await start_gateway({"events": events.url}, websocket=WebSocketSettings(heartbeat_seconds=0.2))
    async with http.ws_connect(f"{gateway.url}/ws?clientId=idle", autoping=False) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        ping = await ws.receive(timeout=2)
        assert ping.type == aiohttp.WSMsgType.PING
        await ws.pong(ping.data)
        assert events.pings >= 1
        # A client that stops answering is closed.
        deadline = time.monotonic() + 3
        while True:
            msg = await ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break


async def test_a_backend_that_answers_no_ping_is_closed_and_opened_again(start_gateway, start_backend, http) -> None:
    events = await start_backend("events", EventsBackend)
    events.answer_pings = False
    gateway = await start_gateway({"events": events.url}, websocket=WebSocketSettings(
        heartbeat_seconds=0.2, reconnect_initial_seconds=0.05))
    async with http.ws_connect(f"{gateway.url}/ws?clientId=deaf") as ws:
        follow = Follow(ws)

        async def reopened() -> bool:
            text = await metrics(http, gateway.url)
            return metric(text, "comfy_gateway_websocket_upstream_reconnects_total", backend="events",
                          event="reopened") >= 1

        await eventually(reopened)
        events.answer_pings = True
        prompt_id = await submit(http, gateway.url, {}, "deaf")
        complete_sequence(await follow.finished(prompt_id))
        assert not ws.closed
        await follow.close()


async def test_a_client_that_reads_nothing_loses_previews_not_completions(kerniegens, start_gateway, start_backend,
                                                                         http) -> None:
    events = await start_backend("events", EventsBackend)
    events.previews, events.preview_bytes, events.progress_steps = 200, 64 * 1024, 50
    gateway = await start_gateway({"events": events.url}, websocket=WebSocketSettings(send_queue_messages=16))
    async with http.ws_connect(f"{gateway.url}/ws?clientId=sleepy", max_msg_size=0) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        prompt_ids = [await submit(http, gateway.url, {}, "sleepy") for _ in range(3)]

        async def dropped() -> bool:
            return metric(await metrics(http, gateway.url), "comfy_gateway_websocket_send_queue_dropped_total") > 0

        await eventually(dropped)
        follow = Follow(ws)
        for prompt_id in prompt_ids:
            events_seen = await follow.finished(prompt_id)
            types = [e["type"] for e in events_seen]
            assert {"execution_start", "executed", "execution_success"} <= set(types)
        await follow.close()
    binaries = [m for _, m in follow.messages if isinstance(m, bytes)]
    assert len(binaries) < 3 * 200
    text = await metrics(http, gateway.url)
    assert metric(text, "comfy_gateway_websocket_send_queue_dropped_total", type="binary") > 0
    assert metric(text, "comfy_gateway_websocket_send_queue_dropped_total", type="executed") == 0


async def test_with_follow_all_a_socket_hears_a_prompt_another_gateway_sent_elsewhere(kerniegens, start_gateway,
                                                                                       tmp_path, http) -> None:
    """Two gateways on one state file (two workers): the socket is held by one, its client's prompt sent through
    the other to the backend the socket did not open on."""
    a, b = kerniegens
    table = {"kerniegen": a.url, "comfyui": b.url}
    state = tmp_path / "shared.sqlite3"
    holder = await start_gateway(table, state_file=state, websocket={"follow": "all"})
    placer = await start_gateway(table, state_file=state, websocket={"follow": "all"})
    async with http.ws_connect(holder.url + "/ws?clientId=two-workers") as ws:
        assert ws._response.headers["X-Comfy-Backend"] == "kerniegen"
        reader = Follow(ws)
        prompt_id = await submit(http, placer.url, slow_chain(5), "two-workers", {"X-Comfy-Backend": "comfyui"})
        events = await reader.finished(prompt_id)
        await reader.close()
    executed = [e["data"] for e in events if e["type"] == "executed"]
    assert executed and executed[0]["output"]["images"][0]["subfolder"].split("/")[0] == "comfyui"


@pytest.mark.parametrize(
    ("follow", "workers", "store", "expected"),
    [
        ("auto", 1, "sqlite", False),
        ("auto", 2, "sqlite", True),
        ("auto", 1, "redis", True),
        ("routed", 4, "redis", False),
        ("all", 1, "sqlite", True),
    ],
)
def test_auto_follows_every_backend_when_another_process_can_place_prompts(follow, workers, store, expected) -> None:
    from gateway.app import sockets_follow_all
    from gateway.config.settings import Settings, StoreSettings

    settings = Settings(
        workers=workers, listen_port=8190, store=StoreSettings(kind=store), websocket=WebSocketSettings(follow=follow)
    )
    assert sockets_follow_all(settings) is expected


async def test_more_client_sockets_on_one_backend_than_its_http_pool_holds(kerniegens, start_gateway) -> None:
    """Backend WebSockets are not drawn from the HTTP pool (100 connections per backend): a web page keeps its
    socket for hours, and the 101st page on a backend must not wait for one to close (it got a 504)."""
    a, _ = kerniegens
    gateway = await start_gateway(
        {"kerniegen": a.url}, queue_poll_interval_seconds=60, limits=LimitSettings(max_websockets_per_client=0)
    )
    count = 110
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets = await asyncio.gather(*(http.ws_connect(f"{gateway.url}/ws?clientId=held-{i}") for i in range(count)))
        try:
            greetings = await asyncio.gather(*(socket.receive(timeout=10) for socket in sockets))
            assert all(g.type is aiohttp.WSMsgType.TEXT and json.loads(g.data)["type"] == "status" for g in greetings)
            async with http.get(f"{gateway.url}/queue") as response:  # the HTTP pool still answers beside them
                assert response.status == 200
        finally:
            await asyncio.gather(*(socket.close() for socket in sockets))


async def test_a_client_that_reads_gets_a_burst_longer_than_its_queue_whole(start_gateway, start_backend,
                                                                            http) -> None:
    """The backend writes 2,000 progress events at once into a queue of 16: the gateway stops reading it while
    the queue is full (websocket.backpressure_seconds), so a client that reads loses none."""
    events = await start_backend("events", EventsBackend)
    events.previews, events.progress_steps = 0, 2000
    gateway = await start_gateway({"events": events.url}, websocket=WebSocketSettings(send_queue_messages=16))
    async with http.ws_connect(f"{gateway.url}/ws?clientId=quick") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "status"
        follow = Follow(ws)
        prompt_id = await submit(http, gateway.url, {}, "quick")
        seen = await follow.finished(prompt_id)
        await follow.close()
    assert sum(1 for e in seen if e["type"] == "progress") == 2000
    text = await metrics(http, gateway.url)
    assert metric(text, "comfy_gateway_websocket_send_queue_dropped_total", type="progress") == 0


async def test_the_messages_a_client_got_are_counted_while_its_socket_stays_open(start_gateway, start_backend,
                                                                                 http) -> None:
    """The fan-in adds what it sent to the metrics in batches: once it has sent everything, a scrape counts
    every message the client read, by type, with the socket still open."""
    events = await start_backend("events", EventsBackend)
    events.previews, events.progress_steps = 3, 600
    gateway = await start_gateway({"events": events.url})
    async with http.ws_connect(f"{gateway.url}/ws?clientId=counted") as ws:
        greeting = await ws.receive_json(timeout=5)
        follow = Follow(ws)
        prompt_id = await submit(http, gateway.url, {}, "counted")
        await follow.finished(prompt_id)
        got = [greeting, *(m for _, m in follow.messages)]

        async def counted() -> bool:
            text = await metrics(http, gateway.url)
            return metric(text, "comfy_gateway_websocket_messages_total", backend="events",
                          direction="to_client") == len(got)

        await eventually(counted, 5)
        text = await metrics(http, gateway.url)
        progress = sum(1 for m in got if isinstance(m, dict) and m["type"] == "progress")
        assert progress >= 600
        assert metric(text, "comfy_gateway_websocket_message_types_total", direction="to_client",
                      type="progress") == progress
        await follow.close()

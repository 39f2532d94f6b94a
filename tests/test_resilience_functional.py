"""Dead, hung and flapping backends on real sockets: each costs its own requests and nothing else. Timeouts by
phase and kind of call, the circuit breaker opening and closing, lookups and merges that skip a backend known
to be down, readiness under each `ready_requires`, and redirects passed through, on both data paths."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest

from tests.conftest import both_data_paths
from tests.faulty_backend import FaultyBackend
from tests.ports import free_port

pytestmark = both_data_paths

# Short enough to keep the tests fast, far enough apart to tell the phases apart.
TIMEOUTS = {"connect_seconds": 0.5, "first_byte_seconds": 0.4, "transfer_first_byte_seconds": 2.0, "read_seconds": 5}
BREAKER = {"consecutive_failures": 2, "base_ejection_seconds": 0.3, "max_ejection_seconds": 1.0}
QUIET_CHECKS = {"health_check_interval_seconds": 60.0}  # only the check at start-up


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture
async def faulty():
    started: list[FaultyBackend] = []

    async def start(name: str, **options) -> FaultyBackend:
        backend = await FaultyBackend(name, **options).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


async def timed(http, method, url, **kwargs):
    started = time.monotonic()
    async with http.request(method, url, allow_redirects=False, **kwargs) as r:
        body = await r.read()
        return r.status, r.headers, body, time.monotonic() - started


async def ready_body(http, gateway):
    async with http.get(gateway.url + "/gateway/ready") as r:
        return r.status, await r.json()


async def wait_for_circuit(http, gateway, name, state, *, seconds=5.0):
    deadline = time.monotonic() + seconds
    while True:
        _, body = await ready_body(http, gateway)
        if body["backends"][name]["circuit"]["state"] == state:
            return body
        assert time.monotonic() < deadline, f"circuit of {name} never became {state}: {body['backends'][name]}"
        await asyncio.sleep(0.05)


# --- timeouts by phase and kind -----------------------------------------------------------------------------------


async def test_a_slow_api_call_is_a_504_at_its_first_byte_limit_a_transfer_waits_longer(
    faulty, start_backend, start_gateway, http
):
    good = await start_backend("good")
    slow = await faulty("slow", mode="slow", delay_seconds=0.9)
    gateway = await start_gateway(
        {"good": good.url, "slow": {"url": slow.url, "timeouts": TIMEOUTS}},
        resilience={"circuit_breaker": False},
        health_check_timeout_seconds=5.0,
        **QUIET_CHECKS,
    )
    api, other = await asyncio.gather(
        timed(http, "GET", gateway.url + "/queue?backend=slow"), timed(http, "GET", gateway.url + "/system_stats")
    )
    status, headers, body, seconds = api
    assert status == 504 and headers["X-Comfy-Backend"] == "slow"
    assert b"backend_timeout" in body and b"slow" in body
    assert seconds < 0.9  # the first-byte limit, not the backend, ended it
    assert other[0] == 200 and other[1]["X-Comfy-Backend"] == "good"
    status, headers, body, _ = await timed(http, "GET", gateway.url + "/object_info?backend=slow")
    assert status == 200 and b'"slow"' in body  # a transfer may take longer to start


async def test_merges_and_probes_obey_the_backend_s_timeouts(faulty, start_backend, start_gateway, http):
    good = await start_backend("good")
    hung = await faulty("hung", mode="hang")
    gateway = await start_gateway(
        {"good": good.url, "hung": {"url": hung.url, "timeouts": TIMEOUTS}},
        resilience={"circuit_breaker": False},
        health_check_timeout_seconds=5.0,
        **QUIET_CHECKS,
    )
    status, headers, body, seconds = await timed(http, "GET", gateway.url + "/history")
    assert status == 200 and headers["X-Comfy-Unavailable-Backends"] == "hung"
    assert seconds < 3.0  # first_byte_seconds (0.4), not the 10 s the merge once waited
    status, _, body, seconds = await timed(http, "GET", gateway.url + f"/history/{uuid.uuid4()}")
    assert status == 200 and body == b"{}" and seconds < 3.0


async def test_a_websocket_upgrade_a_hung_backend_never_answers_is_a_504_at_its_first_byte_limit(
    faulty, start_backend, start_gateway, http
):
    good = await start_backend("good")
    hung = await faulty("hung", mode="hang")
    gateway = await start_gateway(
        {"good": good.url, "hung": {"url": hung.url, "timeouts": TIMEOUTS}},
        resilience={"circuit_breaker": False},
        health_check_timeout_seconds=5.0,
        **QUIET_CHECKS,
    )
    started = time.monotonic()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(gateway.url + "/ws?clientId=c&backend=hung")
    assert refused.value.status == 504 and time.monotonic() - started < 3.0
    async with http.ws_connect(gateway.url + "/ws?clientId=c&backend=good") as ws:
        assert (await ws.receive_json())["type"] == "status"


# --- the circuit breaker --------------------------------------------------------------------------------------------


async def test_a_refused_backend_opens_its_circuit_then_closes_when_it_is_back(
    faulty, start_backend, start_gateway, http
):
    good = await start_backend("good")
    flaky = await faulty("flaky")
    gateway = await start_gateway(
        {"good": good.url, "flaky": {"url": flaky.url, "timeouts": TIMEOUTS}}, resilience=BREAKER, **QUIET_CHECKS
    )
    await wait_for_circuit(http, gateway, "flaky", "closed")
    await flaky.stop()
    for _ in range(2):
        status, headers, body, _ = await timed(http, "GET", gateway.url + "/queue?backend=flaky")
        assert status == 502 and headers["X-Comfy-Backend"] == "flaky"
    status, headers, body, seconds = await timed(http, "GET", gateway.url + "/queue?backend=flaky")
    assert status == 503 and headers["X-Comfy-Backend"] == "flaky"
    assert b"backend_unavailable" in body and b"flaky" in body
    assert int(headers["Retry-After"]) >= 1
    status, headers, _, _ = await timed(http, "GET", gateway.url + "/queue?backend=good")
    assert status == 200 and headers["X-Comfy-Backend"] == "good"

    await flaky.start()  # the same port again
    await asyncio.sleep(BREAKER["base_ejection_seconds"] + 0.05)
    status, headers, _, _ = await timed(http, "GET", gateway.url + "/queue?backend=flaky")
    assert status == 200  # the trial
    await wait_for_circuit(http, gateway, "flaky", "closed", seconds=0.5)
    async with http.get(gateway.url + "/metrics") as r:
        metrics = await r.text()
    assert 'comfy_gateway_backend_circuit_transitions_total{backend="flaky",to="open"} 1.0' in metrics
    assert 'comfy_gateway_backend_circuit_state{backend="flaky",state="closed"} 1.0' in metrics


async def test_a_backend_closing_mid_body_opens_its_circuit(faulty, start_backend, start_gateway, http):
    good = await start_backend("good")
    broken = await faulty("broken")
    gateway = await start_gateway(
        {"good": good.url, "broken": {"url": broken.url, "timeouts": TIMEOUTS}}, resilience=BREAKER, **QUIET_CHECKS
    )
    await wait_for_circuit(http, gateway, "broken", "closed")
    broken.mode = "close_mid_body"
    for _ in range(2):
        try:
            status, *_ = await timed(http, "GET", gateway.url + "/system_stats?backend=broken")
        except aiohttp.ClientPayloadError:
            continue  # the answer had started: the cut connection is the signal
        assert status == 502
    status, headers, body, _ = await timed(http, "GET", gateway.url + "/system_stats?backend=broken")
    assert status == 503 and b"backend_unavailable" in body
    assert (await timed(http, "GET", gateway.url + "/system_stats"))[0] == 200


async def test_invalid_json_leaves_a_backend_out_of_merges_and_opens_its_circuit(
    faulty, start_backend, start_gateway, http
):
    good = await start_backend("good")
    bad = await faulty("bad")
    gateway = await start_gateway(
        {"good": good.url, "bad": {"url": bad.url, "timeouts": TIMEOUTS}}, resilience=BREAKER, **QUIET_CHECKS
    )
    await wait_for_circuit(http, gateway, "bad", "closed")
    bad.mode = "invalid_json"
    for _ in range(2):
        status, headers, _, _ = await timed(http, "GET", gateway.url + "/history")
        assert status == 200 and headers["X-Comfy-Unavailable-Backends"] == "bad"
    await wait_for_circuit(http, gateway, "bad", "open", seconds=0.5)
    asked = len(bad.requests)
    status, headers, _, _ = await timed(http, "GET", gateway.url + "/history")
    assert status == 200 and headers["X-Comfy-Unavailable-Backends"] == "bad"
    assert len(bad.requests) == asked  # left out at once


async def test_a_hung_backend_known_down_costs_lookups_and_merges_nothing(
    faulty, start_backend, start_gateway, http
):
    good = await start_backend("good")
    hung = await faulty("hung", mode="hang")
    gateway = await start_gateway(
        {"good": good.url, "hung": {"url": hung.url, "timeouts": {**TIMEOUTS, "first_byte_seconds": 4.0}}},
        resilience=BREAKER,
        health_check_interval_seconds=0.2,
        # Long enough that the good backend answers its checks even on a loaded CI machine.
        health_check_timeout_seconds=1.0,
    )
    body = await wait_for_circuit(http, gateway, "hung", "open", seconds=10.0)
    assert body["backends"]["hung"]["up"] is False
    for path in (f"/history/{uuid.uuid4()}", "/history", "/queue"):
        status, headers, _, seconds = await timed(http, "GET", gateway.url + path)
        assert status == 200, path
        assert headers["X-Comfy-Unavailable-Backends"] == "hung", path
        assert seconds < 2.0, path  # not the hung backend's 4 s
    status, headers, _, seconds = await timed(http, "GET", gateway.url + f"/gateway/prompts/{uuid.uuid4()}")
    assert status == 404 and headers["X-Comfy-Unavailable-Backends"] == "hung" and seconds < 2.0
    status, headers, body, seconds = await timed(http, "GET", gateway.url + "/queue?backend=hung")
    assert status == 503 and "Retry-After" in headers and seconds < 2.0


async def test_a_backend_killed_and_restarted_during_a_stream_of_prompts(
    faulty, start_backend, start_gateway, http
):
    other = await start_backend("other")
    worker = await faulty("worker")
    gateway = await start_gateway(
        {"worker": {"url": worker.url, "timeouts": TIMEOUTS}, "other": other.url}, resilience=BREAKER, **QUIET_CHECKS
    )
    await wait_for_circuit(http, gateway, "worker", "closed")
    acknowledged: list[str] = []
    statuses: list[int] = []
    for i in range(30):
        if i == 8:
            await worker.stop()
        if i == 18:
            await worker.start()
            await asyncio.sleep(BREAKER["max_ejection_seconds"] + 0.05)  # however often a trial failed meanwhile
        payload = {"prompt": {"1": {"class_type": "Noop", "inputs": {}}}, "client_id": "c"}
        status, _, body, seconds = await timed(http, "POST", gateway.url + "/prompt", json=payload)
        assert seconds < 2.0 and status in (200, 502, 503), (status, body)
        statuses.append(status)
        if status == 200:
            acknowledged.append(json.loads(body)["prompt_id"])
        assert (await timed(http, "GET", gateway.url + "/queue?backend=other"))[0] == 200
    assert 503 in statuses[8:18]  # the circuit opened
    assert statuses[-5:] == [200] * 5  # and closed again
    assert set(acknowledged) <= set(worker.prompts)  # every acknowledged prompt reached the backend


# --- readiness and liveness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requires", "ready"), [("any", True), ("default", False), ("store", True)])
async def test_readiness_with_the_default_backend_down(requires, ready, start_backend, start_gateway, http):
    up = await start_backend("up")
    gateway = await start_gateway(
        {"down": f"http://127.0.0.1:{free_port()}", "up": up.url}, ready_requires=requires, **QUIET_CHECKS
    )
    status, body = await ready_body(http, gateway)
    assert status == (200 if ready else 503) and body["ready"] is ready and body["requires"] == requires
    assert body["backends"]["down"]["usable"] is False and body["backends"]["up"]["usable"] is True
    assert body["backends"]["down"]["up"] is False and body["backends"]["down"]["last_error"]
    async with http.get(gateway.url + "/gateway/health") as r:
        assert r.status == 200


# --- every status passes through ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/history/some-prompt", "/system_stats", "/view?filename=a.png"])
async def test_a_redirect_reaches_the_client_with_its_location(path, faulty, start_gateway, http):
    backend = await faulty("kerniegen", mode="redirect")
    gateway = await start_gateway({"kerniegen": backend.url}, **QUIET_CHECKS)
    status, headers, _, _ = await timed(http, "GET", gateway.url + path)
    assert status == 302
    assert headers["Location"] == "/elsewhere?from=" + path.split("?")[0]
    assert headers["X-Backend-Own"] == "kept"
    assert headers["X-Comfy-Backend"] == "kerniegen"

"""The request pipeline as values, with no sockets: decide() for every routing kind, selection source and
affinity case; Merge and FanOut carried out through an in-memory BackendCalls; outcome's bookkeeping.

Everything real except the backends: a real SQLite store in tmp_path, a real Runtime, real metrics. The
backends are `FakeBackends`, which records every call and answers from what each backend holds (its queue
and history) or from canned Replies, and can fail a backend (down, slow) with UpstreamError/UpstreamTimeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from gateway.backends.breaker import BreakerPolicy, Breakers
from gateway.backends.calls import Reply
from gateway.backends.table import Backend, BackendTable
from gateway.config.settings import StoreSettings
from gateway.core.errors import BadRequest, UnknownBackend, UpstreamError, UpstreamTimeout
from gateway.core.exchange import Exchange
from gateway.core.headers import INSTANCE_HEADER
from gateway.core.selection import Selection, Source
from gateway.merge.aggregate import backend_history_query
from gateway.observe.metrics import GatewayMetrics
from gateway.pipeline import outcome
from gateway.pipeline.classify import Endpoint, Routing, classify, needs_body, strip_api_prefix
from gateway.pipeline.decide import decide, forward_target, with_client_id
from gateway.pipeline.decision import Answer, Decision, FanOut, Forward, Merge
from gateway.pipeline.merged import answer_fan_out, answer_merge
from gateway.runtime import RoutingPolicy, Runtime
from gateway.state.sqlite_store import SqliteStateStore
from gateway.state.store import PromptRecord

NAMES = ("alpha", "beta", "gamma")  # alpha is the default
DEFAULT = "alpha"
USER_HEADER = "comfy-user"


# --- fake backends (BackendCalls) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    backend: str
    method: str
    target: str
    headers: dict[str, str]
    body: bytes | None


def reply(
    status: int = 200, payload: Any = None, *, body: bytes | None = None, content_type: str | None = None
) -> Reply:
    if body is None:
        body = json.dumps(payload if payload is not None else {}).encode()
        content_type = content_type or "application/json; charset=utf-8"
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type or "text/plain"}))
    return Reply(status, "OK" if status == 200 else "Error", headers, body)


def history_entry(prompt_id: str, timestamp: float = 1.0, status: str = "success") -> dict[str, Any]:
    return {
        "prompt": [0, prompt_id, {}, {}, []],
        "outputs": {},
        "status": {
            "status_str": status,
            "completed": status == "success",
            "messages": [["execution_start", {"prompt_id": prompt_id, "timestamp": timestamp}]],
        },
    }


@dataclass
class FakeBackend:
    """What one backend holds and how it answers."""

    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    canned: dict[tuple[str, str], Reply] = field(default_factory=dict)  # (method, target) → Reply, checked first
    failure: UpstreamError | None = None  # raised for every call: the backend is down or slow

    def answer(self, method: str, target: str) -> Reply:
        canned = self.canned.get((method, target))
        if canned is not None:
            return canned
        path = strip_api_prefix(target.partition("?")[0])  # ComfyUI serves both spellings
        if method == "GET" and path == "/queue":
            def items(ids: list[str], start: int) -> list[list[Any]]:
                return [[start + n, pid, {}, {}, []] for n, pid in enumerate(ids)]
            return reply(200, {"queue_running": items(self.running, 0), "queue_pending": items(self.pending, 100)})
        if method == "GET" and path == "/history":
            return reply(200, self.history)
        if method == "GET" and path.startswith("/history/"):
            pid = unquote(path.removeprefix("/history/"))
            return reply(200, {pid: self.history[pid]} if pid in self.history else {})
        if method == "GET" and path == "/prompt":
            return reply(200, {"exec_info": {"queue_remaining": len(self.running) + len(self.pending)}})
        if method == "POST" and path in ("/queue", "/history", "/interrupt"):
            return reply(200, body=b"", content_type="application/octet-stream")
        return reply(404, body=b"404: Not Found")


class FakeBackends:
    """An in-memory BackendCalls: every call recorded, answered by the named backend's FakeBackend."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.backends = {name: FakeBackend() for name in names}
        self.calls: list[Call] = []

    def __getitem__(self, name: str) -> FakeBackend:
        return self.backends[name]

    def hold(self, name: str, prompt_id: str, where: str = "history") -> None:
        backend = self.backends[name]
        if where == "history":
            backend.history[prompt_id] = history_entry(prompt_id)
        else:
            getattr(backend, where).append(prompt_id)

    def down(self, name: str) -> None:
        self.backends[name].failure = UpstreamError(f"cannot connect to {name}", backend=name, kind="connect")

    def slow(self, name: str) -> None:
        self.backends[name].failure = UpstreamTimeout(f"{name} did not answer in time", backend=name)

    def calls_to(self, name: str) -> list[tuple[str, str]]:
        return [(c.method, c.target) for c in self.calls if c.backend == name]

    async def fetch(
        self,
        backend: Backend,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        *,
        body: bytes | None = None,
        max_bytes: int | None = None,
        timeout_seconds: float | None = None,
        kind: str = "api",
        retry: bool = True,
    ) -> Reply:
        self.calls.append(Call(backend.name, method, target, dict(headers or {}), body))
        await asyncio.sleep(0)  # a real call yields to the loop
        state = self.backends[backend.name]
        if state.failure is not None:
            raise state.failure
        return state.answer(method, target)


# --- a request as the pipeline reads it (RequestFacts) -----------------------------------------------------------


@dataclass
class FakeRequest:
    method: str
    raw_target: str
    headers: Mapping[str, str] = field(default_factory=dict)
    websocket: bool = False
    client_ip: str | None = "127.0.0.1"

    @property
    def path(self) -> str:
        raw = self.raw_target.partition("?")[0]
        return URL.build(path=raw, encoded=True).path

    @property
    def query(self) -> MultiDictProxy[str]:
        return URL.build(query_string=self.raw_target.partition("?")[2], encoded=True).query

    def header(self, name: str) -> str | None:
        return CIMultiDict(self.headers).get(name)

    def query_value(self, name: str) -> str | None:
        return self.query.get(name)


# --- fixtures and helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeBackends:
    return FakeBackends(NAMES)


@pytest.fixture
async def rt(tmp_path, fake: FakeBackends) -> AsyncIterator[Runtime]:
    store = SqliteStateStore.open(StoreSettings(path=tmp_path / "state" / "gateway.sqlite3"))
    table = BackendTable({n: Backend(n, URL(f"http://{n}.test")) for n in NAMES}, default=DEFAULT)
    runtime = Runtime(backends=table, store=store, calls=fake, policy=RoutingPolicy(), metrics=GatewayMetrics(table))
    yield runtime
    await store.close()


async def run(
    rt: Runtime,
    method: str,
    target: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    websocket: bool = False,
) -> tuple[Decision, Exchange]:
    """classify + decide, as a data path does: the body handed over only where needs_body says so."""
    request = FakeRequest(method, target, headers or {}, websocket)
    endpoint = classify(method, request.path)
    exchange = Exchange(method, request.path, endpoint.template)
    decision = await decide(rt, request, endpoint, exchange, body if needs_body(endpoint) else None)
    return decision, exchange


def as_json(answer: Decision) -> Any:
    assert isinstance(answer, Answer), answer
    return json.loads(answer.body)


def assert_forward(decision: Decision, backend: str, source: Source) -> Forward:
    assert isinstance(decision, Forward), decision
    assert (decision.selection.backend, decision.selection.source) == (backend, source)
    return decision


def backend_header(name: str) -> dict[str, str]:
    return {"X-Comfy-Backend": name}


async def record(rt: Runtime, prompt_id: str, backend: str) -> None:
    await rt.store.record_prompt(PromptRecord(prompt_id, backend, None, None, 1.0))


def lookups(rt: Runtime, result: str) -> float | None:
    return rt.metrics.registry.get_sample_value("comfy_gateway_affinity_lookups_total", {"result": result})


# --- selection: header → query → preference → default -------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "preference", "expected"),
    [
        pytest.param({"X-Comfy-Backend": "beta"}, "", None, ("beta", Source.HEADER), id="header"),
        pytest.param({"x-comfy-backend": "beta"}, "", None, ("beta", Source.HEADER), id="header-any-case"),
        pytest.param({}, "?backend=gamma", None, ("gamma", Source.QUERY), id="query"),
        pytest.param({}, "", "beta", ("beta", Source.PREFERENCE), id="preference"),
        pytest.param({}, "", None, ("alpha", Source.DEFAULT), id="default"),
        pytest.param({"X-Comfy-Backend": "beta"}, "?backend=gamma", "gamma", ("beta", Source.HEADER),
                     id="header-beats-query-and-preference"),
        pytest.param({}, "?backend=gamma", "beta", ("gamma", Source.QUERY), id="query-beats-preference"),
        pytest.param({"X-Comfy-Backend": ""}, "", None, ("alpha", Source.DEFAULT), id="empty-header-is-absent"),
        pytest.param({"X-Comfy-Backend": ""}, "?backend=gamma", None, ("gamma", Source.QUERY),
                     id="empty-header-then-query"),
        pytest.param({"X-Comfy-Backend": ""}, "?backend=", "beta", ("beta", Source.PREFERENCE),
                     id="empty-header-and-query-then-preference"),
        pytest.param({"X-Comfy-Backend": " beta "}, "", None, ("beta", Source.HEADER), id="header-trimmed"),
    ],
)
async def test_selection_source(rt, headers, query, preference, expected):
    if preference is not None:
        await rt.store.set_preference("ana", preference)
    decision, exchange = await run(rt, "GET", "/object_info" + query, headers={USER_HEADER: "ana", **headers})
    forward = assert_forward(decision, *expected)
    assert forward.target is None and forward.body is None and not forward.rewrite_history and not forward.websocket
    assert (exchange.backend, exchange.source, exchange.user) == (expected[0], expected[1].value, "ana")


async def test_preference_is_per_user(rt):
    await rt.store.set_preference("ana", "beta")
    decision, _ = await run(rt, "GET", "/object_info", headers={USER_HEADER: "bob"})
    assert_forward(decision, DEFAULT, Source.DEFAULT)
    decision, _ = await run(rt, "GET", "/object_info")  # no user at all
    assert_forward(decision, DEFAULT, Source.DEFAULT)


@pytest.mark.parametrize(
    ("headers", "query", "preference", "where"),
    [
        pytest.param({"X-Comfy-Backend": "nope"}, "", None, "header X-Comfy-Backend", id="header"),
        pytest.param({}, "?backend=Beta", None, "query parameter backend", id="query-is-case-sensitive"),
        pytest.param({}, "", "retired", "stored preference of user 'ana'", id="stale-preference"),
        pytest.param({"X-Comfy-Backend": "nope"}, "?backend=beta", None, "header",
                     id="bad-header-not-rescued-by-query"),
    ],
)
async def test_unknown_backend_is_a_400_naming_the_valid_ones(rt, headers, query, preference, where):
    if preference is not None:
        await rt.store.set_preference("ana", preference)
    decision, exchange = await run(rt, "GET", "/object_info" + query, headers={USER_HEADER: "ana", **headers})
    assert isinstance(decision, Answer) and decision.status == 400
    error = as_json(decision)["error"]
    assert error["type"] == "unknown_backend"
    assert error["details"] == sorted(NAMES)
    assert where in error["message"] and "valid backends: alpha, beta, gamma" in error["message"]
    assert exchange.error == "unknown_backend"
    assert exchange.backend is None


# --- POST /prompt -----------------------------------------------------------------------------------------------


PROMPT = {"prompt": {"1": {"class_type": "SaveImage", "inputs": {"seed": 18446744073709551615}}}, "client_id": "c1"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, ("alpha", Source.DEFAULT), id="default"),
        pytest.param(backend_header("beta"), ("beta", Source.HEADER), id="header"),
    ],
)
async def test_submit_mints_a_prompt_id_and_records_it(rt, headers, expected):
    body = json.dumps(PROMPT).encode()
    decision, exchange = await run(rt, "POST", "/prompt", headers={USER_HEADER: "ana", **headers}, body=body)
    forward = assert_forward(decision, *expected)
    prompt_id = forward.prompt_id
    assert prompt_id is not None and uuid.UUID(prompt_id).version == 4
    sent = json.loads(forward.body)
    assert sent == {**PROMPT, "prompt_id": prompt_id}  # the rest as sent, 64-bit seed included
    assert b"18446744073709551615" in forward.body
    stored = await rt.store.lookup_prompt(prompt_id)
    assert (stored.backend, stored.user, stored.client_id) == (expected[0], "ana", "c1")
    assert (exchange.prompt_id, exchange.backend, exchange.source) == (prompt_id, expected[0], expected[1].value)
    assert not forward.rewrite_history


async def test_submit_keeps_the_clients_prompt_id_and_body(rt):
    body = json.dumps({**PROMPT, "prompt_id": "mine-1"}).encode()
    decision, exchange = await run(rt, "POST", "/api/prompt", headers={"X-Comfy-Backend": "gamma"}, body=body)
    forward = assert_forward(decision, "gamma", Source.HEADER)
    assert forward.prompt_id == "mine-1" and exchange.prompt_id == "mine-1"
    assert forward.body == body  # untouched, byte for byte
    assert (await rt.store.lookup_prompt("mine-1")).backend == "gamma"


async def test_submit_follows_the_stored_preference(rt):
    await rt.store.set_preference("ana", "beta")
    decision, _ = await run(rt, "POST", "/prompt", headers={USER_HEADER: "ana"}, body=b'{"prompt": {}}')
    forward = assert_forward(decision, "beta", Source.PREFERENCE)
    assert (await rt.store.lookup_prompt(forward.prompt_id)).backend == "beta"


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"[1, 2]", b'"prompt"', b"null", b"\xff\xfe"])
async def test_submit_with_a_body_that_is_not_a_json_object_is_a_comfyui_400(rt, body):
    decision, exchange = await run(rt, "POST", "/prompt", body=body)
    assert isinstance(decision, Answer) and decision.status == 400
    answer = as_json(decision)
    assert answer["node_errors"] == {}
    assert answer["error"]["type"] == "invalid_prompt"
    assert set(answer["error"]) == {"type", "message", "details", "extra_info"}
    assert exchange.error == "invalid_prompt"
    assert await rt.store.count_prompts() == 0


async def test_submit_to_an_unknown_backend_records_nothing(rt):
    decision, _ = await run(rt, "POST", "/prompt", headers=backend_header("nope"), body=b'{"prompt": {}}')
    assert isinstance(decision, Answer) and decision.status == 400
    assert await rt.store.count_prompts() == 0


# --- GET /history/{id}: affinity ---------------------------------------------------------------------------------


async def test_history_of_a_stored_prompt_follows_affinity_whatever_the_header_says(rt, fake):
    await record(rt, "p1", "beta")
    decision, exchange = await run(rt, "GET", "/history/p1", headers=backend_header("gamma"))
    forward = assert_forward(decision, "beta", Source.AFFINITY)
    assert forward.rewrite_history and forward.target is None
    assert (exchange.prompt_id, exchange.backend, exchange.source) == ("p1", "beta", "affinity")
    assert fake.calls == []  # the store knew: no backend asked
    assert lookups(rt, "hit") == 1


@pytest.mark.parametrize("where", ["history", "running", "pending"])
async def test_history_of_an_unknown_prompt_is_found_by_probing_and_remembered(rt, fake, where):
    fake.hold("beta", "p2", where)
    decision, exchange = await run(rt, "GET", "/history/p2")
    forward = assert_forward(decision, "beta", Source.AFFINITY)
    assert forward.rewrite_history
    assert exchange.backend == "beta"
    assert (await rt.store.lookup_prompt("p2")).backend == "beta"
    for name in NAMES:
        assert sorted(fake.calls_to(name)) == [("GET", "/history/p2"), ("GET", "/queue")], name
    assert lookups(rt, "probe") == 1
    # Remembered: the next lookup asks no backend.
    fake.calls.clear()
    decision, _ = await run(rt, "GET", "/history/p2")
    assert_forward(decision, "beta", Source.AFFINITY)
    assert fake.calls == []


# --- a store that cannot answer (store.on_outage) ---------------------------------------------------------------


async def store_down(rt: Runtime, *, degrade: bool) -> Runtime:
    """rt with its real store closed (every call raises StoreError), under the given outage policy."""
    await rt.store.close()
    rt.policy = RoutingPolicy(degrade_on_store_outage=degrade)
    return rt


async def test_a_store_that_cannot_answer_refuses_prompts_and_lookups_by_default(rt, fake):
    rt = await store_down(rt, degrade=False)
    fake.hold("beta", "p2", "history")
    for method, target, body in (("POST", "/prompt", json.dumps(PROMPT).encode()), ("GET", "/history/p2", None)):
        decision, _ = await run(rt, method, target, body=body)
        assert isinstance(decision, Answer) and decision.status == 503, target
        assert as_json(decision)["error"]["type"] == "store_unavailable"


async def test_degrade_forwards_a_prompt_that_needs_no_stored_fact_and_counts_it(rt):
    rt = await store_down(rt, degrade=True)
    for headers, expected in (({}, ("alpha", Source.DEFAULT)), (backend_header("beta"), ("beta", Source.HEADER))):
        decision, exchange = await run(rt, "POST", "/prompt", headers=headers, body=json.dumps(PROMPT).encode())
        forward = assert_forward(decision, *expected)
        assert forward.prompt_id is not None and exchange.prompt_id == forward.prompt_id
    assert rt.metrics.registry.get_sample_value("comfy_gateway_affinity_unrecorded_total") == 2


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({USER_HEADER: "ana"}, PROMPT, id="a user's preference cannot be read"),
        pytest.param({}, {**PROMPT, "prompt_id": "mine"}, id="a client-chosen id's owner cannot be checked"),
    ],
)
async def test_degrade_still_refuses_a_prompt_that_needs_the_store(rt, headers, body):
    rt = await store_down(rt, degrade=True)
    decision, _ = await run(rt, "POST", "/prompt", headers=headers, body=json.dumps(body).encode())
    assert isinstance(decision, Answer) and decision.status == 503
    assert rt.metrics.registry.get_sample_value("comfy_gateway_affinity_unrecorded_total") == 0


async def test_degrade_finds_a_prompt_the_store_cannot_look_up_by_asking_every_backend(rt, fake):
    rt = await store_down(rt, degrade=True)
    fake.hold("beta", "p2", "running")
    decision, _ = await run(rt, "GET", "/history/p2", headers=backend_header("alpha"))
    assert_forward(decision, "beta", Source.AFFINITY)
    assert lookups(rt, "probe") == 1


async def test_probe_quotes_the_prompt_id_in_the_path(rt, fake):
    fake.hold("gamma", "a/b")
    decision, _ = await run(rt, "GET", "/history/a%2Fb")
    assert_forward(decision, "gamma", Source.AFFINITY)
    assert ("GET", "/history/a%2Fb") in fake.calls_to("gamma")


async def test_probe_skips_backends_that_are_down_or_slow(rt, fake):
    fake.down("alpha")
    fake.slow("gamma")
    fake.hold("beta", "p3")
    decision, _ = await run(rt, "GET", "/history/p3")
    assert_forward(decision, "beta", Source.AFFINITY)


async def test_a_record_naming_a_backend_no_longer_configured_is_probed_again(rt, fake):
    await record(rt, "p4", "retired")
    fake.hold("gamma", "p4")
    decision, _ = await run(rt, "GET", "/history/p4")
    assert_forward(decision, "gamma", Source.AFFINITY)
    assert (await rt.store.lookup_prompt("p4")).backend == "gamma"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, ("alpha", Source.DEFAULT), id="default"),
        pytest.param(backend_header("gamma"), ("gamma", Source.HEADER), id="header"),
    ],
)
async def test_history_of_a_prompt_no_backend_holds_goes_to_the_selection(rt, fake, headers, expected):
    fake.down("beta")
    decision, exchange = await run(rt, "GET", "/history/ghost", headers=headers)
    forward = assert_forward(decision, *expected)
    assert forward.rewrite_history
    assert exchange.prompt_id == "ghost"
    assert await rt.store.lookup_prompt("ghost") is None  # nothing remembered
    assert lookups(rt, "miss") == 1


async def test_history_with_a_preference_and_no_holder(rt):
    await rt.store.set_preference("ana", "gamma")
    decision, _ = await run(rt, "GET", "/history/ghost", headers={USER_HEADER: "ana"})
    assert_forward(decision, "gamma", Source.PREFERENCE)


# --- prompt-scoped POSTs: /queue, /history {"delete": [...]}, /interrupt {"prompt_id": ...} ---------------------


SCOPED = [
    pytest.param("/queue", "delete", id="queue-delete"),
    pytest.param("/history", "delete", id="history-delete"),
]


def scoped_body(key: str, ids: list[str]) -> bytes:
    return json.dumps({key: ids if key == "delete" else ids[0]}).encode()


@pytest.mark.parametrize(
    ("path", "key"), [*SCOPED, pytest.param("/interrupt", "prompt_id", id="interrupt")]
)
async def test_ids_on_one_backend_go_there_by_affinity(rt, path, key):
    await record(rt, "p1", "beta")
    await record(rt, "p2", "beta")
    ids = ["p1", "p2"] if key == "delete" else ["p1"]
    body = scoped_body(key, ids)
    decision, exchange = await run(rt, "POST", path, headers=backend_header("gamma"), body=body)
    forward = assert_forward(decision, "beta", Source.AFFINITY)
    assert forward.body == body
    assert (exchange.prompt_id, exchange.backend, exchange.source) == ("p1", "beta", "affinity")


@pytest.mark.parametrize(("path", "key"), SCOPED)
async def test_ids_on_two_backends_fan_out(rt, path, key):
    await record(rt, "p1", "beta")
    await record(rt, "p2", "gamma")
    await record(rt, "p3", "beta")
    body = json.dumps({"delete": ["p1", "p2", "p3"], "extra": 1}).encode()
    decision, exchange = await run(rt, "POST", path + "?backend=alpha&x=1", body=body)
    assert decision == FanOut(
        "POST", path + "?x=1", key, {"delete": ["p1", "p2", "p3"], "extra": 1}, {"beta": ["p1", "p3"], "gamma": ["p2"]}
    )
    assert (exchange.backend, exchange.source, exchange.prompt_id) == ("beta,gamma", "affinity", "p1")


async def test_unknown_ids_join_the_selected_backend(rt, fake):
    await record(rt, "p1", "beta")
    body = json.dumps({"delete": ["p1", "ghost"]}).encode()
    decision, _ = await run(rt, "POST", "/queue", body=body)
    assert isinstance(decision, FanOut)
    assert decision.groups == {"beta": ["p1"], DEFAULT: ["ghost"]}
    # The unknown id was looked for on every backend first.
    assert all(("GET", "/history/ghost") in fake.calls_to(name) for name in NAMES)


async def test_unknown_ids_on_the_same_backend_as_the_known_ones_keep_the_selection_source(rt):
    await record(rt, "p1", "beta")
    body = json.dumps({"delete": ["p1", "ghost"]}).encode()
    decision, _ = await run(rt, "POST", "/queue", headers=backend_header("beta"), body=body)
    assert_forward(decision, "beta", Source.HEADER)


async def test_only_unknown_ids_go_to_the_selection(rt):
    decision, exchange = await run(rt, "POST", "/interrupt", body=b'{"prompt_id": "ghost"}')
    forward = assert_forward(decision, DEFAULT, Source.DEFAULT)
    assert forward.body == b'{"prompt_id": "ghost"}'
    assert exchange.prompt_id == "ghost"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/queue", b'{"clear": true}', id="queue-clear"),
        pytest.param("/history", b'{"clear": true}', id="history-clear"),
        pytest.param("/interrupt", b"", id="global-interrupt"),
        pytest.param("/interrupt", b"{}", id="interrupt-empty-object"),
        pytest.param("/queue", b'{"delete": []}', id="empty-delete"),
        pytest.param("/queue", b'{"delete": [1, null, ""]}', id="no-string-ids"),
        pytest.param("/queue", b'{"delete": "p1"}', id="delete-not-a-list"),
        pytest.param("/queue", b"{not json", id="malformed-json"),
        pytest.param("/history", b"\xff\xfe", id="not-utf8"),
        pytest.param("/interrupt", b'["p1"]', id="not-an-object"),
    ],
)
async def test_no_ids_or_an_unreadable_body_goes_to_the_selection_as_sent(rt, fake, path, body):
    await record(rt, "p1", "gamma")
    decision, exchange = await run(rt, "POST", path, headers=backend_header("beta"), body=body)
    forward = assert_forward(decision, "beta", Source.HEADER)
    assert forward.body == body  # the backend judges it
    assert exchange.prompt_id is None
    assert fake.calls == []


# --- GET /history, /queue, /prompt: merged when nothing is selected ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("/queue", Merge("/queue", "/queue"), id="queue"),
        pytest.param("/api/queue", Merge("/queue", "/api/queue"), id="api-queue"),
        pytest.param("/prompt", Merge("/prompt", "/prompt"), id="prompt"),
        pytest.param("/history", Merge("/history", "/history"), id="history"),
        pytest.param("/history?max_items=5", Merge("/history", "/history?max_items=5", 5, None), id="max-items"),
        pytest.param("/history?max_items=2&offset=3", Merge("/history", "/history?max_items=5&offset=0", 2, 3),
                     id="max-items-offset"),
        pytest.param("/history?offset=3", Merge("/history", "/history", None, 3), id="offset-alone"),
    ],
)
async def test_mergeable_with_no_selection_is_a_merge(rt, fake, target, expected):
    decision, exchange = await run(rt, "GET", target)
    assert decision == expected
    assert fake.calls == []  # deciding asks no backend
    if expected.template == "/history":
        query = backend_history_query(expected.max_items, expected.offset)
        assert expected.path == "/history" + (f"?{urlencode(query)}" if query else "")


@pytest.mark.parametrize("target", ["/history?max_items=abc", "/history?offset=", "/history?max_items=5&offset=x"])
async def test_bad_history_paging_is_a_400(rt, target):
    decision, exchange = await run(rt, "GET", target)
    assert isinstance(decision, Answer) and decision.status == 400
    assert as_json(decision)["error"]["type"] == "bad_request"
    assert exchange.error == "bad_request"


@pytest.mark.parametrize(
    ("path", "rewrite"), [("/history", True), ("/queue", False), ("/prompt", False)]
)
async def test_mergeable_with_a_selection_is_a_forward(rt, path, rewrite):
    decision, _ = await run(rt, "GET", path, headers=backend_header("beta"))
    assert assert_forward(decision, "beta", Source.HEADER).rewrite_history is rewrite
    decision, _ = await run(rt, "GET", path + "?backend=gamma")
    assert assert_forward(decision, "gamma", Source.QUERY).rewrite_history is rewrite
    await rt.store.set_preference("ana", "gamma")
    decision, _ = await run(rt, "GET", path, headers={USER_HEADER: "ana"})
    assert assert_forward(decision, "gamma", Source.PREFERENCE).rewrite_history is rewrite


# --- /view: the subfolder names the backend ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "backend", "forwarded"),
    [
        pytest.param("filename=x.png&subfolder=beta/sub/dir&type=output&backend=alpha", "beta",
                     "filename=x.png&subfolder=sub%2Fdir&type=output", id="nested"),
        pytest.param("filename=x.png&subfolder=gamma&type=temp", "gamma",
                     "filename=x.png&subfolder=&type=temp", id="backend-only"),
        pytest.param("subfolder=beta%2Fa&filename=a+b.png", "beta", "subfolder=a&filename=a+b.png", id="encoded"),
    ],
)
async def test_view_with_a_prefixed_subfolder_goes_to_that_backend(rt, query, backend, forwarded):
    decision, exchange = await run(rt, "GET", "/view?" + query, headers=backend_header("alpha"))
    forward = assert_forward(decision, backend, Source.AFFINITY)
    assert forward.target == "/view?" + forwarded
    assert "backend" not in dict(parse_qsl(forward.target.partition("?")[2]))
    assert (exchange.backend, exchange.source) == (backend, "affinity")


async def test_view_head_and_api_prefix(rt):
    decision, _ = await run(rt, "HEAD", "/api/view?filename=x.png&subfolder=beta")
    forward = assert_forward(decision, "beta", Source.AFFINITY)
    assert forward.target == "/api/view?filename=x.png&subfolder="


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        pytest.param({}, "", ("alpha", Source.DEFAULT), id="default"),
        pytest.param(backend_header("gamma"), "", ("gamma", Source.HEADER), id="header"),
        pytest.param({}, "&backend=beta", ("beta", Source.QUERY), id="query"),
    ],
)
async def test_view_without_a_backend_prefix_goes_to_the_selection(rt, headers, query, expected):
    decision, _ = await run(rt, "GET", "/view?filename=x.png&subfolder=other/dir" + query, headers=headers)
    forward = assert_forward(decision, *expected)
    assert forward.target is None  # the request's own, minus the gateway's parameter (forward_target)


@pytest.mark.parametrize(
    "query",
    [
        "filename=x.png&subfolder=../x",
        "filename=x.png&subfolder=beta/../x",
        "filename=../x.png&subfolder=beta",
        "filename=x.png&subfolder=%2Fetc",
        "filename=x.png&subfolder=a%5C..%5C..%5Cx",
        "filename=x.png&subfolder=%5C%5Cserver%5Cshare",
        "filename=x.png&subfolder=C:x",
        "filename=x%00.png",
    ],
)
async def test_view_that_escapes_is_a_400(rt, fake, query):
    decision, exchange = await run(rt, "GET", "/view?" + query)
    assert isinstance(decision, Answer) and decision.status == 400
    error = as_json(decision)["error"]
    assert (error["type"], error["details"]) == ("bad_request", "subfolder")
    assert exchange.error == "bad_request"


# --- /ws ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws?clientId=c1", "/api/ws?clientId=c1&backend=beta"])
async def test_websocket_upgrade_is_a_websocket_forward(rt, path):
    decision, _ = await run(rt, "GET", path, websocket=True)
    assert isinstance(decision, Forward) and decision.websocket
    assert decision.selection.backend == ("beta" if "backend=beta" in path else DEFAULT)


async def test_a_websocket_keeps_its_client_id_and_the_backend_gets_it(rt):
    decision, _ = await run(rt, "GET", "/ws?clientId=c1&backend=beta&x=1", websocket=True)
    assert isinstance(decision, Forward)
    assert (decision.client_id, decision.target) == ("c1", "/ws?clientId=c1&x=1")


@pytest.mark.parametrize("path", ["/ws", "/api/ws?clientId=", "/ws?x=1&clientId=&backend=beta"])
async def test_a_websocket_without_a_client_id_gets_one_minted(rt, path):
    decision, _ = await run(rt, "GET", path, websocket=True)
    assert isinstance(decision, Forward) and decision.client_id is not None
    assert len(decision.client_id) == 32 and int(decision.client_id, 16) >= 0
    assert decision.target == path.partition("?")[0] + ("?x=1&" if "x=1" in path else "?") + (
        f"clientId={decision.client_id}"
    )


@pytest.mark.parametrize("client_id", ["x" * 300, "a%0Ab", "%00"])
async def test_a_websocket_with_a_bad_client_id_is_a_400(rt, client_id):
    decision, _ = await run(rt, "GET", f"/ws?clientId={client_id}", websocket=True)
    assert isinstance(decision, Answer) and decision.status == 400
    assert as_json(decision)["error"]["details"] == "clientId"


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)), max_size=5))
def test_with_client_id_names_one_client_id_and_keeps_every_other_parameter(params):
    query = urlencode(params)
    target = with_client_id("/ws" + (f"?{query}" if query else ""), "minted")
    path, _, got = target.partition("?")
    assert path == "/ws"
    pairs = parse_qsl(got, keep_blank_values=True)
    assert pairs == [(k, v) for k, v in params if k != "clientId"] + [("clientId", "minted")]


async def test_ws_without_an_upgrade_is_a_plain_forward(rt):
    decision, _ = await run(rt, "GET", "/ws", headers=backend_header("gamma"))
    forward = assert_forward(decision, "gamma", Source.HEADER)
    assert not forward.websocket


# --- the origin check --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:8188", "http://evil.example"),
        ("localhost:8188", "http://localhost:9999"),
        ("[::1]:8188", "http://evil.example"),
        ("localhost.:8188", "http://evil.example"),  # spellings of a loopback host are normalised
        ("LocalHost.:8188", "http://evil.example"),
        ("gateway.example", "http://evil.example"),  # stricter than ComfyUI: whatever the Host
        (None, "http://evil.example"),
        ("127.0.0.1:8188", "null"),
        ("127.0.0.1:8188", "http://127.0.0.1:8188/../x"),
    ],
)
async def test_a_foreign_origin_is_forbidden(rt, fake, host, origin):
    await record(rt, "p1", "beta")
    for method, target, body in [("GET", "/queue", None), ("POST", "/prompt", b'{"prompt": {}}')]:
        decision, exchange = await run(rt, method, target, headers={"Host": host, "Origin": origin}, body=body)
        assert isinstance(decision, Answer) and decision.status == 403
        assert as_json(decision)["error"]["type"] == "forbidden_origin"
        assert exchange.error == "forbidden_origin"
    assert await rt.store.count_prompts() == 1  # nothing recorded for the refused submission


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("127.0.0.1:8188", "http://127.0.0.1:8188"),
        ("LocalHost.:8188", "http://localhost:8188"),  # one host however it is spelled
        ("gateway.example", "https://gateway.example"),  # behind a TLS proxy: no port is the default one
        ("GATEWAY.example:443", "https://gateway.example"),
        ("[::1]:8188", "http://[::1]:8188"),
        ("127.0.0.1:8188", None),
    ],
)
async def test_the_gateways_own_origin_or_none_passes(rt, host, origin):
    headers = {k: v for k, v in {"Host": host, "Origin": origin}.items() if v is not None}
    decision, _ = await run(rt, "GET", "/object_info", headers=headers)
    assert_forward(decision, DEFAULT, Source.DEFAULT)


# --- the /api prefix ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/prompt"), ("GET", "/prompt"), ("GET", "/queue"), ("POST", "/queue"), ("GET", "/history"),
        ("POST", "/history"), ("GET", "/history/p1"), ("POST", "/interrupt"), ("GET", "/view"), ("HEAD", "/view"),
        ("GET", "/ws"), ("GET", "/object_info"), ("GET", "/object_info/KSampler"), ("GET", "/nope"),
        ("POST", "/history/p1"),
    ],
)
def test_api_prefix_classifies_the_same_as_the_bare_path(method, path):
    assert classify(method, "/api" + path) == classify(method, path)


def test_classify_routing_kinds():
    assert classify("GET", "/history/p1") == Endpoint("/history/{prompt_id}", Routing.HISTORY, "p1")
    assert classify("DELETE", "/history/p1").routing is Routing.PLAIN
    assert classify("GET", "/history/").routing is Routing.PLAIN
    assert classify("GET", "/api") == classify("GET", "/") == Endpoint("/", Routing.PLAIN)
    assert classify("GET", "/apiary").template == "other"
    assert [needs_body(classify(m, p)) for m, p in [("POST", "/prompt"), ("POST", "/queue"), ("GET", "/queue")]] == [
        True, True, False,
    ]


async def test_api_prefix_decides_the_same(rt):
    await record(rt, "p1", "beta")
    for target in ["/history/p1", "/api/history/p1"]:
        decision, _ = await run(rt, "GET", target)
        assert_forward(decision, "beta", Source.AFFINITY)


# --- forward_target ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/queue", "/queue"),
        ("/queue?backend=beta", "/queue"),
        ("/queue?backend", "/queue"),
        ("/view?filename=a%2Fb.png&backend=beta&type=output", "/view?filename=a%2Fb.png&type=output"),
        ("/history/a%2Fb?backend=beta", "/history/a%2Fb"),
        ("/x?backendx=1&backend=b&xbackend=2", "/x?backendx=1&xbackend=2"),
        ("/x?backend=a&c=%2F%20+&backend=b", "/x?c=%2F%20+"),
        ("/x?a=1&b=2", "/x?a=1&b=2"),
        ("/x?xbackend=1", "/x?xbackend=1"),
        ("/x?a=backend=1", "/x?a=backend=1"),
    ],
)
def test_forward_target_drops_only_the_gateways_parameter(raw, expected):
    assert forward_target(raw, ("backend",)) == expected


@pytest.mark.parametrize("raw", ["/x?a=1&backend", "/x?backend&a=1"])
def test_forward_target_drops_a_valueless_gateway_parameter_anywhere(raw):
    assert forward_target(raw, ("backend",)) == "/x?a=1"


def test_forward_target_with_a_replacement_query():
    assert forward_target("/view?a=1&backend=b", ("backend",), query="x=2") == "/view?x=2"
    assert forward_target("/view?a=1", ("backend",), query="") == "/view"


# --- answer_merge ------------------------------------------------------------------------------------------------


def fill_queues(fake: FakeBackends) -> None:
    fake.hold("alpha", "a-run", "running")
    fake.hold("beta", "b-pend", "pending")
    fake.hold("gamma", "g-pend", "pending")


async def test_merged_queue_of_every_backend(rt, fake):
    fill_queues(fake)
    exchange = Exchange("GET", "/queue", "/queue")
    answer = await answer_merge(rt, Merge("/queue", "/queue"), exchange)
    body = json.loads(answer.body)
    assert [item[1] for item in body["queue_running"]] == ["a-run"]
    assert sorted(item[1] for item in body["queue_pending"]) == ["b-pend", "g-pend"]
    assert answer.status == 200
    assert answer.headers == {"X-Comfy-Backend": "alpha,beta,gamma", "X-Comfy-Route": "merged"}
    assert (exchange.backend, exchange.source, exchange.unavailable, exchange.upstream_errors) == (
        "alpha,beta,gamma", "merged", (), (),
    )
    assert sorted(c.backend for c in fake.calls) == sorted(NAMES)
    assert {(c.method, c.target) for c in fake.calls} == {("GET", "/queue")}


async def test_merged_prompt_info_sums_the_queues(rt, fake):
    fill_queues(fake)
    answer = await answer_merge(rt, Merge("/prompt", "/prompt"), Exchange("GET", "/prompt", "/prompt"))
    assert json.loads(answer.body) == {"exec_info": {"queue_remaining": 3}}


async def test_merged_history_asks_for_the_page_and_pages_it(rt, fake):
    fake["alpha"].history = {"a1": history_entry("a1", 1.0), "a2": history_entry("a2", 3.0)}
    fake["beta"].history = {"b1": history_entry("b1", 2.0)}
    decision, exchange = await run(rt, "GET", "/history?max_items=2")
    assert isinstance(decision, Merge)
    answer = await answer_merge(rt, decision, exchange)
    assert list(json.loads(answer.body)) == ["b1", "a2"]  # the newest two, oldest first
    assert {c.target for c in fake.calls} == {"/history?max_items=2"}


@pytest.mark.parametrize(
    ("fail", "kind"),
    [
        pytest.param(lambda fake: fake.down("gamma"), "connect", id="down"),
        pytest.param(lambda fake: fake.slow("gamma"), "timeout", id="slow"),
        pytest.param(lambda fake: fake["gamma"].canned.update({("GET", "/queue"): reply(500, body=b"boom")}), "5xx",
                     id="answers-500"),
        pytest.param(lambda fake: fake["gamma"].canned.update({("GET", "/queue"): reply(404, body=b"no")}), "protocol",
                     id="answers-404"),
        pytest.param(lambda fake: fake["gamma"].canned.update({("GET", "/queue"): reply(200, body=b"<html>")}),
                     "protocol", id="not-json"),
    ],
)
async def test_a_failing_backend_is_left_out_of_the_merge_and_named(rt, fake, fail, kind):
    fill_queues(fake)
    fail(fake)
    exchange = Exchange("GET", "/queue", "/queue")
    answer = await answer_merge(rt, Merge("/queue", "/queue"), exchange)
    body = json.loads(answer.body)
    assert sorted(item[1] for item in body["queue_pending"]) == ["b-pend"]
    assert answer.headers["X-Comfy-Unavailable-Backends"] == "gamma"
    assert answer.headers["X-Comfy-Backend"] == "alpha,beta"
    assert exchange.upstream_errors == (("gamma", kind),)
    assert exchange.unavailable == ("gamma",)
    # The metrics count the failure with its kind once the exchange is observed.
    exchange.status = 200
    rt.metrics.observe_exchange(exchange)
    sample = rt.metrics.registry.get_sample_value
    assert sample("comfy_gateway_upstream_errors_total", {"backend": "gamma", "kind": kind}) == 1
    assert sample("comfy_gateway_upstream_errors_total", {"backend": "alpha", "kind": kind}) == 0


async def test_a_merge_with_no_backend_answering_is_a_502(rt, fake):
    for name in NAMES:
        fake.down(name)
    exchange = Exchange("GET", "/queue", "/queue")
    with pytest.raises(UpstreamError) as info:
        await answer_merge(rt, Merge("/queue", "/queue"), exchange)
    assert info.value.status == 502
    assert all(name in info.value.message for name in NAMES)
    assert sorted(exchange.upstream_errors) == [(name, "connect") for name in NAMES]
    # Rendered, it is ComfyUI's error shape with status 502.
    answer = outcome.error_answer(info.value, exchange)
    assert answer.status == 502 and as_json(answer)["error"]["type"] == "backend_unavailable"


async def test_a_backend_known_down_is_not_asked(rt, fake):
    fill_queues(fake)
    rt.known_down = lambda: {"beta": "connection refused"}
    exchange = Exchange("GET", "/queue", "/queue")
    answer = await answer_merge(rt, Merge("/queue", "/queue"), exchange)
    assert fake.calls_to("beta") == []
    assert sorted(c.backend for c in fake.calls) == ["alpha", "gamma"]
    assert answer.headers["X-Comfy-Unavailable-Backends"] == "beta"
    assert sorted(item[1] for item in json.loads(answer.body)["queue_pending"]) == ["g-pend"]
    assert exchange.upstream_errors == ()  # not asked, so no failed call
    assert exchange.unavailable == ("beta",)


async def test_every_backend_known_down_is_a_502_without_a_call(rt, fake):
    rt.known_down = lambda: dict.fromkeys(NAMES, "down")
    with pytest.raises(UpstreamError):
        await answer_merge(rt, Merge("/queue", "/queue"), Exchange("GET", "/queue", "/queue"))
    assert fake.calls == []


# --- answer_fan_out ----------------------------------------------------------------------------------------------


async def test_fan_out_sends_each_backend_only_its_ids(rt, fake):
    await record(rt, "p1", "beta")
    await record(rt, "p2", "gamma")
    await record(rt, "p3", "beta")
    decision, exchange = await run(rt, "POST", "/api/queue?backend=alpha",
                                   body=b'{"delete": ["p1", "p2", "p3"], "keep": true}')
    assert isinstance(decision, FanOut)
    answer = await answer_fan_out(rt, decision, exchange, lambda b: {"X-Sent-To": b.name})
    assert answer.status == 200
    assert answer.headers == {"X-Comfy-Backend": "beta,gamma", "X-Comfy-Route": "affinity"}
    sent = {c.backend: (c.method, c.target, c.headers, json.loads(c.body)) for c in fake.calls}
    assert sent == {
        "beta": ("POST", "/api/queue", {"X-Sent-To": "beta"}, {"delete": ["p1", "p3"], "keep": True}),
        "gamma": ("POST", "/api/queue", {"X-Sent-To": "gamma"}, {"delete": ["p2"], "keep": True}),
    }


async def test_fan_out_of_a_prompt_id_key_sends_one_id_each(rt, fake):
    fan_out = FanOut("POST", "/interrupt", "prompt_id", {"prompt_id": "x", "other": 1},
                     {"alpha": ["a1"], "beta": ["b1"]})
    await answer_fan_out(rt, fan_out, Exchange("POST", "/interrupt", "/interrupt"), lambda b: {})
    assert {c.backend: json.loads(c.body) for c in fake.calls} == {
        "alpha": {"prompt_id": "a1", "other": 1},
        "beta": {"prompt_id": "b1", "other": 1},
    }


async def test_fan_out_answers_the_most_severe_status(rt, fake):
    fake["beta"].canned[("POST", "/history")] = reply(404, body=b"")
    fake["gamma"].canned[("POST", "/history")] = reply(500, body=b"")
    fan_out = FanOut("POST", "/history", "delete", {"delete": []},
                     {"alpha": ["a"], "beta": ["b"], "gamma": ["g"]})
    answer = await answer_fan_out(rt, fan_out, Exchange("POST", "/history", "/history"), lambda b: {})
    assert answer.status == 500
    del fake["gamma"].canned[("POST", "/history")]
    answer = await answer_fan_out(rt, fan_out, Exchange("POST", "/history", "/history"), lambda b: {})
    assert answer.status == 404


# --- outcome -----------------------------------------------------------------------------------------------------


async def test_error_answer_of_a_backend_failure():
    exchange = Exchange("GET", "/queue", "/queue", source="header")
    err = UpstreamTimeout("beta did not answer in time", backend="beta")
    answer = outcome.error_answer(err, exchange)
    assert answer.status == 504
    assert answer.content_type.startswith("application/json")
    assert answer.headers == {"X-Comfy-Backend": "beta", "X-Comfy-Route": "header"}
    assert json.loads(answer.body) == {
        "error": {
            "type": "backend_timeout",
            "message": "beta did not answer in time",
            "details": "",
            "extra_info": {"backend": "beta"},
        }
    }
    assert exchange.error == "backend_timeout"
    assert exchange.backend == "beta"
    assert exchange.upstream_errors == (("beta", "timeout"),)


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (UpstreamError("refused", backend="gamma", kind="connect"), 502, "connect"),
        (UpstreamError("garbled", backend="gamma"), 502, "protocol"),
        (UpstreamError("500", backend="gamma", kind="5xx"), 502, "5xx"),
    ],
)
def test_error_answer_counts_the_failure_kind(err, status, kind):
    exchange = Exchange("GET", "/x", "other", backend="alpha,gamma", upstream_errors=(("alpha", "timeout"),))
    answer = outcome.error_answer(err, exchange)
    assert answer.status == status
    assert exchange.backend == "alpha,gamma"  # already known: kept
    assert exchange.upstream_errors == (("alpha", "timeout"), ("gamma", kind))
    assert "X-Comfy-Route" not in answer.headers  # no source yet


@pytest.mark.parametrize("err", [BadRequest("bad", details="body"), UnknownBackend("who?", details=["a"])])
def test_error_answer_of_bad_input_names_no_backend(err):
    exchange = Exchange("GET", "/x", "other")
    answer = outcome.error_answer(err, exchange)
    assert answer.status == 400 and answer.headers == {}
    assert (exchange.error, exchange.backend, exchange.upstream_errors) == (err.code, None, ())
    assert json.loads(answer.body)["error"]["details"] == err.details


def test_error_answer_without_an_exchange():
    answer = outcome.error_answer(UpstreamError("x", backend="beta"), None)
    assert answer.status == 502 and answer.headers == {"X-Comfy-Backend": "beta"}


@pytest.mark.parametrize(("status", "kept"), [(200, True), (400, False), (500, False), (0, False)])
async def test_settle_submission_forgets_a_rejected_prompt(rt, status, kept):
    decision, exchange = await run(rt, "POST", "/prompt", headers=backend_header("beta"), body=b'{"prompt": {}}')
    assert isinstance(decision, Forward)
    await outcome.settle_submission(rt, decision.prompt_id, "beta", exchange.source, status)
    found = await rt.store.lookup_prompt(decision.prompt_id)
    assert (found is not None) is kept
    if kept:
        assert found.backend == "beta"


# --- robustness: decide answers bad input, never raises ---------------------------------------------------------


_ALPHABET = ["", " ", "alpha", "beta", "nope", "[", "]", ":", "/", "..", "%", "%2F", "%00", "\\", "\x00", "é", "\udcff",
             "?", "&", "=", "backend", "{", "}", '"', "api", "history", "view", "prompt", "queue", "ws", "+", "#"]
# The user header without the undecodable byte: that case has its own tests below.
_USER_ALPHABET = [part for part in _ALPHABET if "\udcff" not in part]
# A raw target is latin-1 text as received: undecodable bytes arrive percent-encoded.
_TARGET_ALPHABET = [*_USER_ALPHABET, "%FF", "%C3%A9", "%3F", "%26"]


def _junk(rng: random.Random, max_parts: int = 6, alphabet: list[str] = _ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_parts)))


def _cases(count: int, seed: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Deterministic junk requests (hypothesis is not installed): paths, queries, selection and user headers,
    bodies."""
    rng = random.Random(seed)
    paths = ["/prompt", "/queue", "/history", "/history/", "/interrupt", "/view", "/ws", "/object_info", "/api/"]
    params = ["backend", "subfolder", "filename", "max_items", "offset"]
    cases = []
    for _ in range(count):
        method = rng.choice(["GET", "POST", "HEAD", "DELETE"])
        path = rng.choice(paths) + _junk(rng, 3, _TARGET_ALPHABET)
        query = "&".join(
            f"{rng.choice([*params, _junk(rng, 2, _TARGET_ALPHABET)])}={_junk(rng, 3, _TARGET_ALPHABET)}"
            for _ in range(rng.randint(0, 3))
        )
        headers = {}
        if rng.random() < 0.6:
            headers["X-Comfy-Backend"] = _junk(rng)
        if rng.random() < 0.4:
            headers[USER_HEADER] = _junk(rng, alphabet=_USER_ALPHABET)
        body = rng.choice([b"", b"{}", b'{"delete": ["x", 1]}', b'{"prompt_id": "x"}', b"[",
                           _junk(rng).encode("utf-8", "surrogateescape")])
        cases.append((method, "/" + path.lstrip("/") + ("?" + query if query else ""), headers, body))
    return cases


@pytest.mark.parametrize(("method", "target", "headers", "body"), _cases(150, seed=20240611))
async def test_decide_never_raises_for_arbitrary_input(rt, method, target, headers, body):
    if headers.get(USER_HEADER):
        await rt.store.set_preference(headers[USER_HEADER], [*NAMES, "gone"][len(target) % 4])
    decision, _ = await asyncio.wait_for(run(rt, method, target, headers=headers, body=body), 5)
    assert isinstance(decision, (Forward, Merge, FanOut, Answer))
    if isinstance(decision, Answer):
        assert 400 <= decision.status < 500
        assert "error" in json.loads(decision.body)
    if isinstance(decision, Forward):
        assert decision.selection.backend in NAMES


@pytest.mark.parametrize(
    ("host", "origin"), [("[", "http://x.example"), ("127.0.0.1:8188", "http://["), ("localhost", "http://[::1")]
)
async def test_decide_answers_a_malformed_host_or_origin(rt, host, origin):
    decision, _ = await run(rt, "GET", "/queue", headers={"Host": host, "Origin": origin})
    assert isinstance(decision, Answer) and decision.status in (400, 403)


async def _store_still_writes(rt: Runtime) -> None:
    await asyncio.wait_for(record(rt, "after", "beta"), 5)
    assert (await rt.store.lookup_prompt("after")).backend == "beta"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"prompt": {}, "client_id": "\\udcff"}', id="client_id"),
        pytest.param(b'{"prompt": {}, "prompt_id": "\\ud800"}', id="prompt_id"),
    ],
)
async def test_submit_with_a_lone_surrogate_neither_hangs_nor_wedges_the_store(rt, body):
    decision, _ = await asyncio.wait_for(run(rt, "POST", "/prompt", body=body), 5)
    assert isinstance(decision, Forward) or (isinstance(decision, Answer) and decision.status == 400)
    await _store_still_writes(rt)


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [("GET", "/object_info", None), ("GET", "/queue", None), ("POST", "/prompt", b'{"prompt": {}}')],
)
async def test_a_user_header_that_is_not_utf8_is_read_as_latin1(rt, method, target, body):
    await rt.store.set_preference("ana\xff", "beta")  # the header's bytes read as Latin-1 name this user
    decision, exchange = await asyncio.wait_for(
        run(rt, method, target, headers={USER_HEADER: "ana\udcff"}, body=body), 5
    )
    assert exchange.user == "ana\xff"
    assert isinstance(decision, Forward) and decision.selection == Selection("beta", Source.PREFERENCE)
    await _store_still_writes(rt)


# --- loops ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("websocket", [False, True])
async def test_a_request_carrying_this_gateways_own_id_is_a_508_naming_the_backend(rt, websocket):
    looped = dataclasses.replace(rt, instance_id="a" * 32)
    target = "/ws?clientId=c" if websocket else "/object_info"
    own = {INSTANCE_HEADER: f"{'a' * 32}; backend={DEFAULT}", **backend_header(DEFAULT)}

    decision, exchange = await run(looped, "GET", target, headers=own, websocket=websocket)

    assert isinstance(decision, Answer) and decision.status == 508
    error = as_json(decision)["error"]
    assert error["type"] == "loop_detected" and error["extra_info"] == {"backend": DEFAULT}
    assert exchange.error == "loop_detected"


@pytest.mark.parametrize(
    "value",
    [
        "b" * 32,  # another gateway's: a chain
        f"{'b' * 32}; backend={DEFAULT}",
        "a" * 31,
        "",
        "a" * 32 + "0; backend=x",
    ],
)
async def test_another_instance_id_is_forwarded(rt, value):
    looped = dataclasses.replace(rt, instance_id="a" * 32)

    decision, _ = await run(looped, "GET", "/object_info", headers={INSTANCE_HEADER: value})

    assert_forward(decision, DEFAULT, Source.DEFAULT)


async def test_a_looped_request_naming_an_unknown_backend_names_none(rt):
    looped = dataclasses.replace(rt, instance_id="a" * 32)

    decision, _ = await run(looped, "GET", "/queue", headers={INSTANCE_HEADER: f"{'a' * 32}; backend=<script>"})

    assert isinstance(decision, Answer) and decision.status == 508
    assert as_json(decision)["error"]["extra_info"] == {}


# --- resilience: the circuit, the kind of call, failover ---------------------------------------------------------


def open_circuit(rt: Runtime, name: str) -> None:
    rt.breakers = Breakers(NAMES, BreakerPolicy(consecutive_failures=1))
    rt.breakers.failed(name, "connect")


async def test_an_open_backend_is_a_503_with_retry_after_and_takes_no_prompt(rt, fake):
    open_circuit(rt, "beta")
    decision, exchange = await run(rt, "GET", "/system_stats", headers=backend_header("beta"))
    assert isinstance(decision, Answer) and decision.status == 503
    assert as_json(decision)["error"]["type"] == "backend_unavailable" and decision.headers["Retry-After"] == "30"
    assert exchange.backend == "beta" and exchange.upstream_errors == ()  # no call was made: not a failure
    body = json.dumps({"prompt": {}, "prompt_id": "p-open"}).encode()
    decision, _ = await run(rt, "POST", "/prompt", headers=backend_header("beta"), body=body)
    assert isinstance(decision, Answer) and decision.status == 503
    assert await rt.store.lookup_prompt("p-open") is None
    assert fake.calls_to("beta") == []


async def test_merges_and_probes_leave_an_open_backend_out_without_asking_it(rt, fake):
    open_circuit(rt, "beta")
    exchange = Exchange("GET", "/queue", "/queue")
    answer = await answer_merge(rt, Merge("/queue", "/queue"), exchange)
    assert answer.headers["X-Comfy-Unavailable-Backends"] == "beta"
    decision, exchange = await run(rt, "GET", f"/history/{uuid.uuid4()}")
    assert isinstance(decision, Forward) and decision.headers["X-Comfy-Unavailable-Backends"] == "beta"
    assert fake.calls_to("beta") == []


@pytest.mark.parametrize(
    ("method", "target", "kind"),
    [("GET", "/queue", "api"), ("POST", "/prompt", "api"), ("GET", "/view?filename=a.png", "transfer"),
     ("POST", "/upload/image", "transfer"), ("GET", "/object_info", "transfer"), ("GET", "/api/object_info/X",
     "transfer"), ("GET", "/system_stats", "api"), ("GET", "/some/custom/route", "transfer")],
)
async def test_each_forward_names_its_kind_of_call(rt, method, target, kind):
    body = json.dumps({"prompt": {}}).encode() if target == "/prompt" else None
    decision, _ = await run(rt, method, target, headers=backend_header("alpha"), body=body)
    assert isinstance(decision, Forward) and decision.kind == kind


async def test_a_new_prompt_of_an_open_backend_goes_to_its_fallback_and_a_named_one_stays(rt, fake):
    table = {n: Backend(n, URL(f"http://{n}.test"), fallback="beta" if n == DEFAULT else None) for n in NAMES}
    rt.backends = BackendTable(table, default=DEFAULT)
    open_circuit(rt, DEFAULT)
    body = json.dumps({"prompt": {}, "prompt_id": "p-moved"}).encode()
    decision, _ = await run(rt, "POST", "/prompt", body=body)
    assert_forward(decision, "beta", Source.FALLBACK)
    assert (await rt.store.lookup_prompt("p-moved")).backend == "beta"
    kept = body.replace(b"moved", b"kept")
    decision, _ = await run(rt, "POST", "/prompt", headers=backend_header(DEFAULT), body=kept)
    assert isinstance(decision, Answer) and decision.status == 503
    rt.breakers = Breakers(NAMES)
    decision, _ = await run(rt, "POST", "/prompt", body=body.replace(b"moved", b"standby"))
    forward = assert_forward(decision, DEFAULT, Source.DEFAULT)
    assert forward.fallback == Selection("beta", Source.FALLBACK)  # should its connection be refused


# --- a verdict kept per head decides as a fresh one ---------------------------------------------------------------

ANA_TOKEN = "ana-token-0123456789abcdef"


@dataclass
class KeyedRequest(FakeRequest):
    """A request with a head key, as the fast path gives one."""

    @property
    def head_key(self) -> tuple[object, ...]:
        return (self.method, self.raw_target, self.client_ip, tuple(sorted(self.headers.items())))


def _decided(decision: Decision, exchange: Exchange) -> tuple[object, ...]:
    """What a data path carries out and records of a decision, as a comparable value."""
    facts = (exchange.user, exchange.backend, exchange.source, exchange.prompt_id, exchange.error)
    if isinstance(decision, Answer):
        return ("answer", decision.status, decision.body, sorted(decision.headers.items()), facts)
    if isinstance(decision, Forward):
        return ("forward", decision.selection, decision.target, sorted(decision.headers.items()), facts)
    return (type(decision).__name__, facts)


_HEADER_CHOICES = {
    "Authorization": st.sampled_from([None, f"Bearer {ANA_TOKEN}", "Bearer wrong-token-0123456789", "Basic x"]),
    "Origin": st.sampled_from([None, "https://app.example", "https://evil.example", "null"]),
    "Host": st.sampled_from([None, "gw.test", "gw.test:8188", "attacker.example"]),
    "X-Comfy-Backend": st.sampled_from([None, "", "beta", "nope"]),
    "Access-Control-Request-Method": st.sampled_from([None, "POST"]),
    "comfy-user": st.sampled_from([None, "ana", "bo"]),
}
_HEADS = st.tuples(
    st.sampled_from(["GET", "OPTIONS", "POST"]),
    st.sampled_from(
        ["/queue", "/history", "/history/p-1", "/system_stats", "/?token=" + ANA_TOKEN, "/queue?backend=gamma"]
    ),
    st.fixed_dictionaries({}, optional=_HEADER_CHOICES),
    st.sampled_from(["127.0.0.1", "203.0.113.7"]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_HEADS, min_size=1, max_size=10))
def test_a_verdict_kept_for_a_head_decides_as_one_made_afresh(tmp_path, heads: list) -> None:
    from gateway.pipeline.guard import KeptVerdicts
    from gateway.runtime import AccessPolicy

    async def go() -> None:
        store = SqliteStateStore.open(StoreSettings(path=tmp_path / f"{uuid.uuid4()}.sqlite3"))
        table = BackendTable({n: Backend(n, URL(f"http://{n}.test")) for n in NAMES}, default=DEFAULT)
        access = AccessPolicy(users_by_token={ANA_TOKEN: "ana"}, allowed_origins=frozenset({"https://app.example:443"}),
                              allowed_hosts=frozenset({"gw.test"}))
        rt = Runtime(backends=table, store=store, calls=FakeBackends(NAMES), policy=RoutingPolicy(),
                     metrics=GatewayMetrics(table), access=access)
        await record(rt, "p-1", "gamma")
        kept = KeptVerdicts(4)
        try:
            for method, target, raw_headers, ip in heads * 2:  # every head seen again
                headers = {name: value for name, value in raw_headers.items() if value is not None}
                request = KeyedRequest(method, target, headers, client_ip=ip)
                endpoint = classify(method, request.path)
                outcomes = []
                for verdicts in (kept, None):
                    exchange = Exchange(method, request.path, endpoint.template)
                    decision = await decide(rt, request, endpoint, exchange, b"{}" if needs_body(endpoint) else None,
                                            verdicts)
                    outcomes.append(_decided(decision, exchange))
                assert outcomes[0] == outcomes[1], (method, target, headers, ip)
        finally:
            await store.close()

    asyncio.run(go())

"""The guardrails step as a value, with no sockets: real inventories (read from KernieGen's own /object_info through
an in-memory BackendCalls) and hypothesis over prompt bodies: the step never raises but to refuse, and never
changes a byte outside the values it reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.backends.calls import Reply
from gateway.backends.table import Backend, BackendTable
from gateway.core.errors import PromptRefused
from gateway.core.headers import GUARDRAILS_HEADER
from gateway.core.selection import Selection, Source
from gateway.inventory.inventories import Inventories
from gateway.kerniegen.inventory import Inventory as KernieGenInventory
from gateway.kerniegen.nodes import object_info
from gateway.observe.metrics import GatewayMetrics
from gateway.pipeline.guardrails import Guarded, guard_prompt
from gateway.pipeline.prompt_nodes import splice, value_spans
from gateway.runtime import GuardrailPolicy, RoutingPolicy, Runtime

CKPTS = {"a": ("one.safetensors", "both.safetensors"), "b": ("two.safetensors", "both.safetensors")}


class ObjectInfoCalls:
    """Answers GET /object_info for each backend from KernieGen's own definitions and its checkpoints."""

    async def fetch(self, backend: Backend, method: str, target: str, headers: Mapping[str, str] | None = None,
                    **_: Any) -> Reply:
        body = json.dumps(object_info(KernieGenInventory(checkpoints=CKPTS[backend.name]), [])).encode()
        return Reply(200, "OK", CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"})), body)


def make_runtime(policy: GuardrailPolicy) -> Runtime:
    table = BackendTable({name: Backend(name, URL(f"http://127.0.0.1:{n + 1}")) for n, name in enumerate(CKPTS)}, "a")
    inventories = Inventories(table, ObjectInfoCalls())

    async def read() -> None:
        for name in CKPTS:
            await inventories.refresh(name)

    asyncio.run(read())
    return Runtime(backends=table, store=None, calls=ObjectInfoCalls(), policy=RoutingPolicy(),  # type: ignore[arg-type]
                   metrics=GatewayMetrics(table), inventories=inventories, guardrails=policy)


ALL_ON = GuardrailPolicy(normalize_seeds=True, check_models=True, check_node_classes=True, place_by_model=True,
                         aliases={"a": {"alias.safetensors": "one.safetensors"}})


@pytest.fixture(scope="module")
def rt() -> Runtime:
    return make_runtime(ALL_ON)


seeds = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([-1, 0, 2**64 - 1, -1.0, "-1", True, ["1", 0]]))
ckpts = st.sampled_from(["one.safetensors", "two.safetensors", "both.safetensors", "alias.safetensors",
                         "none.safetensors", 3, ["9", 0]])
classes = st.sampled_from(["KSampler", "CheckpointLoaderSimple", "SaveImage", "NoSuch", "EmptyImage"])
ids = st.sampled_from(["1", "3", "4", "9", "é", "a b", "x,y=z"])
node = st.builds(
    lambda class_type, seed, ckpt, extra: {"class_type": class_type,
                                          "inputs": {"seed": seed, "noise_seed": seed, "ckpt_name": ckpt, **extra}},
    classes, seeds, ckpts, st.dictionaries(st.sampled_from(["images", "text", "steps"]),
                                           st.one_of(st.text(max_size=4), st.integers(), st.just(["4", 0]))),
)
prompts = st.dictionaries(ids, node, max_size=5)
spellings = st.sampled_from([{}, {"indent": 1}, {"separators": (",", ":")}, {"ensure_ascii": False}])
sources = st.sampled_from([s for s in Source if s not in (Source.MODEL, Source.MERGED)])


def reported(guarded: Guarded) -> dict[tuple[str, str], str]:
    """(node, input) → the new value's JSON text, from X-Comfy-Guardrails."""
    changes = {}
    for entry in guarded.headers.get(GUARDRAILS_HEADER, "").split(", "):
        action, *pairs = entry.split(" ")
        fields = {key: unquote(value) for key, _, value in (pair.partition("=") for pair in pairs)}
        if action == "seed_normalized":
            changes[(fields["node"], fields["input"])] = fields["value"]
        elif action == "alias_applied":
            changes[(fields["node"], fields["input"])] = json.dumps(fields["to"])
    return changes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts, spellings, sources, st.booleans())
def test_never_raises_but_to_refuse_and_changes_only_what_it_reports(
    rt: Runtime, prompt: dict[str, Any], spelling: dict[str, Any], source: Source, wrap: bool
) -> None:
    body = json.dumps({"prompt": prompt, "client_id": "c"} if wrap else prompt, **spelling).encode()
    try:
        guarded = guard_prompt(rt, Selection("a", source), body)
    except PromptRefused as refused:
        answer = refused.body()
        assert answer["error"]["type"] in ("invalid_prompt", "prompt_outputs_failed_validation")
        assert answer["error"]["extra_info"]["gateway"]["backend"] in CKPTS
        return
    header = guarded.headers.get(GUARDRAILS_HEADER, "")
    assert header.isascii() and header.isprintable()
    changes = reported(guarded)
    if not changes:
        assert guarded.body == body
        return
    spans = value_spans(body, {node_id: [name for n, name in changes if n == node_id] for node_id, _ in changes})
    assert guarded.body == splice(body, {spans[key]: value.encode() for key, value in changes.items()})
    payload = json.loads(guarded.body)["prompt"]
    for (node_id, name), value in changes.items():
        new = payload[node_id]["inputs"][name]
        if name in ("seed", "noise_seed"):
            assert isinstance(new, int) and 0 <= new <= 2**64 - 1
        else:
            assert new == json.loads(value)
    if guarded.selection.source is Source.MODEL:
        assert source is Source.DEFAULT


def test_junk_bodies_are_forwarded_unchanged(rt: Runtime) -> None:
    for body in (b"", b"{", b"[1]", b'{"prompt": 3}', b'{"prompt": {"1": {"inputs": {}}}}', b"\xff\xfe"):
        guarded = guard_prompt(rt, Selection("a", Source.DEFAULT), body)
        assert guarded.body == body
        assert guarded.actions == ("skipped",)
        assert guarded.headers == {GUARDRAILS_HEADER: "skipped reason=unreadable_body"}


def test_nothing_is_read_with_every_guardrail_off() -> None:
    rt = make_runtime(GuardrailPolicy())
    body = json.dumps({"prompt": {"3": {"class_type": "NoSuch", "inputs": {"seed": -1}}}}).encode()
    assert guard_prompt(rt, Selection("a", Source.DEFAULT), body) == Guarded(Selection("a", Source.DEFAULT), body)


def test_a_class_listed_but_unreadable_is_not_refused() -> None:
    rt = make_runtime(ALL_ON)
    assert rt.inventories is not None
    inventory = rt.inventories.get("a")
    assert inventory is not None
    # as if the backend had listed "Odd" with an entry that is no object
    rt.inventories._entries["a"].inventory = replace(inventory, unreadable=frozenset({"Odd"}))
    odd = json.dumps({"prompt": {"1": {"class_type": "Odd", "inputs": {}}}}).encode()
    assert guard_prompt(rt, Selection("a", Source.DEFAULT), odd).body == odd
    with pytest.raises(PromptRefused):
        guard_prompt(rt, Selection("a", Source.DEFAULT), odd.replace(b"Odd", b"Gone"))


def test_a_model_name_spelled_with_escapes_is_read_and_still_known(rt: Runtime) -> None:
    """A name whose JSON text is not one of the texts kept for the choices is read, not judged unread: known
    where it is, missing (the prompt placed where it is) where it is not."""

    def body(spelling: str) -> bytes:
        node = '{"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ' + spelling + "}}"
        return ('{"prompt": {"4": ' + node + "}}").encode()

    for spelling in ('"one.safetensors"', '"one.safe\\u0074ensors"', '"\\u006fne.safetensors"'):
        assert guard_prompt(rt, Selection("a", Source.DEFAULT), body(spelling)).actions == ()
    for spelling in ('"two.safetensors"', '"\\u0074wo.safetensors"'):
        guarded = guard_prompt(rt, Selection("a", Source.DEFAULT), body(spelling))
        assert guarded.selection.backend == "b" and guarded.actions == ("placed_by_model",)

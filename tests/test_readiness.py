"""Readiness decided from the store and each backend's state, under each `ready_requires`."""

from __future__ import annotations

import pytest

from gateway.observe.readiness import BackendReadiness, decide_readiness

UP = BackendReadiness(up=True)
DOWN = BackendReadiness(up=False)
OPEN = BackendReadiness(up=True, circuit="open")
UNCHECKED = BackendReadiness(up=None)


@pytest.mark.parametrize(
    ("requires", "backends", "ready"),
    [
        ("any", {"d": DOWN, "o": UP}, True),
        ("any", {"d": DOWN, "o": OPEN}, False),
        ("any", {"d": UNCHECKED, "o": DOWN}, False),
        ("default", {"d": DOWN, "o": UP}, False),
        ("default", {"d": OPEN, "o": UP}, False),
        ("default", {"d": UP, "o": DOWN}, True),
        ("store", {"d": DOWN, "o": DOWN}, True),
    ],
    ids=["any-one-up", "any-open-counts-as-not", "any-none", "default-down", "default-open", "default-up",
         "store-only"],
)
def test_backends_each_requirement_asks_for(requires, backends, ready):
    assert decide_readiness(requires, store_ok=True, backends=backends, default="d")[0] is ready


@pytest.mark.parametrize("requires", ["any", "default", "store"])
def test_a_failing_store_is_never_ready(requires):
    ready, why = decide_readiness(requires, store_ok=False, backends={"d": UP}, default="d")
    assert not ready and "store" in why


@pytest.mark.parametrize(("members", "ready"), [((DOWN, UP), True), ((DOWN, OPEN), False)], ids=["one-up", "none"])
def test_a_default_pool_is_ready_while_one_member_is(members, ready):
    backends = {"gpu.1": members[0], "gpu.2": members[1], "o": UP}
    verdict, _ = decide_readiness(
        "default", store_ok=True, backends=backends, default="gpu", default_servers=("gpu.1", "gpu.2")
    )
    assert verdict is ready

"""The circuit breaker per backend as a value: transitions, ejection times, the trial, health checks and the
ejection cap, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.backends.breaker import BreakerPolicy, Breakers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(names=("a", "b"), groups=None, **policy) -> tuple[Breakers, Clock, list[tuple[str, str, str]]]:
    clock = Clock()
    moves: list[tuple[str, str, str]] = []
    breakers = Breakers(
        names,
        BreakerPolicy(**{"consecutive_failures": 3, "base_ejection_seconds": 10.0, "max_ejection_seconds": 25.0,
                         **policy}),
        trial_seconds=dict.fromkeys(names, 2.0),
        on_transition=lambda name, was, to, why: moves.append((name, was, to)),
        clock=clock,
        groups=groups,
    )
    return breakers, clock, moves


def test_consecutive_failures_open_and_a_success_in_between_resets_the_count():
    breakers, _, moves = make()
    for _ in range(2):
        breakers.failed("a", "connect")
    breakers.succeeded("a")
    for _ in range(2):
        breakers.failed("a", "connect")
    assert breakers.state("a") == "closed" and breakers.admit("a") is None
    breakers.failed("a", "timeout")
    assert breakers.state("a") == "open"
    assert breakers.admit("a") == pytest.approx(10.0)
    assert breakers.admit("b") is None
    assert moves == [("a", "closed", "open")]


def test_after_the_ejection_one_trial_passes_and_its_success_closes():
    breakers, clock, moves = make()
    for _ in range(3):
        breakers.failed("a", "connect")
    clock.now += 10.0
    assert breakers.admit("a") is None  # the trial
    assert breakers.state("a") == "half_open"
    assert breakers.admit("a") == pytest.approx(2.0)  # one trial at a time
    breakers.succeeded("a")
    assert breakers.state("a") == "closed" and breakers.admit("a") is None
    assert [m[2] for m in moves] == ["open", "half_open", "closed"]


def test_a_failed_trial_opens_again_for_longer_up_to_the_most():
    breakers, clock, _ = make()
    for _ in range(3):
        breakers.failed("a", "connect")
    clock.now += 10.0
    assert breakers.admit("a") is None
    breakers.failed("a", "connect")
    assert breakers.state("a") == "open"
    assert breakers.admit("a") == pytest.approx(20.0)  # base x 2
    clock.now += 20.0
    assert breakers.admit("a") is None
    breakers.failed("a", "connect")
    assert breakers.admit("a") == pytest.approx(25.0)  # capped


def test_a_trial_that_never_reports_lets_another_through_after_its_time():
    breakers, clock, _ = make()
    for _ in range(3):
        breakers.failed("a", "connect")
    clock.now += 10.0
    assert breakers.admit("a") is None
    clock.now += 2.5
    assert breakers.admit("a") is None


def test_failed_health_checks_count_as_failures_and_a_passing_one_closes():
    breakers, _, moves = make()
    breakers.failed("a", "connect")
    breakers.health_checked("a", False, "refused")
    assert breakers.state("a") == "closed"
    breakers.health_checked("a", False, "refused")
    assert breakers.state("a") == "open"
    assert "refused" in str(breakers.describe("a")["reason"])
    breakers.health_checked("a", True)
    assert breakers.state("a") == "closed"
    assert moves == [("a", "closed", "open"), ("a", "open", "closed")]


def test_the_ejection_cap_keeps_at_least_one_backend_in_service():
    breakers, _, _ = make(names=("a", "b", "c", "d"), max_ejection_percent=50.0, consecutive_failures=1)
    for name in ("a", "b", "c"):
        breakers.health_checked(name, False)
    assert [breakers.state(n) for n in "abcd"] == ["open", "open", "closed", "closed"]
    breakers, _, _ = make(names=("a", "b"), max_ejection_percent=0.0, consecutive_failures=1)
    breakers.health_checked("a", False)
    breakers.health_checked("b", False)
    assert [breakers.state(n) for n in "ab"] == ["open", "closed"]  # at least one, whatever the percentage


def test_the_times_ejected_are_forgotten_after_a_long_closed_spell():
    breakers, clock, _ = make(consecutive_failures=1)
    breakers.health_checked("a", False)
    breakers.health_checked("a", True)
    breakers.health_checked("a", False)
    assert breakers.admit("a") == pytest.approx(20.0)
    breakers.health_checked("a", True)
    clock.now += 26.0
    breakers.health_checked("a", False)
    assert breakers.admit("a") == pytest.approx(10.0)


def test_switched_off_it_never_opens_and_unknown_names_are_closed():
    breakers, _, moves = make(enabled=False)
    for _ in range(10):
        breakers.failed("a", "connect")
    breakers.health_checked("a", False)
    assert breakers.admit("a") is None and moves == []
    assert breakers.admit("nobody") is None and breakers.state("nobody") == "closed"


def test_no_trial_while_the_latest_health_check_failed():
    breakers, clock, _ = make(consecutive_failures=1)
    breakers.health_checked("a", False)
    clock.now += 60.0
    assert breakers.admit("a") == pytest.approx(10.0)
    assert breakers.state("a") == "open"
    breakers.health_checked("a", True)
    assert breakers.admit("a") is None and breakers.state("a") == "closed"


def test_the_ejection_cap_counts_each_pool_on_its_own():
    """Half of pool gpu's four members may be open, whatever the other backends' circuits, and theirs likewise."""
    names = ("a", "b", "gpu.1", "gpu.2", "gpu.3", "gpu.4")
    groups = {name: "gpu" for name in names if name.startswith("gpu.")}
    breakers, _, _ = make(names=names, groups=groups, max_ejection_percent=50.0, consecutive_failures=1)
    for name in ("a", "b", "gpu.1", "gpu.2", "gpu.3"):
        breakers.failed(name, "refused")
    # b: one of the two plain backends is open already; gpu.3: two of gpu's four are (one cap over all six
    # would have let b and gpu.1 open, and kept gpu.2 in)
    assert [breakers.state(n) for n in names] == ["open", "closed", "open", "open", "closed", "closed"]

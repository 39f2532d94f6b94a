"""merge.without_collector: the work runs with the cyclic garbage collector off, which is back as it was after."""

from __future__ import annotations

import gc

import pytest

from gateway.merge.replies import without_collector


def collector_state(*args: object, **kwargs: object) -> tuple[bool, tuple[object, ...], dict[str, object]]:
    return gc.isenabled(), args, kwargs


def fail() -> None:
    raise ValueError("a backend's body was not JSON")


def test_the_work_runs_with_the_collector_off_and_it_is_back_after() -> None:
    assert gc.isenabled()
    assert without_collector(collector_state, 1, key="v") == (False, (1,), {"key": "v"})
    assert gc.isenabled()


def test_the_collector_comes_back_when_the_work_raises() -> None:
    with pytest.raises(ValueError):
        without_collector(fail)
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        assert without_collector(collector_state)[0] is False
        assert not gc.isenabled()
    finally:
        gc.enable()

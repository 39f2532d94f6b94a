"""Which failed calls may be sent again, the jittered backoff, and the retry budget per backend."""

from __future__ import annotations

import random

import pytest

from gateway.backends.retry import RetryBudget, RetryPolicy, may_repeat


@pytest.mark.parametrize(
    ("method", "in_hand", "failure", "expected"),
    [
        ("GET", True, "connect", True),
        ("POST", True, "connect", True),  # nothing was sent: the same prompt, once
        ("POST", True, "closed", False),  # the backend may have taken it
        ("GET", True, "closed", True),
        ("DELETE", True, "closed", True),
        ("POST", False, "connect", False),  # a streamed body is gone once sent
        ("GET", False, "closed", False),
    ],
)
def test_only_what_cannot_do_work_twice_is_repeated(method, in_hand, failure, expected):
    assert may_repeat(method, in_hand, failure) is expected


def test_retries_stay_within_the_budget_and_the_count_per_call():
    budget = RetryBudget(["a"], RetryPolicy(retries=1, backoff_seconds=0.1, budget_percent=20, min_retries=2),
                         rng=random.Random(7))
    assert budget.retry_after("a", "GET", True, "connect", 2) is None  # one retry per call
    granted = [budget.retry_after("a", "GET", True, "connect", 1) for _ in range(3)]
    assert [g is not None for g in granted] == [True, True, False]  # the two tokens it starts with
    for _ in range(4):
        budget.called("a")
    assert budget.retry_after("a", "GET", True, "connect", 1) is None  # 4 calls earn 0.8 of a retry
    budget.called("a")
    assert budget.retry_after("a", "GET", True, "connect", 1) is not None  # the fifth earns it
    assert budget.retry_after("b", "GET", True, "connect", 1) is None  # an unknown backend has no budget


def test_the_backoff_is_jittered_between_half_and_all_of_base_times_two_to_the_attempt():
    budget = RetryBudget(["a"], RetryPolicy(retries=3, backoff_seconds=0.2, min_retries=100), rng=random.Random(1))
    for attempt, top in ((1, 0.2), (2, 0.4), (3, 0.8)):
        waits = [budget.retry_after("a", "GET", True, "connect", attempt) for _ in range(20)]
        assert all(w is not None and top / 2 <= w <= top for w in waits)
        assert len(set(waits)) > 1

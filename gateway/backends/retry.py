"""Retries of a call to a backend, only where a retry cannot duplicate work, and within a budget.

    a connection that never opened (refused, unreachable): nothing of the request left the gateway, so any
        request whose body the gateway holds may go again (a POST /prompt too: the same body, the same
        prompt_id the gateway minted, so the backend can never run it twice)
    a connection closed before any byte of the answer: the backend may have read the request, so only an
        idempotent one (GET, HEAD, OPTIONS, PUT, DELETE, as RFC 9110 defines them) goes again

A streamed body (an upload) is never retried: it is gone once sent. Each retry waits a jittered backoff (half
the base × 2^n, plus up to as much again at random), and spends a token of its backend's budget: every call
adds `budget_percent` % of a token, up to `min_retries` tokens, so retries stay under that share of calls (plus a
few) and never multiply an outage (Envoy's retry budget).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# How a call failed before any answer: never connected, or closed before the answer's first byte.
EarlyFailure = Literal["connect", "closed"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """settings.resilience's retry part."""

    retries: int = 1  # per call, after the first try; 0: never
    backoff_seconds: float = 0.05
    budget_percent: float = 20.0
    min_retries: int = 3


def may_repeat(method: str, body_in_hand: bool, failure: EarlyFailure) -> bool:
    """Whether a call that failed so may be sent again without risk of doing its work twice."""
    if not body_in_hand:
        return False
    return failure == "connect" or method in IDEMPOTENT


class RetryBudget:
    """Each backend's retry tokens, and the backoff before each retry."""

    def __init__(
        self,
        names: Iterable[str] = (),
        policy: RetryPolicy | None = None,
        *,
        on_retry: Callable[[str, EarlyFailure], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy(retries=0)
        self._on_retry = on_retry
        self._tokens = {name: float(self.policy.min_retries) for name in names}
        self._share = self.policy.budget_percent / 100
        self._rng = rng or random.Random()

    def called(self, backend: str) -> None:
        """One call to `backend` began: it earns the budget a share of a retry."""
        tokens = self._tokens.get(backend)
        if tokens is not None and tokens < self.policy.min_retries:
            self._tokens[backend] = min(float(self.policy.min_retries), tokens + self._share)

    def retry_after(
        self, backend: str, method: str, body_in_hand: bool, failure: EarlyFailure, attempt: int
    ) -> float | None:
        """Seconds to wait before retry number `attempt` (1, 2, ...) of a call that failed so; None: do not
        retry (not safe, retries used up, or the backend's budget spent). A granted retry spends a token."""
        if attempt > self.policy.retries or not may_repeat(method, body_in_hand, failure):
            return None
        tokens = self._tokens.get(backend, 0.0)
        if tokens < 1.0:
            return None
        self._tokens[backend] = tokens - 1.0
        if self._on_retry is not None:
            self._on_retry(backend, failure)
        half: float = self.policy.backoff_seconds * 2.0 ** (attempt - 1) / 2
        return half + self._rng.uniform(0.0, half)

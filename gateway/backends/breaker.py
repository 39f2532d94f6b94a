"""A circuit breaker per backend (outlier detection, after Envoy's): consecutive failures eject a backend for a
while, and calls to it are answered at once instead of waiting on it.

    closed ──(consecutive_failures in a row, failed health checks counted among them)──▶ open
    open ──(its ejection time passed: the next call is let through as a trial)──▶ half_open
    half_open ──(the trial succeeds, or a health check passes)──▶ closed
    half_open ──(the trial fails)──▶ open, for longer

While the latest health check of an open backend failed, no trial is let through: only a passing check
closes it. An ejection lasts base_ejection_seconds × the times the backend was ejected (at most
max_ejection_seconds);
that count is forgotten once the backend stays closed for max_ejection_seconds. At most max_ejection_percent of
the backends (always at least one) are ejected at once, so a failure of the gateway's own network never ejects
them all. A passing health check closes a breaker at once, as Envoy's active checks un-eject a host.

Fed by real traffic (pipeline/outcome.py reads each finished exchange) and by the health checks; consulted by
the pipeline (pipeline/decide.py, merges, probes). It owns no timer: time is read when it is asked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("comfy_gateway.breaker")

BreakerState = Literal["closed", "open", "half_open"]
BREAKER_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")

# (backend, from, to, why): how a transition reaches the metrics.
TransitionObserver = Callable[[str, BreakerState, BreakerState, str], None]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """settings.resilience, as the breaker reads it (Envoy's defaults, but for the ejection percentage)."""

    enabled: bool = True
    consecutive_failures: int = 5
    base_ejection_seconds: float = 30.0
    max_ejection_seconds: float = 300.0
    max_ejection_percent: float = 50.0


@dataclass(slots=True)
class Circuit:
    """One backend's breaker."""

    state: BreakerState = "closed"
    failures: int = 0  # consecutive, while closed
    ejections: int = 0  # times ejected, recently: multiplies the ejection time
    open_until: float = 0.0
    trial_until: float = 0.0  # half-open: a trial call is out until then
    closed_at: float = 0.0
    reason: str = ""  # why it last opened
    checked_down: bool = False  # the latest health check failed: no trial until one passes


class Breakers:
    """Every backend's breaker. Unknown names are always closed (a test's runtime may have no breakers)."""

    def __init__(
        self,
        names: Iterable[str] = (),
        policy: BreakerPolicy | None = None,
        *,
        trial_seconds: Mapping[str, float] | None = None,
        on_transition: TransitionObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._circuits = {name: Circuit() for name in names}
        # name -> its ejection group, of which at most max_ejection_percent may be open: a pool's members form
        # one group each pool, every other backend belongs to the group "" (as Envoy caps each cluster).
        self._groups = dict(groups or {})
        # How long a trial call may take before another one is let through (the backend's longest API call).
        self._trial_seconds = dict(trial_seconds or {})
        self._on_transition = on_transition
        self._clock = clock

    def __contains__(self, name: object) -> bool:
        return name in self._circuits

    # --- asked by the pipeline ------------------------------------------------------------------------------

    def admit(self, name: str) -> float | None:
        """None: a call may go to `name` now (in half-open, as its one trial); else the seconds until the
        backend is tried again."""
        circuit = self._circuits.get(name)
        if circuit is None or circuit.state == "closed" or not self.policy.enabled:
            return None
        now = self._clock()
        if circuit.state == "open":
            if now < circuit.open_until:
                return circuit.open_until - now
            if circuit.checked_down:  # a trial would only wait out the timeouts the check just hit
                return self.policy.base_ejection_seconds
            self._move(name, circuit, "half_open", "its ejection time is over; the next call is a trial")
        if now < circuit.trial_until:
            return circuit.trial_until - now
        circuit.trial_until = now + self._trial_seconds.get(name, self.policy.base_ejection_seconds)
        return None

    def refusing(self, name: str) -> bool:
        """Whether a call to `name` would be refused now (admit without reserving the trial)."""
        circuit = self._circuits.get(name)
        if circuit is None or circuit.state == "closed" or not self.policy.enabled:
            return False
        now = self._clock()
        if circuit.state == "open":
            return now < circuit.open_until or circuit.checked_down
        return now < circuit.trial_until

    def state(self, name: str) -> BreakerState:
        circuit = self._circuits.get(name)
        return "closed" if circuit is None else circuit.state

    def describe(self, name: str) -> dict[str, object]:
        """For /gateway/ready and the admin API."""
        circuit = self._circuits.get(name) or Circuit()
        retry = max(0.0, circuit.open_until - self._clock()) if circuit.state == "open" else 0.0
        return {
            "state": circuit.state,
            "consecutive_failures": circuit.failures,
            "times_ejected": circuit.ejections,
            "retry_in_seconds": round(retry, 3),
            "reason": circuit.reason or None,
        }

    # --- fed by outcomes and health checks ------------------------------------------------------------------

    def succeeded(self, name: str) -> None:
        circuit = self._circuits.get(name)
        if circuit is None:
            return
        circuit.failures = 0
        if circuit.state != "closed":
            self._close(name, circuit, "a call succeeded")

    def failed(self, name: str, why: str) -> None:
        circuit = self._circuits.get(name)
        if circuit is None or not self.policy.enabled:
            return
        if circuit.state == "half_open":
            self._open(name, circuit, f"the trial call failed: {why}")
        elif circuit.state == "closed":
            circuit.failures += 1
            if circuit.failures >= self.policy.consecutive_failures:
                self._open(name, circuit, f"{circuit.failures} consecutive failures, the last: {why}")

    def health_checked(self, name: str, up: bool, why: str = "") -> None:
        circuit = self._circuits.get(name)
        if circuit is None or not self.policy.enabled:
            return
        circuit.checked_down = not up
        if up:
            circuit.failures = 0
            if circuit.state != "closed":
                self._close(name, circuit, "a health check passed")
        elif circuit.state != "open":
            self.failed(name, f"a health check failed: {why or 'down'}")

    # --- transitions ----------------------------------------------------------------------------------------

    def _open(self, name: str, circuit: Circuit, why: str) -> None:
        policy = self.policy
        if circuit.state == "closed":
            group = self._groups.get(name, "")
            peers = [c for n, c in self._circuits.items() if self._groups.get(n, "") == group]
            ejected = sum(1 for c in peers if c.state != "closed")
            allowed = max(1, math.floor(len(peers) * policy.max_ejection_percent / 100))
            if ejected >= allowed:
                if circuit.failures == policy.consecutive_failures:  # said once per run of failures
                    log.warning(
                        "backend %s would be ejected (%s) but %d of %d %s are already, the most "
                        "resilience.max_ejection_percent allows",
                        name, why, ejected, len(peers), f"members of pool {group}" if group else "backends",
                    )
                return
        now = self._clock()
        if circuit.state == "closed" and now - circuit.closed_at > policy.max_ejection_seconds:
            circuit.ejections = 0  # closed long enough: a new ejection starts from the base time again
        circuit.ejections += 1
        seconds = min(policy.base_ejection_seconds * circuit.ejections, policy.max_ejection_seconds)
        circuit.open_until = now + seconds
        circuit.trial_until = 0.0
        circuit.reason = why
        self._move(name, circuit, "open", f"{why}; calls answered at once for {seconds:g} s")

    def _close(self, name: str, circuit: Circuit, why: str) -> None:
        circuit.failures = 0
        circuit.trial_until = 0.0
        circuit.closed_at = self._clock()
        self._move(name, circuit, "closed", why)

    def _move(self, name: str, circuit: Circuit, to: BreakerState, why: str) -> None:
        was, circuit.state = circuit.state, to
        log.log(
            logging.WARNING if to == "open" else logging.INFO,
            "backend %s circuit %s -> %s: %s", name, was, to, why,
        )
        if self._on_transition is not None:
            self._on_transition(name, was, to, why)

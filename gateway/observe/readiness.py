"""Whether the gateway is ready for traffic, decided in one function from the store's state and each backend's.

A load balancer takes a gateway that is not ready out of service, every backend with it; the gateway answers a
request for a broken backend at once (a 502, 504, or 503 with Retry-After), so by default it stays ready while
any backend works ("any"). "default" keeps it out while the default backend is unusable (when nearly all
traffic goes there and a peer gateway can serve it); "store" while only the state store fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ReadyRequires = Literal["default", "any", "store"]


@dataclass(frozen=True, slots=True)
class BackendReadiness:
    """What readiness reads of one backend; a check that can mark a backend not ready adds a field here and
    a term to `usable`."""

    up: bool | None  # the latest health check (None: not checked yet)
    circuit: str = "closed"  # backends/breaker.py's state
    identity_problem: str | None = None  # it answers as another kind than configured (observe/identity.py)

    @property
    def usable(self) -> bool:
        return self.up is True and self.circuit != "open" and self.identity_problem is None


def decide_readiness(
    requires: ReadyRequires,
    *,
    store_ok: bool,
    backends: Mapping[str, BackendReadiness],
    default: str,
    default_servers: tuple[str, ...] = (),
) -> tuple[bool, str]:
    """(ready, why) for /gateway/ready. `default_servers`: the default's servers when it is a pool (it is
    usable while one of them is)."""
    if not store_ok:
        return False, "the state store does not answer or cannot write"
    if requires == "store":
        return True, "the state store works (ready_requires = store)"
    if requires == "default":
        states = [backends.get(server) for server in default_servers or (default,)]
        if any(state is not None and state.usable for state in states):
            return True, f"the default backend {default} is usable"
        return False, f"the default backend {default} is not usable (ready_requires = default)"
    usable = [name for name, state in backends.items() if state.usable]
    if usable:
        return True, f"usable backends: {', '.join(usable)}"
    return False, "no backend is usable (ready_requires = any)"

"""Whether a backend may be called now: its circuit (backends/breaker.py) and the latest health check, asked
in one place for a Forward (an open backend is a 503 at once) and for the calls made to several backends
(merges, affinity probes: the ones that may not be called are left out and named)."""

from __future__ import annotations

from gateway.backends.table import Backend
from gateway.core.errors import BackendOpen
from gateway.runtime import Runtime


def check_backend(rt: Runtime, name: str) -> None:
    """Raise BackendOpen when `name`'s circuit is open (in half-open, the first call passes as its trial)."""
    retry_in = rt.breakers.admit(name)
    if retry_in is not None:
        reason = rt.breakers.describe(name).get("reason") or "it failed"
        raise BackendOpen(
            f"backend {name!r} is unavailable ({reason}); it is tried again in {retry_in:.0f} s",
            backend=name,
            retry_after_seconds=retry_in,
        )


def callable_backends(rt: Runtime) -> tuple[list[Backend], dict[str, str]]:
    """The backends a merge or a probe asks now, and those it leaves out at once (name → why): down at the last
    health check, or open."""
    known_down = rt.known_down()
    left_out = {name: f"down at the last health check: {why}" for name, why in known_down.items()}
    asked: list[Backend] = []
    for backend in rt.backends.values():
        if backend.name in left_out:
            continue
        retry_in = rt.breakers.admit(backend.name)
        if retry_in is None:
            asked.append(backend)
        else:
            left_out[backend.name] = f"circuit open, tried again in {retry_in:.0f} s"
    return asked, left_out

"""Whether a backend may be called now: its circuit (backends/breaker.py) and the latest health check, asked
in one place for a Forward (an open backend is a 503 at once), for the calls made to several backends
(merges, affinity probes: the ones that may not be called are left out and named), and for failover (a new
prompt for an open or down backend goes to its configured fallback)."""

from __future__ import annotations

import logging

from gateway.backends.table import Backend
from gateway.core.errors import BackendOpen
from gateway.core.selection import Selection, Source
from gateway.runtime import Runtime

log = logging.getLogger("comfy_gateway.failover")

EXPLICIT = frozenset({Source.HEADER, Source.QUERY})


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


def callable_backends(rt: Runtime, only: tuple[str, ...] = ()) -> tuple[list[Backend], dict[str, str]]:
    """The backends (`only` these, when given) a merge or a probe asks now, and those it leaves out at once
    (name → why): down at the last health check, or open."""
    known_down = rt.known_down()
    left_out = {
        name: f"down at the last health check: {why}" for name, why in known_down.items() if not only or name in only
    }
    asked: list[Backend] = []
    for backend in map(rt.backends.__getitem__, only) if only else rt.backends.values():
        if backend.name in left_out:
            continue
        retry_in = rt.breakers.admit(backend.name)
        if retry_in is None:
            asked.append(backend)
        else:
            left_out[backend.name] = f"circuit open, tried again in {retry_in:.0f} s"
    return asked, left_out


def unavailable(rt: Runtime, name: str) -> str | None:
    """Why `name` cannot take a new prompt now (its circuit refuses calls, or the last health check found it
    down), or None. A pool can while one of its members can."""
    members = rt.backends.pools.get(name)
    if members is not None:
        whys = [unavailable(rt, member) for member in members]
        if any(why is None for why in whys):
            return None
        return "every member is unavailable: " + "; ".join(f"{m}: {why}" for m, why in zip(members, whys, strict=True))
    if rt.breakers.refusing(name):
        return "its circuit is open"
    down = rt.known_down().get(name)
    return f"it was down at the last health check: {down}" if down is not None else None


def fail_over(rt: Runtime, selection: Selection) -> Selection:
    """The selection for a new prompt (or WebSocket): its backend, or, while that is unavailable, the first
    available backend along its configured fallbacks (settings validated them: no cycles). A backend the
    client named keeps its requests unless it allows fallback_on_explicit."""
    why = unavailable(rt, selection.backend) if _may_fall_back(rt, selection) else None
    if why is None:
        return selection
    target = standby(rt, selection)
    if target is None:
        return selection  # no fallback is available either: the chosen backend answers for itself
    log.info("backend %s takes a new call for backend %s: %s", target.backend, selection.backend, why)
    return target


def standby(rt: Runtime, selection: Selection) -> Selection | None:
    """Where a new prompt for `selection` goes should its backend refuse it: the first available backend
    along its fallbacks, or None (no fallback, none available, or the client's choice stands)."""
    if not _may_fall_back(rt, selection):
        return None
    target = rt.backends.lead(selection.backend).fallback
    while target is not None and unavailable(rt, target) is not None:
        target = rt.backends.lead(target).fallback
    return Selection(target, Source.FALLBACK) if target is not None else None


def _may_fall_back(rt: Runtime, selection: Selection) -> bool:
    backend = rt.backends.lead(selection.backend)
    if backend.fallback is None or selection.source is Source.FALLBACK:
        return False
    return selection.source not in EXPLICIT or backend.fallback_on_explicit

"""GET /gateway/health and /gateway/ready.

Liveness says the process serves, whatever the backends do. Readiness says the state store answers and can
write (a test write, and its last real write did not fail) and the backends settings.ready_requires asks for
are usable (up, of the kind configured, circuit not open: observe/readiness.py decides), with each backend's
status, circuit, latency, last error, what it answers as and why it is not ready, so an operator sees at once
which one is the problem.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.backends.table import pool_fields
from gateway.core.redact import redact_secrets, shown_url
from gateway.datapath.aio.keys import HEALTH, RUNTIME
from gateway.observe.health import BackendStatus
from gateway.observe.readiness import BackendReadiness, decide_readiness


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    monitor = request.app[HEALTH]
    await monitor.check_stale()
    try:
        await rt.store.ping()
        store: dict[str, object] = {"ok": True}
    except Exception as exc:  # any store failure means not ready; say what it was
        # Store errors name the file or server, never a password; masked anyway, as a Redis URL in one could be.
        store = {"ok": False, "error": redact_secrets(f"{exc.__class__.__name__}: {exc}")}
    now = time.monotonic()
    states = {
        name: BackendReadiness(up=s.up, circuit=rt.breakers.state(name), identity_problem=s.identity_problem)
        for name, s in monitor.statuses.items()
    }
    backends = {
        name: {
            "usable": states[name].usable,
            "up": s.up,
            "circuit": rt.breakers.describe(name),
            "latency_ms": round(s.latency_seconds * 1000, 2) if s.latency_seconds is not None else None,
            "last_error": s.last_error,
            "checked_seconds_ago": round(now - s.checked_at, 3) if s.checked_at is not None else None,
            "default": rt.backends.is_default(name),
            "url": shown_url(rt.backends[name].url),
            **pool_fields(rt.backends[name]),
            "ready": s.ready,
            "reason": s.reason,
            **seen_identity(rt.backends[name].kind, s),
        }
        for name, s in monitor.statuses.items()
    }
    ready, why = decide_readiness(
        monitor.ready_requires,
        store_ok=bool(store["ok"]),
        backends=states,
        default=rt.backends.default,
        default_servers=rt.backends.servers_of(rt.backends.default),
    )
    return web.json_response(
        {"ready": ready, "why": why, "requires": monitor.ready_requires, "store": store, "backends": backends},
        status=200 if ready else 503,
    )


def seen_identity(kind: str, status: BackendStatus) -> dict[str, object]:
    """A backend's configured kind and what its /system_stats said last (None before it could be asked)."""
    seen = status.identity
    return {
        "kind": kind,
        "seen_kind": seen.kind if seen else None,
        "seen_version": seen.version if seen else None,
        "identity_problem": status.identity_problem,
    }


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/gateway/health", liveness)
    app.router.add_get("/gateway/ready", readiness)

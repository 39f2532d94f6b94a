"""Backend health: a background check per backend at an interval, and the liveness/readiness answers.

Liveness says the process serves. Readiness says the state store answers and the default backend is up, with
each backend's status, latency and last error, so an operator sees at once which one is the problem. Readiness
answers from the background checks while they are recent (younger than interval + timeout) and checks again
only the backends whose status is older, so a probe every second costs the backends nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway import __version__
from gateway.backends.table import Backend
from gateway.core.errors import UpstreamError
from gateway.datapath.aio.keys import HEALTH, RUNTIME
from gateway.observe.logs import shown_url
from gateway.runtime import Runtime

log = logging.getLogger("comfy_gateway.health")

CHECK_PATH = "/prompt"  # tiny on ComfyUI and KernieGen alike
# Lets a backend's own logs tell the gateway's checks from client traffic.
CHECK_HEADERS = {"User-Agent": f"comfy-gateway/{__version__} health-check"}


@dataclass(slots=True)
class BackendStatus:
    up: bool | None = None  # None until the first check
    latency_seconds: float | None = None
    last_error: str | None = None
    checked_at: float | None = None  # time.monotonic() of the last check


# (backend name, up, seconds the check took): how a check reaches the metrics.
CheckObserver = Callable[[str, bool, float], None]


class HealthMonitor:
    def __init__(
        self,
        rt: Runtime,
        *,
        interval_seconds: float = 10.0,
        timeout_seconds: float = 3.0,
        on_check: CheckObserver | None = None,
    ) -> None:
        self._rt = rt
        self.interval_seconds = interval_seconds
        self.timeout_seconds = timeout_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._on_check = on_check
        self.statuses: dict[str, BackendStatus] = {name: BackendStatus() for name in rt.backends}
        # A status older than this means the background loop is behind (or not running): check again.
        self.max_age_seconds = interval_seconds + timeout_seconds

    async def check_backend(self, backend: Backend) -> BackendStatus:
        status = self.statuses[backend.name]
        started = time.perf_counter()
        was_up = status.up
        try:
            reply = await self._rt.forwarder.fetch(
                backend, "GET", CHECK_PATH, CIMultiDict(CHECK_HEADERS), timeout=self._timeout, max_bytes=1 << 20
            )
            status.up = reply.status == 200
            status.last_error = None if status.up else f"GET {CHECK_PATH} answered {reply.status}"
        except UpstreamError as exc:
            status.up, status.last_error = False, exc.message
        status.latency_seconds = time.perf_counter() - started
        status.checked_at = time.monotonic()
        if self._on_check is not None:
            self._on_check(backend.name, status.up, status.latency_seconds)
        if was_up is not status.up:
            log.log(
                logging.INFO if status.up else logging.WARNING,
                "backend %s is %s%s",
                backend.name,
                "up" if status.up else "down",
                f": {status.last_error}" if status.last_error else "",
            )
        return status

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check_backend(b) for b in self._rt.backends.values()))

    async def check_stale(self) -> None:
        """Check again only the backends whose last check is missing or older than max_age_seconds."""
        now = time.monotonic()
        stale = [
            self._rt.backends[name]
            for name, s in self.statuses.items()
            if s.checked_at is None or now - s.checked_at > self.max_age_seconds
        ]
        await asyncio.gather(*(self.check_backend(b) for b in stale))

    def known_down(self) -> dict[str, str]:
        """Backends whose latest check, still recent, found them down (name → why): merges leave them out
        at once instead of waiting on a connection that will fail, and logging that on every poll."""
        now = time.monotonic()
        return {
            name: s.last_error or "down"
            for name, s in self.statuses.items()
            if s.up is False and s.checked_at is not None and now - s.checked_at <= self.max_age_seconds
        }

    async def run(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # a bug in a check must not end the checks; say it, and carry on
                log.exception("health checks failed unexpectedly; retrying in %gs", self.interval_seconds)
            await asyncio.sleep(self.interval_seconds)


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    monitor = request.app[HEALTH]
    await monitor.check_stale()
    try:
        await rt.store.ping()
        store = {"ok": True}
    except Exception as exc:  # any store failure means not ready; say what it was
        store = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
    now = time.monotonic()
    backends = {
        name: {
            "up": s.up,
            "latency_ms": round(s.latency_seconds * 1000, 2) if s.latency_seconds is not None else None,
            "last_error": s.last_error,
            "checked_seconds_ago": round(now - s.checked_at, 3) if s.checked_at is not None else None,
            "default": name == rt.backends.default,
            "url": shown_url(rt.backends[name].url),
        }
        for name, s in monitor.statuses.items()
    }
    ready = store["ok"] and bool(monitor.statuses[rt.backends.default].up)
    return web.json_response(
        {"ready": ready, "store": store, "backends": backends}, status=200 if ready else 503
    )


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/gateway/health", liveness)
    app.router.add_get("/gateway/ready", readiness)

"""Backend health: a background check per backend at an interval, and the liveness/readiness answers.

Liveness says the process serves. Readiness says the state store answers and the default backend is up, with
each backend's status, latency and last error, so an operator sees at once which one is the problem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway import __version__
from gateway.backends import Backend
from gateway.errors import UpstreamError
from gateway.keys import HEALTH, RUNTIME
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
    checked_at: float | None = None


class HealthMonitor:
    def __init__(self, rt: Runtime, *, interval_seconds: float = 10.0, timeout_seconds: float = 3.0) -> None:
        self._rt = rt
        self.interval_seconds = interval_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.statuses: dict[str, BackendStatus] = {name: BackendStatus() for name in rt.backends}

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
        status.checked_at = time.time()
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

    async def run(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval_seconds)


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    monitor = request.app[HEALTH]
    await monitor.check_all()
    try:
        await rt.store.ping()
        store = {"ok": True}
    except Exception as exc:  # any store failure means not ready; say what it was
        store = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
    backends = {
        name: {
            "up": s.up,
            "latency_ms": round(s.latency_seconds * 1000, 2) if s.latency_seconds is not None else None,
            "last_error": s.last_error,
            "default": name == rt.backends.default,
            "url": str(rt.backends[name].url),
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

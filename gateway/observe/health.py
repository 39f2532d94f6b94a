"""Backend health: a background check per backend at an interval.

Readiness (admin/health_routes.py) answers from these checks while they are recent (younger than interval +
timeout) and checks again only the backends whose status is older, so a probe every second costs the
backends nothing; merges leave out at once the backends the checks found down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import __version__
from gateway.backends.calls import BackendCalls
from gateway.backends.table import Backend, BackendTable
from gateway.core.errors import UpstreamError
from gateway.observe.readiness import ReadyRequires

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
        backends: BackendTable,
        calls: BackendCalls,
        *,
        interval_seconds: float = 10.0,
        timeout_seconds: float = 3.0,
        on_check: CheckObserver | None = None,
        ready_requires: ReadyRequires = "any",
    ) -> None:
        self.backends = backends
        self.ready_requires: ReadyRequires = ready_requires  # what /gateway/ready needs (observe/readiness.py)
        self._calls = calls
        self.interval_seconds = interval_seconds
        self.timeout_seconds = timeout_seconds
        self._on_check = on_check
        self.statuses: dict[str, BackendStatus] = {name: BackendStatus() for name in backends}
        # A status older than this means the background loop is behind (or not running): check again.
        self.max_age_seconds = interval_seconds + timeout_seconds

    async def check_backend(self, backend: Backend) -> BackendStatus:
        status = self.statuses[backend.name]
        started = time.perf_counter()
        was_up = status.up
        try:
            reply = await self._calls.fetch(
                backend, "GET", CHECK_PATH, CHECK_HEADERS, timeout_seconds=self.timeout_seconds, max_bytes=1 << 20,
                retry=False,
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
        await asyncio.gather(*(self.check_backend(b) for b in self.backends.values()))

    async def check_stale(self) -> None:
        """Check again only the backends whose last check is missing or older than max_age_seconds."""
        now = time.monotonic()
        stale = [
            self.backends[name]
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

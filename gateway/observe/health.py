"""Backend health: a background check per backend at an interval, and what each backend says it is.

Each check asks for GET /prompt (is it up) and GET /system_stats (what it is: observe/identity.py); a backend
that answers as another kind than configured is reported, loudly the first time, and is not ready.

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
from gateway.observe.identity import Identity, mismatch, read_identity
from gateway.observe.readiness import ReadyRequires

log = logging.getLogger("comfy_gateway.health")

CHECK_PATH = "/prompt"  # tiny on ComfyUI and KernieGen alike
# Lets a backend's own logs tell the gateway's checks from client traffic.
CHECK_HEADERS = {"User-Agent": f"comfy-gateway/{__version__} health-check"}
IDENTITY_HEADERS = {"User-Agent": f"comfy-gateway/{__version__} health-check (identity)"}


@dataclass(slots=True)
class BackendStatus:
    up: bool | None = None  # None until the first check
    latency_seconds: float | None = None
    last_error: str | None = None
    checked_at: float | None = None  # time.monotonic() of the last check
    checked_unix: float | None = None  # and its wall-clock time, for people
    identity: Identity | None = None  # what its /system_stats said last (kept while it cannot be asked)
    identity_problem: str | None = None  # why that is not the kind configured

    @property
    def ready(self) -> bool:
        return bool(self.up) and self.identity_problem is None

    @property
    def reason(self) -> str | None:
        """Why it is not ready, or None when it is."""
        if self.up is None:
            return "not checked yet"
        if not self.up:
            return self.last_error or "down"
        return self.identity_problem


# (backend name, up, seconds the check took): how a check reaches the metrics.
CheckObserver = Callable[[str, bool, float], None]
# (backend name, mismatched): how an identity read reaches the metrics.
IdentityObserver = Callable[[str, bool], None]


class HealthMonitor:
    def __init__(
        self,
        backends: BackendTable,
        calls: BackendCalls,
        *,
        interval_seconds: float = 10.0,
        timeout_seconds: float = 3.0,
        on_check: CheckObserver | None = None,
        on_identity: IdentityObserver | None = None,
        ready_requires: ReadyRequires = "any",
    ) -> None:
        self.backends = backends
        self.ready_requires: ReadyRequires = ready_requires  # what /gateway/ready needs (observe/readiness.py)
        self._calls = calls
        self.interval_seconds = interval_seconds
        self.timeout_seconds = timeout_seconds
        self._on_check = on_check
        self._on_identity = on_identity
        self.statuses: dict[str, BackendStatus] = {name: BackendStatus() for name in backends}
        # A status older than this means the background loop is behind (or not running): check again.
        self.max_age_seconds = interval_seconds + timeout_seconds

    async def check_backend(self, backend: Backend) -> BackendStatus:
        status = self.statuses[backend.name]
        started = time.perf_counter()
        was_up = status.up
        up, identity = await asyncio.gather(self._check_up(backend), self.check_identity(backend))
        status.up, status.last_error = up
        status.latency_seconds = time.perf_counter() - started
        status.checked_at = time.monotonic()
        status.checked_unix = time.time()
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

    async def _check_up(self, backend: Backend) -> tuple[bool, str | None]:
        try:
            reply = await self._calls.fetch(
                backend, "GET", CHECK_PATH, CHECK_HEADERS, timeout_seconds=self.timeout_seconds, max_bytes=1 << 20,
                retry=False,
            )
        except UpstreamError as exc:
            return False, exc.message
        if reply.status == 200:
            return True, None
        if reply.status == 508:  # the pipeline's loop guard: a request of ours came back to us
            return False, f"GET {CHECK_PATH} came back to this gateway (508 Loop Detected): the backend reaches it"
        return False, f"GET {CHECK_PATH} answered {reply.status}"

    async def check_identity(self, backend: Backend) -> Identity | None:
        """Read what `backend` says it is, compare with its configured kind, and report a change: a mismatch
        first seen is a WARNING. None (and the last identity kept) when it cannot be asked."""
        status = self.statuses[backend.name]
        try:
            identity = await read_identity(self._calls, backend, dict(IDENTITY_HEADERS), self.timeout_seconds)
        except UpstreamError:
            return None
        problem = mismatch(backend.kind, identity)
        if problem != status.identity_problem:
            if problem is not None:
                log.warning("backend %s is %s: routing to it runs on the wrong server", backend.name, problem)
            elif status.identity_problem is not None:
                log.info("backend %s now answers as %s, as configured", backend.name, identity.describe())
        status.identity, status.identity_problem = identity, problem
        if self._on_identity is not None:
            self._on_identity(backend.name, problem is not None)
        return identity

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

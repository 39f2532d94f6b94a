"""Every backend's inventory, read from its GET /object_info and kept for a while: refreshed in the background
when older than the TTL, on demand, and when the health checks see a backend come back (it may have come back
with other models).

A request never waits for an inventory: `get` answers from what is kept, at once, or None. A backend whose
refreshes fail keeps its last good inventory until that is `max_age_seconds` old (3 TTLs by default), as its
models rarely change while it is away; past that, what it has is unknown, and `get` says None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway import __version__
from gateway.backends.calls import BackendCalls
from gateway.backends.table import Backend
from gateway.core.errors import UnknownBackend, UpstreamError
from gateway.inventory.model import Inventory, InventoryError, read_object_info

log = logging.getLogger("comfy_gateway.inventory")

OBJECT_INFO_PATH = "/object_info"
# Background traffic says so, like the health checks, so a backend's own logs can tell it from clients'.
INVENTORY_HEADERS = {"User-Agent": f"comfy-gateway/{__version__} inventory"}
DEFAULT_TTL_SECONDS = 600.0
# ComfyUI builds /object_info per request: ~300 KB bare, tens of MB with many custom nodes, seconds to build.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class InventoryStatus:
    """One backend's inventory as kept now, for display."""

    backend: str
    inventory: Inventory | None  # what get() answers
    age_seconds: float | None  # since that inventory was read (None: none kept)
    stale: bool  # kept past the TTL: refreshes are failing
    last_error: str | None  # why the latest refresh failed (None: it worked, or none ran yet)
    refreshing: bool

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "known": self.inventory is not None,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 3),
            "stale": self.stale,
            "last_error": self.last_error,
            "refreshing": self.refreshing,
            **(self.inventory.describe() if self.inventory is not None else {}),
        }


@dataclass(slots=True)
class _Entry:
    inventory: Inventory | None = None
    read_at: float | None = None  # clock() when `inventory` was read
    attempted_at: float | None = None  # clock() when the latest refresh ended, good or bad
    last_error: str | None = None
    up: bool | None = None  # what the latest health check said
    task: asyncio.Task[Inventory] | None = None  # the refresh in flight, shared by all who ask


class Inventories:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        calls: BackendCalls,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_age_seconds: float | None = None,
        retry_seconds: float = 60.0,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_concurrent_refreshes: int = 4,
        tick_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`max_age_seconds` (default 3 × TTL): how long a backend whose refreshes fail keeps its last one;
        `retry_seconds`: how soon a failed refresh is tried again; `tick_seconds`: how often run() looks."""
        self.ttl_seconds = ttl_seconds
        self.max_age_seconds = 3 * ttl_seconds if max_age_seconds is None else max_age_seconds
        self.retry_seconds = retry_seconds
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self.tick_seconds = tick_seconds
        for what, value in (("ttl_seconds", ttl_seconds), ("retry_seconds", retry_seconds),
                            ("timeout_seconds", timeout_seconds), ("tick_seconds", tick_seconds)):
            if not value > 0:
                raise ValueError(f"{what} must be > 0, got {value}")
        if self.max_age_seconds < ttl_seconds:
            raise ValueError(f"max_age_seconds ({self.max_age_seconds}) must be >= ttl_seconds ({ttl_seconds})")
        if max_bytes < 1 or max_concurrent_refreshes < 1:
            raise ValueError("max_bytes and max_concurrent_refreshes must be >= 1")
        self._backends = dict(backends)
        self._calls = calls
        self._clock = clock
        # Each refresh holds a whole answer and its parse in memory: a few at a time, whatever the backends.
        self._slots = asyncio.Semaphore(max_concurrent_refreshes)
        self._entries: dict[str, _Entry] = {name: _Entry() for name in self._backends}

    # --- what requests read: never the network ----------------------------------------------------------------

    def get(self, name: str) -> Inventory | None:
        """The backend's inventory, if one is kept and younger than max_age_seconds; None otherwise (also for
        a name that is no backend)."""
        entry = self._entries.get(name)
        if entry is None or entry.inventory is None or entry.read_at is None:
            return None
        if self._clock() - entry.read_at > self.max_age_seconds:
            entry.inventory = None  # too old to trust; and a big install's inventory is worth freeing
            return None
        return entry.inventory

    def snapshot(self) -> dict[str, Inventory | None]:
        """Every backend's get(), in the configured order (what a catalog is made from)."""
        return {name: self.get(name) for name in self._entries}

    def status(self, name: str) -> InventoryStatus:
        entry = self._entry(name)
        inventory = self.get(name)
        age = None if inventory is None or entry.read_at is None else max(0.0, self._clock() - entry.read_at)
        return InventoryStatus(
            backend=name,
            inventory=inventory,
            age_seconds=age,
            stale=age is not None and age > self.ttl_seconds,
            last_error=entry.last_error,
            refreshing=entry.task is not None,
        )

    def describe(self) -> list[dict[str, object]]:
        return [self.status(name).describe() for name in self._entries]

    # --- refreshing -------------------------------------------------------------------------------------------

    async def refresh(self, name: str) -> Inventory:
        """Read the backend's /object_info now (joining a refresh already in flight) and keep it. Raises
        UnknownBackend for a name that is no backend, UpstreamError when the backend cannot say (it keeps the
        inventory it had)."""
        if name not in self._entries:
            raise UnknownBackend(f"no backend named {name!r}", details="backend")
        # A caller that gives up (a client gone) leaves the refresh running for the others who wait on it.
        return await asyncio.shield(self._start(name))

    def backend_checked(self, name: str, up: bool) -> None:
        """A health check's result (for HealthMonitor's on_check): a backend back up is read again at once,
        as it may have come back with other models; one seen down is left alone until then."""
        entry = self._entries.get(name)
        if entry is None:
            return
        was_up, entry.up = entry.up, up
        if up and was_up is False:
            self._start(name)

    def start_due_refreshes(self) -> list[asyncio.Task[Inventory]]:
        """Start a refresh of every backend whose inventory is missing or older than the TTL, unless one is in
        flight, its latest failed less than retry_seconds ago, or the health checks see it down."""
        now = self._clock()
        due = []
        for name, entry in self._entries.items():
            if entry.task is not None or entry.up is False:
                continue
            if entry.last_error is not None and entry.attempted_at is not None:
                if now - entry.attempted_at < self.retry_seconds:
                    continue
            if entry.read_at is None or now - entry.read_at >= self.ttl_seconds:
                due.append(self._start(name))
        return due

    async def refresh_due(self) -> None:
        """One pass of run(): start the due refreshes and wait until they end (their failures are kept)."""
        tasks = self.start_due_refreshes()
        if tasks:
            await asyncio.wait(tasks)  # not gather: being cancelled here must not cancel shared refreshes

    async def run(self) -> None:
        """Keep every inventory fresh, until cancelled; the refreshes in flight end with it."""
        try:
            while True:
                try:
                    self.start_due_refreshes()
                except Exception:  # a bug must not end the refreshes; say it, and carry on
                    log.exception("starting inventory refreshes failed unexpectedly; retrying")
                await asyncio.sleep(self.tick_seconds)
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel the refreshes in flight and wait for them to end."""
        tasks = [entry.task for entry in self._entries.values() if entry.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- one refresh ------------------------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownBackend(f"no backend named {name!r}", details="backend") from None

    def _start(self, name: str) -> asyncio.Task[Inventory]:
        entry = self._entries[name]
        if entry.task is None:
            task = asyncio.create_task(self._refresh(name, entry), name=f"inventory-refresh-{name}")
            entry.task = task

            def finished(done: asyncio.Task[Inventory]) -> None:
                if entry.task is done:
                    entry.task = None
                if not done.cancelled():
                    done.exception()  # kept in the entry already; retrieved, so asyncio does not log it again

            task.add_done_callback(finished)
        return entry.task

    async def _refresh(self, name: str, entry: _Entry) -> Inventory:
        try:
            async with self._slots:
                inventory = await self._read(self._backends[name])
        except Exception as exc:
            entry.attempted_at = self._clock()
            first = entry.last_error is None
            entry.last_error = exc.message if isinstance(exc, UpstreamError) else f"unexpected error: {exc!r}"
            if not isinstance(exc, UpstreamError):
                log.error("inventory refresh of backend %s failed unexpectedly", name, exc_info=exc)
            elif first:  # once per run of failures, like the health checks' up/down lines
                kept = "keeping the one it had" if entry.inventory is not None else "none known yet"
                log.warning("inventory of backend %s not read (%s): %s", name, kept, entry.last_error)
            raise
        now = self._clock()
        previous, recovered = entry.inventory, entry.last_error is not None
        entry.inventory, entry.read_at, entry.attempted_at, entry.last_error = inventory, now, now, None
        if recovered:
            log.info("inventory of backend %s read again: %d node classes", name, len(inventory.nodes))
        else:
            log.debug("inventory of backend %s read: %d node classes", name, len(inventory.nodes))
        if inventory.skipped and (previous is None or previous.skipped != inventory.skipped):
            log.warning(
                "inventory of backend %s: %d entries of its /object_info unreadable and left out, first: %s",
                name, inventory.skipped, "; ".join(inventory.problems[:3]),
            )
        return inventory

    async def _read(self, backend: Backend) -> Inventory:
        reply = await self._calls.fetch(
            backend,
            "GET",
            OBJECT_INFO_PATH,
            INVENTORY_HEADERS,
            timeout_seconds=self.timeout_seconds,
            max_bytes=self.max_bytes,
            kind="transfer",
            retry=False,  # read again on its own schedule; never from the budget client calls retry within
        )
        if reply.status != 200:
            raise UpstreamError(
                f"backend {backend.name!r} answered GET {OBJECT_INFO_PATH} with {reply.status}",
                backend=backend.name,
                kind="5xx" if reply.status >= 500 else "protocol",
            )
        try:
            # A big install's answer takes most of a second to read; in a thread, the loop serves requests
            # meanwhile (but for the JSON decode itself, a third of it, which holds the GIL).
            return await asyncio.to_thread(read_object_info, reply.body)
        except InventoryError as exc:
            raise UpstreamError(
                f"backend {backend.name!r} answered GET {OBJECT_INFO_PATH} with {exc}", backend=backend.name
            ) from None

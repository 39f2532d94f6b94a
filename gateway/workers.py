"""`comfy-gateway serve --workers N`: N gateway processes on one port, supervised by the process that started them.

The parent checks the state store once (so a store that must not be used is refused in one message, and a
new SQLite file gets its schema before N processes open it), links the output root, starts the embedded
KernieGen backends once (each worker routes to them by their URL, like to any backend), creates the directory
where prometheus-client keeps every worker's metrics (PROMETHEUS_MULTIPROC_DIR, so GET /metrics from any
worker reports the whole gateway), and starts the workers: `comfy-gateway serve --worker-of <parent pid>`
with the same arguments and environment, each listening with SO_REUSEPORT, so the kernel spreads new
connections over them. A worker is sent SIGTERM when its parent dies, however it dies.

SIGTERM or SIGINT to the parent: every worker gets SIGTERM and drains (limits.drain_seconds); the parent exits
0 when all have. A worker that exits with status 2 refused to start (its message says why): the others are
stopped and the parent exits 2. A worker that dies otherwise (killed, crashed) is reported, its live gauges
dropped from the merged metrics, and started again after RESTART_DELAY_SECONDS; more than
MAX_RESTARTS_PER_MINUTE restarts within a minute stop the whole gateway with status 1, for the service manager
to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from gateway.app import start_all_embedded, sync_output_root
from gateway.config.settings import Settings
from gateway.observe.logs import flush_logs_periodically
from gateway.observe.metrics import MULTIPROCESS_ENV
from gateway.serve import cannot_listen
from gateway.state.store import open_store

log = logging.getLogger("comfy_gateway.workers")

STARTUP_REFUSED = 2  # the exit status of `comfy-gateway serve` when it refuses to start
RESTART_DELAY_SECONDS = 1.0
MAX_RESTARTS_PER_MINUTE = 10
KILL_GRACE_SECONDS = 5.0
PR_SET_PDEATHSIG = 1  # after drain_seconds, what a worker gets to exit before it is killed


class WorkersRefused(Exception):
    """Several workers cannot run here; the message is whole, for an operator at start-up."""


@dataclass
class Worker:
    number: int
    process: asyncio.subprocess.Process | None = None
    restarts: deque[float] = field(default_factory=deque)


def stop_with_parent(parent: int) -> None:
    """In a worker: be sent SIGTERM when the parent dies, however it dies (Linux), so no worker outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def check_workers_possible(settings: Settings) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersRefused(
            f"workers = {settings.workers} needs SO_REUSEPORT, which this system lacks; run one gateway per port "
            "behind a load balancer instead"
        )


def check_port_free(settings: Settings) -> None:
    """Bind the listen address as the workers will (SO_REUSEPORT) and let it go: a port another program holds
    is refused here, in one message, rather than by every worker. Raises CannotListen."""
    host, port = settings.listen_host, settings.listen_port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise cannot_listen(host, port, exc) from exc


def metrics_directory() -> tuple[Path, bool]:
    """The workers' metrics directory, emptied, and whether it was made here (then it is removed at exit)."""
    given = os.environ.get(MULTIPROCESS_ENV)
    if not given:
        return Path(tempfile.mkdtemp(prefix="comfy-gateway-metrics-")), True
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # values of an earlier run would be merged into this one's
        stale.unlink()
    return path, False


def run_workers(settings: Settings, serve_argv: Sequence[str]) -> int:
    """Run settings.workers workers of `comfy-gateway <serve_argv>` until SIGTERM; the exit status."""
    check_workers_possible(settings)
    check_port_free(settings)
    directory, made_here = metrics_directory()
    try:
        worker_argv = [serve_argv[0], "--worker-of", str(os.getpid()), *serve_argv[1:]]
        return asyncio.run(_supervise(settings, worker_argv, directory))
    finally:
        if made_here:
            shutil.rmtree(directory, ignore_errors=True)


async def _supervise(settings: Settings, worker_argv: Sequence[str], directory: Path) -> int:
    store = await open_store(settings.store)  # raises StoreRefused: said once, here, not by every worker
    await store.close()
    sync_output_root(settings)  # once, before N workers would race to create the same links
    servers = await start_all_embedded(settings)
    try:
        return await _Supervisor(settings, worker_argv, directory).run()
    finally:
        for server in servers:
            await server.close()


class _Supervisor:
    def __init__(self, settings: Settings, worker_argv: Sequence[str], directory: Path) -> None:
        self.settings = settings
        self.command = [sys.executable, "-m", "gateway", *worker_argv]
        self.env = {**os.environ, MULTIPROCESS_ENV: str(directory)}
        self.directory = directory
        self.workers = [Worker(number) for number in range(1, settings.workers + 1)]
        self.stop = asyncio.Event()
        self.status = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.stop.set)
        log.info(
            "starting %d workers on %s:%d (metrics of all of them merged from %s)",
            len(self.workers),
            self.settings.listen_host,
            self.settings.listen_port,
            self.directory,
        )
        watchers = [asyncio.create_task(self._keep_running(worker)) for worker in self.workers]
        if self.settings.log_batch_seconds > 0:
            watchers.append(asyncio.create_task(flush_logs_periodically(self.settings.log_batch_seconds)))
        try:
            await self.stop.wait()
        finally:
            log.info("stopping %d workers: each finishes what it has in flight", len(self.workers))
            await self._stop_all()
            for watcher in watchers:
                watcher.cancel()
            for watcher in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        return self.status

    async def _keep_running(self, worker: Worker) -> None:
        while not self.stop.is_set():
            process = worker.process = await asyncio.create_subprocess_exec(
                *self.command, env=self.env, stdin=asyncio.subprocess.DEVNULL
            )
            log.info("worker %d started (pid %d)", worker.number, process.pid)
            returncode = await process.wait()
            mark_process_dead(process.pid, str(self.directory))
            if self.stop.is_set():
                return
            how = f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited {returncode}"
            if returncode == STARTUP_REFUSED:
                log.error("worker %d (pid %d) refused to start; stopping the gateway", worker.number, process.pid)
                self._give_up(STARTUP_REFUSED)
                return
            now = time.monotonic()
            worker.restarts.append(now)
            while worker.restarts and worker.restarts[0] < now - 60:
                worker.restarts.popleft()
            if len(worker.restarts) > MAX_RESTARTS_PER_MINUTE:
                log.error(
                    "worker %d (pid %d) %s, its %d-th restart within a minute; stopping the gateway",
                    worker.number,
                    process.pid,
                    how,
                    len(worker.restarts),
                )
                self._give_up(1)
                return
            log.warning(
                "worker %d (pid %d) %s; starting it again in %gs",
                worker.number,
                process.pid,
                how,
                RESTART_DELAY_SECONDS,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), RESTART_DELAY_SECONDS)

    def _give_up(self, status: int) -> None:
        self.status = self.status or status
        self.stop.set()

    async def _stop_all(self) -> None:
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(process.wait()) for process in running]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=self.settings.limits.drain_seconds + KILL_GRACE_SECONDS)
        for process in running:
            if process.returncode is None:
                log.warning("worker (pid %d) did not finish draining in time; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if late:
            await asyncio.wait(late)
        for process in running:
            mark_process_dead(process.pid, str(self.directory))
            if process.returncode not in (0, -signal.SIGTERM):
                self.status = self.status or 1

"""Serving on the fast data path: the aiohttp app starts as always (its cleanup_ctx opens the store, the
backends' sessions, the background checks) but listens only on a private unix socket; the fast server owns
the public port, shares the app's Runtime, and hands the app only the gateway's own routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.admin.console import stop_streams
from gateway.config.settings import Settings
from gateway.datapath.aio.keys import METRICS, RUNTIME
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.server import AppAddress, FastServer
from gateway.pipeline.outcome import finish_exchange

log = logging.getLogger("comfy_gateway.fastpath")

APP_SOCKET = "app.sock"


@dataclass
class FastGateway:
    """A running gateway on the fast path; `close()` drains it and stops the app."""

    url: str
    port: int
    app: web.Application
    runner: web.AppRunner
    server: FastServer
    socket_dir: Path
    closed: bool = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        stop_streams(self.app)  # the console's endless answers, which the drain would otherwise wait out
        try:
            await self.server.close()
        finally:
            await self.runner.cleanup()
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def limits_for(settings: Settings) -> Limits:
    """The fast path's bounds from the settings; those without a setting keep Limits' own values."""
    limits = settings.limits
    return Limits(
        max_target_bytes=limits.max_target_bytes,
        max_header_count=limits.max_header_count,
        max_head_bytes=limits.max_head_bytes,
        max_body_bytes=settings.max_body_bytes,
        max_ws_message_bytes=limits.max_ws_message_bytes,
        max_pipelined_requests=limits.max_pipelined_requests,
        max_client_connections=limits.max_client_connections,
        client_head_seconds=limits.client_head_seconds,
        keepalive_seconds=limits.keepalive_seconds,
        client_body_seconds=limits.client_body_seconds,
        send_seconds=limits.send_seconds,
        drain_seconds=limits.drain_seconds,
    )


async def start_fast_gateway(
    app: web.Application,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    limits: Limits | None = None,
) -> FastGateway:
    """Start the app on a private listener and the fast server on host:port (settings' by default)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, handle_signals=False)
    await runner.setup()
    # A private directory (mode 0700): only this user reaches the app's socket, and its path stays short.
    socket_dir = Path(tempfile.mkdtemp(prefix="comfy-gateway-"))
    try:
        app_address = await listen_privately(runner, socket_dir / APP_SOCKET)
        server = FastServer(
            app,
            app[RUNTIME],
            limits or limits_for(settings),
            app_address=app_address,
            record=functools.partial(finish_exchange, app[METRICS]),
        )
        host = settings.listen_host if host is None else host
        bound = await server.listen(host, settings.listen_port if port is None else port)
    except BaseException:
        await runner.cleanup()
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    shown_host = f"[{host}]" if ":" in host else host
    return FastGateway(f"http://{shown_host}:{bound}", bound, app, runner, server, socket_dir)


async def listen_privately(runner: web.AppRunner, socket_path: Path) -> AppAddress:
    """The app's own listener: a unix socket where there are any, else a loopback port chosen by the OS."""
    if hasattr(socket, "AF_UNIX"):
        await web.UnixSite(runner, str(socket_path)).start()
        return socket_path
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[-1][:2]
    return host, port


def run_fast_gateway(app: web.Application, settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then drain (the `comfy-gateway serve` loop), on uvloop when installed."""

    async def serve() -> None:
        gateway = await start_fast_gateway(app, settings)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        log.info(
            "listening on %s (fast data path on %s)",
            gateway.url,
            "uvloop" if "uvloop" in type(loop).__module__ else "asyncio",
        )
        try:
            await stop.wait()
        finally:
            log.info("shutting down: finishing requests in flight (at most %gs)", gateway.server.limits.drain_seconds)
            await gateway.close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())

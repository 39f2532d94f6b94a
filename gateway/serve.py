"""Serving: `run_gateway` is the `comfy-gateway serve` loop on either data path.

On the fast data path the aiohttp app starts as always (its cleanup_ctx opens the store, the backends'
sessions, the background checks) but listens only on a private unix socket; the fast server owns the public
port, shares the app's Runtime, and hands the app only the gateway's own routes. On the aiohttp data path the
app listens on the public port itself. Either listener may share its port with other worker processes
(reuse_port, SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import shutil
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.admin.console import stop_streams
from gateway.config.settings import Settings
from gateway.core.build import build_name, compiled_modules
from gateway.core.startup import CannotListen
from gateway.datapath.aio.keys import METRICS, RELAY_LISTENERS, RUNTIME
from gateway.datapath.aio.websocket import close_websockets
from gateway.datapath.fast.limits import Limits
from gateway.datapath.fast.server import AppAddress, FastServer
from gateway.pipeline.outcome import finish_exchange

log = logging.getLogger("comfy_gateway.serve")

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
        # Client sockets are told at once, while the drain lets answers in flight finish: each may go elsewhere.
        going_away = asyncio.ensure_future(close_websockets(self.app))
        try:
            await self.server.close()
            await going_away
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
        kept_heads=limits.kept_heads,
        max_kept_head_bytes=limits.max_kept_head_bytes,
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
    reuse_port: bool = False,
) -> FastGateway:
    """Start the app on a private listener and the fast server on host:port (settings' by default)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, handle_signals=False)
    await runner.setup()
    app_server = runner.server
    assert app_server is not None  # set up
    # A private directory (mode 0700): only this user reaches the app's socket, and its path stays short.
    socket_dir = Path(tempfile.mkdtemp(prefix="comfy-gateway-"))
    try:
        app_address = await listen_privately(runner, socket_dir / APP_SOCKET)
        server = FastServer(
            app,
            app[RUNTIME],
            limits or limits_for(settings),
            app_address=app_address,
            app_protocol=app_server,
            record=functools.partial(finish_exchange, app[METRICS], breakers=app[RUNTIME].breakers),
        )
        host = settings.listen_host if host is None else host
        port = settings.listen_port if port is None else port
        try:
            bound = await server.listen(host, port, reuse_port=reuse_port)
        except OSError as exc:
            raise cannot_listen(host, port, exc) from exc
    except BaseException:
        await runner.cleanup()
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    shown_host = f"[{host}]" if ":" in host else host
    return FastGateway(f"http://{shown_host}:{bound}", bound, app, runner, server, socket_dir)


async def listen_privately(runner: web.AppRunner, socket_path: Path) -> AppAddress:
    """The app's own listener: a unix socket where there are any, else a loopback port chosen by the OS, which the
    app is told of (a connection to it is the fast path's, whose client is the one X-Forwarded-For names last)."""
    if hasattr(socket, "AF_UNIX"):
        await web.UnixSite(runner, str(socket_path)).start()
        return socket_path
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[-1][:2]
    runner.app[RELAY_LISTENERS].add((host, port))
    return host, port


def cannot_listen(host: str, port: int, error: OSError) -> CannotListen:
    return CannotListen("the gateway", host, port, error, port_key=("listen_port",), host_key=("listen_host",))


def run_gateway(app: web.Application, settings: Settings, *, reuse_port: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then drain (the `comfy-gateway serve` loop), on uvloop when installed.
    Raises what start-up raises (CannotListen, StoreRefused) after undoing what had started."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if settings.data_path == "fast":
            gateway = await start_fast_gateway(app, settings, reuse_port=reuse_port)
            log.info(
                "listening on %s (fast data path on %s; build: %s)",
                gateway.url,
                "uvloop" if "uvloop" in type(loop).__module__ else "asyncio",
                build_name(compiled_modules()),
            )
            close: Callable[[], Awaitable[None]] = gateway.close
        else:
            close = await start_aiohttp_gateway(app, settings, reuse_port=reuse_port)
        set_start_up_apart()
        try:
            await stop.wait()
        finally:
            log.info("shutting down: finishing requests in flight (at most %gs)", settings.limits.drain_seconds)
            await close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


def set_start_up_apart() -> None:
    """What start-up made (modules, the app, its tables: ~60,000 objects) lives as long as the process: kept out
    of the cyclic collector's full passes, which otherwise walk it all, the loop stopped (~25 ms here), each time
    enough objects have outlived the young generations. Its garbage is collected first."""
    gc.collect()
    gc.freeze()


async def start_aiohttp_gateway(
    app: web.Application, settings: Settings, *, reuse_port: bool = False
) -> Callable[[], Awaitable[None]]:
    """The app on the public port itself (data_path = "aiohttp"); returns what drains and stops it."""
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.limits.drain_seconds, handle_signals=False
    )  # our own access line (logs.py) says which backend served what, and why
    await runner.setup()
    host, port = settings.listen_host, settings.listen_port
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen(host, port, exc) from exc
    except BaseException:
        await runner.cleanup()
        raise
    log.info(
        "listening on http://%s:%d (aiohttp data path; build: %s)",
        host,
        runner.addresses[0][1] if runner.addresses else port,
        build_name(compiled_modules()),
    )
    return runner.cleanup

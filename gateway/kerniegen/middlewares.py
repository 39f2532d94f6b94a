"""KernieGen's request pipeline, outermost first: unexpected errors become ComfyUI's plain 500,
ComfyUI's cache headers, its Host/Origin check (403), then the endpoint faults (delay, 500)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import urllib.parse
from collections import OrderedDict

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE

log = logging.getLogger(__name__)

_RESOLVE_TIMEOUT_SECONDS = 2.0
_RESOLVED_LIMIT = 256


@web.middleware
async def unexpected_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("kerniegen: %s %s failed", request.method, request.path)
        return server_error()


@web.middleware
async def cache_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ComfyUI's cache middleware, for the paths KernieGen can answer: scripts, styles and
    index*.json entry points must be revalidated."""
    response = await handler(request)
    last_segment = request.path.rsplit("/", 1)[-1]
    if request.path.endswith((".js", ".css")) or (last_segment.startswith("index") and last_segment.endswith(".json")):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def endpoint_of(request: web.Request) -> str | None:
    """The route template without its /api prefix ("/history/{prompt_id}"), None when unrouted."""
    resource = request.match_info.route.resource  # None for aiohttp's not-found and not-allowed routes
    if resource is None:
        return None
    template = resource.canonical
    if template == "/api" or template.startswith("/api/"):
        template = template[len("/api"):] or "/"
    return template


@web.middleware
async def injected_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    endpoint = endpoint_of(request)
    if endpoint is not None:
        faults = request.app[STATE].faults
        delay = faults.delay_for(endpoint)
        if delay > 0:
            await asyncio.sleep(delay)
        if faults.fails(endpoint):
            return server_error()
    return await handler(request)


class LoopbackResolver:
    """ComfyUI's is_loopback(host), with name lookups done off the loop and remembered."""

    def __init__(self) -> None:
        self._known: OrderedDict[str, bool] = OrderedDict()

    async def is_loopback(self, host: str | None) -> bool:
        if host is None:
            return False
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        if host in self._known:
            return self._known[host]
        answer = await self._resolve(host)
        self._known[host] = answer
        while len(self._known) > _RESOLVED_LIMIT:
            self._known.popitem(last=False)
        return answer

    async def _resolve(self, host: str) -> bool:
        loop = asyncio.get_running_loop()
        loopback = False
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT_SECONDS
                )
            except (TimeoutError, OSError, UnicodeError):
                continue
            for info in infos:
                if not ipaddress.ip_address(info[4][0]).is_loopback:
                    return loopback  # ComfyUI stops at the first non-loopback address
                loopback = True
        return loopback


def origin_check(resolver: LoopbackResolver) -> Middleware:
    """ComfyUI's origin_only_middleware: a loopback Host meeting a different Origin gets 403."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        origin = request.headers.get("Origin")
        if host is not None and origin is not None:
            host_domain = host.lower()
            origin_domain = urllib.parse.urlparse(origin).netloc.lower()
            try:
                hostname = urllib.parse.urlsplit("//" + host_domain).hostname
            except ValueError:
                hostname = None
            if host_domain != origin_domain and await resolver.is_loopback(hostname):
                return empty(403)
        if request.method == "OPTIONS":
            return empty()
        return await handler(request)

    return check

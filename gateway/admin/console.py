"""GET /gateway/console: the operators' page, and the data it reads.

    /gateway/console                  the page (HTML, with its stylesheet and script under static/)
    /gateway/console/backends         every backend's state (console_data.backend_state), JSON
    /gateway/console/events           the same, pushed live as Server-Sent Events whenever it changes
    /gateway/console/prompts          recent prompts: who, where, why, what the guardrails did to them, their
                                      live state and outputs (admin)
    /gateway/console/users            users' stored preferences (admin)

The page and the backends' state name no user, so they are open like /gateway/backends; the listings that show
owners pass the same rule as GET /gateway/prompts/{id} (pipeline/guard.py). Changes go through the existing
guarded API (PUT/DELETE /gateway/preferences/{user}). The page ships in the package, needs no build step and
loads nothing from elsewhere (its Content-Security-Policy says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web

from gateway.admin.console_data import (
    PROMPT_STATES,
    FinishedPrompts,
    backend_states,
    prompt_item,
    prompt_outcomes,
)
from gateway.config.settings import ConsoleSettings
from gateway.core.errors import BadRequest, GatewayError, NotFound
from gateway.datapath.aio.keys import RUNTIME
from gateway.pipeline.identifiers import id_problem
from gateway.pipeline.select import check_backend_name

PATH = "/gateway/console"
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
DEFAULT_PROMPTS_LISTED = 50
# The page runs only its own script and style, and talks only to this gateway.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
DATA_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class ConsoleBusy(GatewayError):
    status = 503


@dataclass
class Console:
    """The console's own state in one app: its settings, its open streams, what it remembers."""

    settings: ConsoleSettings
    finished: FinishedPrompts
    streams: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)


def _asset(name: str) -> bytes:
    return resources.files("gateway.admin").joinpath("console_static", name).read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(
        body=_asset("console.html"), headers={"Content-Type": "text/html; charset=utf-8", **PAGE_HEADERS}
    )


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC.get(name)
    if content_type is None:
        raise NotFound(f"the console has no file {name!r}")
    return web.Response(body=_asset(name), headers={"Content-Type": content_type, **PAGE_HEADERS})


def _json(body: object) -> web.Response:
    return web.json_response(body, headers=DATA_HEADERS)


async def backends(request: web.Request) -> web.Response:
    return _json({"backends": backend_states(request.app[RUNTIME])})


async def events(request: web.Request) -> web.StreamResponse:
    """The backends' state as Server-Sent Events: sent at once, then whenever it changes, with a heartbeat
    comment when nothing did; at most `max_streams` open at once."""
    console = request.app[CONSOLE]
    settings = console.settings
    if console.streams >= settings.max_streams:
        raise ConsoleBusy(
            f"the console's live streams are all in use ({settings.max_streams}, console.max_streams); "
            "close another console page or retry later",
            details="stream",
        )
    rt = request.app[RUNTIME]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no", **DATA_HEADERS}
    )
    console.streams += 1
    try:
        await response.prepare(request)
        # A reconnecting browser waits this long first (ms).
        await response.write(f"retry: {int(settings.push_seconds * 2000)}\n\n".encode())
        sent = ""
        last_write = time.monotonic()
        # The stream ends when the gateway shuts down or the page goes away (seen here at once, not at the next write).
        while not console.closing.is_set() and request.transport is not None and not request.transport.is_closing():
            snapshot = json.dumps({"backends": backend_states(rt)}, separators=(",", ":"))
            now = time.monotonic()
            if snapshot != sent:
                await response.write(f"event: backends\ndata: {snapshot}\n\n".encode())
                sent, last_write = snapshot, now
            elif now - last_write >= settings.heartbeat_seconds:
                await response.write(b": heartbeat\n\n")
                last_write = now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(console.closing.wait(), settings.push_seconds)
        return response
    except ConnectionError:
        return response  # the page went away
    finally:
        console.streams -= 1


def _filter(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    problem = id_problem(value, request.app[RUNTIME].policy.max_id_chars)
    if problem is not None:
        raise BadRequest(f"the {name} filter {problem}", details=name)
    return value


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    """?limit= as a client sent it: absent or empty is `default` (at most `maximum`); else 1 to `maximum`."""
    if raw is None or raw == "":
        return min(default, maximum)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}", details="limit")
    return int(raw)


async def prompts(request: web.Request) -> web.Response:
    """Recent prompts, newest first: ?backend=, ?user=, ?state= (queued, running, done, failed, unknown), ?limit=."""
    rt = request.app[RUNTIME]
    console = request.app[CONSOLE]
    settings = console.settings
    backend = _filter(request, "backend")
    if backend is not None:
        check_backend_name(backend, rt.backends.names, where="the backend filter", listed=rt.backends.configured)
    user = _filter(request, "user")
    state = request.query.get("state") or None
    if state is not None and state not in PROMPT_STATES:
        raise BadRequest(f"state must be one of {', '.join(PROMPT_STATES)}", details="state")
    limit = parse_limit(request.query.get("limit"), DEFAULT_PROMPTS_LISTED, settings.max_prompts)
    # A state is known only by asking, and a pool's prompts are recorded by member: with either filter the newest
    # max_prompts are read and filtered.
    pool = backend if backend in rt.backends.pools else None
    wanted = settings.max_prompts if state is not None or pool is not None else limit
    stored_as = None if pool is not None else backend
    records = await rt.store.recent_prompts(wanted, scan=settings.scan_prompts, backend=stored_as, user=user)
    if pool is not None:
        records = [r for r in records if r.backend in rt.backends.pools[pool]]
    outcomes = await prompt_outcomes(rt, records, console.finished)
    items = [prompt_item(rt, record, outcomes[record.prompt_id]) for record in records]
    if state is not None:
        items = [item for item in items if item["state"] == state]
    return _json({"prompts": items[:limit], "limit": limit, "scanned": settings.scan_prompts})


async def users(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    limit = request.app[CONSOLE].settings.max_users
    listed = await rt.store.list_preferences(limit + 1)
    return _json(
        {
            "users": [{"user": user, "backend": backend} for user, backend in listed[:limit]],
            "truncated": len(listed) > limit,
            "backends": list(rt.backends.configured),
            "default": rt.backends.default,
        }
    )


def stop_streams(app: web.Application) -> None:
    """End every open stream: at shutdown, before a data path waits for what is in flight to finish."""
    app[CONSOLE].closing.set()


async def _stop_streams(app: web.Application) -> None:
    stop_streams(app)


def add_console_routes(app: web.Application, settings: ConsoleSettings) -> None:
    app[CONSOLE] = Console(settings, FinishedPrompts(settings.finished_cache_entries))
    app.on_shutdown.append(_stop_streams)
    app.router.add_get(PATH, page)
    app.router.add_get(f"{PATH}/static/{{name}}", static)
    app.router.add_get(f"{PATH}/backends", backends)
    app.router.add_get(f"{PATH}/events", events)
    app.router.add_get(f"{PATH}/prompts", prompts)
    app.router.add_get(f"{PATH}/users", users)

"""ComfyUI's /internal routes, which only its own UI calls (never under /api): the server log as
text and as entries, live log messages for a subscribed socket, the model folder paths, and the
files at the top of output/, input/ or temp/, newest first."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from gateway.kerniegen.log_buffer import LogBuffer, LogEntry, logs_message
from gateway.kerniegen.model_paths import model_folder_paths
from gateway.kerniegen.request_body import NOT_JSON, read_json
from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE
from gateway.kerniegen.ws_frames import encode_message

LOGS = web.AppKey("kerniegen_logs", LogBuffer)
# The loggers whose records the UI's terminal panel shows: KernieGen's own and its access log.
_CAPTURED_LOGGERS = ("gateway.kerniegen", "aiohttp.access")


def add_internal_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/internal/logs", get_logs)
    router.add_get("/internal/logs/raw", get_logs_raw)
    router.add_patch("/internal/logs/subscribe", subscribe_logs)
    router.add_get("/internal/folder_paths", get_folder_paths)
    router.add_get("/internal/files/{directory_type}", get_files)


async def capture_logs(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the buffer listens to KernieGen's loggers while the app runs."""
    buffer = app[LOGS]
    hub = app[STATE].hub

    def deliver(client_id: str, entries: list[LogEntry]) -> None:
        hub.send(encode_message("logs", logs_message(entries)), client_id)

    buffer.attach(asyncio.get_running_loop(), deliver)
    for name in _CAPTURED_LOGGERS:
        logging.getLogger(name).addHandler(buffer)
    try:
        yield
    finally:
        for name in _CAPTURED_LOGGERS:
            logging.getLogger(name).removeHandler(buffer)
        buffer.detach()


async def get_logs(request: web.Request) -> web.Response:
    return web.json_response(request.app[LOGS].as_text())


async def get_logs_raw(request: web.Request) -> web.Response:
    return web.json_response(logs_message(request.app[LOGS].entries()))


async def subscribe_logs(request: web.Request) -> web.Response:
    body = await read_json(request)
    if body is NOT_JSON or not isinstance(body, dict) or "clientId" not in body or "enabled" not in body:
        return server_error()  # ComfyUI's json_data["clientId"] raises
    if not request.app[LOGS].subscribe(str(body["clientId"]), bool(body["enabled"])):
        return web.json_response({"error": "too many log subscribers"}, status=429)
    return empty()


async def get_folder_paths(request: web.Request) -> web.Response:
    return web.json_response(model_folder_paths(request.app[STATE].config))


async def get_files(request: web.Request) -> web.Response:
    directory = request.app[STATE].dirs.by_type(request.match_info["directory_type"])
    if directory is None:
        return web.json_response({"error": "Invalid directory type"}, status=400)
    return web.json_response(await asyncio.to_thread(_newest_first, directory))


def _newest_first(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        files = [(entry.stat().st_mtime, entry.name) for entry in entries if entry.is_file()]
    return [name for _, name in sorted(files, key=lambda item: -item[0])]

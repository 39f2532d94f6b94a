"""The UI's settings, as ComfyUI keeps them: one JSON object per user in `comfy.settings.json` under
the user's directory, read on every request and rewritten whole on every change. Owns GET/POST
/settings and /settings/{id}, with bounded bodies and file size."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.kerniegen.responses import empty, server_error

log = logging.getLogger(__name__)

SETTINGS_FILE = "comfy.settings.json"  # ComfyUI's name, so a user dir can move between the two


class SettingsTooLarge(Exception):
    """The settings would outgrow their bound."""


class SettingsStore:
    """One user's settings file; changes are serialised so two quick POSTs do not lose each other."""

    def __init__(self, user_root: Path, max_bytes: int) -> None:
        self.path = user_root / SETTINGS_FILE
        self.max_bytes = max_bytes
        self._lock = asyncio.Lock()

    async def read_all(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._read)

    async def read_one(self, setting_id: str) -> Any:
        return (await self.read_all()).get(setting_id)

    async def merge(self, values: dict[str, Any]) -> None:
        async with self._lock:
            current = await asyncio.to_thread(self._read)
            await asyncio.to_thread(self._write, {**current, **values})

    async def write_one(self, setting_id: str, value: Any) -> None:
        async with self._lock:
            current = await asyncio.to_thread(self._read)
            current[setting_id] = value
            await asyncio.to_thread(self._write, current)

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        if self.path.stat().st_size > self.max_bytes:
            raise SettingsTooLarge(f"{self.path} is larger than {self.max_bytes} bytes")
        settings = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(settings, dict):
            raise ValueError(f"{self.path} does not hold a JSON object")
        return settings

    def _write(self, settings: dict[str, Any]) -> None:
        data = json.dumps(settings, indent=4).encode()
        if len(data) > self.max_bytes:
            raise SettingsTooLarge(f"settings would be {len(data)} bytes, more than {self.max_bytes}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed, so a crash mid-write never leaves half a settings file.
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".settings-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


SETTINGS = web.AppKey("kerniegen_settings", SettingsStore)


async def get_settings(request: web.Request) -> web.Response:
    store = request.app[SETTINGS]
    try:
        return web.json_response(await store.read_all())
    except (OSError, ValueError, SettingsTooLarge) as error:
        return _unreadable(store, error)


async def get_setting(request: web.Request) -> web.Response:
    store = request.app[SETTINGS]
    try:
        return web.json_response(await store.read_one(request.match_info["id"]))
    except (OSError, ValueError, SettingsTooLarge) as error:
        return _unreadable(store, error)


async def post_settings(request: web.Request) -> web.Response:
    store = request.app[SETTINGS]
    values = await _read_json_body(request, store.max_bytes)
    if not isinstance(values, dict):  # ComfyUI's {**settings, **body} raises on anything else
        return server_error()
    return await _save(store, store.merge(values))


async def post_setting(request: web.Request) -> web.Response:
    store = request.app[SETTINGS]
    value = await _read_json_body(request, store.max_bytes)
    if value is _NOT_JSON:
        return server_error()
    return await _save(store, store.write_one(request.match_info["id"], value))


async def _save(store: SettingsStore, change: Awaitable[None]) -> web.Response:
    try:
        await change
    except SettingsTooLarge as error:
        log.warning("kerniegen: settings not saved: %s", error)
        raise web.HTTPRequestEntityTooLarge(max_size=store.max_bytes, actual_size=store.max_bytes + 1) from None
    except (OSError, ValueError) as error:
        return _unreadable(store, error)
    return empty()


_NOT_JSON = object()


async def _read_json_body(request: web.Request, max_bytes: int) -> Any:
    """The JSON body, or _NOT_JSON; a body over max_bytes is refused (413) while it is read."""
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=len(body))
    try:
        return json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        return _NOT_JSON


def _unreadable(store: SettingsStore, error: Exception) -> web.Response:
    # ComfyUI raises out of json.load here too; the operator gets the reason in the log.
    log.warning("kerniegen: cannot use settings file %s: %s", store.path, error)
    return server_error()

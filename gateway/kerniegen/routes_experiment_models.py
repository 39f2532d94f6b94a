"""ComfyUI's model-library routes (/experiment/models...), which the UI's model browser reads:
the model folders with their paths, the files in one folder, and preview images (KernieGen has
none, so 404). Files come from the inventory; they are names only, so sizes are 0."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.kerniegen.model_paths import model_folder_paths
from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE

# The UI's model browser never shows these two (ComfyUI leaves them out too).
_NOT_MODEL_FOLDERS = ("configs", "custom_nodes")


async def get_model_folders(request: web.Request) -> web.Response:
    paths = model_folder_paths(request.app[STATE].config)
    return web.json_response(
        [{"name": folder, "folders": folders} for folder, folders in paths.items() if folder not in _NOT_MODEL_FOLDERS]
    )


async def get_models_in_folder(request: web.Request) -> web.Response:
    folders = request.app[STATE].config.inventory.folders()
    folder = request.match_info["folder"]
    if folder not in folders:
        return empty(404)
    now = time.time()  # simulated files have no disk times; "now" keeps the shape ComfyUI gives
    files: list[dict[str, Any]] = [
        {"name": name, "pathIndex": 0, "modified": now, "created": now, "size": 0}
        for name in folders[folder]
    ]
    return web.json_response(files)


async def get_model_preview(request: web.Request) -> web.Response:
    try:
        int(request.match_info["path_index"])
    except ValueError:
        return server_error()  # ComfyUI's int() raises here
    return empty(404)  # no model of KernieGen's has a preview image

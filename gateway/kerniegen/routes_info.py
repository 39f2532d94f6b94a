"""Read-only description routes: /object_info (whole and per class), /models, /models/{folder},
/view_metadata, /embeddings, /extensions, /system_stats (KernieGen naming itself), /features and
the root page."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from aiohttp import web

from gateway.kerniegen.nodes import list_input_images, object_info
from gateway.kerniegen.responses import empty
from gateway.kerniegen.state import STATE, KernieGenState
from gateway.kerniegen.version import COMFYUI_VERSION, KERNIEGEN_VERSION

_ROOT_PAGE = (
    "<!doctype html><html><head><title>KernieGen</title></head><body>"
    f"<h1>KernieGen {KERNIEGEN_VERSION}</h1><p>A ComfyUI-compatible test backend (API only, no frontend).</p>"
    "</body></html>"
)


async def _object_info(state: KernieGenState) -> dict[str, Any]:
    input_files = await asyncio.to_thread(list_input_images, state.dirs.input)
    return object_info(state.config.inventory, input_files)


async def get_object_info(request: web.Request) -> web.Response:
    return web.json_response(await _object_info(request.app[STATE]))


async def get_object_info_class(request: web.Request) -> web.Response:
    node_class = request.match_info["node_class"]
    info = await _object_info(request.app[STATE])
    return web.json_response({node_class: info[node_class]} if node_class in info else {})


async def get_models(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].config.inventory.folders()))


async def get_models_in_folder(request: web.Request) -> web.Response:
    folders = request.app[STATE].config.inventory.folders()
    folder = request.match_info["folder"]
    if folder not in folders:
        return empty(404)
    return web.json_response(folders[folder])


async def get_view_metadata(request: web.Request) -> web.Response:
    """A safetensors file's __metadata__; KernieGen's models are names only, so they carry a note."""
    folders = request.app[STATE].config.inventory.folders()
    filename = request.query.get("filename", "")
    if not filename.endswith(".safetensors") or filename not in folders.get(request.match_info["folder"], []):
        return empty(404)
    return web.json_response({"kerniegen": "simulated model, holds no tensors"})


async def get_embeddings(request: web.Request) -> web.Response:
    names = request.app[STATE].config.inventory.embeddings
    return web.json_response([os.path.splitext(name)[0] for name in names])


async def get_extensions(request: web.Request) -> web.Response:
    return web.json_response([])  # no frontend, so no frontend extensions


async def get_features(request: web.Request) -> web.Response:
    return web.json_response(server_features(request.app[STATE].config.max_upload_bytes))


def server_features(max_upload_bytes: int) -> dict[str, Any]:
    """GET /features and the ws feature_flags reply (the same dict in ComfyUI)."""
    return {"supports_preview_metadata": True, "max_upload_size": max_upload_bytes}


async def get_system_stats(request: web.Request) -> web.Response:
    ram_total, ram_free = _memory()
    return web.json_response({
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": "",
            "installed_templates_version": "",
            "required_templates_version": "",
            "python_version": sys.version,
            # "KernieGen <version>" here and "kerniegen" as argv[0] are how a gateway tells KernieGen from a real
            # ComfyUI (which names its torch build here) without a key ComfyUI's clients do not know.
            "pytorch_version": f"KernieGen {KERNIEGEN_VERSION} (no torch)",
            "embedded_python": False,
            # ComfyUI lists its own flags here; the frontend skips its calls to api.comfy.org when it sees this one.
            "argv": ["kerniegen", "--disable-api-nodes"],
        },
        "devices": [{
            "name": f"KernieGen {KERNIEGEN_VERSION} (simulated, no GPU)",
            "type": "cpu",
            "index": None,
            "vram_total": ram_total,
            "vram_free": ram_free,
            "torch_vram_total": ram_total,
            "torch_vram_free": ram_free,
        }],
    })


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return 0, 0


async def get_root(request: web.Request) -> web.Response:
    headers = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}
    return web.Response(body=_ROOT_PAGE.encode(), content_type="text/html", headers=headers)


async def not_found(request: web.Request) -> web.Response:
    """What ComfyUI's static web root answers for any unknown path."""
    return web.Response(status=404, content_type="application/octet-stream")

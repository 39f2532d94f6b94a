"""ComfyUI's web UI on KernieGen: the frontend's static files (comfyui-frontend-package, the
`frontend` extra) at `/`, index.html at `/` and `/api/`, the /extensions listing, and the optional
workflow-templates and embedded-docs packages at /templates and /docs. Without the package,
KernieGen says so once in its log and serves its API alone."""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.kerniegen.config import FRONTEND_FROM_PACKAGE, KernieGenConfig
from gateway.kerniegen.frontend_extension import EXTENSION_URL
from gateway.kerniegen.routes_info import get_root as get_api_only_root
from gateway.kerniegen.routes_info import not_found

log = logging.getLogger(__name__)

FRONTEND_PACKAGE = "comfyui_frontend_package"
# Optional static trees ComfyUI serves from packages of their own: URL prefix -> (package, folder).
_PACKAGED_TREES = {
    "templates": ("comfyui_workflow_templates", "templates"),
    "docs": ("comfyui_embedded_docs", "docs"),
}
_INDEX_HEADERS = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}


@dataclass(frozen=True)
class Frontend:
    """Where the UI's files are; None for each part that is not installed."""

    web_root: Path | None
    templates_root: Path | None = None
    docs_root: Path | None = None


FRONTEND = web.AppKey("kerniegen_frontend", Frontend)


def locate_frontend(config: KernieGenConfig) -> Frontend:
    """Resolve config.frontend_dir once, at start-up, and log what the UI will be."""
    source = config.frontend_dir
    if source is None:
        log.info("kerniegen: web UI off (frontend_dir=None); serving the API only")
        return Frontend(None)
    if source == FRONTEND_FROM_PACKAGE:
        web_root = _package_dir(FRONTEND_PACKAGE, "static")
        if web_root is None:
            log.warning("kerniegen: web UI off: the %s package is not installed "
                        "(pip install 'comfy-gateway[frontend]'); serving the API only", FRONTEND_PACKAGE)
            return Frontend(None)
    else:
        web_root = Path(os.path.abspath(Path(source).expanduser()))
        if not (web_root / "index.html").is_file():
            log.warning("kerniegen: web UI off: %s has no index.html; serving the API only", web_root)
            return Frontend(None)
    frontend = Frontend(
        web_root,
        templates_root=_package_dir(*_PACKAGED_TREES["templates"]),
        docs_root=_package_dir(*_PACKAGED_TREES["docs"]),
    )
    log.info("kerniegen: serving the web UI from %s (workflow templates: %s)",
             web_root, frontend.templates_root or "none installed")
    return frontend


def _package_dir(package: str, folder: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / folder
        if candidate.is_dir():
            return Path(os.path.abspath(candidate))
    return None


def file_under(root: Path, relative: str) -> Path | None:
    """The regular file `relative` names inside `root`, or None (missing, a directory, or outside)."""
    if "\0" in relative or "\\" in relative:
        return None
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        return None
    candidate = Path(os.path.realpath(root.joinpath(*parts)))
    # os.path.isfile, unlike Path.is_file, answers False for a name too long to exist instead of raising.
    if not candidate.is_relative_to(os.path.realpath(root)) or not os.path.isfile(candidate):
        return None
    return candidate


async def get_index(request: web.Request) -> web.StreamResponse:
    """GET / and /api/: the UI's index.html, never cached (ComfyUI's headers)."""
    web_root = request.app[FRONTEND].web_root
    if web_root is None:
        return await get_api_only_root(request)
    return web.FileResponse(web_root / "index.html", headers=_INDEX_HEADERS)


async def get_extensions(request: web.Request) -> web.Response:
    """The UI's own extension scripts, as ComfyUI lists them (every .js under extensions/), and
    KernieGen's, in the place a custom node's would be."""
    web_root = request.app[FRONTEND].web_root
    if web_root is None:
        return web.json_response([])
    pattern = os.path.join(glob.escape(str(web_root)), "extensions", "**", "*.js")
    scripts = glob.glob(pattern, recursive=True)
    listed = ["/" + os.path.relpath(path, web_root).replace(os.sep, "/") for path in scripts]
    return web.json_response([*listed, EXTENSION_URL])


async def get_template_file(request: web.Request) -> web.StreamResponse:
    """/templates/...: the templates package when installed; else an empty (valid) index."""
    root = request.app[FRONTEND].templates_root
    relative = request.match_info["path"]
    if root is None:
        if relative == "index.json":
            # The UI reads a JSON list (anything else counts as none) and offers no core templates.
            return web.Response(body=b"[]", content_type="application/json")
        return await not_found(request)
    return await _serve_from(root, relative, request)


async def get_docs_file(request: web.Request) -> web.StreamResponse:
    root = request.app[FRONTEND].docs_root
    if root is None:
        return await not_found(request)
    return await _serve_from(root, request.match_info["path"], request)


async def get_static(request: web.Request) -> web.StreamResponse:
    """ComfyUI's web root, registered last: any other GET is a file of the UI or a 404."""
    web_root = request.app[FRONTEND].web_root
    if web_root is None:
        return await not_found(request)
    return await _serve_from(web_root, request.match_info["tail"], request)


async def _serve_from(root: Path, relative: str, request: web.Request) -> web.StreamResponse:
    path = file_under(root, relative)
    if path is None:
        return await not_found(request)
    return web.FileResponse(path)

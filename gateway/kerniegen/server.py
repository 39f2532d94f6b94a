"""KernieGen's app factory and in-process server: every route registered twice (under /api first,
as ComfyUI does), the middleware order, and the lifecycle (dirs, worker, sockets) that
start_kerniegen and close() drive."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from gateway.kerniegen import (
    files,
    frontend,
    frontend_extension,
    routes_custom_nodes,
    routes_experiment_models,
    routes_history,
    routes_info,
    routes_queue,
    settings_store,
    uploads,
    userdata,
)
from gateway.kerniegen.config import Directories, KernieGenConfig
from gateway.kerniegen.faults import FaultState
from gateway.kerniegen.frontend import FRONTEND
from gateway.kerniegen.history import History
from gateway.kerniegen.internal_routes import LOGS, add_internal_routes, capture_logs
from gateway.kerniegen.log_buffer import LogBuffer
from gateway.kerniegen.middlewares import (
    LoopbackResolver,
    cache_headers,
    injected_faults,
    origin_check,
    unexpected_errors,
)
from gateway.kerniegen.prompt_queue import PromptQueue
from gateway.kerniegen.settings_store import SETTINGS, SettingsStore
from gateway.kerniegen.state import STATE, KernieGenState
from gateway.kerniegen.userdata import USER_FILES, create_user_files, prepare_user_root
from gateway.kerniegen.worker import PromptWorker
from gateway.kerniegen.ws_hub import WsHub
from gateway.kerniegen.ws_route import websocket

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# ComfyUI's route table for what KernieGen implements: (method, path, handler).
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/ws", websocket),
    ("GET", "/", frontend.get_index),
    ("GET", "/embeddings", routes_info.get_embeddings),
    ("GET", "/models", routes_info.get_models),
    ("GET", "/models/{folder}", routes_info.get_models_in_folder),
    ("GET", "/view_metadata/{folder}", routes_info.get_view_metadata),
    ("GET", "/extensions", frontend.get_extensions),
    ("POST", "/upload/image", uploads.upload_image),
    ("POST", "/upload/mask", uploads.upload_mask),
    ("GET", "/view", files.view),
    ("GET", "/system_stats", routes_info.get_system_stats),
    ("GET", "/features", routes_info.get_features),
    ("GET", "/prompt", routes_queue.get_prompt),
    ("POST", "/prompt", routes_queue.post_prompt),
    ("GET", "/object_info", routes_info.get_object_info),
    ("GET", "/object_info/{node_class}", routes_info.get_object_info_class),
    ("GET", "/history", routes_history.get_history),
    ("GET", "/history/{prompt_id}", routes_history.get_history_entry),
    ("GET", "/queue", routes_queue.get_queue),
    ("POST", "/queue", routes_queue.post_queue),
    ("POST", "/interrupt", routes_queue.post_interrupt),
    ("POST", "/free", routes_queue.post_free),
    ("POST", "/history", routes_history.post_history),
)

# What the web UI calls at boot and while working, also twinned under /api (frontend.py, userdata.py,
# settings_store.py, routes_experiment_models.py, routes_custom_nodes.py).
UI_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/users", userdata.get_users),
    ("POST", "/users", userdata.post_users),
    ("GET", "/userdata", userdata.list_userdata),
    ("GET", "/v2/userdata", userdata.list_userdata_v2),
    ("GET", "/userdata/{file}", userdata.get_userdata),
    ("POST", "/userdata/{file}", userdata.post_userdata),
    ("DELETE", "/userdata/{file}", userdata.delete_userdata),
    ("POST", "/userdata/{file}/move/{dest}", userdata.move_userdata),
    ("GET", "/settings", settings_store.get_settings),
    ("GET", "/settings/{id}", settings_store.get_setting),
    ("POST", "/settings", settings_store.post_settings),
    ("POST", "/settings/{id}", settings_store.post_setting),
    ("GET", "/experiment/models", routes_experiment_models.get_model_folders),
    ("GET", "/experiment/models/{folder}", routes_experiment_models.get_models_in_folder),
    ("GET", "/experiment/models/preview/{folder}/{path_index}/{filename:.*}",
     routes_experiment_models.get_model_preview),
    ("GET", "/workflow_templates", routes_custom_nodes.get_workflow_templates),
    ("GET", "/i18n", routes_custom_nodes.get_i18n),
)


def create_kerniegen_app(config: KernieGenConfig) -> web.Application:
    """A complete KernieGen; its worker starts and stops with the app."""
    dirs = Directories.from_config(config)
    hub = WsHub(config.ws_outbox_bytes)
    queue = PromptQueue(lambda: hub.broadcast_status(queue.remaining()), config.max_pending_prompts)
    history = History(config.max_history_items)
    faults = FaultState(config.faults)
    worker = PromptWorker(queue, history, hub, faults, dirs, config.step_delay_ms / 1000.0, config.inventory)
    app = web.Application(
        client_max_size=config.max_upload_bytes,  # like ComfyUI's --max-upload-size: every request body
        middlewares=[unexpected_errors, cache_headers, origin_check(LoopbackResolver()), injected_faults],
    )
    app[STATE] = KernieGenState(config, dirs, queue, history, hub, worker, faults)
    app[FRONTEND] = frontend.locate_frontend(config)
    app[USER_FILES] = create_user_files(config)
    app[SETTINGS] = SettingsStore(app[USER_FILES].root, config.max_settings_bytes)
    app[LOGS] = LogBuffer()
    _add_routes(app.router)
    app.cleanup_ctx.append(_run_worker)
    app.cleanup_ctx.append(capture_logs)
    app.on_shutdown.append(_close_sockets)
    return app


def _add_routes(router: web.UrlDispatcher) -> None:
    for method, path, handler in (*ROUTES, *UI_ROUTES):
        for spelling in ("/api" + path, path):  # the /api twin first, as ComfyUI registers them
            if method == "GET":
                router.add_get(spelling, handler)
            else:
                router.add_route(method, spelling, handler)
    # Not under /api, as in ComfyUI: its /internal sub-app and its static trees, the web root last.
    add_internal_routes(router)
    router.add_get(frontend_extension.EXTENSION_URL, frontend_extension.get_extension_script)
    router.add_get("/templates/{path:.*}", frontend.get_template_file)
    router.add_get("/docs/{path:.*}", frontend.get_docs_file)
    router.add_get("/{tail:.*}", frontend.get_static)


async def _run_worker(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await asyncio.to_thread(_prepare_dirs, state.dirs)
    await asyncio.to_thread(prepare_user_root, app[USER_FILES])
    state.worker.start()
    yield
    await state.worker.stop()
    if state.dirs.temp_is_owned:
        await asyncio.to_thread(_empty_dir, state.dirs.temp)


async def _close_sockets(app: web.Application) -> None:
    await app[STATE].hub.close_all()


def _prepare_dirs(dirs: Directories) -> None:
    for path in (dirs.output, dirs.input, dirs.temp):
        path.mkdir(parents=True, exist_ok=True)
    if dirs.temp_is_owned:
        _empty_dir(dirs.temp)  # ComfyUI wipes temp/ at start, so temp refs die with a restart


def _empty_dir(directory: Path) -> None:
    for entry in directory.iterdir() if directory.is_dir() else ():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


class KernieGenServer:
    """A KernieGen listening on a real socket inside the caller's event loop."""

    def __init__(self, app: web.Application, runner: web.AppRunner, url: str) -> None:
        self.app = app
        self.url = url
        self._runner = runner

    @property
    def state(self) -> KernieGenState:
        return self.app[STATE]

    async def close(self) -> None:
        """Stop listening, interrupt the running prompt, close sockets with GOING_AWAY."""
        await self._runner.cleanup()


async def start_kerniegen(config: KernieGenConfig, *, access_log: bool = False) -> KernieGenServer:
    """Start a KernieGen on config.host:config.port (0 picks a free port; .url has the real one)."""
    app = create_kerniegen_app(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    shown_host = f"[{host}]" if ":" in host else host
    return KernieGenServer(app, runner, f"http://{shown_host}:{port}")

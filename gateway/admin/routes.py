"""The gateway's own API under /gateway/: the routing table, users' stored preferences, the live state of a
prompt, and what each backend can run (its inventory, the model catalog). JSON in, JSON out, JSON errors."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from gateway.admin.health_routes import seen_identity
from gateway.core.errors import BackendOpen, BadRequest, NotFound, UpstreamError
from gateway.core.headers import UNAVAILABLE_HEADER
from gateway.datapath.aio.keys import HEALTH, RUNTIME
from gateway.inventory.catalog import ModelCatalog
from gateway.inventory.inventories import Inventories
from gateway.pipeline.admit import check_backend
from gateway.pipeline.affinity import locate_prompt, read_prompt_state
from gateway.pipeline.identifiers import id_problem
from gateway.pipeline.select import check_backend_name

log = logging.getLogger("comfy_gateway.admin")

PREFIX = "/gateway"


async def list_backends(request: web.Request) -> web.Response:
    """The routing table; each server with its identity, circuit and the queue length placement reads (a pool's
    on each of its members)."""
    rt = request.app[RUNTIME]
    statuses = request.app[HEALTH].statuses

    def server(entry: dict[str, object], kind: str) -> dict[str, object]:
        name = str(entry["name"])
        return {
            **entry,
            **seen_identity(kind, statuses[name]),
            "up": statuses[name].up,
            "circuit": rt.breakers.state(name),
            "queue": rt.queues.length(name),
        }

    def described(entry: dict[str, object]) -> dict[str, object]:
        members = entry.get("members")
        if not isinstance(members, list):
            return server(entry, str(entry["kind"]))
        return {**entry, "members": [server(member, str(entry["kind"])) for member in members]}

    return web.json_response(
        {
            "default": rt.backends.default,
            "backends": [described(entry) for entry in rt.backends.describe()],
            "selection": {
                "header": rt.policy.backend_header,
                "query_param": rt.policy.backend_query_param,
                "user_headers": list(rt.policy.user_headers),
                "order": ["header", "query", "preference", "default"],
            },
        }
    )


async def get_preference(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    user = request.match_info["user"]
    backend = await rt.store.get_preference(user)
    if backend is None:
        raise NotFound(f"user {user!r} has no stored preference", details="user")
    return web.json_response({"user": user, "backend": backend})


async def put_preference(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    user = request.match_info["user"]
    try:
        payload = json.loads(await request.read())
    except ValueError as exc:
        raise BadRequest(f"body must be JSON like {{\"backend\": \"comfyui\"}}: {exc}") from exc
    backend = payload.get("backend") if isinstance(payload, dict) else None
    if not isinstance(backend, str):
        raise BadRequest('body must be a JSON object like {"backend": "comfyui"}', details="backend")
    check_backend_name(backend, rt.backends.names, where="the preference body", listed=rt.backends.configured)
    previous = await rt.store.get_preference(user)
    await rt.store.set_preference(user, backend)
    log.info("preference of user %r set to backend %s (was %s)", user, backend, previous or "unset")
    return web.json_response({"user": user, "backend": backend})


async def delete_preference(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    user = request.match_info["user"]
    if not await rt.store.delete_preference(user):
        raise NotFound(f"user {user!r} has no stored preference", details="user")
    log.info("preference of user %r deleted; the default backend %s applies", user, rt.backends.default)
    return web.json_response({"user": user, "deleted": True})


async def get_prompt(request: web.Request) -> web.Response:
    """Where a prompt lives and what it is doing now, read live from that backend."""
    rt = request.app[RUNTIME]
    prompt_id = request.match_info["prompt_id"]
    problem = id_problem(prompt_id, rt.policy.max_id_chars)
    if problem is not None:  # no backend holds it, and it must not reach a probe or a log line
        raise BadRequest(f"the prompt id {problem}", details="prompt_id")
    left_out: dict[str, str] = {}
    backend_name = await locate_prompt(rt, prompt_id, left_out)
    if backend_name is None:
        if not left_out:
            raise NotFound(f"prompt {prompt_id!r} is unknown to the gateway and to every backend", details="prompt_id")
        unknown = NotFound(
            f"prompt {prompt_id!r} is unknown to the gateway and to every backend asked; not asked: "
            + "; ".join(f"{name} ({why})" for name, why in left_out.items()),
            details="prompt_id",
        )
        return web.json_response(
            unknown.body(), status=unknown.status, headers={UNAVAILABLE_HEADER: ",".join(left_out)}
        )
    record = await rt.store.lookup_prompt(prompt_id)
    try:
        check_backend(rt, backend_name)
        state = await read_prompt_state(rt, rt.backends[backend_name], prompt_id)
        error = None
    except (UpstreamError, BackendOpen) as exc:
        state, error = "unknown", exc.message
    body = {
        "prompt_id": prompt_id,
        "backend": backend_name,
        "user": record.user if record else None,
        "client_id": record.client_id if record else None,
        "submitted_at": record.submitted_at if record else None,
        "route": record.route if record else None,
        "guardrails": list(record.guardrails) if record else None,
        "state": state,
    }
    if error:
        body["error"] = error
    return web.json_response(body)


def _inventories(request: web.Request) -> Inventories:
    inventories = request.app[RUNTIME].inventories
    if inventories is None:
        raise NotFound("this gateway keeps no backend inventories")
    return inventories


def _backend_named(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.app[RUNTIME].backends:
        raise NotFound(f"no backend named {name!r}", details="backend")
    return name


async def refresh_inventory(request: web.Request) -> web.Response:
    """Read the backend's /object_info now (its models changed): the new inventory's summary, or 502/504."""
    name = _backend_named(request)
    inventories = _inventories(request)
    await inventories.refresh(name)
    log.info("inventory of backend %s read again on demand", name)
    return web.json_response(inventories.status(name).describe())


async def list_models(request: web.Request) -> web.Response:
    """Every model file the backends have, per folder, with the backends that have it."""
    return web.json_response(ModelCatalog(_inventories(request).snapshot()).describe())


async def backend_models(request: web.Request) -> web.Response:
    name = _backend_named(request)
    status = _inventories(request).status(name)
    files = None if status.inventory is None else status.inventory.files_by_folder()
    return web.json_response(
        {
            "backend": name,
            "known": files is not None,
            "folders": files,
            "age_seconds": None if status.age_seconds is None else round(status.age_seconds, 3),
            "last_error": status.last_error,
        }
    )


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"no gateway endpoint {request.method} {request.path}")


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/backends", list_backends)
    app.router.add_post(f"{PREFIX}/backends/{{name}}/refresh", refresh_inventory)
    app.router.add_get(f"{PREFIX}/backends/{{name}}/models", backend_models)
    app.router.add_get(f"{PREFIX}/models", list_models)
    app.router.add_get(f"{PREFIX}/preferences/{{user}}", get_preference)
    app.router.add_put(f"{PREFIX}/preferences/{{user}}", put_preference)
    app.router.add_delete(f"{PREFIX}/preferences/{{user}}", delete_preference)
    app.router.add_get(f"{PREFIX}/prompts/{{prompt_id}}", get_prompt)

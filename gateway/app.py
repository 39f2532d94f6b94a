"""create_app: wiring only. Every resource (embedded backends, the state store, the pooled client session, the
output root, background checks) is opened and closed through cleanup_ctx, in the order written here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from gateway.admin.console import add_console_routes
from gateway.admin.health_routes import add_health_routes
from gateway.admin.metrics_route import add_metrics_route
from gateway.admin.routes import add_admin_routes, not_found
from gateway.admission.buckets import TokenBuckets
from gateway.admission.sockets import OpenSockets
from gateway.backends.breaker import BreakerPolicy, Breakers
from gateway.backends.reach import reach_problems
from gateway.backends.retry import RetryBudget, RetryPolicy
from gateway.backends.table import Backend, BackendTable, Timeouts
from gateway.config.settings import BackendSettings, Settings, StoreSettings, server_urls
from gateway.core.errors import StartupRefused
from gateway.core.headers import INSTANCE_HEADER
from gateway.core.redact import shown_url
from gateway.core.startup import CannotListen, is_bind_error
from gateway.datapath.aio import proxy
from gateway.datapath.aio.forward import Forwarder, create_client_session
from gateway.datapath.aio.keys import FORWARDER, HEALTH, METRICS, OPEN_SOCKETS, RELAY_LISTENERS, RUNTIME, WEBSOCKETS
from gateway.datapath.aio.middlewares import MIDDLEWARES
from gateway.datapath.aio.websocket import close_websockets
from gateway.inventory.inventories import Inventories
from gateway.merge.cache import MergeCache
from gateway.merge.history_parts import HistoryParts
from gateway.observe.health import HealthMonitor
from gateway.observe.logs import flush_logs, flush_logs_periodically
from gateway.observe.metrics import METRICS_PATH, MULTIPROCESS_ENV, GatewayMetrics
from gateway.observe.pollers import poll_forever
from gateway.outputs.root import OutputRoot
from gateway.runtime import AccessPolicy, Admission, GuardrailPolicy, RoutingPolicy, Runtime
from gateway.state.store import StateStore, open_store, prune_periodically, with_lookup_cache

if TYPE_CHECKING:
    from gateway.kerniegen.server import KernieGenServer

log = logging.getLogger("comfy_gateway.app")


def access_policy(settings: Settings) -> AccessPolicy:
    security = settings.security
    credentials = security.credentials
    return AccessPolicy(
        admin_token=credentials.admin_token,
        users_by_token=credentials.users_by_token,
        allow_self_service=security.allow_self_service,
        token_query_param=security.token_query_param,
        token_cookie=security.token_cookie,
        allowed_origins=frozenset(security.allowed_origins),
        allowed_hosts=frozenset(security.allowed_hosts),
    )


def admission(settings: Settings) -> Admission:
    limits = settings.limits
    return Admission(
        prompts=TokenBuckets(limits.prompts_per_minute / 60, limits.prompt_burst, limits.rate_limited_clients),
        requests=TokenBuckets(limits.requests_per_second, limits.request_burst, limits.rate_limited_clients),
        sockets=OpenSockets(limits.max_websockets_per_client),
    )


def guardrail_policy(settings: Settings) -> GuardrailPolicy:
    guardrails = settings.guardrails
    return GuardrailPolicy(
        normalize_seeds=guardrails.normalize_seeds,
        check_models=guardrails.check_models,
        check_node_classes=guardrails.check_node_classes,
        place_by_model=guardrails.place_by_model,
        aliases={  # by server: a pool's members share the pool's
            server: b.aliases
            for name, b in settings.backends.items()
            if b.aliases
            for server, _ in b.named_servers(name)
        },
    )


def embedded_data_dir(settings: Settings, name: str, backend: BackendSettings) -> Path:
    return backend.kerniegen.data_dir or settings.state_dir / "kerniegen" / name


def backend_output_dir(settings: Settings, name: str, backend: BackendSettings) -> Path | None:
    """Where a backend's outputs are on disk: configured, or the embedded KernieGen's own output dir."""
    if backend.output_dir is not None:
        return backend.output_dir
    if backend.embedded:
        return embedded_data_dir(settings, name, backend) / "output"
    return None


def sockets_follow_all(settings: Settings) -> bool:
    """websocket.follow, "auto" decided: every backend when another process can place a socket's prompts."""
    follow = settings.websocket.follow
    if follow == "auto":
        return settings.workers > 1 or settings.store.kind == "redis"
    return follow == "all"


def build_backend_table(settings: Settings) -> BackendTable:
    """Every server the gateway calls (a pool's members each), by name, and the pools."""
    table = {}
    pools: dict[str, tuple[str, ...]] = {}
    for name, b in settings.backends.items():
        timeouts = Timeouts(
            connect_seconds=b.timeouts.connect_seconds,
            first_byte_seconds=b.timeouts.first_byte_seconds,
            transfer_first_byte_seconds=b.timeouts.transfer_first_byte_seconds,
            read_seconds=b.timeouts.read_seconds,
            total_seconds=b.timeouts.total_seconds,
        )
        servers = b.named_servers(name)
        if b.is_pool:
            pools[name] = tuple(server for server, _ in servers)
        for number, (server, member) in enumerate(servers, 1):
            table[server] = Backend(
                name=server,
                url=URL(member.url.rstrip("/")),
                timeouts=timeouts,
                embedded=b.embedded,
                output_dir=member.output_dir if b.is_pool else backend_output_dir(settings, name, b),
                kind=b.kind,
                fallback=b.fallback,
                fallback_on_explicit=b.fallback_on_explicit,
                pool=name if b.is_pool else None,
                member=number if b.is_pool else 0,
            )
    return BackendTable(table, settings.default_backend, pools)


def create_breakers(settings: Settings, backends: BackendTable, metrics: GatewayMetrics) -> Breakers:
    resilience = settings.resilience
    policy = BreakerPolicy(
        enabled=resilience.circuit_breaker,
        consecutive_failures=resilience.consecutive_failures,
        base_ejection_seconds=resilience.base_ejection_seconds,
        max_ejection_seconds=resilience.max_ejection_seconds,
        max_ejection_percent=resilience.max_ejection_percent,
    )
    return Breakers(
        backends,
        policy,
        trial_seconds={name: b.timeouts.longest_call() for name, b in backends.items()},
        on_transition=metrics.breaker_transition,
        groups={name: b.pool for name, b in backends.items() if b.pool},
    )


def create_retry_budget(settings: Settings, backends: BackendTable, metrics: GatewayMetrics) -> RetryBudget:
    resilience = settings.resilience
    policy = RetryPolicy(
        retries=resilience.retries,
        backoff_seconds=resilience.retry_backoff_seconds,
        budget_percent=resilience.retry_budget_percent,
        min_retries=resilience.retry_budget_min,
    )
    return RetryBudget(backends, policy, on_retry=metrics.retried)


def sync_output_root(settings: Settings, backends: BackendTable | None = None) -> None:
    """Keep output_root/<backend> linked to each backend's output_dir (when output_root is set). Raises
    OutputRootError when something else is in the way."""
    if settings.output_root is None:
        return
    backends = build_backend_table(settings) if backends is None else backends
    dirs = {b.name: b.output_dir for b in backends.values() if b.output_dir is not None}
    for change in OutputRoot(settings.output_root, dirs).sync():
        log.info("output root: %s", change)


def create_app(
    settings: Settings,
    *,
    store: StateStore | None = None,
    registry: CollectorRegistry | None = None,
    run_embedded: bool = True,
) -> web.Application:
    """Build the gateway. `store` lets a test share one store between two app instances (replicas); `registry`
    is where the metrics go (default: a fresh one for this app, never prometheus-client's global registry);
    `run_embedded` False leaves the embedded backends to another process (the workers' parent runs them once)."""
    app = web.Application(
        middlewares=MIDDLEWARES,
        client_max_size=settings.max_body_bytes,
        # aiohttp's parser refuses (400) a target over max_line_size bytes (its C parser counts the target
        # alone), more than max_headers headers or one of more than max_field_size bytes: the fast path's
        # limits, where the app serves clients itself. Behind the fast path it reads only heads the fast path
        # let through, grown by the X-Forwarded-* and Host lines it adds: room for those, so none is refused.
        handler_args={
            "max_line_size": settings.limits.max_target_bytes,
            "max_headers": settings.limits.max_header_count + (0 if settings.data_path == "aiohttp" else 4),
            "max_field_size": settings.limits.max_head_bytes + (0 if settings.data_path == "aiohttp" else 64),
        },
    )
    backends = build_backend_table(settings)
    metrics = GatewayMetrics(
        backends,
        registry=registry,
        multiprocess_dir=os.environ.get(MULTIPROCESS_ENV) or None,
        unconfigured=settings.builtin_backends - {settings.default_backend},
        members={name: (b.pool, b.member) for name, b in backends.items() if b.pool},
    )
    app[METRICS] = metrics
    access = access_policy(settings)
    policy = RoutingPolicy(
        backend_header=settings.backend_header,
        backend_query_param=settings.backend_query_param,
        user_headers=settings.user_headers,
        max_id_chars=settings.max_id_chars,
        max_json_depth=settings.limits.max_json_depth,
        degrade_on_store_outage=settings.store.on_outage == "degrade",
        sockets_follow_all=sockets_follow_all(settings),
        gateway_headers=(
            settings.backend_header,
            INSTANCE_HEADER,  # the gateway's own: a client's is dropped, ours sent (a loop is seen by its id)
            *(("Authorization",) if access.any_credential else ()),
        ),
        gateway_query_params=(
            settings.backend_query_param,
            *((access.token_query_param,) if access.any_credential else ()),
        ),
    )

    instance_id = secrets.token_hex(16)

    async def distinct_servers(app: web.Application) -> AsyncIterator[None]:
        """Backends whose names resolve to one server, or to the gateway itself, refuse the start (the rules
        caught every spelling that needs no lookup)."""
        problems = await reach_problems(
            server_urls(settings.backends),
            settings.listen_host,
            settings.listen_port,
            timeout_seconds=settings.guardrails.address_lookup_seconds,
        )
        if problems:
            raise StartupRefused("; ".join(str(problem) for problem in problems))
        yield

    async def embedded_backends(app: web.Application) -> AsyncIterator[None]:
        servers = await start_all_embedded(settings) if run_embedded else []
        yield
        for server in servers:
            await server.close()

    async def runtime(app: web.Application) -> AsyncIterator[None]:
        state_store = store if store is not None else await open_store(settings.store)
        session = create_client_session()
        # Backend WebSockets stay open for hours, one (or more, fan-in) per client socket: under the HTTP pool's
        # per-backend cap the 101st client socket of a backend would wait for one to close. Their bound is the
        # client sockets' (limits.max_client_connections, max_websockets_per_client).
        socket_session = create_client_session(limit_per_host=0)
        sync_output_root(settings, backends)
        retries = create_retry_budget(settings, backends, metrics)
        forwarder = Forwarder(
            session,
            socket_session=socket_session,
            retries=retries,
            max_body_bytes=settings.max_body_bytes,
            max_ws_message_bytes=settings.limits.max_ws_message_bytes,
            in_flight=metrics.in_flight_gauges(),
            instance_id=instance_id,
        )
        guardrails = settings.guardrails
        inventories = Inventories(
            backends,
            forwarder,
            ttl_seconds=guardrails.inventory_ttl_seconds,
            timeout_seconds=guardrails.inventory_timeout_seconds,
            max_bytes=guardrails.inventory_max_bytes,
        )
        breakers = create_breakers(settings, backends, metrics)

        def on_check(name: str, up: bool, seconds: float) -> None:
            metrics.observe_health(name, up, seconds)
            breakers.health_checked(name, up)
            inventories.backend_checked(name, up)  # a backend back up may have come back with other models

        health = HealthMonitor(
            backends,
            forwarder,
            interval_seconds=settings.health_check_interval_seconds,
            timeout_seconds=settings.health_check_timeout_seconds,
            on_check=on_check,
            on_identity=metrics.observe_identity,
            ready_requires=settings.ready_requires,
        )
        if settings.guardrails.strict_identity:
            refusal = await strict_identity_refusal(health)
            if refusal is not None:
                await session.close()
                await socket_session.close()
                if store is None:
                    await state_store.close()
                raise StartupRefused(refusal)
        app[FORWARDER] = forwarder
        app[HEALTH] = health
        app[RUNTIME] = Runtime(
            backends=backends,
            store=with_lookup_cache(state_store, settings.store),
            calls=forwarder,
            policy=policy,
            metrics=metrics,
            merge_cache=MergeCache(settings.merge_cache_bytes),
            history_parts=HistoryParts(settings.history_parts_bytes),
            known_down=health.known_down,
            breakers=breakers,
            retries=retries,
            health=health.statuses,
            access=access,
            admission=admission(settings),
            instance_id=instance_id,
            inventories=inventories,
            guardrails=guardrail_policy(settings),
        )
        log_routing_table(settings, backends)
        log.info("instance id %s, sent to backends in %s: a request that comes back with it is a loop (508)",
                 instance_id, INSTANCE_HEADER)
        log_security(access)
        log_observability(settings, metrics)
        log_guardrails(settings)
        yield
        await session.close()
        await socket_session.close()
        if store is None:
            await state_store.close()

    async def background_tasks(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(app[HEALTH].run(), name="backend-health"),
            asyncio.create_task(prune_periodically(app[RUNTIME].store), name="store-retention"),
            asyncio.create_task(inventories_of(app).run(), name="backend-inventories"),
            asyncio.create_task(
                poll_forever(
                    app[RUNTIME].backends,
                    app[FORWARDER],
                    app[RUNTIME].store,
                    metrics,
                    interval_seconds=settings.queue_poll_interval_seconds,
                    timeout_seconds=settings.health_check_timeout_seconds,
                    queues=app[RUNTIME].queues,
                ),
                name="metrics-polls",
            ),
        ]
        if settings.log_batch_seconds > 0:
            tasks.append(asyncio.create_task(flush_logs_periodically(settings.log_batch_seconds), name="log-flush"))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        flush_logs()

    app.cleanup_ctx.extend((distinct_servers, embedded_backends, runtime, background_tasks))
    app[OPEN_SOCKETS] = set()
    app[RELAY_LISTENERS] = set()
    app[WEBSOCKETS] = settings.websocket
    app.on_shutdown.append(close_websockets)
    add_health_routes(app)
    add_admin_routes(app)
    add_console_routes(app, settings.console)
    add_metrics_route(app)
    app.router.add_route("*", "/gateway/{tail:.*}", not_found)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def inventories_of(app: web.Application) -> Inventories:
    inventories = app[RUNTIME].inventories
    assert inventories is not None  # made with the runtime
    return inventories


async def start_all_embedded(settings: Settings) -> list[KernieGenServer]:
    """Every embedded backend of the settings, started; if one cannot start, those started are closed again.
    Raises CannotListen when one's address cannot be bound."""
    servers: list[KernieGenServer] = []
    try:
        for name, backend in settings.backends.items():
            if backend.embedded:
                servers.append(await start_embedded(settings, name, backend))
    except BaseException:
        for server in servers:
            await server.close()
        raise
    return servers


async def start_embedded(settings: Settings, name: str, backend: BackendSettings) -> KernieGenServer:
    # Imported here so that a gateway with no embedded backend never loads KernieGen (and Pillow).
    from gateway.kerniegen.config import KernieGenConfig
    from gateway.kerniegen.inventory import Inventory
    from gateway.kerniegen.server import start_kerniegen

    assert backend.url is not None  # an embedded backend is one server (settings)
    url = URL(backend.url)
    config = KernieGenConfig(
        host=url.host or "127.0.0.1",
        port=url.port or 80,
        data_dir=embedded_data_dir(settings, name, backend),
        output_dir=backend_output_dir(settings, name, backend),
        step_delay_ms=backend.kerniegen.step_delay_ms,
        inventory=Inventory(checkpoints=backend.kerniegen.checkpoints, loras=backend.kerniegen.loras),
    )
    try:
        server = await start_kerniegen(config)
    except OSError as exc:
        if not is_bind_error(exc):
            raise
        raise CannotListen(
            f"embedded KernieGen backend {name!r}",
            config.host,
            config.port,
            exc,
            port_key=("backends", name, "url"),
            host_key=("backends", name, "url"),
        ) from exc
    log.info("embedded KernieGen %r listening on %s (data in %s)", name, server.url, config.data_dir)
    return server


async def strict_identity_refusal(health: HealthMonitor) -> str | None:
    """Under guardrails.strict_identity: why the gateway must not start (a backend answers as another kind than
    configured), or None. A backend that cannot be asked now is not a refusal: its checks report it later."""
    backends = list(health.backends.values())
    await asyncio.gather(*(health.check_identity(b) for b in backends))
    problems = {b.name: health.statuses[b.name].identity_problem for b in backends}
    wrong = [f"backend {name} is {problem}" for name, problem in problems.items() if problem]
    if not wrong:
        return None
    return "; ".join(wrong) + " (guardrails.strict_identity is on)"


def log_routing_table(settings: Settings, backends: BackendTable) -> None:
    log.info(
        "routing table (default %s; selection: header %s, query ?%s=, user headers %s, then default):",
        backends.default,
        settings.backend_header,
        settings.backend_query_param,
        ", ".join(settings.user_headers),
    )
    for b in backends.values():
        log.info(
            "  %-12s -> %s%s%s%s",
            b.name,
            shown_url(b.url),
            " (embedded KernieGen)" if b.embedded else "",
            f" (member {b.member} of pool {b.pool})" if b.pool else "",
            " [default]" if backends.is_default(b.name) else "",
        )


def log_security(access: AccessPolicy) -> None:
    """What guards the gateway, said once at start-up (never the tokens themselves)."""
    if access.admin_token is None:
        log.warning("no security.admin_token set: the gateway's API takes writes from clients on this host only")
    else:
        log.info("admin API guarded by security.admin_token")
    if access.tokens_on:
        users = len(set(access.users_by_token.values()))
        log.info("API tokens on: %d users; every ComfyUI route needs a token", users)
    if access.allowed_origins:
        log.info("CORS: browser pages from %s may call the gateway", ", ".join(sorted(access.allowed_origins)))
    if access.allowed_hosts:
        log.info("answering only to hosts %s", ", ".join(sorted(access.allowed_hosts)))


def log_observability(settings: Settings, metrics: GatewayMetrics) -> None:
    log.info("state store: %s", describe_store(settings.store))
    log.info(
        "health checks every %gs (timeout %gs); queue and prompt polls every %gs; metrics at %s%s",
        settings.health_check_interval_seconds,
        settings.health_check_timeout_seconds,
        settings.queue_poll_interval_seconds,
        METRICS_PATH,
        f" (multiprocess, {MULTIPROCESS_ENV}={metrics.multiprocess_dir})" if metrics.multiprocess_dir else "",
    )


def log_guardrails(settings: Settings) -> None:
    guardrails = settings.guardrails
    checks = [name for name, on in (("seeds", guardrails.normalize_seeds), ("models", guardrails.check_models),
                                    ("node classes", guardrails.check_node_classes),
                                    ("placement by model", guardrails.place_by_model)) if on]
    aliases = sum(len(b.aliases) for b in settings.backends.values())
    log.info(
        "guardrails on POST /prompt: %s; backend inventories read every %gs%s",
        ", ".join(checks) or "none",
        guardrails.inventory_ttl_seconds,
        f"; {aliases} model aliases" if aliases else "",
    )


def describe_store(store: StoreSettings) -> str:
    if store.kind == "redis":
        return f"redis {shown_url(store.redis_url)} (key prefix {store.key_prefix!r})"
    return f"sqlite {store.path}"

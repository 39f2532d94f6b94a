"""What the benchmark measures: the fake upstreams, and the four targets in front of them (direct, nginx, the
plain aiohttp proxy, the gateway), each described by the command that starts it and how to reach it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import workload
from nginx_conf import find_nginx, nginx_command, write_nginx_config
from processes import ServerProcess, free_port
from verify import Route

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
# gateway-redis: its state in Redis (what running replicas costs); gateway-2w: `serve --workers 2`.
TARGET_NAMES = ("direct", "nginx", "plain", "gateway", "gateway-redis", "gateway-2w")
LOAD_BACKEND = "alpha"  # every load run goes to this backend; verification covers both
# Rate limits on, per second, far above what any load here sends: the buckets are taken from on every request.
# Also the cap on one client's open WebSockets (every load here is one API user).
UNREACHED_RATE = 1_000_000
REDIS_URL = "redis://127.0.0.1:6379"
REDIS_DB = 13  # the benchmark's own database, flushed before a Redis-store gateway starts


@dataclass(frozen=True)
class Launch:
    """A server to start: its command, the port it will listen on, and where it runs."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str] | None = None
    cwd: Path | None = None
    startup_seconds: float = 15.0


@dataclass
class Target:
    """A started target. `process` is the one whose CPU and memory are charged to it."""

    name: str
    base_url: str
    process: ServerProcess
    routes: dict[str, Route]
    unknown_backend_url: str | None
    # The load's backend behind it: what it costs there is charged too (it shares the servers' core).
    upstream: ServerProcess | None = None

    @property
    def load_route(self) -> Route:
        return self.routes[LOAD_BACKEND]


def upstream_launches(data_dir: Path) -> dict[str, Launch]:
    return {name: Launch(f"upstream-{name}", [sys.executable, str(BENCH_DIR / "upstream.py"), "--name", name,
                                              "--host", HOST, "--port", str(port), "--data-dir", str(data_dir)],
                         port)
            for name, port in ((name, free_port()) for name in workload.BACKENDS)}


def nginx_launch(scratch: Path, backend_urls: dict[str, str]) -> Launch | str:
    """The launch, or why nginx cannot run here."""
    nginx = find_nginx()
    if nginx is None:
        return "nginx is not installed (run bench/setup.sh)"
    port = free_port()
    config = write_nginx_config(scratch / "nginx", host=HOST, port=port, backends=backend_urls)
    return Launch("nginx", nginx_command(nginx, config), port)


def plain_launch(backend_urls: dict[str, str]) -> Launch:
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / "plain_proxy.py"), "--host", HOST, "--port", str(port)]
    for name, url in backend_urls.items():
        command += ["--backend", f"{name}={url}"]
    return Launch("plain", command, port)


def gateway_launch(scratch: Path, backend_urls: dict[str, str], *, settings: Mapping[str, float] | None = None,
                   store_settings: Mapping[str, float] | None = None, name: str = "gateway", store: str = "sqlite",
                   workers: int = 1) -> Launch | str:
    """The gateway with its real configuration (metrics, access log at INFO, SQLite store on disk, every check
    on); `store` "redis" needs the Redis at REDIS_URL, whose database REDIS_DB it empties first."""
    unavailable = gateway_unavailable() or (flush_redis() if store == "redis" else None)
    if unavailable:
        return unavailable
    port = free_port()
    state_dir = scratch / f"{name}-state"
    state_dir.mkdir(parents=True, exist_ok=True)
    config = scratch / f"{name}.toml"
    config.write_text(gateway_config(port, state_dir, backend_urls, settings=settings,
                                     store_settings=store_settings, store=store))
    # The file is the whole configuration: stray COMFY_GATEWAY_* variables would silently change it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COMFY_GATEWAY_")}
    return Launch(name, [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers",
                         str(workers)], port, env=env, cwd=scratch, startup_seconds=30.0)


def flush_redis(db: int = REDIS_DB) -> str | None:
    """Empties the benchmark's Redis database; why it cannot, or None."""
    import redis  # the gateway's own dependency; imported here so the other targets never need it

    try:
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_connect_timeout=2, socket_timeout=5)
        client.flushdb()
        client.close()
    except redis.RedisError as error:
        return f"Redis at {REDIS_URL} is not reachable ({type(error).__name__}: {error})"
    return None


def gateway_config(port: int, state_dir: Path, backend_urls: dict[str, str], *,
                   settings: Mapping[str, float] | None = None, store_settings: Mapping[str, float] | None = None,
                   store: str = "sqlite", redis_db: int = REDIS_DB) -> str:
    """The gateway's real configuration (its defaults but for the port, the backends and where state goes)
    with every check a request can pass on: an API token the load sends, the host and origin checks (the load
    comes from an allowed foreign origin, so answers carry CORS headers), rate limits far above any load,
    the guardrails on POST /prompt (the upstreams answer /object_info) and the circuit breakers. `settings`
    and `store_settings` (numbers: the caches' sizes) only where a case measures what a cache stands in front
    of; `store` "redis" keeps the state in the Redis at REDIS_URL, database `redis_db`."""
    lines = [
        f'listen_host = "{HOST}"',
        f"listen_port = {port}",
        f'default_backend = "{workload.BACKENDS[0]}"',
        'log_format = "text"',
        'log_level = "INFO"',
        f'state_dir = "{state_dir}"',
        *(f"{key} = {value}" for key, value in (settings or {}).items()),
        "",
        "[security]",
        f'api_tokens = {{ {workload.API_USER} = "{workload.API_TOKEN}" }}',
        f'allowed_origins = ["{workload.ORIGIN}"]',
        f'allowed_hosts = ["{HOST}"]',
        "",
        "[limits]",
        f"max_websockets_per_client = {UNREACHED_RATE}",
        f"requests_per_second = {UNREACHED_RATE:.1f}",
        f"request_burst = {UNREACHED_RATE}",
        f"prompts_per_minute = {UNREACHED_RATE * 60:.1f}",
        f"prompt_burst = {UNREACHED_RATE}",
        "",
        "[guardrails]",
        "normalize_seeds = true",
        "check_models = true",
        "check_node_classes = true",
        "",
        "[resilience]",
        "circuit_breaker = true",
        "",
        "[store]",
        f'kind = "{store}"',
        f'path = "{state_dir / "gateway.sqlite3"}"' if store == "sqlite" else f'redis_url = "{REDIS_URL}/{redis_db}"',
        *(f"{key} = {value}" for key, value in (store_settings or {}).items()),
    ]
    for name, url in backend_urls.items():
        lines += ["", f"[backends.{name}]", f'url = "{url}"']
    return "\n".join(lines) + "\n"


def gateway_unavailable() -> str | None:
    """Why `python -m gateway serve` cannot be used yet, or None when it can."""
    try:
        probe = subprocess.run([sys.executable, "-m", "gateway", "serve", "--help"], capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "`python -m gateway serve --help` did not finish within 60 s"
    if probe.returncode != 0:
        last = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`python -m gateway serve` is not available yet ({last[0][:200]})"
    return None


def target_for(name: str, launch: Launch, process: ServerProcess, backend_urls: dict[str, str],
               upstreams: Mapping[str, ServerProcess]) -> Target:
    base = f"http://{HOST}:{launch.port}"
    routes = {backend: Route(base, backend) for backend in backend_urls}
    return Target(name, base, process, routes, unknown_backend_url=base, upstream=upstreams.get(LOAD_BACKEND))


def direct_target(upstreams: dict[str, ServerProcess], backend_urls: dict[str, str]) -> Target:
    """No proxy: each backend at its own URL; the header is still sent so every target gets the same bytes."""
    routes = {backend: Route(url, backend) for backend, url in backend_urls.items()}
    return Target("direct", backend_urls[LOAD_BACKEND], upstreams[LOAD_BACKEND], routes,
                  unknown_backend_url=None, upstream=upstreams[LOAD_BACKEND])

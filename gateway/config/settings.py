"""Typed start-up configuration: the frozen settings models and `load_settings`, the one way to build them.

Layers, lowest first: built-in defaults, one TOML file, then COMFY_GATEWAY_* environment variables.
Every problem is reported at once as a ConfigError naming each key and where its value came from.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.config import rules as config_rules
from gateway.config.credentials import Credentials, resolve_credentials
from gateway.config.sources import (
    CONFIG_PATH_ENV,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    EnvValueError,
    ValueOrigins,
    describe_validation_error,
    dotted,
    env_key_path,
    flatten,
    gateway_env_vars,
    merge_layers,
    read_env_layer,
    read_toml_layer,
    unknown_env_vars,
    unknown_keys,
)
from gateway.core.origins import normalized_host_name, normalized_origin

# An HTTP header name is an RFC 9110 token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class _FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeoutSettings(_FrozenModel):
    """Per-backend client timeouts, by phase (connect, first byte, silence mid-answer, total) and by kind of
    call: API calls, which ComfyUI answers in milliseconds, and transfers (/view, uploads, /object_info, user
    data files), which may take long to start but never go silent."""

    connect_seconds: float = Field(default=5.0, gt=0)
    # From the request's last byte to the answer's first: API calls (also a WebSocket's upgrade answer, merges,
    # affinity probes), and transfers.
    first_byte_seconds: float = Field(default=5.0, gt=0)
    transfer_first_byte_seconds: float = Field(default=120.0, gt=0)
    # Max silence while reading an answer under way (an API call's: at most first_byte_seconds).
    read_seconds: float = Field(default=300.0, gt=0)
    # None: no total cap, so a 50 MiB /view or a long-lived WebSocket is never cut off mid-way.
    total_seconds: float | None = Field(default=None, gt=0)


class EmbeddedSettings(_FrozenModel):
    """Options of an embedded KernieGen; read only when the backend has `embedded = true`."""

    step_delay_ms: float = Field(default=20.0, ge=0)
    checkpoints: tuple[str, ...] = ("illustriousXL_v01.safetensors",)
    loras: tuple[str, ...] = ("kerniegen_detail_lora_v1.safetensors",)
    data_dir: Path | None = None  # None: <state_dir>/kerniegen


class MemberSettings(_FrozenModel):
    """One server of a backend pool."""

    url: str  # absolute http(s) URL
    output_dir: Path | None = None  # where this member writes outputs on disk (for output_root links)


# A pool's members are numbered from 1 in the configured order; a member's name is `<backend>.<number>`.
MAX_POOL_MEMBERS = 64


class BackendSettings(_FrozenModel):
    """One named backend: where it answers, and whether the gateway runs it in-process. Either one server
    (`url`) or a pool of several behind the one name (`urls`, or `members` with an output_dir each)."""

    url: str | None = None  # absolute http(s) URL; for an embedded backend, where the embedded server listens
    urls: tuple[str, ...] = ()
    members: tuple[MemberSettings, ...] = ()
    embedded: bool = False
    # What answers there: its /system_stats is compared with this at start-up and on every health check.
    kind: Literal["kerniegen", "comfyui", "any"] = "any"
    # A model file a prompt names -> the file this backend has instead (guardrails), e.g. a checkpoint that
    # another backend holds under another name.
    aliases: Mapping[str, str] = Field(default_factory=dict)
    output_dir: Path | None = None  # where this backend writes outputs on disk (for output_root links)
    timeouts: TimeoutSettings = TimeoutSettings()
    # Another backend that takes this one's NEW prompts while its circuit is open or it refuses connections;
    # follow-ups of prompts already placed stay here. Never for a backend the client chose by name, unless
    # fallback_on_explicit.
    fallback: str | None = None
    fallback_on_explicit: bool = False
    kerniegen: EmbeddedSettings = EmbeddedSettings()

    @model_validator(mode="after")
    def _one_form(self) -> BackendSettings:
        forms = [name for name, given in (("url", self.url is not None), ("urls", bool(self.urls)),
                                          ("members", bool(self.members))) if given]
        if not forms:
            raise ValueError("url is required (one server), or urls or members (a pool)")
        if len(forms) > 1:
            raise ValueError(f"set one of url (one server), urls or members (a pool), not {' and '.join(forms)}")
        if len(self.urls) + len(self.members) > MAX_POOL_MEMBERS:
            raise ValueError(f"a pool has at most {MAX_POOL_MEMBERS} members")
        if self.embedded and self.url is None:
            raise ValueError("an embedded backend is one server: set url, not urls or members")
        if self.output_dir is not None and self.members:
            raise ValueError("a pool's output directories are its members' (members[].output_dir), not output_dir")
        return self

    def servers(self) -> tuple[MemberSettings, ...]:
        """Its servers: the one at `url`, or the pool's members in order."""
        if self.url is not None:
            return (MemberSettings(url=self.url, output_dir=self.output_dir),)
        return self.members or tuple(MemberSettings(url=u, output_dir=self.output_dir) for u in self.urls)

    @property
    def is_pool(self) -> bool:
        return self.url is None

    def named_servers(self, name: str) -> list[tuple[str, MemberSettings]]:
        """(server name, server) of backend `name`: `name` for one server, `<name>.<n>` for a pool's members."""
        servers = self.servers()
        if not self.is_pool:
            return [(name, servers[0])]
        return [(f"{name}.{number}", member) for number, member in enumerate(servers, 1)]

    def url_key(self) -> str:
        """Which key gives its servers' URLs."""
        return "url" if self.url is not None else "urls" if self.urls else "members"

    @field_validator("aliases", mode="after")
    @classmethod
    def _check_aliases(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        empty = [f"{name!r} = {target!r}" for name, target in value.items() if not name.strip() or not target.strip()]
        if empty:
            raise ValueError(f"an alias needs a file name on both sides: {', '.join(empty)}")
        return MappingProxyType(dict(value))

    @field_serializer("aliases")
    def _serialize_aliases(self, value: Mapping[str, str]) -> dict[str, str]:
        return dict(value)


class GuardrailSettings(_FrozenModel):
    """Checks of a POST /prompt against the target backend's inventory (its /object_info), and of each
    backend's identity."""

    # A seed below its input's declared minimum (ComfyUI rejects seed -1, "random") becomes a random valid one.
    normalize_seeds: bool = True
    # A model file or node class the target backend lacks is refused before forwarding (after aliases).
    check_models: bool = True
    check_node_classes: bool = True
    # A prompt whose backend came from the default goes to a backend that has every file it names.
    place_by_model: bool = False
    # How long a backend's inventory is kept before it is read again in the background.
    inventory_ttl_seconds: float = Field(default=600.0, gt=0)
    # Bounds on one read of a backend's /object_info (tens of MB and seconds with many custom nodes).
    inventory_timeout_seconds: float = Field(default=30.0, gt=0)
    inventory_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # A backend whose /system_stats says it is another kind than configured: refuse to start (else reported).
    strict_identity: bool = False
    # At start-up, backend host names are resolved to tell two names for one server apart: each lookup's bound.
    address_lookup_seconds: float = Field(default=2.0, gt=0, le=60)


class ResilienceSettings(_FrozenModel):
    """A circuit breaker per backend (outlier detection, after Envoy's, whose defaults these are but for the
    ejection percentage): a backend that keeps failing is answered at once with a 503 for a while."""

    circuit_breaker: bool = True
    # Failed calls in a row (connect, timeout, broken answer, or the backend's own 5xx; a failed health check
    # counts as one) that open a circuit; a passing health check closes it.
    consecutive_failures: int = Field(default=5, ge=1)
    # An ejection lasts this × the times the backend was ejected recently, at most max_ejection_seconds.
    base_ejection_seconds: float = Field(default=30.0, gt=0)
    max_ejection_seconds: float = Field(default=300.0, gt=0)
    # At most this share of the backends is open at once (always at least one).
    max_ejection_percent: float = Field(default=50.0, ge=0, le=100)
    # Retries of a call that cannot have done its work (backends/retry.py): per call, after the first try.
    retries: int = Field(default=1, ge=0, le=5)
    retry_backoff_seconds: float = Field(default=0.05, gt=0, le=30)  # jittered, doubled per retry
    # Retries stay under this share of each backend's calls, plus retry_budget_min.
    retry_budget_percent: float = Field(default=20.0, ge=0, le=100)
    retry_budget_min: int = Field(default=3, ge=0)


class StoreSettings(_FrozenModel):
    """Where affinity (prompt_id -> backend) and user preferences live, and how long."""

    kind: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Path("state/gateway.sqlite3")  # sqlite; relative to the working directory
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Bounded waits on Redis: connecting, one command, and a free connection of the pool (past them the request
    # is answered 503 store_unavailable, and start-up is refused).
    redis_connect_seconds: float = Field(default=2.0, gt=0, le=60)
    redis_command_seconds: float = Field(default=2.0, gt=0, le=60)
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    # While the store cannot answer: "refuse" answers every request that needs it 503 store_unavailable;
    # "degrade" still forwards a new prompt whose backend needs no stored fact (chosen by header or query, or
    # the default for a request naming no user) without its affinity record, and finds prompts the store
    # cannot look up by asking every backend (pipeline/affinity.py).
    on_outage: Literal["refuse", "degrade"] = "refuse"
    key_prefix: str = "comfy-gateway:"
    retention_seconds: float = Field(default=7 * 24 * 3600, gt=0)  # older affinity entries are pruned
    max_prompts: int = Field(default=1_000_000, gt=0)  # and at most this many kept, oldest pruned first
    # Affinity lookups that found a record are remembered this long (state/lookup_cache.py); 0: always ask the
    # store.
    lookup_cache_seconds: float = Field(default=5.0, ge=0, le=3600)
    lookup_cache_entries: int = Field(default=100_000, gt=0)


class SecuritySettings(_FrozenModel):
    """Who may do what. With nothing set, the ComfyUI routes are open (as ComfyUI itself is) and the gateway's
    own writes are accepted from loopback clients only."""

    # Guards every write under /gateway/ and the prompt reads that reveal owners; sent as a Bearer token.
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None  # the token in a file (Docker and Kubernetes secrets); not both
    # user name -> that user's token(s). Set: every ComfyUI route needs a token, and the token names the user.
    api_tokens: Mapping[str, SecretStr | tuple[SecretStr, ...]] = Field(default_factory=dict)
    api_tokens_file: Path | None = None  # a TOML file of `user = "token"` lines, merged with api_tokens
    # With api tokens on: a user may set and delete their own stored preference (else only the admin may).
    allow_self_service: bool = True
    # Where else a token may come from, for clients that cannot set headers (<img> tags, browser WebSockets).
    token_query_param: str = Field(default="token", min_length=1)
    token_cookie: str = Field(default="comfy_gateway_token", min_length=1)
    # Browser origins besides the gateway's own that may call it (CORS), e.g. "https://app.example.com".
    allowed_origins: tuple[str, ...] = ()
    # Host names this gateway answers to (against DNS rebinding); empty: any.
    allowed_hosts: tuple[str, ...] = ()
    _credentials: Credentials = PrivateAttr(default_factory=Credentials)

    @field_validator("api_tokens", mode="after")
    @classmethod
    def _freeze_tokens(
        cls, value: Mapping[str, SecretStr | tuple[SecretStr, ...]]
    ) -> Mapping[str, SecretStr | tuple[SecretStr, ...]]:
        return MappingProxyType(dict(value))

    @field_serializer("api_tokens")
    def _serialize_tokens(
        self, value: Mapping[str, SecretStr | tuple[SecretStr, ...]]
    ) -> dict[str, SecretStr | tuple[SecretStr, ...]]:
        return dict(value)

    @field_validator("allowed_origins", mode="after")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalized_origin(origin) for origin in value)

    @field_validator("allowed_hosts", mode="after")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalized_host_name(host) for host in value)

    @model_validator(mode="after")
    def _read_credentials(self) -> SecuritySettings:
        self._credentials = resolve_credentials(
            self.admin_token, self.admin_token_file, self.api_tokens, self.api_tokens_file
        )
        return self

    @property
    def credentials(self) -> Credentials:
        """The tokens as read at start-up (the files included)."""
        return self._credentials


class LimitSettings(_FrozenModel):
    """Bounds on what one client may send or hold; each past-the-bound answer is in the comment."""

    max_target_bytes: int = Field(default=8 * 1024, ge=256)  # request line's path and query: 414
    max_header_count: int = Field(default=100, ge=8)  # 431
    max_head_bytes: int = Field(default=32 * 1024, ge=1024)  # request line and headers together: 431
    max_json_depth: int = Field(default=64, ge=4, le=1000)  # nesting of a JSON body the gateway reads: 400
    max_ws_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # one message from a client: closed 1009
    max_websockets_per_client: int = Field(default=64, ge=0)  # open at once per client (IP or token); 0: no cap
    # Token buckets per client (its token's user, else its IP); 0: off. Past them: 429 with Retry-After.
    prompts_per_minute: float = Field(default=0.0, ge=0)  # POST /prompt
    prompt_burst: int = Field(default=10, ge=1)
    requests_per_second: float = Field(default=0.0, ge=0)  # every other request
    request_burst: int = Field(default=100, ge=1)
    rate_limited_clients: int = Field(default=100_000, ge=1)  # buckets kept, least recently seen out first
    # Connections and their timeouts.
    max_client_connections: int = Field(default=10_000, ge=1)  # past it new connections are closed at once
    # What the gateway makes of a request head (the guard's verdict on host, origin, token and chosen backend;
    # the head it sends a backend) is kept for heads that come again, up to this many, each no larger than
    # max_kept_head_bytes (so at most about 2 x kept_heads x max_kept_head_bytes of memory); 0: made every time.
    kept_heads: int = Field(default=4_096, ge=0)
    max_kept_head_bytes: int = Field(default=4 * 1024, ge=0)
    max_pipelined_requests: int = Field(default=16, ge=1)  # parsed ahead of the one being answered
    client_head_seconds: float = Field(default=30.0, gt=0)  # first byte of a request to the end of its head
    keepalive_seconds: float = Field(default=75.0, gt=0)  # an idle client connection between requests
    client_body_seconds: float = Field(default=60.0, gt=0)  # silence while a request body is received
    send_seconds: float = Field(default=60.0, gt=0)  # a client that reads nothing while its answer waits
    drain_seconds: float = Field(default=10.0, ge=0)  # graceful shutdown: in-flight requests get this long


class WebSocketSettings(_FrozenModel):
    """Client sockets on /ws: each follows its prompts on every backend they run on (datapath/aio/fanin.py)."""

    heartbeat_seconds: float = Field(default=20.0, ge=0)  # ping clients and backends this often; 0: off
    hold_seconds: float = Field(default=2.0, gt=0)  # longest a prompt's events wait for its POST /prompt answer
    hold_max_messages: int = Field(default=1000, ge=1)  # events of one prompt held at most; more release them
    send_queue_messages: int = Field(default=1024, ge=8)  # queued for a slow client; past it previews drop first
    send_queue_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)  # and what they hold, in bytes
    # A full queue stops the backend's socket being read for at most this long before messages drop.
    backpressure_seconds: float = Field(default=1.0, ge=0, le=60)
    reconnect_initial_seconds: float = Field(default=0.25, gt=0)  # first wait before reopening a dropped backend
    reconnect_max_seconds: float = Field(default=10.0, gt=0)  # the wait doubles up to this
    # Which backends a socket follows from the start, beside the one it opens on (and a pool's other members,
    # always): "routed" none, its client's prompts tell it where to go; "all" every backend up when it opens, so
    # it hears a prompt that another worker or replica sent elsewhere; "auto": "all" when another process can
    # place prompts (workers > 1 or store.kind = "redis"), else "routed".
    follow: Literal["auto", "routed", "all"] = "auto"


def server_urls(backends: Mapping[str, BackendSettings]) -> dict[str, str]:
    """Every server's name and URL, pools' members included."""
    return {server: member.url for name, b in backends.items() for server, member in b.named_servers(name)}


def default_backends() -> dict[str, BackendSettings]:
    """The built-in backend table: the embedded KernieGen (the default) and a local ComfyUI."""
    return {
        "kerniegen": BackendSettings(url="http://127.0.0.1:8189", embedded=True, kind="kerniegen"),
        "comfyui": BackendSettings(url="http://127.0.0.1:8188", kind="comfyui"),
    }


class ConsoleSettings(_FrozenModel):
    """GET /gateway/console, the operators' page: its live stream of backend states and its bounded listings."""

    # Server-Sent Events streams open at once (one per open console page); past it a new one is a 503.
    max_streams: int = Field(default=16, ge=1, le=10_000)
    # A stream that has nothing new sends a comment this often, so proxies and browsers keep it open.
    heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    # How often a stream looks for a change in the backends' states (which the health checks make).
    push_seconds: float = Field(default=1.0, gt=0, le=60)
    # Prompts one listing returns at most (newest first), and how many of the newest the filters look through.
    max_prompts: int = Field(default=200, ge=1, le=5_000)
    scan_prompts: int = Field(default=10_000, ge=1, le=1_000_000)
    # Users with a stored preference one listing returns at most.
    max_users: int = Field(default=500, ge=1, le=100_000)
    # Finished prompts' summaries (state, duration, outputs) kept, so a listing asks backends only about the rest.
    finished_cache_entries: int = Field(default=5_000, ge=0)


class Settings(BaseSettings):
    """Everything the gateway reads at start-up. Build it with `load_settings`.

    `Settings()` alone gives the built-in defaults and reads nothing from the environment:
    only `load_settings` layers the file and the environment, so it alone can say where values came from.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
    )

    listen_host: str = Field(default="127.0.0.1", min_length=1)
    listen_port: int = Field(default=8190, ge=0, le=65535)  # 0: any free port (tests)
    # "fast": gateway/datapath/fast owns the port (httptools, uvloop) and hands the aiohttp app what it does not
    # answer itself; "aiohttp": the aiohttp app serves every request. Both make the same decisions.
    data_path: Literal["fast", "aiohttp"] = "fast"
    # Gateway processes sharing listen_port (SO_REUSEPORT), one state store and one metrics directory; the
    # embedded backends run once, in the process that starts them (gateway/workers.py).
    workers: int = Field(default=1, ge=1, le=256)
    default_backend: str = "kerniegen"
    backend_header: str = "X-Comfy-Backend"
    backend_query_param: str = Field(default="backend", min_length=1)
    user_headers: tuple[str, ...] = ("comfy-user",)  # the first one present names the user
    output_root: Path | None = None
    max_body_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    # Longest prompt id, client id or user name a client may send (a longer one is a 400).
    max_id_chars: int = Field(default=256, ge=36, le=4096)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    # > 0: log lines are written in batches at least this often (a WARNING or worse at once); 0: line by line.
    log_batch_seconds: float = Field(default=0.5, ge=0, le=60)
    state_dir: Path = Path("state")
    # Background checks of every backend: they feed the backend-up metric, /gateway/ready and routing.
    health_check_interval_seconds: float = Field(default=10.0, gt=0)
    health_check_timeout_seconds: float = Field(default=3.0, gt=0)
    # What GET /gateway/ready needs besides a working store: "any" backend usable, the "default" backend
    # usable, or nothing more ("store").
    ready_requires: Literal["default", "any", "store"] = "any"
    # How often each backend's queue depth, and the outcome of prompts submitted through the gateway, are read.
    queue_poll_interval_seconds: float = Field(default=5.0, gt=0)
    # Merged answers kept with the replies they were made from, for polls that find every reply unchanged
    # (merge/cache.py); backend replies plus answers stay under this many bytes. 0: keep none.
    merge_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # Each backend's GET /history replies kept ready for merging (merge/history_parts.py), so that a merge after
    # one backend's history changed reads only what changed; replies plus what their entries hold stay under this
    # many bytes (two backends of 10,000 entries: ~46 MB, ~75 MB once both have grown). 0: keep none.
    history_parts_bytes: int = Field(default=96 * 1024 * 1024, ge=0)
    store: StoreSettings = StoreSettings()
    security: SecuritySettings = SecuritySettings()
    limits: LimitSettings = LimitSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    console: ConsoleSettings = ConsoleSettings()
    # A read-only mapping, so the loaded settings cannot be changed behind the routing table's back.
    backends: Mapping[str, BackendSettings] = Field(default_factory=default_backends, validate_default=True)
    # Built-in backends that no file, env var or flag touched (set by load_settings).
    _builtin_backends: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings reads the file and the environment itself (to track sources) and passes the
        # merged result as init values; no hidden second read of os.environ or .env files.
        return (init_settings,)

    @property
    def builtin_backends(self) -> frozenset[str]:
        """Backends of the built-in table that the operator never configured (no file, env var or flag set a key
        of theirs): routed to when named, but not watched by alerts (comfy_gateway_backend_configured is 0)."""
        return self._builtin_backends

    @field_validator("backends", mode="after")
    @classmethod
    def _freeze_backends(cls, value: Mapping[str, BackendSettings]) -> Mapping[str, BackendSettings]:
        return MappingProxyType(dict(value))

    @field_serializer("backends")
    def _serialize_backends(self, value: Mapping[str, BackendSettings]) -> dict[str, BackendSettings]:
        return dict(value)

    @field_validator("log_level", mode="after")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError("not a logging level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("backend_header", mode="after")
    @classmethod
    def _check_backend_header(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError("not a valid HTTP header name")
        return value

    @field_validator("user_headers", mode="after")
    @classmethod
    def _check_user_headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not _HEADER_NAME.match(name)]
        if bad:
            raise ValueError(f"not valid HTTP header names: {', '.join(map(repr, bad))}")
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> Settings:
        problems = config_rules.find_problems(self)
        if problems:
            raise config_rules.RuleViolations(problems)
        return self


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists each one, naming keys and value sources."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    # dotted key ("backends.comfyui.url") -> "default" | "<file path>" | "env COMFY_GATEWAY_..."
    sources: Mapping[str, str]
    config_path: Path | None = None
    config_path_source: str | None = field(default=None)  # "--config" or "env COMFY_GATEWAY_CONFIG"
    # backend name -> the env var that dropped it from the built-in table
    dropped_backends: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# Command-line flags that set a setting: flag -> dotted key (`serve` and `config` take the same ones).
CLI_SETTINGS: Mapping[str, str] = MappingProxyType(
    {"--host": "listen_host", "--port": "listen_port", "--workers": "workers"}
)


def load_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Read defaults, the TOML file, the environment and the command line once, validate, and return frozen
    settings.

    path None: COMFY_GATEWAY_CONFIG from env, else built-in defaults only. env None: os.environ. cli: flag ->
    value for the flags of CLI_SETTINGS that were given (None values are ignored); they beat everything else.
    Raises ConfigError naming every bad key with the source of its value.
    """
    env = dict(os.environ if env is None else env)
    path_source = "--config" if path is not None else None
    if path is None and env.get(CONFIG_PATH_ENV):
        path, path_source = Path(env[CONFIG_PATH_ENV]), f"env {CONFIG_PATH_ENV}"

    file_label = str(path) if path is not None else None
    file_data = _read_file(path, path_source) if path is not None else {}
    env_vars = gateway_env_vars(env)

    problems = [f"unknown key {key} (from {file_label})" for key in unknown_keys(Settings, file_data)]
    problems += [f"unknown key {key} (from env {name})" for name, key in unknown_env_vars(Settings, env_vars)]
    if problems:
        raise ConfigError(problems)

    try:
        env_data = read_env_layer(Settings, env_vars)
    except EnvValueError as exc:
        raise ConfigError([str(exc)]) from exc

    # A file that defines [backends] replaces the built-in table (so it can drop a built-in backend);
    # env vars merge into whichever table results, one key at a time, and an empty one drops a backend.
    base = {} if "backends" in file_data else {"backends": {n: b.model_dump() for n, b in default_backends().items()}}
    dropped = _dropped_backends(env_vars)
    problems = _drop_problems(dropped, env_data, file_data)
    if problems:
        raise ConfigError(problems)
    base, file_data = _without_backends(base, dropped), _without_backends(file_data, dropped)
    base = _servers_replaced(base, file_data, env_data)
    file_data = _servers_replaced(file_data, env_data)
    cli_data, cli_keys = _cli_layer(cli or {})
    origins = ValueOrigins.build(
        file_label, flatten(file_data), flatten(env_data), env_vars, flatten(base), cli_keys
    )
    try:
        settings = Settings(**merge_layers(base, file_data, env_data, cli_data))
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, origins)) from exc

    set_by_operator = {key[1] for key in (*flatten(file_data), *flatten(env_data)) if key[:1] == ("backends",)}
    settings._builtin_backends = frozenset(base.get("backends", {})) - set_by_operator
    values = flatten(settings.model_dump(mode="json"))
    sources = {dotted(key): origins.origin_of(key) for key in values}
    return LoadedSettings(settings, MappingProxyType(sources), path, path_source, MappingProxyType(dropped))


def _dropped_backends(env_vars: Mapping[str, str]) -> dict[str, str]:
    """Backend name -> the env var that drops it: COMFY_GATEWAY_BACKENDS__<NAME> set to nothing."""
    return {
        env_key_path(name)[1]: name
        for name, value in sorted(env_vars.items())
        if value == "" and len(env_key_path(name)) == 2 and env_key_path(name)[0] == "backends"
    }


def _drop_problems(dropped: Mapping[str, str], env_data: Mapping[str, Any], file_data: Mapping[str, Any]) -> list[str]:
    if not dropped:
        return []
    problems = []
    default = env_data.get("default_backend", file_data.get("default_backend", Settings().default_backend))
    for name, var in dropped.items():
        if name == default:
            problems.append(
                f"{var}= drops backend {name!r}, which is default_backend: the default backend cannot be dropped; "
                "set default_backend to another backend first"
            )
        if name in env_data.get("backends", {}):
            problems.append(f"{var}= drops backend {name!r}, which other env vars set keys of; keep one or the other")
    return problems


def _without_backends(layer: dict[str, Any], dropped: Mapping[str, str]) -> dict[str, Any]:
    if not dropped or "backends" not in layer:
        return layer
    return {**layer, "backends": {n: b for n, b in layer["backends"].items() if n not in dropped}}


SERVER_FORMS = ("url", "urls", "members")


def _servers_replaced(lower: dict[str, Any], *higher: Mapping[str, Any]) -> dict[str, Any]:
    """`lower` without the server form (url, urls, members) of each backend whose servers a higher layer sets:
    a pool given by env replaces the built-in backend's one url, and the other way round."""
    backends = lower.get("backends")
    if not backends:
        return lower
    replaced = {
        name for layer in higher for name, keys in layer.get("backends", {}).items()
        if isinstance(keys, Mapping) and any(form in keys for form in SERVER_FORMS)
    }
    if not replaced & set(backends):
        return lower
    return {**lower, "backends": {
        name: {k: v for k, v in keys.items() if k not in SERVER_FORMS} if name in replaced else keys
        for name, keys in backends.items()
    }}


def _cli_layer(cli: Mapping[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    data: dict[str, Any] = {}
    keys: dict[tuple[str, ...], str] = {}
    for flag, value in cli.items():
        if value is None:
            continue
        key = CLI_SETTINGS[flag]
        data[key] = value
        keys[(key,)] = flag
    return data, keys


def _read_file(path: Path, path_source: str | None) -> dict[str, Any]:
    where = f"{path} (from {path_source})"
    if not path.is_file():
        raise ConfigError([f"config file {where} does not exist or is not a file"])
    try:
        return read_toml_layer(Settings, path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: TOML syntax error: {exc}"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"config file {where} cannot be read: {exc}"]) from exc


def _describe_errors(exc: ValidationError, origins: ValueOrigins) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        violation = (error.get("ctx") or {}).get("error")
        if isinstance(violation, config_rules.RuleViolations):
            problems += [p.describe(origins.origin_of) for p in violation.problems]
        else:
            problems.append(describe_validation_error(error, origins))
    return problems

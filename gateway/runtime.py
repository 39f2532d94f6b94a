"""The live state of a running gateway, built once by create_app and read by the pipeline and both data paths."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.admission.buckets import TokenBuckets
from gateway.admission.sockets import OpenSockets
from gateway.backends.breaker import Breakers
from gateway.backends.calls import BackendCalls
from gateway.backends.queues import QueueLengths
from gateway.backends.retry import RetryBudget
from gateway.backends.table import BackendTable
from gateway.inventory.inventories import Inventories
from gateway.merge.cache import MergeCache
from gateway.merge.history_parts import HistoryParts
from gateway.observe.health import BackendStatus
from gateway.observe.metrics import GatewayMetrics
from gateway.state.followers import Followers
from gateway.state.store import StateStore


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """The request-facing knobs of selection, taken from settings once."""

    backend_header: str = "X-Comfy-Backend"
    backend_query_param: str = "backend"
    user_headers: tuple[str, ...] = ("comfy-user",)
    max_id_chars: int = 256  # a longer prompt id, client id or user name is refused
    max_json_depth: int = 64  # a body the gateway reads nested deeper is refused
    # store.on_outage = "degrade": prompts go on without their affinity record while the store cannot answer
    degrade_on_store_outage: bool = False
    # What is the gateway's alone and never reaches a backend: the selection header, and with credentials
    # configured the Authorization header; the selection query parameter, and then the token parameter.
    gateway_headers: tuple[str, ...] = ("X-Comfy-Backend",)
    gateway_query_params: tuple[str, ...] = ("backend",)
    # A client socket follows every backend up from the start (websocket.follow), not only where its prompts go.
    sockets_follow_all: bool = False


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may do what, taken from settings.security once (pipeline/guard.py applies it)."""

    admin_token: str | None = field(default=None, repr=False)
    users_by_token: Mapping[str, str] = field(default_factory=dict, repr=False)  # api token -> user
    allow_self_service: bool = True
    token_query_param: str = "token"
    token_cookie: str = "comfy_gateway_token"
    allowed_origins: frozenset[str] = frozenset()  # normalised (core/origins.py)
    allowed_hosts: frozenset[str] = frozenset()  # normalised; empty: any

    @property
    def tokens_on(self) -> bool:
        """API tokens configured: every ComfyUI route needs one, and it names the user."""
        return bool(self.users_by_token)

    @property
    def any_credential(self) -> bool:
        """Tokens are the gateway's to read: the Authorization header and the token parameter stop here."""
        return self.admin_token is not None or self.tokens_on


@dataclass(frozen=True, slots=True)
class Admission:
    """Per-client allowances (admission/), from settings.limits."""

    prompts: TokenBuckets = field(default_factory=lambda: TokenBuckets(0, 1, 1))  # POST /prompt
    requests: TokenBuckets = field(default_factory=lambda: TokenBuckets(0, 1, 1))  # everything else
    sockets: OpenSockets = field(default_factory=lambda: OpenSockets(0))


@dataclass(frozen=True, slots=True)
class GuardrailPolicy:
    """What the guardrails of POST /prompt do (pipeline/guardrails.py), from settings.guardrails and each
    backend's aliases, taken once. Off by default here, so a runtime built without settings changes nothing."""

    normalize_seeds: bool = False
    check_models: bool = False
    check_node_classes: bool = False
    place_by_model: bool = False
    # backend → (file name a prompt names → the file that backend has instead)
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def any_on(self) -> bool:
        return self.normalize_seeds or self.check_models or self.check_node_classes or self.place_by_model


def _none_down() -> Mapping[str, str]:
    return {}


@dataclass(slots=True)
class Runtime:
    backends: BackendTable
    store: StateStore
    calls: BackendCalls  # every whole-answer call to a backend (merges, probes, fan-outs)
    policy: RoutingPolicy
    metrics: GatewayMetrics
    access: AccessPolicy = field(default_factory=AccessPolicy)
    admission: Admission = field(default_factory=Admission)
    merge_cache: MergeCache = field(default_factory=lambda: MergeCache(0))
    history_parts: HistoryParts = field(default_factory=lambda: HistoryParts(0))
    # Backends the health checks found down, name → why (observe/health.py): merges leave them out at once.
    known_down: Callable[[], Mapping[str, str]] = _none_down
    # Each backend's latest health check and identity read (observe/health.py), for the gateway's own pages.
    health: Mapping[str, BackendStatus] = field(default_factory=dict)
    # Minted at start-up, sent to backends on every request (core/headers.py INSTANCE_HEADER): a request that
    # arrives with it went round a loop. Empty: none sent, none recognised.
    instance_id: str = ""
    # Client sockets open on /ws by clientId: POST /prompt tells the one its prompt names where it went.
    followers: Followers = field(default_factory=Followers)
    # What each backend can run, kept and refreshed in the background (None: not read, guardrails skip).
    inventories: Inventories | None = None
    guardrails: GuardrailPolicy = field(default_factory=GuardrailPolicy)
    # Each backend's circuit: fed by outcomes and health checks, consulted before every call (pipeline/admit.py).
    breakers: Breakers = field(default_factory=Breakers)
    # Each backend's retry budget: the fast path's relays use it; the aiohttp forwarder holds the same one.
    retries: RetryBudget = field(default_factory=RetryBudget)
    # Each server's queue length as this gateway knows it: where a pool's next prompt goes (pipeline/place.py).
    queues: QueueLengths = field(default_factory=QueueLengths)

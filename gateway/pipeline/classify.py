"""The ComfyUI HTTP contract as the gateway sees it: which endpoint a path is, what kind of routing it needs,
and the facts of a request the pipeline reads (RequestFacts, which each data path presents).

ComfyUI registers every route twice, bare and under `/api`; both spellings classify the same. Endpoint
templates are the bounded vocabulary that logs and metrics use instead of raw paths.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from typing import Final, Protocol

from gateway.backends.table import CallKind

API_PREFIX = "/api"


class Routing(enum.Enum):
    """What the pipeline must do beyond choosing a backend."""

    PLAIN = "plain"  # stream to the selected backend, untouched
    SUBMIT = "submit"  # POST /prompt: mint prompt_id, record affinity, forward
    PROMPT_SCOPED = "prompt_scoped"  # names prompt ids (path or body): follow affinity
    HISTORY = "history"  # GET /history/{id}: affinity, then output refs rewritten
    MERGEABLE = "mergeable"  # GET /history, /queue, /prompt: merged across backends when nothing is selected
    VIEW = "view"  # GET/HEAD /view: the subfolder's first segment may name the backend
    WEBSOCKET = "websocket"


class Endpoint:
    """A value, made for each /history/{id} request: a plain class, whose __init__ the compiled build compiles
    (a frozen dataclass's is interpreted, with a generic setattr per field). Its attributes are Final."""

    __slots__ = ("template", "routing", "prompt_id")

    def __init__(self, template: str, routing: Routing, prompt_id: str | None = None) -> None:
        # e.g. "/history/{prompt_id}"; "other" for paths ComfyUI may have but we do not know
        self.template: Final = template
        self.routing: Final = routing
        self.prompt_id: Final = prompt_id  # from the path, for /history/{prompt_id}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return (self.template, self.routing, self.prompt_id) == (other.template, other.routing, other.prompt_id)

    def __hash__(self) -> int:
        return hash((self.template, self.routing, self.prompt_id))

    def __repr__(self) -> str:
        return f"Endpoint(template={self.template!r}, routing={self.routing!r}, prompt_id={self.prompt_id!r})"


OTHER = "other"


class RequestFacts(Protocol):
    """A request as the pipeline reads it. Header values are decoded as aiohttp decodes them (UTF-8 with
    surrogateescape, the first of repeated headers); path and query are decoded as aiohttp decodes them."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str:
        """Percent-decoded, without the query (what classify() and the log see)."""
        ...

    @property
    def raw_target(self) -> str:
        """The path and query as received, still percent-encoded."""
        ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def websocket(self) -> bool:
        """A WebSocket upgrade (is_websocket_upgrade)."""
        ...

    @property
    def client_ip(self) -> str | None:
        """The address the client connected from (on the fast path, as it told the app it forwards to)."""
        ...

    def header(self, name: str) -> str | None: ...

    def query_value(self, name: str) -> str | None: ...

    @property
    def head_key(self) -> Hashable | None:
        """The method, target, headers and client address as one value, equal exactly when all of them are
        (what the guard made of a head is kept by it: guard.KeptVerdicts); None where the data path cannot
        give one cheaply, or will not keep a head this large."""
        ...


def is_websocket_upgrade(method: str, upgrade: str | None, connection: str | None, has_key: bool) -> bool:
    """Only a GET asking to upgrade to websocket, with Connection: upgrade and a Sec-WebSocket-Key, is one;
    any other Upgrade is ignored, as RFC 9110 allows."""
    if method != "GET" or upgrade is None or connection is None or not has_key:
        return False
    if upgrade.strip().lower() != "websocket":
        return False
    return "upgrade" in {token.strip().lower() for token in connection.split(",")}

_EXACT: dict[tuple[str, str], Routing] = {
    ("POST", "/prompt"): Routing.SUBMIT,
    ("GET", "/prompt"): Routing.MERGEABLE,
    ("GET", "/queue"): Routing.MERGEABLE,
    ("POST", "/queue"): Routing.PROMPT_SCOPED,
    ("GET", "/history"): Routing.MERGEABLE,
    ("POST", "/history"): Routing.PROMPT_SCOPED,
    ("POST", "/interrupt"): Routing.PROMPT_SCOPED,
    ("GET", "/view"): Routing.VIEW,
    ("HEAD", "/view"): Routing.VIEW,
    ("GET", "/ws"): Routing.WEBSOCKET,
}

# Known paths that need no special routing; listed so metrics and logs name them instead of "other".
_KNOWN_PLAIN = frozenset(
    {
        "/",
        "/prompt",
        "/queue",
        "/history",
        "/interrupt",
        "/free",
        "/view",
        "/upload/image",
        "/upload/mask",
        "/object_info",
        "/system_stats",
        "/features",
        "/embeddings",
        "/extensions",
        "/models",
        "/users",
        "/settings",
        "/userdata",
        "/v2/userdata",
        "/i18n",
        "/workflow_templates",
        "/experiment/models",
        "/internal/logs",
        "/internal/logs/raw",
        "/internal/logs/subscribe",
        "/internal/folder_paths",
    }
)

# Parametrised routes: first path segment(s) → template.
_PREFIX_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("/history/", "/history/{prompt_id}"),
    ("/object_info/", "/object_info/{node_class}"),
    ("/models/", "/models/{folder}"),
    ("/view_metadata/", "/view_metadata/{folder_name}"),
    ("/userdata/", "/userdata/{file}"),
    ("/settings/", "/settings/{id}"),
    ("/experiment/models/", "/experiment/models/{folder}"),
    ("/internal/files/", "/internal/files/{directory_type}"),
    ("/extensions/", "/extensions/{path}"),
    ("/templates/", "/templates/{path}"),
    ("/assets/", "/assets/{path}"),
)


def strip_api_prefix(path: str) -> str:
    """`/api/queue` → `/queue`; `/api` and `/api/` → `/`; anything else unchanged."""
    if path == API_PREFIX or path == API_PREFIX + "/":
        return "/"
    if path.startswith(API_PREFIX + "/"):
        return path[len(API_PREFIX) :]
    return path


def classify(method: str, path: str) -> Endpoint:
    """Name the endpoint of a decoded request path and say how it must be routed."""
    bare = strip_api_prefix(path)
    endpoint = _EXACT_ENDPOINTS.get((method, bare)) or _KNOWN_PLAIN_ENDPOINTS.get(bare)
    if endpoint is not None:
        return endpoint
    for prefix, template in _PREFIX_TEMPLATES:
        if bare.startswith(prefix) and len(bare) > len(prefix):
            if template == "/history/{prompt_id}" and method == "GET":
                return Endpoint(template, Routing.HISTORY, prompt_id=bare[len(prefix) :])
            return _TEMPLATE_ENDPOINTS[template]
    return _OTHER_ENDPOINT


# Every endpoint but a /history/{prompt_id} (which carries its id) made once: an Endpoint is a frozen value.
_EXACT_ENDPOINTS = {(method, bare): Endpoint(bare, routing) for (method, bare), routing in _EXACT.items()}
_KNOWN_PLAIN_ENDPOINTS = {name: Endpoint(name, Routing.PLAIN) for name in _KNOWN_PLAIN}
_TEMPLATE_ENDPOINTS = {template: Endpoint(template, Routing.PLAIN) for _, template in _PREFIX_TEMPLATES}
_OTHER_ENDPOINT = Endpoint(OTHER, Routing.PLAIN)


# Endpoints whose answers may take long to start (a file read or written, a big listing, a custom node's own
# route, which the gateway cannot know): every other call is an API call, answered in milliseconds.
_TRANSFERS = frozenset(
    {
        "/",
        "/view",
        "/upload/image",
        "/upload/mask",
        "/object_info",
        "/object_info/{node_class}",
        "/userdata",
        "/userdata/{file}",
        "/v2/userdata",
        "/view_metadata/{folder_name}",
        "/internal/files/{directory_type}",
        "/experiment/models/{folder}",
        "/extensions/{path}",
        "/templates/{path}",
        "/assets/{path}",
        "/workflow_templates",
        OTHER,
    }
)


def call_kind(endpoint: Endpoint) -> CallKind:
    """Which of a backend's timeouts a call to `endpoint` obeys (backends/table.py)."""
    return "transfer" if endpoint.template in _TRANSFERS else "api"


def needs_body(endpoint: Endpoint) -> bool:
    """Whether the request body must be read before the backend can be chosen (POST /prompt, the calls that
    name prompts in their body); every other body is streamed."""
    routing = endpoint.routing  # compared, not looked up in a set: an enum member's hash is a Python call
    return routing is Routing.SUBMIT or routing is Routing.PROMPT_SCOPED


def prompt_ids_in_body(template: str, body: object) -> list[str]:
    """The prompt ids a prompt-scoped POST names: `{"delete": [...]}` or `{"prompt_id": ...}`.

    An empty list means the call acts on the whole backend (clear, global interrupt).
    """
    if not isinstance(body, dict):
        return []
    if template == "/interrupt":
        pid = body.get("prompt_id")
        return [pid] if isinstance(pid, str) and pid else []
    ids = body.get("delete")
    if isinstance(ids, list):
        return [i for i in ids if isinstance(i, str) and i]
    return []

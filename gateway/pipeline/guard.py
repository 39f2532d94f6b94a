"""The guard steps that run before any routing, and the rule for the gateway's own routes:

    loop      a request this gateway sent to a backend that came back to it (508), never forwarded again
    target    origin-form only (/path?query)
    host      in security.allowed_hosts, when set (a DNS-rebinding page names a host of its own)
    origin    the gateway's own (compared normalised: core/origins.py) or an allowed one, which gets CORS
    caller    who is asking: an API token's user, the admin, or (tokens off) the user header, and from where
    allowance the caller's rate limits and its cap of open WebSockets

Everything here reads client values that are hostile until checked; each refusal is a GatewayError whose
answer (401, 403, 404, 409, 429) the pipeline renders like any other.

Loop, target, host, origin, caller and the request's own choice of backend depend on the request's head and
the configuration alone: head_verdict() makes them one value, which KeptVerdicts keeps per head, since a
client sends the same head again and again (a poll of /history/{id}, a page's requests). The allowances are
taken on every request.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from gateway.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    ForbiddenOrigin,
    GatewayError,
    HostNotAllowed,
    LoopDetected,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from gateway.core.headers import (
    BACKEND_HEADER,
    GUARDRAILS_HEADER,
    INSTANCE_HEADER,
    PROMPT_ID_HEADER,
    ROUTE_HEADER,
    UNAVAILABLE_HEADER,
    instance_of,
)
from gateway.core.kept import Kept
from gateway.core.origins import (
    DEFAULT_PORTS,
    KEPT_VALUE_CHARS,
    normalized_origin,
    same_origin,
    split_host_header,
)
from gateway.core.selection import Selection
from gateway.pipeline.classify import Endpoint, RequestFacts
from gateway.pipeline.select import explicit_selection, user_of
from gateway.runtime import AccessPolicy, Runtime
from gateway.state.store import PromptRecord

_HEADER_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
PREFLIGHT_MAX_AGE_SECONDS = 600
_EXPOSED = f"{BACKEND_HEADER}, {ROUTE_HEADER}, {PROMPT_ID_HEADER}, {UNAVAILABLE_HEADER}, {GUARDRAILS_HEADER}"
_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request speaks for, as far as the gateway can tell."""

    user: str | None
    key: str  # whose allowances it draws on: "user:<name>" when a token named it, else "ip:<address>"
    admin: bool = False
    by_token: bool = False  # the user is an API token's, not a header's say-so
    ip: str = ""  # the client's address
    token_from_query: str | None = None  # a token sent as ?token=: the web page's later requests need a cookie

    @property
    def loopback(self) -> bool:
        """The client connected from this host (asked only by the gateway's own routes, so not on every
        request: parsing the address is a measurable share of a small request's cost)."""
        return is_loopback(self.ip)


# --- loop, target, host and origin -------------------------------------------------------------------------------


def check_loop(request: RequestFacts, rt: Runtime) -> None:
    """A request carrying this gateway's own instance id was sent by it to a backend whose URL leads back
    here (an alias, a forwarder, a second name for this host): answered, never forwarded round again. Another
    gateway's id is a chain of gateways, not a loop."""
    value = request.header(INSTANCE_HEADER)
    if value is None or not rt.instance_id:
        return
    instance, named = instance_of(value)
    if not hmac.compare_digest(instance.encode("utf-8", "surrogateescape"), rt.instance_id.encode()):
        return
    backend = named if named is not None and named in rt.backends else None
    through = f"backend {backend!r}" if backend else "a backend"
    raise LoopDetected(
        f"this request came back to the gateway that sent it: {through} reaches the gateway itself; "
        "fix that backend's url",
        details=INSTANCE_HEADER,
        backend=backend,
    )



def check_target(request: RequestFacts) -> None:
    """Only origin-form targets: an absolute-form one (`GET http://host/queue`) is for a forward proxy, and its
    host part would otherwise end up in what a backend is asked."""
    if not request.raw_target.startswith("/"):
        raise BadRequest("only origin-form request targets (/path?query) are served", details="target")


def check_host(request: RequestFacts, access: AccessPolicy) -> None:
    if not access.allowed_hosts:
        return
    host = request.header("Host") or ""
    allowed = access.allowed_hosts
    refusal = _kept_host_refusal(host, allowed) if len(host) <= KEPT_VALUE_CHARS else _host_refusal(host, allowed)
    if refusal is not None:
        raise HostNotAllowed(refusal, details="Host")


def _host_refusal(host: str, allowed_hosts: frozenset[str]) -> str | None:
    try:
        name, _ = split_host_header(host)
    except ValueError:
        return "the Host header is not a host name"
    if name not in allowed_hosts:
        return f"this gateway does not answer to host {name!r}"
    return None


def cross_origin(request: RequestFacts, access: AccessPolicy) -> str | None:
    """The allowed foreign origin a request comes from (its answer carries CORS headers for it), or None for
    a request with no Origin or the gateway's own. A foreign origin not allowed is a 403, as ComfyUI answers
    a foreign page; unlike ComfyUI, whatever the Host, and whatever its spelling."""
    origin = request.header("Origin")
    if origin is None:
        return None
    host = request.header("Host") or ""
    kept = len(origin) <= KEPT_VALUE_CHARS and len(host) <= KEPT_VALUE_CHARS
    judge = _kept_origin_verdict if kept else _origin_verdict
    allowed, refusal = judge(origin, host, access.allowed_origins)
    if refusal is not None:
        raise ForbiddenOrigin(refusal, details="Origin")
    return allowed


def _origin_verdict(origin: str, host: str, allowed_origins: frozenset[str]) -> tuple[str | None, str | None]:
    """(the origin to answer with CORS, or None for the gateway's own; why it is refused, or None)."""
    if same_origin(origin, host):
        return None, None
    try:
        normal = normalized_origin(origin)
    except ValueError:
        normal = None
    if normal is None or normal not in allowed_origins:
        return None, f"Origin {origin!r} is neither this gateway's nor an allowed origin"
    return serialized_origin(normal), None


# Every request of a page carries the same Host and Origin: the verdict on them is kept (as core/origins.py
# keeps what they parse to), for this many values (pairs) no longer than a real one can be; a longer value is
# judged every time and never kept.
KEPT_VERDICTS = 256
_kept_host_refusal = lru_cache(maxsize=KEPT_VERDICTS)(_host_refusal)
_kept_origin_verdict = lru_cache(maxsize=KEPT_VERDICTS)(_origin_verdict)


def serialized_origin(normal: str) -> str:
    """An origin as a browser serialises it (default port left out), to echo in Access-Control-Allow-Origin:
    rebuilt from the parsed form, never the client's bytes."""
    scheme, _, rest = normal.partition("://")
    host, _, port = rest.rpartition(":")
    return f"{scheme}://{host}" if int(port) == DEFAULT_PORTS[scheme] else normal


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": _EXPOSED,
        "Vary": "Origin",
    }


def preflight_headers(request: RequestFacts, origin: str | None) -> dict[str, str] | None:
    """The answer headers to a CORS preflight, or None when `request` is not one."""
    if request.method != "OPTIONS" or request.header("Access-Control-Request-Method") is None:
        return None
    if request.header("Origin") is None:
        return None
    asked = request.header("Access-Control-Request-Headers") or ""
    names = [n.strip() for n in asked.split(",") if _HEADER_TOKEN.match(n.strip())]
    headers = cors_headers(origin) if origin is not None else {"Vary": "Origin"}
    headers["Access-Control-Allow-Methods"] = _METHODS
    if names:
        headers["Access-Control-Allow-Headers"] = ", ".join(names)
    headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_SECONDS)
    return headers


# --- the caller ---------------------------------------------------------------------------------------------


def identify(request: RequestFacts, rt: Runtime, *, token_required: bool) -> Caller:
    """Who is asking. With API tokens on and `token_required`, a request without a known token is a 401, and a
    user header naming someone other than the token's user a 403."""
    access = rt.access
    header_user = user_of(request, rt)
    ip = request.client_ip or ""
    token, from_query = presented_token(request, access) if access.any_credential else (None, False)
    if token is not None:
        if access.admin_token is not None and hmac.compare_digest(token.encode(), access.admin_token.encode()):
            return Caller(header_user, "admin", admin=True, ip=ip)
        user = access.users_by_token.get(token)
        if user is not None:
            if header_user is not None and header_user != user:
                raise Forbidden("the user header names another user than the token's", details="user")
            if from_query:
                return Caller(user, f"user:{user}", by_token=True, ip=ip, token_from_query=token)
            return _token_caller(user, ip)
        if access.tokens_on or not token_required:
            raise Unauthorized("the token sent is not one of this gateway's", details="token")
    if access.tokens_on and token_required:
        raise Unauthorized(
            "this gateway needs an API token: send Authorization: Bearer <token>, "
            f"?{access.token_query_param}=<token> or the {access.token_cookie} cookie",
            details="token",
        )
    return _ip_caller(header_user, ip)


# A client sends the same token (or user header) from the same address request after request: its Caller, a
# frozen dataclass whose construction was a measurable share of a small request's cost, is made once. Bounded:
# the least recently seen go first.
KEPT_CALLERS = 1024


@lru_cache(maxsize=KEPT_CALLERS)
def _token_caller(user: str, ip: str) -> Caller:
    return Caller(user, f"user:{user}", by_token=True, ip=ip)


@lru_cache(maxsize=KEPT_CALLERS)
def _ip_caller(header_user: str | None, ip: str) -> Caller:
    return Caller(header_user, f"ip:{ip}", ip=ip)


def presented_token(request: RequestFacts, access: AccessPolicy) -> tuple[str | None, bool]:
    """The token a request carries (Authorization: Bearer, then the query parameter, then the cookie), and
    whether it came in the query."""
    authorization = request.header("Authorization")
    if authorization is not None:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip(), False
    query_token = request.query_value(access.token_query_param)
    if query_token:
        return query_token, True
    cookies = request.header("Cookie")
    if cookies and access.token_cookie in cookies:
        for pair in cookies.split(";"):
            name, _, value = pair.strip().partition("=")
            if name == access.token_cookie and value:
                return value.strip('"'), False
    return None, False


def token_cookie_header(access: AccessPolicy, token: str) -> dict[str, str]:
    """Set on the web page's answer when it was opened with ?token=, so the page's own fetches and sockets
    carry the token too. The token is one the gateway issued (URL-safe characters only)."""
    return {"Set-Cookie": f"{access.token_cookie}={token}; Path=/; HttpOnly; SameSite=Strict"}


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# --- the verdict on a head ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guard makes of a request's head: the same for every request with that head."""

    cors: Mapping[str, str] | None  # the answer headers for an allowed foreign origin
    preflight: Mapping[str, str] | None  # a CORS preflight's answer headers: nothing else is looked at
    caller: Caller | None  # None only for a preflight
    cookie: Mapping[str, str] | None  # the token cookie the web page is answered with (opened with ?token=)
    explicit: Selection | None  # the request's own choice of backend (header, then query)
    chosen: bool  # False: its choice names no backend; asked again after the allowance, whose 429 comes first


def head_verdict(
    request: RequestFacts, rt: Runtime, endpoint: Endpoint, answer_headers: dict[str, str]
) -> Verdict:
    """The guard's steps before the allowances, in order; raises the first refusal. `answer_headers` gets the
    CORS headers as soon as the origin is known, so a later refusal carries them."""
    check_loop(request, rt)
    check_target(request)
    check_host(request, rt.access)
    origin = cross_origin(request, rt.access)
    cors = cors_headers(origin) if origin is not None else None
    if cors is not None:
        answer_headers.update(cors)
    preflight = preflight_headers(request, origin)
    if preflight is not None:
        return Verdict(cors, preflight, None, None, None, True)
    caller = identify(request, rt, token_required=True)
    cookie = None
    if caller.token_from_query is not None and endpoint.template == "/":
        cookie = token_cookie_header(rt.access, caller.token_from_query)
    try:
        explicit, chosen = explicit_selection(request, rt), True
    except GatewayError:
        explicit, chosen = None, False
    return Verdict(cors, None, caller, cookie, explicit, chosen)


class KeptVerdicts:
    """Verdicts kept per request head (RequestFacts.head_key), at most `size`, the oldest out first. A refusal
    is never kept: it is made again, as the steps make it."""

    def __init__(self, size: int) -> None:
        self._kept: Kept[Hashable, Verdict] = Kept(size)

    def __len__(self) -> int:
        return len(self._kept)

    def verdict(
        self, request: RequestFacts, rt: Runtime, endpoint: Endpoint, answer_headers: dict[str, str]
    ) -> Verdict:
        key = request.head_key if self._kept.size else None
        if key is None:
            return head_verdict(request, rt, endpoint, answer_headers)
        kept = self._kept.get(key)
        if kept is not None:
            if kept.cors is not None:
                answer_headers.update(kept.cors)
            return kept
        return self._kept.keep(key, head_verdict(request, rt, endpoint, answer_headers))


# --- allowances -------------------------------------------------------------------------------------------------


def check_rate(rt: Runtime, caller: Caller, *, submission: bool) -> None:
    if caller.admin:
        return
    buckets = rt.admission.prompts if submission else rt.admission.requests
    wait = buckets.take(caller.key)
    if wait > 0:
        what = "prompt submissions" if submission else "requests"
        raise TooManyRequests(f"too many {what} from this client; retry later", retry_after_seconds=wait)


def open_socket(rt: Runtime, caller: Caller) -> str:
    """Count one more open WebSocket for the caller; the key to close it with when it ends."""
    sockets = rt.admission.sockets
    if not sockets.open(caller.key):
        raise TooManyRequests(
            f"this client holds {sockets.max_per_client} WebSockets already; close one first",
            retry_after_seconds=1.0,
        )
    return caller.key


# --- ownership ------------------------------------------------------------------------------------------------


def check_resubmission(record: PromptRecord | None, caller: Caller) -> None:
    """A prompt id recorded for one user cannot be taken over by another (409); the owner, and the admin,
    may submit it again."""
    if record is None or caller.admin or record.user == caller.user:
        return
    raise Conflict("this prompt id belongs to another user's prompt; send another or none", details="prompt_id")


def check_owner(record: PromptRecord | None, caller: Caller, rt: Runtime, prompt_id: str) -> None:
    """With API tokens on, another user's prompt is not found (404) unless the caller is the admin. Prompts
    nobody owns (submitted to a backend directly) stay visible."""
    if not rt.access.tokens_on or record is None or record.user is None or caller.admin:
        return
    if record.user != caller.user:
        raise NotFound(f"prompt {prompt_id!r} is not found", details="prompt_id")


# --- the gateway's own routes -------------------------------------------------------------------------------------

# Reads of the gateway's own API that show who submitted what or who prefers what: the admin's (or, with no admin
# token set, a client on this host's), like every write.
OWNER_REVEALING_PATHS = ("/gateway/prompts/", "/gateway/console/prompts", "/gateway/console/users")


def reveals_owners(path: str) -> bool:
    return path.startswith(OWNER_REVEALING_PATHS)



def admin_refusal_reason(
    rt: Runtime, request: RequestFacts, caller: Caller, *, write: bool, reveals_owners: bool, own_user: str | None
) -> str | None:
    """Why the caller may not make this call to /gateway/..., or None. Writes and the reads that reveal owners
    need the admin token, or with none configured a client on this host; never a write from a foreign page
    (a browser on this host would otherwise lend it its loopback address). With API tokens on, a user's
    preference (`own_user`, the user the route names) is that user's to read and, with self-service, to set."""
    access = rt.access
    names_user = access.tokens_on and own_user is not None
    if not write and not reveals_owners and not names_user:
        return None
    origin = request.header("Origin")
    if write and origin is not None and not same_origin(origin, request.header("Host") or ""):
        return "the gateway's API takes no writes from another origin"
    if caller.admin:
        return None
    if names_user and caller.by_token and caller.user == own_user and (access.allow_self_service or not write):
        return None
    if access.admin_token is None:
        return None if caller.loopback else "with no security.admin_token set, only clients on this host may do this"
    return "this needs the admin token (Authorization: Bearer <admin_token>)"

"""Header policy in both directions, as constant sets and one builder per direction.

Hop-by-hop headers never cross the gateway; the backend sees X-Forwarded-* and a Host/Origin pair that passes
ComfyUI's own same-origin check; the client sees who served it and why.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# Set by the gateway's own server or client library; copying them would duplicate or contradict it. Both data
# paths (aiohttp here, gateway/datapath/fast as bytes) drop exactly these.
REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
# X-Comfy-Backend and X-Comfy-Route are the gateway's to say: a backend that is itself a gateway (a chain) says
# its own, which would otherwise reach the client beside ours.
RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server", "x-comfy-backend", "x-comfy-route"}

BACKEND_HEADER = "X-Comfy-Backend"
ROUTE_HEADER = "X-Comfy-Route"
UNAVAILABLE_HEADER = "X-Comfy-Unavailable-Backends"
PROMPT_ID_HEADER = "X-Comfy-Prompt-Id"
# On every request the gateway sends a backend: its instance id (random, minted at start-up) and the backend's
# name. A request that comes back carrying this gateway's own id went round a loop (pipeline/guard.py).
INSTANCE_HEADER = "X-Comfy-Gateway-Instance"


def instance_value(instance_id: str, backend: str) -> str:
    return f"{instance_id}; backend={backend}"


def instance_of(value: str) -> tuple[str, str | None]:
    """The instance id in an INSTANCE_HEADER value, and the backend it names (None when it names none)."""
    instance, _, rest = value.partition(";")
    key, _, backend = rest.strip().partition("=")
    return instance.strip(), backend.strip() if key.strip() == "backend" and backend.strip() else None
GUARDRAILS_HEADER = "X-Comfy-Guardrails"  # what the guardrails changed in a POST /prompt, or why they skipped


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Headers a sender listed in Connection are hop-by-hop too (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def origin_of(url: URL) -> str:
    """`http://127.0.0.1:8188` for a backend URL (default ports omitted, as browsers do)."""
    return str(url.origin())


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    backend_url: URL,
    client_ip: str | None,
    scheme: str,
    drop: Iterable[str] = (),
    instance: str | None = None,
) -> CIMultiDict[str]:
    """Headers for the backend: hop-by-hop and gateway-only ones removed, Host/Origin made to agree, X-Forwarded-*.

    A client's Origin is replaced by the backend's own origin: ComfyUI answers 403 when a loopback Host meets a
    different Origin. The gateway performs that same check itself on its own Host first (pipeline/guard.py),
    so the protection is kept, not bypassed. `instance` is the INSTANCE_HEADER value to send (a client's own
    is among what `drop` names).
    """
    skip = REQUEST_DROP | _connection_tokens(incoming) | {name.lower() for name in drop}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in skip:
            out.add(name, value)
    host = backend_url.raw_host or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if not backend_url.is_default_port():
        host = f"{host}:{backend_url.port}"
    out["Host"] = host
    if "Origin" in out:
        out["Origin"] = origin_of(backend_url)
    forwarded_for = incoming.get("X-Forwarded-For")
    if client_ip:
        forwarded_for = f"{forwarded_for}, {client_ip}" if forwarded_for else client_ip
    if forwarded_for:
        out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = incoming.get("X-Forwarded-Proto", scheme)
    if "Host" in incoming:
        out["X-Forwarded-Host"] = incoming.get("X-Forwarded-Host", incoming["Host"])
    if instance is not None:
        out[INSTANCE_HEADER] = instance
    return out


def client_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers for the client: everything the backend said except hop-by-hop and what our server sets itself."""
    skip = RESPONSE_DROP | _connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in skip:
            out.add(name, value)
    return out

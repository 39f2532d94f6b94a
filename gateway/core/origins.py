"""Origins and Host headers compared as browsers mean them, not as they are spelled: scheme and host
case-insensitive, a trailing dot dropped, default ports made explicit, IPv6 literals in brackets. Spelling
differences (`LocalHost.:8190` against `localhost:8190`) must not decide a security check either way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Every request of a client carries the same Host and Origin, and parsing them is a measurable share of a small
# request's cost: what they parse to is kept, for this many values, each no longer than a real one can be (a
# 253-character name, a scheme and a port). A longer value is parsed every time and never kept; a value that
# does not parse raises every time (lru_cache keeps no exception).
KEPT_VALUES = 256
KEPT_VALUE_CHARS = 300

_T = TypeVar("_T")


def _kept(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    kept = lru_cache(maxsize=KEPT_VALUES)(parse)

    def parsed(value: str) -> _T:
        return kept(value) if len(value) <= KEPT_VALUE_CHARS else parse(value)

    parsed.__doc__ = parse.__doc__
    return parsed


def normalized_host_name(host: str) -> str:
    """A host name as the gateway compares it: lower case, no trailing dot, IPv6 without brackets.
    ValueError if it is empty or carries anything but a name."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.endswith("."):  # the fully qualified spelling of the same name
        name = name[:-1]
    if not name or any(c in name for c in "/?#@ \t") or (":" in name and not _is_ipv6(name)):
        raise ValueError(f"{host!r} is not a host name")
    return name


@_kept
def split_host_header(host: str) -> tuple[str, int | None]:
    """(normalised name, port or None) of a Host header value; ValueError if it is not one."""
    try:
        parts = urlsplit(f"//{host}")
        port = parts.port
    except ValueError:
        raise ValueError(f"{host!r} is not a Host header value") from None
    if parts.hostname is None or parts.path or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"{host!r} is not a Host header value")
    return normalized_host_name(parts.hostname), port


@_kept
def normalized_origin(origin: str) -> str:
    """`scheme://host:port`, port always explicit; ValueError for `null` or anything that is not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{origin!r} is not an origin") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or parts.hostname is None or parts.username is not None:
        raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{origin!r} is not an origin: it has a path, query or fragment")
    name = normalized_host_name(parts.hostname)
    shown = f"[{name}]" if ":" in name else name
    return f"{scheme}://{shown}:{port if port is not None else DEFAULT_PORTS[scheme]}"


def same_origin(origin: str, host: str) -> bool:
    """Whether a request's Origin names the very host:port its Host header does. A Host without a port
    matches the origin's default port (the gateway may sit behind a TLS-terminating proxy)."""
    try:
        scheme, _, rest = normalized_origin(origin).partition("://")
        origin_name, _, origin_port = rest.rpartition(":")
        host_name, host_port = split_host_header(host)
    except ValueError:
        return False
    if origin_name.strip("[]") != host_name:
        return False
    return int(origin_port) == (host_port if host_port is not None else DEFAULT_PORTS[scheme])


def _is_ipv6(name: str) -> bool:
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        return False
    return True

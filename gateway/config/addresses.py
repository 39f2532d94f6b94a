"""Where a URL really goes, compared without the network: one canonical host and port per server.

Two spellings reach the same server when they name the same address, and an address has many spellings:
host names are case-insensitive and may end in a dot, `localhost` is this host by definition (RFC 6761),
`0.0.0.0` and `::` reach this host when connected to, IPv4 has the numeric forms every C library's
inet_aton accepts (`127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`), IPv6 may carry an IPv4 address
(`::ffff:127.0.0.1`), and a default port may be left out. What cannot be settled here, a host name other
than localhost, stays a name: backends/reach.py resolves names once at start-up.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

DEFAULT_PORTS = {"http": 80, "https": 443}
# The one spelling every form of "this host over loopback" is compared as.
LOOPBACK = "127.0.0.1"
_WILDCARDS = frozenset({ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")})
_IPV6_LOOPBACK = ipaddress.ip_address("::1")


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """A server as a connection reaches it: a canonical host (an IP address, or a host name not yet resolved)
    and a port."""

    host: str
    port: int

    @property
    def is_name(self) -> bool:
        return ip_of(self.host) is None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def ipv4_numeric(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any form inet_aton reads (1 to 4 parts, each decimal, 0-octal or 0x-hex, the last
    filling the bytes left), or None when `text` is not one."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        value = _number(part)
        if value is None:
            return None
        values.append(value)
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _number(part: str) -> int | None:
    if not part or not part.isascii():
        return None
    lower = part.lower()
    if lower.startswith("0x"):
        digits, base = lower[2:], 16
        if not digits:
            return 0  # "0x" alone is 0 to inet_aton
    elif len(lower) > 1 and lower.startswith("0"):
        digits, base = lower[1:], 8
    else:
        digits, base = lower, 10
    allowed = "0123456789abcdef"[:base]
    if not digits or any(char not in allowed for char in digits):
        return None
    return int(digits, base)


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `host` spells (brackets, an IPv6 zone and an IPv4-mapped IPv6 form allowed), else None."""
    text = host.strip("[]").split("%", 1)[0]
    if ":" in text:
        try:
            v6 = ipaddress.IPv6Address(text)
        except ValueError:
            return None
        return v6.ipv4_mapped or v6
    return ipv4_numeric(text)


def canonical_host(host: str) -> str:
    """One spelling per address: loopback and the wildcard addresses as 127.0.0.1, other addresses in their
    compressed form, names lower-cased without a trailing dot."""
    ip = ip_of(host)
    if ip is None:
        name = host.strip("[]").lower().rstrip(".")
        return LOOPBACK if name == "localhost" or name.endswith(".localhost") else name
    return canonical_ip(ip)


def canonical_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _WILDCARDS or ip == _IPV6_LOOPBACK or ip == ipaddress.IPv4Address(LOOPBACK):
        return LOOPBACK
    return str(ip)


def server_address(url: str) -> ServerAddress:
    """The server `url` reaches; ValueError when it is not an absolute http(s) URL with a usable host and port.
    Its path is not part of it: `http://h:1/api` reaches the server `http://h:1` does."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc:
        raise ValueError("is not an absolute http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise ValueError("has no host")
    port = parts.port or DEFAULT_PORTS[scheme]  # .port raises ValueError for a bad port
    return ServerAddress(canonical_host(host), port)


def listen_address(host: str, port: int) -> tuple[ServerAddress, bool]:
    """The gateway's own address as a backend URL would reach it, and whether it listens on every address of
    this host (0.0.0.0, ::, or an empty host)."""
    ip = ip_of(host) if host else ipaddress.ip_address("0.0.0.0")
    everywhere = ip is not None and ip in _WILDCARDS
    return ServerAddress(canonical_host(host) if host else LOOPBACK, port), everywhere

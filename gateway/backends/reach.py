"""Which servers the backends really reach, settled once at start-up with the network's help.

config/rules.py refuses, without the network, two backends spelled to one address and a backend at the
gateway's own address. What only a lookup can tell is left for here: a host name (`http://vm:8189`, where `vm`
is a name for 127.0.0.1) is resolved, each name once, all at once and within a bound; a name that does not
resolve is no error (the backend may come later), it is compared by what can be compared. An address is this
host's when a socket can be bound to it, which asks the kernel and nothing on the wire.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.addresses import (
    LOOPBACK,
    ServerAddress,
    canonical_host,
    canonical_ip,
    ip_of,
    listen_address,
    server_address,
)

log = logging.getLogger("comfy_gateway.reach")


@dataclass(frozen=True, slots=True)
class ReachProblem:
    """Backends that reach one server (two or more), or one that reaches the gateway itself (one)."""

    backends: tuple[str, ...]
    address: str  # the address and port they share, or the gateway's that the backend reaches
    loop: bool = False

    def __str__(self) -> str:
        keys = [f"backends.{name}.url" for name in self.backends]
        if self.loop:
            return f"{keys[0]} reaches the gateway itself at {self.address}: every request would loop back to it"
        listed = ", ".join(keys[:-1]) + " and " + keys[-1]
        verb = "both reach" if len(keys) == 2 else "all reach"
        return f"{listed} {verb} the same server, {self.address}"


async def resolve(host: str, port: int, timeout_seconds: float) -> set[ServerAddress]:
    """The addresses `host` resolves to (canonical), or none when it does not resolve in time."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout_seconds
        )
    except (OSError, TimeoutError, UnicodeError) as exc:
        log.info("backend host %s did not resolve (%s): compared by its name only", host, exc)
        return set()
    found = set()
    for *_, sockaddr in infos:
        ip = ip_of(str(sockaddr[0]))
        if ip is not None:
            found.add(ServerAddress(canonical_ip(ip), port))
    return found


def is_local(host: str) -> bool:
    """`host` (an IP address) belongs to this machine: loopback, or bindable."""
    if host == LOOPBACK:
        return True
    ip = ip_of(host)
    if ip is None:
        return False
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


async def reach_problems(
    urls: Mapping[str, str], listen_host: str, listen_port: int, *, timeout_seconds: float
) -> list[ReachProblem]:
    """Backends (name → URL, already valid) that reach one server, and those that reach the gateway listening
    on listen_host:listen_port (port 0: not known yet, not checked)."""
    servers = {name: server_address(url) for name, url in urls.items()}
    names = sorted(
        {s.host for s in servers.values() if s.is_name} | ({listen_host} if _is_name(listen_host) else set())
    )
    lookups = await asyncio.gather(*(resolve(name, 0, timeout_seconds) for name in names))
    resolved = {name: {a.host for a in found} for name, found in zip(names, lookups, strict=True)}

    def addresses(server: ServerAddress) -> set[ServerAddress]:
        hosts = resolved.get(server.host) or {server.host} if server.is_name else {server.host}
        return {ServerAddress(host, server.port) for host in hosts}

    reached = {name: addresses(server) for name, server in servers.items()}
    problems = []
    owners: dict[ServerAddress, list[str]] = {}
    for name, found in reached.items():
        for address in found:
            owners.setdefault(address, []).append(name)
    seen: set[tuple[str, ...]] = set()
    for address, sharing in sorted(owners.items(), key=lambda item: str(item[0])):
        group = tuple(sorted(sharing))
        if len(group) > 1 and group not in seen:
            seen.add(group)
            problems.append(ReachProblem(group, str(address)))
    if listen_port:
        own, everywhere = listen_address(listen_host, listen_port)
        own_hosts = resolved.get(listen_host, {own.host}) if _is_name(listen_host) else {own.host}
        for name, found in reached.items():
            hit = next(
                (
                    a
                    for a in sorted(found, key=str)
                    if a.port == listen_port and (a.host in own_hosts or (everywhere and is_local(a.host)))
                ),
                None,
            )
            if hit is not None:
                problems.append(ReachProblem((name,), str(hit), loop=True))
    return problems


def _is_name(host: str) -> bool:
    return bool(host) and ip_of(host) is None and canonical_host(host) != LOOPBACK

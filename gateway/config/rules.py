"""Cross-field rules a configuration must satisfy before the gateway binds its port.

Plain functions over validated settings. Each problem names the keys involved so the loader can say
where every value came from; the Settings model runs them as its after-validator.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.addresses import ServerAddress, listen_address, server_address
from gateway.config.sources import dotted

if TYPE_CHECKING:
    from gateway.config.settings import BackendSettings, Settings

BACKEND_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class ConfigProblem:
    message: str
    keys: tuple[KeyPath, ...]  # the keys whose values caused it, e.g. ("backends", "comfyui", "url")

    def describe(self, origin_of: Callable[[KeyPath], str]) -> str:
        if not self.keys:
            return self.message
        return f"{self.message} ({', '.join(f'{dotted(key)} from {origin_of(key)}' for key in self.keys)})"


class RuleViolations(ValueError):
    """Raised inside Settings validation; pydantic keeps it in the error's ctx so the loader finds the keys."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("; ".join(problem.message for problem in problems))
        self.problems = tuple(problems)


def normalize_backend_url(url: str) -> str:
    """The URL checked and spelled one way: ValueError if `url` is not usable. Scheme lower-cased, the host
    canonical (config/addresses.py: every spelling of loopback as 127.0.0.1), the default port explicit, a
    trailing slash dropped."""
    if any(char.isspace() for char in url):
        raise ValueError("contains whitespace")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError("must not have a query or fragment")
    server = server_address(url)
    return f"{parts.scheme.lower()}://{server}{parts.path.rstrip('/')}"


def find_problems(settings: Settings) -> list[ConfigProblem]:
    problems = _name_problems(settings.backends)
    normalized = _normalized_urls(settings.backends, problems)
    problems += _duplicate_url_problems(normalized, settings.backends)
    problems += _self_loop_problems(settings, normalized)
    if settings.default_backend not in settings.backends:
        defined = ", ".join(sorted(settings.backends)) or "none"
        problems.append(
            ConfigProblem(
                f"default_backend {settings.default_backend!r} is not a defined backend (defined: {defined})",
                (("default_backend",), ("backends",)),
            )
        )
    problems += _fallback_problems(settings.backends)
    if settings.workers > 1 and settings.listen_port == 0:
        problems.append(
            ConfigProblem(
                f"workers = {settings.workers} needs a fixed listen_port (0 would give each worker its own)",
                (("workers",), ("listen_port",)),
            )
        )
    if settings.store.kind == "redis":
        scheme = urllib.parse.urlsplit(settings.store.redis_url).scheme
        if scheme not in _REDIS_SCHEMES:
            problems.append(
                ConfigProblem(
                    f"store.redis_url {settings.store.redis_url!r} is not a redis://, rediss:// or unix:// URL",
                    (("store", "redis_url"),),
                )
            )
    return problems


def _fallback_problems(backends: Mapping[str, BackendSettings]) -> list[ConfigProblem]:
    """A fallback names another configured backend, and following fallbacks never comes back to the start."""
    problems: list[ConfigProblem] = []
    for name, backend in backends.items():
        target = backend.fallback
        if target is None:
            continue
        key = ("backends", name, "fallback")
        if target == name:
            problems.append(ConfigProblem(f"{dotted(key)} names the backend itself", (key,)))
        elif target not in backends:
            defined = ", ".join(sorted(n for n in backends if n != name)) or "none"
            problems.append(ConfigProblem(f"{dotted(key)} {target!r} is not a defined backend (defined: {defined})",
                                          (key,)))
    if problems:
        return problems
    for name in backends:
        path, seen = [name], {name}
        target = backends[name].fallback
        while target is not None:
            path.append(target)
            if target in seen:
                if target == name:  # reported once, from the first backend of the cycle in the table's order
                    cycle = path[path.index(target):]
                    if min(cycle[:-1], key=list(backends).index) == name:
                        keys = tuple(("backends", n, "fallback") for n in cycle[:-1])
                        problems.append(ConfigProblem(f"fallbacks form a cycle: {' -> '.join(cycle)}", keys))
                break
            seen.add(target)
            target = backends[target].fallback
    return problems


def _name_problems(backends: Mapping[str, BackendSettings]) -> list[ConfigProblem]:
    return [
        ConfigProblem(f"backend name {name!r} must match [a-z0-9-]+ (1-64 characters)", (("backends", name),))
        for name in backends
        if not BACKEND_NAME.match(name)
    ]


def _normalized_urls(backends: Mapping[str, BackendSettings], problems: list[ConfigProblem]) -> dict[str, str]:
    """Server name (a pool's members each) -> its URL, normalized."""
    normalized: dict[str, str] = {}
    for name, backend in backends.items():
        for server, member in backend.named_servers(name):
            try:
                normalized[server] = normalize_backend_url(member.url)
            except ValueError as exc:
                key = url_key(server, backends)
                problems.append(ConfigProblem(f"{dotted(key)} {member.url!r} {exc}", (key,)))
    return normalized


def url_key(server: str, backends: Mapping[str, BackendSettings]) -> KeyPath:
    """The key that gives a server's URL: a backend's url, or its pool's urls or members."""
    name = server.partition(".")[0]
    return ("backends", name, backends[name].url_key())


def _duplicate_url_problems(
    normalized: Mapping[str, str], backends: Mapping[str, BackendSettings]
) -> list[ConfigProblem]:
    """Two servers (backends, pools' members) reaching one server, however spelled (a path does not make
    another server)."""
    by_server: dict[ServerAddress, list[str]] = {}
    for name, url in normalized.items():
        by_server.setdefault(server_address(url), []).append(name)
    return [
        shared_server_problem(names, str(server), backends) for server, names in by_server.items() if len(names) > 1
    ]


def shared_server_problem(names: list[str], shared: str, backends: Mapping[str, BackendSettings]) -> ConfigProblem:
    """Servers `names` reach one server at `shared` (an address and port): the message names them all."""
    shown = [shown_server(name, backends) for name in sorted(names)]
    keys = tuple(dict.fromkeys(url_key(name, backends) for name in sorted(names)))
    listed = ", ".join(shown[:-1]) + " and " + shown[-1]
    verb = "both reach" if len(shown) == 2 else "all reach"
    return ConfigProblem(f"{listed} {verb} the same server, {shared}", keys)


def shown_server(server: str, backends: Mapping[str, BackendSettings]) -> str:
    """A server as the configuration names it: backends.a.url, or backends.pool.urls[2] for a pool's member."""
    key = dotted(url_key(server, backends))
    _, dot, number = server.partition(".")
    return f"{key}[{number}]" if dot else key


def _self_loop_problems(settings: Settings, normalized: Mapping[str, str]) -> list[ConfigProblem]:
    """A backend at the gateway's own address would forward every request back to the gateway. Listening on
    0.0.0.0 or :: means every address of this host; those known without the network are loopback's (names are
    resolved at start-up, backends/reach.py)."""
    if settings.listen_port == 0:
        return []
    own, _ = listen_address(settings.listen_host, settings.listen_port)
    written = {s: m.url for name, b in settings.backends.items() for s, m in b.named_servers(name)}
    problems = []
    for name, url in normalized.items():
        if server_address(url) == own:
            problems.append(self_loop_problem(name, written[name], settings, str(own)))
    return problems


def self_loop_problem(server: str, url: str, settings: Settings, address: str) -> ConfigProblem:
    return ConfigProblem(
        f"{shown_server(server, settings.backends)} {url!r} reaches the gateway itself ({address}; it listens on "
        f"{settings.listen_host}:{settings.listen_port}): every request would loop back to it",
        (url_key(server, settings.backends), ("listen_host",), ("listen_port",)),
    )

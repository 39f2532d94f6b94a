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

from gateway.config.sources import dotted

if TYPE_CHECKING:
    from gateway.config.settings import BackendSettings, Settings

BACKEND_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_DEFAULT_PORTS = {"http": 80, "https": 443}
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
    """The form two URLs share when they reach the same server; ValueError if `url` is not usable.

    Scheme and host lower-cased, default port made explicit, trailing slash dropped, and
    localhost, 127.0.0.1 and [::1] counted as one host.
    """
    if any(char.isspace() for char in url):
        raise ValueError("contains whitespace")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError("is not an absolute http:// or https:// URL")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError("must not have a query or fragment")
    host = parts.hostname
    if not host:
        raise ValueError("has no host")
    port = parts.port or _DEFAULT_PORTS[scheme]  # .port raises ValueError for a bad port
    if host in _LOOPBACK_HOSTS:
        host = "127.0.0.1"
    shown_host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown_host}:{port}{parts.path.rstrip('/')}"


def find_problems(settings: Settings) -> list[ConfigProblem]:
    problems = _name_problems(settings.backends)
    normalized = _normalized_urls(settings.backends, problems)
    problems += _duplicate_url_problems(normalized)
    problems += _self_loop_problems(settings, normalized)
    if settings.default_backend not in settings.backends:
        defined = ", ".join(sorted(settings.backends)) or "none"
        problems.append(
            ConfigProblem(
                f"default_backend {settings.default_backend!r} is not a defined backend (defined: {defined})",
                (("default_backend",), ("backends",)),
            )
        )
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


def _name_problems(backends: Mapping[str, BackendSettings]) -> list[ConfigProblem]:
    return [
        ConfigProblem(f"backend name {name!r} must match [a-z0-9-]+ (1-64 characters)", (("backends", name),))
        for name in backends
        if not BACKEND_NAME.match(name)
    ]


def _normalized_urls(backends: Mapping[str, BackendSettings], problems: list[ConfigProblem]) -> dict[str, str]:
    normalized: dict[str, str] = {}
    for name, backend in backends.items():
        try:
            normalized[name] = normalize_backend_url(backend.url)
        except ValueError as exc:
            key = ("backends", name, "url")
            problems.append(ConfigProblem(f"{dotted(key)} {backend.url!r} {exc}", (key,)))
    return normalized


def _duplicate_url_problems(normalized: Mapping[str, str]) -> list[ConfigProblem]:
    by_url: dict[str, list[str]] = {}
    for name, url in normalized.items():
        by_url.setdefault(url, []).append(name)
    problems = []
    for url, names in by_url.items():
        if len(names) > 1:
            keys = tuple(("backends", name, "url") for name in sorted(names))
            shown = [dotted(key) for key in keys]
            listed = ", ".join(shown[:-1]) + " and " + shown[-1]
            verb = "both resolve" if len(keys) == 2 else "all resolve"
            problems.append(ConfigProblem(f"{listed} {verb} to {url}", keys))
    return problems


def _self_loop_problems(settings: Settings, normalized: Mapping[str, str]) -> list[ConfigProblem]:
    """A backend at the gateway's own address would forward every request back to the gateway."""
    if settings.listen_port == 0:
        return []
    listen_host = settings.listen_host.strip("[]").lower()
    own_hosts = {"127.0.0.1"} if listen_host in _LOOPBACK_HOSTS | _WILDCARD_HOSTS else {listen_host}
    problems = []
    for name, url in normalized.items():
        parts = urllib.parse.urlsplit(url)
        if parts.port == settings.listen_port and parts.hostname in own_hosts:
            key = ("backends", name, "url")
            problems.append(
                ConfigProblem(
                    f"{dotted(key)} {settings.backends[name].url!r} is the gateway's own address "
                    f"{settings.listen_host}:{settings.listen_port}",
                    (key, ("listen_host",), ("listen_port",)),
                )
            )
    return problems

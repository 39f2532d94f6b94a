"""The runtime routing table: named backends with their URLs and client timeouts.

Built once from settings at start-up; after that these objects are the truth the pipeline reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from yarl import URL

from gateway.core.redact import shown_url

# What a call to a backend is, for its timeouts: an API call ComfyUI answers in milliseconds, or a transfer
# (/view, an upload, /object_info, a user data file) that may take long to start but never goes silent.
CallKind = Literal["api", "transfer"]
CALL_KINDS: tuple[CallKind, ...] = ("api", "transfer")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A backend's client timeouts by phase, as configured; each data path turns them into its own deadlines.

    connect, then the first byte of the answer (counted from the request's last byte), then the silence
    allowed between bytes of an answer under way; a total caps the whole call when set. An API call's answer
    may be silent no longer mid-way than before it started.
    """

    connect_seconds: float = 5.0
    first_byte_seconds: float = 5.0  # API calls
    transfer_first_byte_seconds: float = 120.0  # transfers
    read_seconds: float = 300.0  # the longest silence while reading an answer under way
    total_seconds: float | None = None  # None: no cap (a 50 MiB /view, a long-lived WebSocket)

    def first_byte(self, kind: CallKind) -> float:
        """Longest wait from the request's last byte to the answer's first: a silence too, so never longer
        than read_seconds."""
        limit = self.first_byte_seconds if kind == "api" else self.transfer_first_byte_seconds
        return min(limit, self.read_seconds)

    def idle(self, kind: CallKind) -> float:
        """Longest silence once the answer started."""
        return min(self.read_seconds, self.first_byte_seconds) if kind == "api" else self.read_seconds

    def longest_call(self, kind: CallKind = "api") -> float:
        """An upper bound of one call that keeps answering, connect included (the breaker's trial uses it)."""
        bound = self.connect_seconds + self.first_byte(kind) + self.idle(kind)
        return min(bound, self.total_seconds) if self.total_seconds else bound


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: URL  # base URL, no trailing slash; paths are appended as received
    timeouts: Timeouts = Timeouts()
    embedded: bool = False
    output_dir: Path | None = None
    kind: str = "any"  # what it should answer as: "kerniegen", "comfyui" or "any" (observe/identity.py)
    fallback: str | None = None  # takes this backend's new prompts while it is open or refuses connections
    fallback_on_explicit: bool = False  # ... even when the client named this backend
    pool: str | None = None  # a pool's member: the pool's name (this one's is `<pool>.<member>`)
    member: int = 0  # a pool's member: its number in the pool, from 1

    def target(self, raw_path_qs: str) -> URL:
        """The upstream URL for a raw (still percent-encoded) path and query, kept byte for byte."""
        base = str(self.url).rstrip("/")
        return URL(base + raw_path_qs, encoded=True)


def pool_fields(backend: Backend) -> dict[str, object]:
    """A pool member's pool and number, for the pages and APIs that show servers; nothing for a backend that is
    one server."""
    return {"pool": backend.pool, "member": backend.member} if backend.pool else {}


class BackendTable(Mapping[str, Backend]):
    """Server name → Backend (a pool's members each, as `<pool>.<n>`), plus the default and the pools; iteration
    order is the configured order (used by merges).

    A name a client, a preference or a fallback may give (`names`) is a server or a pool; a pool is turned into
    one of its members by pipeline/place.py before anything calls it."""

    def __init__(
        self, backends: Mapping[str, Backend], default: str, pools: Mapping[str, tuple[str, ...]] | None = None
    ) -> None:
        self._backends = dict(backends)
        self.pools: dict[str, tuple[str, ...]] = dict(pools or {})
        self.names = frozenset(self._backends) | frozenset(self.pools)
        # What an unknown name's error lists: the backends as configured (a pool, not its members).
        self.configured = tuple(dict.fromkeys(b.pool or b.name for b in self._backends.values()))
        if default not in self.names:
            raise ValueError(f"default backend {default!r} is not defined")
        self.default = default

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def __contains__(self, name: object) -> bool:  # Mapping's own goes through __getitem__ and a try
        return name in self._backends

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def servers_of(self, name: str) -> tuple[str, ...]:
        """The servers a configured name stands for: a pool's members, or the one server."""
        return self.pools.get(name) or (name,)

    def lead(self, name: str) -> Backend:
        """What a configured name's servers share (kind, timeouts, fallback): a pool's first member, or the
        server."""
        return self._backends[self.servers_of(name)[0]]

    def is_default(self, server: str) -> bool:
        """The server is the default backend, or a member of the default pool."""
        return self.configured_name(server) == self.default

    def configured_name(self, server: str) -> str:
        """The name a server is configured under: its pool's, or its own."""
        return self._backends[server].pool or server

    def describe(self) -> list[dict[str, object]]:
        """The routing table as the admin API and the start-up log show it: one entry per configured backend, a
        pool's with its members."""
        described: list[dict[str, object]] = []
        for name in self.configured:
            first = self._backends[self.servers_of(name)[0]]
            entry: dict[str, object] = {
                "name": name,
                "url": shown_url(first.url),
                "embedded": first.embedded,
                "default": name == self.default,
                "kind": first.kind,
            }
            if name in self.pools:
                del entry["url"]
                entry["members"] = [
                    {"name": m, "member": self._backends[m].member, "url": shown_url(self._backends[m].url)}
                    for m in self.pools[name]
                ]
            described.append(entry)
        return described

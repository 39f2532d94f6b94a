"""The runtime routing table: named backends with their URLs and client timeouts.

Built once from settings at start-up; after that these objects are the truth the pipeline reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from gateway.core.redact import shown_url


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A backend's client timeouts, as configured; each data path turns them into its own deadlines."""

    connect_seconds: float = 5.0
    read_seconds: float | None = 300.0  # the longest silence while reading an answer
    total_seconds: float | None = None  # None: no cap (a 50 MiB /view, a long-lived WebSocket)


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    url: URL  # base URL, no trailing slash; paths are appended as received
    timeouts: Timeouts = Timeouts()
    embedded: bool = False
    output_dir: Path | None = None
    kind: str = "any"  # what it should answer as: "kerniegen", "comfyui" or "any" (observe/identity.py)

    def target(self, raw_path_qs: str) -> URL:
        """The upstream URL for a raw (still percent-encoded) path and query, kept byte for byte."""
        base = str(self.url).rstrip("/")
        return URL(base + raw_path_qs, encoded=True)


class BackendTable(Mapping[str, Backend]):
    """Name → Backend, plus the default; iteration order is the configured order (used by merges)."""

    def __init__(self, backends: Mapping[str, Backend], default: str) -> None:
        if default not in backends:
            raise ValueError(f"default backend {default!r} is not defined")
        self._backends = dict(backends)
        self.default = default

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def describe(self) -> list[dict[str, object]]:
        """The routing table as the admin API and the start-up log show it."""
        return [
            {
                "name": b.name,
                "url": shown_url(b.url),
                "embedded": b.embedded,
                "default": b.name == self.default,
                "kind": b.kind,
            }
            for b in self._backends.values()
        ]

"""Choosing the backend for a request, and saying why.

Precedence is written once, in `select_backend`: header → query → preference → default. Affinity (a prompt
already known to live on a backend) and merging are decided by the pipeline, which knows the endpoint; this
module only validates names and applies the order. Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from gateway.core.errors import UnknownBackend


class Source(enum.StrEnum):
    """Why a backend was chosen; the value of the X-Comfy-Route header and the `source` metric label."""

    HEADER = "header"
    QUERY = "query"
    AFFINITY = "affinity"
    PREFERENCE = "preference"
    DEFAULT = "default"
    MERGED = "merged"


@dataclass(frozen=True, slots=True)
class Selection:
    backend: str
    source: Source

    @property
    def explicit(self) -> bool:
        """Chosen by this request or its user, rather than by the gateway's default."""
        return self.source in (Source.HEADER, Source.QUERY, Source.PREFERENCE)


def check_backend_name(name: str, backends: Collection[str], *, where: str) -> str:
    """Return `name` if it is configured, else raise UnknownBackend naming the valid ones (never fall back)."""
    if name in backends:
        return name
    valid = sorted(backends)
    raise UnknownBackend(
        f"unknown backend {name!r} in {where}; valid backends: {', '.join(valid)}",
        details=valid,
    )


def select_backend(
    *,
    header: str | None,
    query: str | None,
    preference: str | None,
    default: str,
    backends: Collection[str],
    header_name: str = "X-Comfy-Backend",
    user: str | None = None,
) -> Selection:
    """Apply the precedence order. Empty strings count as absent (a client clearing a header)."""
    if header:
        return Selection(check_backend_name(header.strip(), backends, where=f"header {header_name}"), Source.HEADER)
    if query:
        return Selection(check_backend_name(query.strip(), backends, where="query parameter backend"), Source.QUERY)
    if preference:
        where = f"the stored preference of user {user!r}" if user else "a stored preference"
        return Selection(check_backend_name(preference, backends, where=where), Source.PREFERENCE)
    return Selection(default, Source.DEFAULT)

"""The one seam through which the pipeline, merges, probes and checks call a backend.

Whatever must read a backend's whole answer (a merge, an affinity probe, a health check, a fan-out) goes
through `BackendCalls.fetch`, a Protocol the runtime holds: the aiohttp data path provides it with its client
session (datapath/aio/forward.py); tests provide an in-memory fake, as httpx tests clients with a mock
transport. Streaming a client's request to one backend is each data path's own business, not this seam's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from multidict import CIMultiDictProxy

from gateway.backends.table import Backend, CallKind


@dataclass(frozen=True, slots=True)
class Reply:
    """A backend's answer, read whole (and bounded)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


class BackendCalls(Protocol):
    async def fetch(
        self,
        backend: Backend,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        *,
        body: bytes | None = None,
        max_bytes: int | None = None,
        timeout_seconds: float | None = None,
        kind: CallKind = "api",
        retry: bool = True,
    ) -> Reply:
        """Send one request and read the whole answer.

        `target` is a raw path and query; `max_bytes` bounds the answer (default: the gateway's body limit);
        the call obeys the backend's timeouts for its `kind`, and `timeout_seconds` caps it as a whole besides
        (health checks, polls); `retry` False: never sent again (a check must see a refusal as it is). Raises
        UpstreamError
        (UpstreamTimeout for a timeout), naming the backend and saying how the call failed (its `kind`).
        """
        ...

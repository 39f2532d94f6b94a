"""The per-request record: facts gathered along the pipeline, read once at the end by logging and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Exchange:
    method: str
    path: str  # raw path without query, for humans in the log only (never a metric label)
    endpoint: str  # template from comfy_api.classify, or the gateway's own route; never a raw path
    started: float = field(default_factory=time.perf_counter)
    ended: float = 0.0  # set once by finish(), so the log line and the metrics agree on the duration
    backend: str | None = None  # who served it; comma-joined names for merged answers
    source: str | None = None  # selection source (header, query, affinity, preference, default, merged)
    status: int = 0
    user: str | None = None
    prompt_id: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    unavailable: tuple[str, ...] = ()  # backends left out of a merge
    error: str | None = None  # the gateway error code when the gateway answered itself
    # (backend, kind) for each backend call that failed while serving this request; kind is
    # connect | timeout | protocol | 5xx (a backend's own 5xx answer passed on is derived from `status`).
    upstream_errors: tuple[tuple[str, str], ...] = ()
    # What the guardrails did to a POST /prompt (core/guardrail_actions.py's names), one entry per action.
    guardrails: tuple[str, ...] = ()
    # What the request holds until it ends (a count of the client's open WebSockets): let go exactly once, by
    # release(), when the exchange is finished or abandoned.
    on_finish: Callable[[], None] | None = None

    def release(self) -> None:
        hold, self.on_finish = self.on_finish, None
        if hold is not None:
            hold()

    def finish(self) -> None:
        if not self.ended:
            self.ended = time.perf_counter()

    def duration_seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

"""The per-request record: facts gathered along the pipeline, read once at the end by logging and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable


class Exchange:
    """Made for every request: a plain class, which the compiled build makes without a call into the interpreter
    (a dataclass's __init__ is interpreted)."""

    __slots__ = ("method", "path", "endpoint", "started", "ended", "backend", "source", "status", "user", "prompt_id",
                 "bytes_in", "bytes_out", "unavailable", "error", "upstream_errors", "guardrails", "on_finish")

    def __init__(
        self,
        method: str,
        path: str,
        endpoint: str,
        started: float | None = None,
        *,
        backend: str | None = None,
        source: str | None = None,
        status: int = 0,
        user: str | None = None,
        prompt_id: str | None = None,
        bytes_in: int = 0,
        bytes_out: int = 0,
        unavailable: tuple[str, ...] = (),
        error: str | None = None,
        upstream_errors: tuple[tuple[str, str], ...] = (),
        guardrails: tuple[str, ...] = (),
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        self.method = method
        self.path = path  # raw path without query, for humans in the log only (never a metric label)
        self.endpoint = endpoint  # template from comfy_api.classify, or the gateway's own route; never a raw path
        self.started = time.perf_counter() if started is None else started
        self.ended = 0.0  # set once by finish(), so the log line and the metrics agree on the duration
        self.backend = backend  # who served it; comma-joined names for merged answers
        self.source = source  # selection source (header, query, affinity, preference, default, merged)
        self.status = status
        self.user = user
        self.prompt_id = prompt_id
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.unavailable = unavailable  # backends left out of a merge
        self.error = error  # the gateway error code when the gateway answered itself
        # (backend, kind) for each backend call that failed while serving this request; kind is
        # connect | timeout | protocol | 5xx (a backend's own 5xx answer passed on is derived from `status`).
        self.upstream_errors = upstream_errors
        # What the guardrails did to a POST /prompt (core/guardrail_actions.py's names), one entry per action.
        self.guardrails = guardrails
        # What the request holds until it ends (a count of the client's open WebSockets): let go exactly once, by
        # release(), when the exchange is finished or abandoned.
        self.on_finish = on_finish

    def release(self) -> None:
        hold, self.on_finish = self.on_finish, None
        if hold is not None:
            hold()

    def finish(self) -> None:
        if not self.ended:
            self.ended = time.perf_counter()

    def duration_seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

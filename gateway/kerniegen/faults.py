"""Fault injection while running: the mutable copy of config.Faults that the server consults.

The middleware applies the endpoint faults (500 answers, delays); the worker asks whether the next
prompt must fail; the WebSocket route asks whether to drop a new socket."""

from __future__ import annotations

from gateway.kerniegen.config import Faults


class FaultState:
    """Faults as set at creation; tests may also change them on a running server."""

    def __init__(self, faults: Faults) -> None:
        self.prompts_to_fail = faults.fail_next_prompts
        self.error_endpoints: set[str] = set(faults.error_endpoints)
        self.delay_endpoints: dict[str, float] = dict(faults.delay_endpoints)
        self.drop_websockets = faults.drop_websockets

    def take_prompt_failure(self) -> bool:
        """True (and one fewer left) when the prompt about to run must fail."""
        if self.prompts_to_fail <= 0:
            return False
        self.prompts_to_fail -= 1
        return True

    def delay_for(self, endpoint: str) -> float:
        return self.delay_endpoints.get(endpoint, 0.0)

    def fails(self, endpoint: str) -> bool:
        return endpoint in self.error_endpoints

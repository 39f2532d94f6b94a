"""The gateway's error tree: every error the gateway itself answers, with its HTTP status and a stable code.

    GatewayError
    ├── UnknownBackend        400  a selection named a backend that is not configured
    ├── BadRequest            400  a body or parameter the gateway had to read was unusable
    │   ├── BadPromptBody     400  POST /prompt whose body is not a JSON object (ComfyUI's prompt error shape)
    │   ├── PromptRefused     400  POST /prompt a guardrail refused (ComfyUI's validation answer, made whole)
    │   └── HostNotAllowed    400  a Host header outside security.allowed_hosts (DNS rebinding)
    ├── Unauthorized          401  a credential is needed and none, or an unknown one, was sent
    ├── Forbidden             403  the credential sent does not allow this
    │   └── ForbiddenOrigin   403  an Origin that is neither the gateway's own nor an allowed one
    ├── NotFound              404  a resource that does not exist, or that belongs to another user
    ├── Conflict              409  a prompt id recorded for another user
    ├── BodyTooLarge          413  a request body over max_body_bytes
    ├── TargetTooLong         414  a request-target over the fast path's limit
    ├── TooManyRequests       429  past a client's rate limit or its cap of open WebSockets
    ├── HeadersTooLarge       431  too many request headers, or too many bytes of them
    ├── StoreUnavailable      503  the state store could not answer (affinity and preferences live there)
    ├── BackendOpen           503  the backend's circuit is open: answered at once, with when it is retried
    ├── LoopDetected          508  a request this gateway sent came back to it (a backend that reaches it)
    ├── UpstreamRefused       4xx/5xx  the backend refused a WebSocket upgrade (its status is passed on)
    └── UpstreamError         502  the backend could not be reached or broke the protocol
        └── UpstreamTimeout   504  the backend did not answer in time

A backend's failure says how it failed (`failure_kind`: connect, timeout, protocol or 5xx), decided where it
is raised, so both data paths count it alike. pipeline/outcome.py renders every error, for both paths.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from gateway.core.headers import GUARDRAILS_HEADER

# How a backend call failed, for comfy_gateway_upstream_errors_total's `kind` label.
FailureKind = Literal["connect", "timeout", "protocol", "5xx"]


class GatewayError(Exception):
    status = 500
    code = "gateway_error"

    def __init__(self, message: str, *, details: Any = "", backend: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.backend = backend

    @property
    def failure_kind(self) -> FailureKind | None:
        """How a backend call failed, when this error is a backend's failure (None: bad input, ...)."""
        return None

    def headers(self) -> dict[str, str]:
        """Response headers this error's answer needs (Retry-After, WWW-Authenticate)."""
        return {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ComfyUI's `{"error": {type, message, details, extra_info}}` shape, which clients print."""
        extra: dict[str, Any] = {"backend": self.backend} if self.backend else {}
        return {"error": {"type": self.code, "message": self.message, "details": self.details, "extra_info": extra}}


class UnknownBackend(GatewayError):
    status = 400
    code = "unknown_backend"


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class BadPromptBody(BadRequest):
    code = "invalid_prompt"

    def body(self) -> dict[str, Any]:
        # comfy-cli and catapult read node_errors on every 400 answer of POST /prompt.
        return {**super().body(), "node_errors": {}}


class PromptRefused(BadRequest):
    """A prompt the target backend cannot run (a model file or node class it lacks), refused before it is
    forwarded with the answer ComfyUI itself would give, made whole by the guardrail (`answer`)."""

    code = "prompt_refused"

    def __init__(self, message: str, *, answer: dict[str, Any], backend: str, action: str, note: str) -> None:
        super().__init__(message, backend=backend)
        self.answer = answer
        self.action = action  # the guardrail action it counts as
        self.note = note  # its X-Comfy-Guardrails entry, encoded already

    def headers(self) -> dict[str, str]:
        return {GUARDRAILS_HEADER: self.note}

    def body(self) -> dict[str, Any]:
        return self.answer


class HostNotAllowed(BadRequest):
    code = "host_not_allowed"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="comfy-gateway"'}


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class ForbiddenOrigin(Forbidden):
    code = "forbidden_origin"


class NotFound(GatewayError):
    status = 404
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    code = "prompt_id_taken"


class TooManyRequests(GatewayError):
    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_seconds: float, details: Any = "") -> None:
        super().__init__(message, details=details)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_seconds)))}


class BodyTooLarge(GatewayError):
    status = 413
    code = "body_too_large"


class TargetTooLong(GatewayError):
    status = 414
    code = "target_too_long"


class HeadersTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"


class LoopDetected(GatewayError):
    status = 508
    code = "loop_detected"


class BackendOpen(GatewayError):
    """Not a failure of the call (none was made): the backend failed before, and is left alone a while."""

    status = 503
    code = "backend_unavailable"

    def __init__(self, message: str, *, backend: str, retry_after_seconds: float) -> None:
        seconds = max(1, math.ceil(retry_after_seconds))
        super().__init__(message, backend=backend, details={"retry_after_seconds": seconds})
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_seconds)))}


class UpstreamRefused(GatewayError):
    code = "backend_refused"

    def __init__(self, message: str, *, status: int, backend: str) -> None:
        super().__init__(message, backend=backend)
        self.status = status if 400 <= status < 600 else 502

    @property
    def failure_kind(self) -> FailureKind | None:
        """A backend refusing with its own 5xx has failed; a 4xx refusal is the request's fault."""
        return "5xx" if self.status >= 500 else None


class UpstreamError(GatewayError):
    status = 502
    code = "backend_unavailable"

    def __init__(
        self, message: str, *, backend: str | None = None, kind: FailureKind = "protocol", details: Any = ""
    ) -> None:
        super().__init__(message, details=details, backend=backend)
        self.kind: FailureKind = kind

    @property
    def failure_kind(self) -> FailureKind:
        return self.kind


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "backend_timeout"

    def __init__(self, message: str, *, backend: str | None = None, details: Any = "") -> None:
        super().__init__(message, backend=backend, kind="timeout", details=details)



class StartupRefused(Exception):
    """The gateway must not start (two backends reach one server, a backend reaches the gateway, a backend is
    another kind than configured under strict_identity): the message is whole, said once, with no traceback."""

"""What a backend really is, read from its GET /system_stats, and whether that is the kind configured.

A real ComfyUI says `system.comfyui_version` and its torch build in `system.pytorch_version`; KernieGen says
the ComfyUI release it imitates in the first (clients read it) and `KernieGen <version> (no torch)` in the
second, with `kerniegen` as `argv[0]`: its marker, in ComfyUI's own shape (no key a client does not know).
A backend named `kerniegen` that answers as ComfyUI 0.3.x (or the reverse: two URLs swapped in a config) is a mismatch,
reported by the health checks, readiness, a metric and `comfy-gateway check`, and refused at start-up under
guardrails.strict_identity.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from gateway.backends.calls import BackendCalls
from gateway.backends.table import Backend
from gateway.core.errors import UpstreamError

IDENTITY_PATH = "/system_stats"
SeenKind = Literal["kerniegen", "comfyui", "unknown"]
_MAX_BYTES = 1 << 20
_KERNIEGEN_TORCH = "KernieGen "
_SHOWN = re.compile(r"^[0-9A-Za-z.+_-]{1,40}$")  # a version string is shown only when it looks like one


@dataclass(frozen=True, slots=True)
class Identity:
    kind: SeenKind
    version: str | None = None  # the backend's own version (KernieGen's, or ComfyUI's)
    comfyui_version: str | None = None  # the ComfyUI release it says it is (or imitates)

    def describe(self) -> str:
        if self.kind == "kerniegen":
            return f"KernieGen {self.version or '?'}"
        if self.kind == "comfyui":
            return f"ComfyUI {self.version or '?'}"
        return "neither ComfyUI nor KernieGen"


def identity_of(body: bytes) -> Identity:
    """What a /system_stats answer says the backend is; never raises, whatever the bytes."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return Identity("unknown")
    system = value.get("system") if isinstance(value, dict) else None
    if not isinstance(system, dict):
        return Identity("unknown")
    comfyui = _version(system.get("comfyui_version"))
    torch = system.get("pytorch_version")
    argv = system.get("argv")
    if isinstance(torch, str) and torch.startswith(_KERNIEGEN_TORCH):
        return Identity("kerniegen", _version(torch[len(_KERNIEGEN_TORCH) :].split(" ", 1)[0]), comfyui)
    if isinstance(argv, list) and argv[:1] == ["kerniegen"]:
        return Identity("kerniegen", None, comfyui)
    if comfyui is not None:
        return Identity("comfyui", comfyui, comfyui)
    return Identity("unknown")


def _version(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value if _SHOWN.match(value) else "unreadable"


def mismatch(configured: str, seen: Identity) -> str | None:
    """Why `seen` is not the configured kind, or None when it is (or `configured` is "any")."""
    if configured == "any" or seen.kind == configured:
        return None
    return f"configured as kind {configured!r} but answers as {seen.describe()}"


async def read_identity(calls: BackendCalls, backend: Backend, headers: dict[str, str], timeout: float) -> Identity:
    """Ask `backend` what it is. UpstreamError when it cannot be asked, or answers with an error status."""
    reply = await calls.fetch(
        backend, "GET", IDENTITY_PATH, headers, timeout_seconds=timeout, max_bytes=_MAX_BYTES, retry=False
    )
    if reply.status != 200:
        raise UpstreamError(
            f"backend {backend.name!r} answered GET {IDENTITY_PATH} with {reply.status}", backend=backend.name
        )
    return identity_of(reply.body)

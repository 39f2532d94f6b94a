"""KernieGen: a ComfyUI-compatible backend that computes images instantly and deterministically.

It speaks ComfyUI 0.3.64's HTTP and WebSocket protocol and imports nothing from the rest of
`gateway`. Public API (imported lazily, so `import gateway.kerniegen.nodes` stays light):
KernieGenConfig, Faults, create_kerniegen_app, start_kerniegen, KernieGenServer."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway.kerniegen.version import KERNIEGEN_VERSION as __version__

if TYPE_CHECKING:
    from gateway.kerniegen.config import Faults, KernieGenConfig
    from gateway.kerniegen.server import KernieGenServer, create_kerniegen_app, start_kerniegen

_EXPORTS = {
    "Faults": "gateway.kerniegen.config",
    "KernieGenConfig": "gateway.kerniegen.config",
    "KernieGenServer": "gateway.kerniegen.server",
    "create_kerniegen_app": "gateway.kerniegen.server",
    "start_kerniegen": "gateway.kerniegen.server",
}

__all__ = ["Faults", "KernieGenConfig", "KernieGenServer", "__version__", "create_kerniegen_app", "start_kerniegen"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.kerniegen' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

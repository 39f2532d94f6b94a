"""Version facts KernieGen reports about itself and about the ComfyUI release it imitates."""

from __future__ import annotations

KERNIEGEN_VERSION = "0.1.0"
# The ComfyUI release whose wire protocol KernieGen reproduces (comfyui-reference/00_versions.json).
COMFYUI_VERSION = "0.3.64"

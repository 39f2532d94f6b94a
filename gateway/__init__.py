"""comfy-gateway: a ComfyUI-compatible reverse proxy that routes each request to a named backend."""

__version__ = "0.1.0"

"""ComfyUI's WebSocket frame formats: JSON text messages and the binary frames that start with a
4-byte big-endian event type (1 PREVIEW_IMAGE, 3 TEXT, 4 PREVIEW_IMAGE_WITH_METADATA)."""

from __future__ import annotations

import json
import struct
from typing import Any

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

# Format codes inside a type-1 frame, and MIME types inside a type-4 frame's metadata.
_IMAGE_FORMAT_CODES = {"JPEG": 1, "PNG": 2}
_IMAGE_MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


def encode_message(event: str, data: Any) -> str:
    """A text frame, serialised the way ComfyUI's json.dumps does (default separators)."""
    return json.dumps({"type": event, "data": data})


def encode_preview_image(image_format: str, image: bytes) -> bytes:
    """Type 1: format code (1 JPEG, 2 PNG) then the encoded image."""
    return struct.pack(">II", PREVIEW_IMAGE, _IMAGE_FORMAT_CODES[image_format]) + image


def encode_preview_with_metadata(image_format: str, image: bytes, metadata: dict[str, Any]) -> bytes:
    """Type 4: metadata length, metadata JSON (with image_type appended, as ComfyUI does), image."""
    described = {**metadata, "image_type": _IMAGE_MIME_TYPES[image_format]}
    meta_json = json.dumps(described).encode("utf-8")
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta_json)) + meta_json + image


def encode_text(node_id: str, text: str) -> bytes:
    """Type 3: node-id length, node id, then the text, both UTF-8."""
    node_bytes = str(node_id).encode("utf-8")
    return struct.pack(">II", TEXT, len(node_bytes)) + node_bytes + text.encode("utf-8")

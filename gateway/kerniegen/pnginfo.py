"""PNG and latent files exactly as ComfyUI's savers write them, metadata included.

SaveImage stores the API prompt as a "prompt" tEXt chunk and each entry of extra_data["extra_pnginfo"]
(the frontend's "workflow") as one more chunk, JSON-encoded; SaveLatent puts the same strings in a
safetensors header. Encoding goes through Pillow with ComfyUI's options, so the bytes match ComfyUI's.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def prompt_metadata(prompt: Any, extra_data: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, text) pairs in ComfyUI's order: the prompt, then extra_pnginfo's entries."""
    entries: list[tuple[str, str]] = []
    if prompt is not None:
        entries.append(("prompt", json.dumps(prompt)))
    extra_pnginfo = extra_data.get("extra_pnginfo")
    if extra_pnginfo is not None:
        # Written like ComfyUI's loop, so a non-dict fails with the same TypeError.
        for key in extra_pnginfo:
            entries.append((key, json.dumps(extra_pnginfo[key])))
    return entries


def png_info(entries: list[tuple[str, str]]) -> PngInfo:
    info = PngInfo()
    for key, text in entries:
        info.add_text(key, text)
    return info


def encode_png(image: Image.Image, info: PngInfo | None, compress_level: int) -> bytes:
    """The bytes `img.save(path, pnginfo=..., compress_level=...)` writes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def encode_ws_png(image: Image.Image) -> bytes:
    """The PNG ComfyUI's server sends in binary image frames (quality=95, compress_level=1)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", quality=95, compress_level=1)
    return buffer.getvalue()


def encode_latent_file(shape: tuple[int, ...], metadata: dict[str, str]) -> bytes:
    """A safetensors file like SaveLatent's: a zero float32 "latent_tensor" and the format marker."""
    elements = 1
    for size in shape:
        elements *= size
    data_size = elements * 4
    header: dict[str, Any] = {
        "__metadata__": metadata,
        "latent_format_version_0": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "latent_tensor": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, data_size]},
    }
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # safetensors pads its header to 8 bytes with spaces
    return struct.pack("<Q", len(encoded)) + encoded + bytes(data_size)

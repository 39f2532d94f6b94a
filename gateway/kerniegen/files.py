"""GET/HEAD /view: ComfyUI's file lookup (type dirs, the " [output]" annotation, its traversal
checks and their exact status codes), files streamed with Range/ETag support, and the
`preview`/`channel` re-encodings done off the event loop."""

from __future__ import annotations

import asyncio
import io
import mimetypes
import os

from aiohttp import web
from PIL import Image

from gateway.kerniegen.config import Directories
from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE

# ComfyUI forces a download for types a browser would render or run.
_FORCED_DOWNLOAD = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}
_ANNOTATIONS = (("[output]", "output"), ("[input]", "input"), ("[temp]", "temp"))


def annotated_filepath(name: str, dirs: Directories) -> tuple[str, str | None]:
    """ComfyUI's folder_paths.annotated_filepath: "x.png [output]" -> ("x.png", output dir).

    It tests the suffix without the space but cuts one character more, so "x.png[output]" loses its
    last character too; that quirk is kept."""
    for suffix, kind in _ANNOTATIONS:
        if name.endswith(suffix):
            return name[: -(len(suffix) + 1)], str(dirs.by_type(kind))
    return name, None


async def view(request: web.Request) -> web.StreamResponse:
    dirs = request.app[STATE].dirs
    query = request.query
    if "filename" not in query:
        return empty(404)
    filename, directory = annotated_filepath(query["filename"], dirs)
    if not filename:
        return empty(400)
    if filename[0] == "/" or ".." in filename:
        return empty(400)
    if directory is None:
        by_type = dirs.by_type(query.get("type", "output"))
        if by_type is None:
            return empty(400)
        directory = str(by_type)
    if "subfolder" in query:
        candidate = os.path.join(directory, query["subfolder"])
        if os.path.commonpath((os.path.abspath(candidate), directory)) != directory:
            return empty(403)
        directory = candidate
    filename = os.path.basename(filename)
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        return empty(404)
    disposition = {"Content-Disposition": f'filename="{filename}"'}
    channel = query.get("channel", "")  # missing means "rgba": the file as it is
    if "preview" in query or channel in ("rgb", "a"):
        try:
            body, content_type = await asyncio.to_thread(_reencode, path, query.get("preview"), channel)
        except Exception:  # not an image Pillow can read or write: ComfyUI's handler raises too
            return server_error()
        return web.Response(body=body, content_type=content_type, headers=disposition)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in _FORCED_DOWNLOAD:
        content_type = "application/octet-stream"
    return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})


def _reencode(path: str, preview: str | None, channel: str) -> tuple[bytes, str]:
    with Image.open(path) as image:
        if preview is not None:
            return _preview(image, preview, channel)
        buffer = io.BytesIO()
        if channel == "rgb":
            (image.convert("RGB") if image.mode != "RGBA" else Image.merge("RGB", image.split()[:3])).save(
                buffer, format="PNG"
            )
        else:  # "a": the alpha channel on a transparent black image, or opaque when there is none
            alpha = image.split()[3] if image.mode == "RGBA" else Image.new("L", image.size, 255)
            alpha_image = Image.new("RGBA", image.size)
            alpha_image.putalpha(alpha)
            alpha_image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


def _preview(image: Image.Image, preview: str, channel: str) -> tuple[bytes, str]:
    parts = preview.split(";")
    image_format = parts[0]
    if image_format not in ("webp", "jpeg") or "a" in channel:
        image_format = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    if image_format == "jpeg" or channel == "rgb":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=quality)
    return buffer.getvalue(), f"image/{image_format}"

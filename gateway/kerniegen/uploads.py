"""POST /upload/image and /upload/mask as ComfyUI answers them: type dirs, subfolder, overwrite,
same-bytes dedup and "name (1).ext" renaming, traversal refused with 400, and for masks the
original image stored with the uploaded alpha channel. Disk work happens off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gateway.kerniegen.config import Directories
from gateway.kerniegen.files import annotated_filepath
from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE
from gateway.kerniegen.upload_form import StagedFile, UploadForm, read_upload_form

log = logging.getLogger(__name__)

_UPLOAD_TYPES = ("input", "temp", "output")
_STAGING_SUBDIR = ".kerniegen-uploads"


class _HandlerCrash(Exception):
    """Where ComfyUI's handler raises (and aiohttp answers its plain-text 500)."""


@dataclass(frozen=True)
class _Target:
    upload_dir: str
    folder: str
    subfolder: str
    kind: str


async def upload_image(request: web.Request) -> web.Response:
    return await _upload(request, with_mask=False)


async def upload_mask(request: web.Request) -> web.Response:
    return await _upload(request, with_mask=True)


async def _upload(request: web.Request, *, with_mask: bool) -> web.Response:
    state = request.app[STATE]
    form = await read_upload_form(request, state.config.max_upload_bytes, state.dirs.temp / _STAGING_SUBDIR)
    try:
        return await _answer(form, state.dirs, with_mask)
    except (_HandlerCrash, OSError, ValueError, TypeError, KeyError):
        return server_error()
    finally:
        form.discard()


async def _answer(form: UploadForm, dirs: Directories, with_mask: bool) -> web.Response:
    kind = form.fields.get("type")
    if kind is None:
        kind = "input"
    if kind not in _UPLOAD_TYPES:
        raise _HandlerCrash("unknown upload type")  # ComfyUI's get_dir_by_type leaves its variable unbound
    image = form.image
    if not image:
        return empty(400)
    if not isinstance(image, StagedFile):
        raise _HandlerCrash("image field without a file")  # `image.file` on a plain field
    subfolder = form.fields.get("subfolder", "")
    if not isinstance(subfolder, str):
        raise _HandlerCrash("subfolder is not text")
    upload_dir = str(dirs.by_type(kind))
    folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    if os.path.commonpath((upload_dir, os.path.abspath(os.path.join(folder, image.filename)))) != upload_dir:
        return empty(400)
    overwrite = form.fields.get("overwrite") in ("true", "1")
    mask_ref: str | None = None
    if with_mask:
        original_ref = form.fields.get("original_ref")
        if not isinstance(original_ref, str):
            raise _HandlerCrash("original_ref missing")  # json.loads(None)
        mask_ref = original_ref
    target = _Target(upload_dir, folder, subfolder, kind)
    name = await asyncio.to_thread(_place, image, target, overwrite, mask_ref, dirs)
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


def _place(image: StagedFile, target: _Target, overwrite: bool, mask_ref: str | None, dirs: Directories) -> str:
    """Pick the stored name (dedup or rename) and write the file; returns the name."""
    os.makedirs(target.folder, exist_ok=True)
    filename = image.filename
    path = os.path.abspath(os.path.join(target.folder, filename))
    duplicate = False
    if not overwrite:
        stem, extension = os.path.splitext(image.filename)
        counter = 1
        while os.path.exists(path):
            if _same_bytes(path, image):
                duplicate = True
                break
            filename = f"{stem} ({counter}){extension}"
            path = os.path.join(target.folder, filename)
            counter += 1
    if mask_ref is not None:
        _store_with_mask(image, json.loads(mask_ref), path, dirs)
    elif not duplicate:
        _move_into_place(image, path)
    return filename


def _move_into_place(image: StagedFile, path: str) -> None:
    try:
        os.replace(image.path, path)  # replaces a file; refuses a directory, as ComfyUI's open() does
    except OSError as error:
        if os.path.isdir(path):
            raise
        log.debug("kerniegen: staging dir is on another filesystem (%s); copying", error)
        shutil.copyfile(image.path, path)
    os.chmod(path, 0o644)  # mkstemp made it private; stored uploads are ordinary files


def _same_bytes(path: str, image: StagedFile) -> bool:
    if not os.path.isfile(path) or os.path.getsize(path) != image.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as existing:
        while chunk := existing.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest() == image.sha256


def _store_with_mask(mask: StagedFile, original_ref: Any, path: str, dirs: Directories) -> None:
    """ComfyUI's upload_mask save function: the referenced original with the mask's alpha channel.

    Like ComfyUI, a reference it cannot use (bad name, escaping subfolder, missing file) stores
    nothing and still answers 200."""
    original = _original_path(original_ref, dirs)
    if original is None or not os.path.isfile(original):
        return
    with Image.open(original) as source, Image.open(mask.path) as uploaded:
        metadata = PngInfo()
        for key, value in getattr(source, "text", {}).items():
            metadata.add_text(key, value)
        composed = source.convert("RGBA")
        composed.putalpha(uploaded.convert("RGBA").getchannel("A"))
        composed.save(path, compress_level=4, pnginfo=metadata)


def _original_path(original_ref: Any, dirs: Directories) -> str | None:
    filename, directory = annotated_filepath(original_ref["filename"], dirs)
    if not filename or filename[0] == "/" or ".." in filename:
        return None
    if directory is None:
        by_type = dirs.by_type(original_ref.get("type", "output"))
        if by_type is None:
            return None
        directory = str(by_type)
    subfolder = original_ref.get("subfolder", "")
    if subfolder != "":
        candidate = os.path.join(directory, subfolder)
        if os.path.commonpath((os.path.abspath(candidate), directory)) != directory:
            return None
        directory = candidate
    return os.path.join(directory, filename)

"""POST /upload/image and /upload/mask as ComfyUI answers them: type dirs, subfolder, overwrite,
same-bytes dedup and "name (1).ext" renaming, traversal refused with 400, and for masks the
original image stored with the uploaded alpha channel. Disk work happens off the event loop.

Where ComfyUI's handler raises on what the client sent (an unknown type, an empty file name, a
name the filesystem cannot hold, a name that is a directory, a broken mask reference), KernieGen
gives ComfyUI's own answer for a bad upload instead of a 500: an empty 400. Only faults of the
server itself (a full disk, a permission problem) still answer 500."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from gateway.kerniegen.config import Directories
from gateway.kerniegen.files import annotated_filepath
from gateway.kerniegen.path_names import blames_the_name, unstorable_reason
from gateway.kerniegen.responses import empty, server_error
from gateway.kerniegen.state import STATE
from gateway.kerniegen.upload_form import StagedFile, UnreadableForm, UploadForm, read_upload_form

log = logging.getLogger(__name__)

_UPLOAD_TYPES = ("input", "temp", "output")
_STAGING_SUBDIR = ".kerniegen-uploads"


class _BadUpload(Exception):
    """The client's form cannot be stored as asked; answered with ComfyUI's empty 400."""


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
    try:
        form = await read_upload_form(request, state.config.max_upload_bytes, state.dirs.temp / _STAGING_SUBDIR)
    except UnreadableForm as error:
        log.debug("kerniegen: %s answered 400: %s", request.path, error)
        return empty(400)
    try:
        return await _answer(form, state.dirs, with_mask)
    except _BadUpload as error:
        log.debug("kerniegen: %s answered 400: %s", request.path, error)
        return empty(400)
    except OSError:
        log.exception("kerniegen: %s could not store the upload", request.path)
        return server_error()
    finally:
        form.discard()


async def _answer(form: UploadForm, dirs: Directories, with_mask: bool) -> web.Response:
    kind = form.fields.get("type")
    if kind is None:
        kind = "input"
    if kind not in _UPLOAD_TYPES:
        raise _BadUpload("unknown upload type")  # ComfyUI's get_dir_by_type leaves its variable unbound
    image = form.image
    if not isinstance(image, StagedFile):
        # No image, or one sent without a file name (aiohttp then reads it as a plain field, and
        # ComfyUI's `image.file` raises; its `if not filename` answer is 400).
        raise _BadUpload("no image file")
    subfolder = form.fields.get("subfolder", "")
    if not isinstance(subfolder, str):
        raise _BadUpload("subfolder is not text")
    upload_dir = str(dirs.by_type(kind))
    folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, image.filename))
    if os.path.commonpath((upload_dir, path)) != upload_dir:
        raise _BadUpload("the path leaves the upload directory")
    overwrite = form.fields.get("overwrite") in ("true", "1")
    mask_ref: dict[str, Any] | None = None
    if with_mask:
        mask_ref = _mask_reference(form.fields.get("original_ref"))
    target = _Target(upload_dir, folder, subfolder, kind)
    name = await asyncio.to_thread(_place, image, target, overwrite, mask_ref, dirs)
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


def _mask_reference(raw: str | bytes | None) -> dict[str, Any]:
    if raw is None:
        raise _BadUpload("original_ref missing")  # ComfyUI: json.loads(None)
    try:
        reference = json.loads(raw)
    except ValueError as error:
        raise _BadUpload(f"original_ref is not JSON: {error}") from error
    if not isinstance(reference, dict) or not isinstance(reference.get("filename"), str):
        raise _BadUpload("original_ref has no filename")
    for key in ("subfolder", "type"):
        if not isinstance(reference.get(key, ""), str):
            raise _BadUpload(f"original_ref {key} is not text")
    return reference


def _place(image: StagedFile, target: _Target, overwrite: bool, mask_ref: dict[str, Any] | None,
           dirs: Directories) -> str:
    """Pick the stored name (dedup or rename) and write the file; returns the name."""
    filename = image.filename
    path = os.path.abspath(os.path.join(target.folder, filename))
    # Refused before anything is created; ComfyUI's open() raises on these. The folder is checked on
    # its own as well: a name with ".." can make the file's path short while the folder stays deep.
    for candidate in (os.path.abspath(target.folder), path):
        reason = unstorable_reason(candidate, target.upload_dir)
        if reason is not None:
            raise _BadUpload(reason)
    try:
        os.makedirs(target.folder, exist_ok=True)
        duplicate = False
        if not overwrite:
            stem, extension = os.path.splitext(image.filename)
            counter = 1
            while os.path.lexists(path):
                if os.path.isdir(path):
                    raise _BadUpload("the name is a directory")  # ComfyUI's hash check opens it and raises
                if _same_bytes(path, image):
                    duplicate = True
                    break
                filename = f"{stem} ({counter}){extension}"
                path = os.path.join(target.folder, filename)
                counter += 1
        if os.path.isdir(path):
            raise _BadUpload("the name is a directory")
        if mask_ref is not None:
            _store_with_mask(image, mask_ref, path, dirs)
        elif not duplicate:
            _move_into_place(image, path)
    except OSError as error:
        if blames_the_name(error):
            raise _BadUpload(f"the filesystem refuses the name: {error}") from error
        raise
    return filename


def _move_into_place(image: StagedFile, path: str) -> None:
    try:
        os.replace(image.path, path)
    except OSError as error:
        if error.errno != errno.EXDEV:
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


def _store_with_mask(mask: StagedFile, original_ref: dict[str, Any], path: str, dirs: Directories) -> None:
    """ComfyUI's upload_mask save function: the referenced original with the mask's alpha channel.

    Like ComfyUI, a reference it cannot use (bad name, escaping subfolder, missing file) stores
    nothing and still answers 200."""
    original = _original_path(original_ref, dirs)
    if original is None or not os.path.isfile(original):
        return
    try:
        with Image.open(original) as source, Image.open(mask.path) as uploaded:
            metadata = PngInfo()
            for key, value in getattr(source, "text", {}).items():
                metadata.add_text(key, value)
            composed = source.convert("RGBA")
            composed.putalpha(uploaded.convert("RGBA").getchannel("A"))
            # The format follows the upload's extension, as in ComfyUI; Pillow removes a file it
            # could not finish.
            composed.save(path, compress_level=4, pnginfo=metadata)
    except (UnidentifiedImageError, ValueError, KeyError) as error:
        # Not images, of different sizes, or a name whose extension Pillow cannot write.
        raise _BadUpload(f"the mask cannot be stored: {error}") from error
    except OSError as error:
        if error.errno is not None:
            raise  # the filesystem's word; _place decides whether the name is at fault
        raise _BadUpload(f"the mask cannot be stored: {error}") from error  # an encoder refusing the mode


def _original_path(original_ref: dict[str, Any], dirs: Directories) -> str | None:
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

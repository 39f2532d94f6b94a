"""Reading an upload request without holding it in memory: multipart parts are streamed, the
image part is spooled to a staging file while it is hashed, and every byte counts against the body
cap (answered 413 in aiohttp's words, as ComfyUI's request.post() would). A body that cannot be read
as a form raises UnreadableForm, which the handlers answer with ComfyUI's empty 400."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

_CHUNK_BYTES = 256 * 1024
# Text fields (type, subfolder, overwrite, original_ref) are held in memory, so they get their own cap.
_FIELD_MAX_BYTES = 1024 * 1024


@dataclass
class StagedFile:
    """The uploaded file, already on disk under a temporary name."""

    path: Path
    filename: str
    sha256: str
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


FieldValue = str | bytes  # a text field, or a non-text part sent without a filename


@dataclass
class UploadForm:
    fields: dict[str, FieldValue] = field(default_factory=dict)  # first value of each name
    image: StagedFile | FieldValue | None = None  # the first "image" part, file or not

    def discard(self) -> None:
        if isinstance(self.image, StagedFile):
            self.image.discard()


class UnreadableForm(Exception):
    """A body that is no form at all (a broken multipart, an unknown charset) or has an over-long field."""


class _ByteBudget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_bytes, actual_size=self.used)


async def read_upload_form(request: web.Request, max_bytes: int, staging_dir: Path) -> UploadForm:
    """The form fields and the image; raises HTTPRequestEntityTooLarge past `max_bytes`."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            posted = await request.post()  # small by nature, and capped by client_max_size
        except (ValueError, LookupError) as error:  # undecodable bytes, an unknown charset
            raise UnreadableForm(str(error)) from error
        form = UploadForm()
        for name, value in posted.items():
            if isinstance(value, str):
                form.fields.setdefault(name, value)
        form.image = form.fields.get("image")
        return form
    if request.content_type != "multipart/form-data":
        return UploadForm()  # request.post() finds no fields in any other body
    form = UploadForm()
    try:
        await _read_parts(request, form, _ByteBudget(max_bytes), staging_dir)
    except (ValueError, HttpProcessingError) as error:  # a missing boundary, a malformed body or part header
        form.discard()
        raise UnreadableForm(str(error)) from error
    except BaseException:
        form.discard()
        raise
    return form


async def _read_parts(request: web.Request, form: UploadForm, budget: _ByteBudget, staging_dir: Path) -> None:
    reader = await request.multipart()
    image_seen = False
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ValueError("nested multipart bodies are not supported")  # aiohttp's post() refuses them too
        name = part.name
        takes_image = name == "image" and not image_seen
        image_seen = image_seen or name == "image"
        if part.filename:
            if takes_image:
                form.image = await _spool(part, part.filename, budget, staging_dir)
            else:
                await _drain(part, budget)
            continue
        value = await _read_field(part, budget)
        if takes_image:
            form.image = value
        if name is not None:
            form.fields.setdefault(name, value)


async def _spool(part: BodyPartReader, filename: str, budget: _ByteBudget, staging_dir: Path) -> StagedFile:
    staging_dir.mkdir(parents=True, exist_ok=True)
    handle, raw_path = tempfile.mkstemp(prefix="upload-", dir=staging_dir)
    staged = StagedFile(Path(raw_path), filename, "", 0)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as sink:
            while chunk := await part.read_chunk(_CHUNK_BYTES):
                budget.spend(len(chunk))
                digest.update(chunk)
                sink.write(chunk)
                staged.size += len(chunk)
    except BaseException:
        staged.discard()
        raise
    staged.sha256 = digest.hexdigest()
    return staged


async def _drain(part: BodyPartReader, budget: _ByteBudget) -> None:
    while chunk := await part.read_chunk(_CHUNK_BYTES):
        budget.spend(len(chunk))


async def _read_field(part: BodyPartReader, budget: _ByteBudget) -> FieldValue:
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK_BYTES):
        budget.spend(len(chunk))
        data.extend(chunk)
        if len(data) > _FIELD_MAX_BYTES:
            raise UnreadableForm(f"form field {part.name!r} is longer than {_FIELD_MAX_BYTES} bytes")
    content_type = part.headers.get("Content-Type")
    if content_type is None or content_type.startswith("text/"):
        try:
            return bytes(data).decode(part.get_charset(default="utf-8"))
        except (UnicodeDecodeError, LookupError):
            # Kept as the bytes a non-text part would give: the handler then treats the field as
            # ComfyUI treats such a part, where request.post() itself would have raised.
            pass
    return bytes(data)

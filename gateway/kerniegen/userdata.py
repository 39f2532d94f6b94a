"""Per-user file storage as ComfyUI's single-user mode has it (user "default"): GET/POST /users,
the /userdata and /v2/userdata listings, and read/write/delete/move of /userdata/{file}, where a
sub-path travels as %2F inside the one segment. Paths escaping the user's directory get 403.

Existence is checked with os.path, which answers False for a name no file can have (too long, a
NUL byte) instead of raising, so such names get the answer a missing file gets; a write or move to
such a name, or one the filesystem refuses because of the name, gets ComfyUI's 400 for an invalid
filename instead of the 500 ComfyUI's own handler would raise into."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.path_names import blames_the_name, unstorable_reason
from gateway.kerniegen.responses import empty, server_error

log = logging.getLogger(__name__)

DEFAULT_USER = "default"
MAX_EXTRA_USERS = 1000  # POST /users names, kept in memory only (KernieGen serves one user)
_BODY_CHUNK_BYTES = 64 * 1024
_INVALID_FILENAME = 'Invalid filename. Please avoid special characters like :\\/*?"<>|'


@dataclass
class UserFiles:
    """The user directory (ComfyUI's user/) and the single user's root inside it (user/default)."""

    user_dir: Path
    max_body_bytes: int
    extra_users: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.user_dir / DEFAULT_USER

    def resolve(self, file: str) -> Path | None:
        """ComfyUI's get_request_user_filepath: the absolute path, or None when it leaves the root."""
        if "%" in file:  # a doubly encoded name is decoded once more, as ComfyUI does
            file = urllib.parse.unquote(file)
        root = str(self.root)
        path = os.path.abspath(os.path.join(root, file))
        if os.path.commonpath((root, path)) != root:
            return None
        return Path(path)


USER_FILES = web.AppKey("kerniegen_user_files", UserFiles)


def create_user_files(config: KernieGenConfig) -> UserFiles:
    user_dir = Path(config.user_dir).expanduser() if config.user_dir else Path(config.data_dir).expanduser() / "user"
    return UserFiles(Path(os.path.abspath(user_dir)), config.max_userdata_bytes)


def prepare_user_root(files: UserFiles) -> None:
    # ComfyUI answers /users with migrated=true once the user's directory exists; a missing one makes
    # the UI try to migrate browser-stored settings, which a fresh KernieGen has none of.
    files.root.mkdir(parents=True, exist_ok=True)


# -- users --------------------------------------------------------------------------------------------
async def get_users(request: web.Request) -> web.Response:
    files = request.app[USER_FILES]
    return web.json_response({"storage": "server", "migrated": files.root.exists()})


async def post_users(request: web.Request) -> web.Response:
    """Validated as ComfyUI does; the ids are remembered but requests still act as the one user."""
    files = request.app[USER_FILES]
    try:
        body = await request.json()
        username = body["username"]
        name = username.strip()
    except (ValueError, KeyError, TypeError, AttributeError):
        return server_error()
    if username in files.extra_users.values() or username == DEFAULT_USER:
        return web.json_response({"error": "Duplicate username."}, status=400)
    if not name:
        return web.json_response({"error": "username not provided"}, status=400)
    if len(files.extra_users) >= MAX_EXTRA_USERS:
        return web.json_response({"error": "Too many users."}, status=400)
    user_id = re.sub("[^a-zA-Z0-9-_]+", "-", name) + "_" + str(uuid.uuid4())
    files.extra_users[user_id] = name
    return web.json_response(user_id)


# -- listings -----------------------------------------------------------------------------------------
def _file_info(path: str, relative_to: str) -> dict[str, Any]:
    stat = os.stat(path)
    return {"path": os.path.relpath(path, relative_to).replace(os.sep, "/"), "size": stat.st_size,
            "modified": stat.st_mtime, "created": stat.st_ctime}


async def list_userdata(request: web.Request) -> web.Response:
    files = request.app[USER_FILES]
    directory = request.query.get("dir", "")
    if not directory:
        return web.Response(status=400, text="Directory not provided")
    path = files.resolve(directory)
    if path is None:
        return web.Response(status=403, text="Invalid directory")
    if not os.path.exists(path):
        return web.Response(status=404, text="Directory not found")
    recurse = request.query.get("recurse", "").lower() == "true"
    full_info = request.query.get("full_info", "").lower() == "true"
    split = request.query.get("split", "").lower() == "true"
    return web.json_response(await asyncio.to_thread(_listing, str(path), recurse, full_info, split))


def _listing(path: str, recurse: bool, full_info: bool, split: bool) -> list[Any]:
    # glob skips dot-files, as ComfyUI's listing does.
    pattern = os.path.join(glob.escape(path), "**", "*") if recurse else os.path.join(glob.escape(path), "*")
    found: list[Any] = []
    for full_path in glob.glob(pattern, recursive=recurse):
        if not os.path.isfile(full_path):
            continue
        if full_info:
            found.append(_file_info(full_path, path))
            continue
        relative = os.path.relpath(full_path, path).replace(os.sep, "/")
        found.append([relative, *relative.split("/")] if split else relative)
    return found


async def list_userdata_v2(request: web.Request) -> web.Response:
    files = request.app[USER_FILES]
    requested = urllib.parse.unquote(request.query.get("path", ""))
    target = files.resolve(requested) if requested else files.root
    if target is None:
        return web.Response(status=400, text="Invalid path requested")
    if not os.path.exists(target):
        if target == files.root:
            return web.json_response([])
        return web.Response(status=404, text="Requested path not found")
    if not os.path.isdir(target):
        return web.Response(status=400, text="Requested path is not a directory")
    try:
        return web.json_response(await asyncio.to_thread(_walk, target, files.root))
    except OSError:
        return web.Response(status=500, text="Error reading directory contents")


def _walk(target: Path, root: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for directory, dir_names, file_names in os.walk(target):
        for name in dir_names:
            relative = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
            found.append({"name": name, "path": relative, "type": "directory"})
        for name in file_names:
            full_path = os.path.join(directory, name)
            entry: dict[str, Any] = {"name": name, "path": os.path.relpath(full_path, root).replace(os.sep, "/"),
                                     "type": "file"}
            try:
                stat = os.stat(full_path)
                entry.update(size=stat.st_size, modified=stat.st_mtime)
            except OSError:
                pass  # listed with what is known, as ComfyUI does
            found.append(entry)
    found.sort(key=lambda item: (item["type"] != "directory", item["name"].lower()))
    return found


# -- one file -----------------------------------------------------------------------------------------
def _user_path(request: web.Request, param: str = "file", *, must_exist: bool = False) -> Path | web.Response:
    files = request.app[USER_FILES]
    file = request.match_info.get(param, "")
    if not file:
        return empty(400)
    path = files.resolve(file)
    if path is None:
        return empty(403)
    if must_exist and not os.path.exists(path):
        return empty(404)
    return path


async def get_userdata(request: web.Request) -> web.StreamResponse:
    path = _user_path(request, must_exist=True)
    if isinstance(path, web.Response):
        return path
    if not os.path.isfile(path):
        return empty(404)
    return web.FileResponse(path)


async def post_userdata(request: web.Request) -> web.Response:
    files = request.app[USER_FILES]
    path = _user_path(request)
    if isinstance(path, web.Response):
        return path
    if request.query.get("overwrite", "true") == "false" and os.path.exists(path):
        return web.Response(status=409, text="File already exists")
    if unstorable_reason(str(path), str(files.root)) is not None:
        return web.Response(status=400, reason=_INVALID_FILENAME)
    try:
        await _store_body(request, path, files.max_body_bytes)
    except OSError:  # ComfyUI answers every failed write so
        return web.Response(status=400, reason=_INVALID_FILENAME)
    return web.json_response(_describe(path, files, request))


async def _store_body(request: web.Request, path: Path, max_bytes: int) -> None:
    """Streams the body into a file beside `path`, renamed over it once complete (413 past max_bytes)."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    fd, temporary = await asyncio.to_thread(tempfile.mkstemp, dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as file:
            size = 0
            async for chunk in request.content.iter_chunked(_BODY_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
                await asyncio.to_thread(file.write, chunk)
        await asyncio.to_thread(os.replace, temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


async def delete_userdata(request: web.Request) -> web.Response:
    path = _user_path(request, must_exist=True)
    if isinstance(path, web.Response):
        return path
    if os.path.isdir(path):
        return empty(404)  # no file by that name (ComfyUI's os.remove raises and answers 500)
    try:
        await asyncio.to_thread(os.remove, path)
    except OSError as error:
        if blames_the_name(error):
            return empty(404)
        log.exception("kerniegen: could not delete %s", path)
        return server_error()
    return empty(204)


async def move_userdata(request: web.Request) -> web.Response:
    files = request.app[USER_FILES]
    source = _user_path(request, must_exist=True)
    if isinstance(source, web.Response):
        return source
    dest = _user_path(request, "dest")
    if isinstance(dest, web.Response):
        return dest
    if request.query.get("overwrite", "true") == "false" and os.path.exists(dest):
        return web.Response(status=409, text="File already exists")
    if unstorable_reason(str(dest), str(files.root)) is not None:
        return web.Response(status=400, reason=_INVALID_FILENAME)
    try:
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.move, source, dest)
    except shutil.Error:  # a directory into itself: the names, not the server, are at fault
        return web.Response(status=400, reason=_INVALID_FILENAME)
    except OSError as error:
        # ComfyUI's shutil.move raises here; a name the filesystem refuses gets its write's 400.
        if blames_the_name(error):
            return web.Response(status=400, reason=_INVALID_FILENAME)
        log.exception("kerniegen: could not move %s to %s", source, dest)
        return server_error()
    return web.json_response(_describe(dest, files, request))


def _describe(path: Path, files: UserFiles, request: web.Request) -> Any:
    if request.query.get("full_info", "false").lower() == "true":
        return _file_info(str(path), str(files.root))
    return os.path.relpath(path, files.root)

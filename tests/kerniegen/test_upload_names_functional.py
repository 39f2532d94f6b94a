"""Bad names sent to a real KernieGen: every file name, subfolder or form an upload can carry is
answered 200 or ComfyUI's empty 400, never a 500, and nothing is written outside the upload's
directory; userdata and static paths the filesystem cannot hold get 4xx, never a 500."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.kerniegen.server import KernieGenServer

BOUNDARY = b"kerniegen-names-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
PNG_BYTES = b"\x89PNG\r\n\x1a\n not decoded by /upload/image"

# aiohttp warns (once, in production) about each malformed Content-Disposition a client sends; the
# suite turns warnings into errors, which would make the server's own parser raise on them.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionParam",
                                        "ignore::aiohttp.BadContentDispositionHeader")


def quoted(name: bytes) -> bytes:
    """`filename="..."` with the name's own bytes, quotes and backslashes escaped."""
    return b'filename="' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def extended(name: bytes) -> bytes:
    """RFC 5987 `filename*=utf-8''...`: any bytes at all, NUL and newlines included, percent-encoded."""
    return b"filename*=utf-8''" + quote_from_bytes(name, safe="").encode()


def form(*parts: tuple[bytes, bytes | None, bytes | None, bytes]) -> bytes:
    """A multipart body from (name, filename parameter, Content-Type, payload), written byte by byte."""
    chunks = []
    for name, filename_param, content_type, payload in parts:
        disposition = b'form-data; name="' + name + b'"' + (b"; " + filename_param if filename_param else b"")
        head = b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        head += b"Content-Type: " + content_type + b"\r\n" if content_type else b""
        chunks.append(head + b"\r\n" + payload + b"\r\n")
    return b"".join(chunks) + b"--" + BOUNDARY + b"--\r\n"


def image(filename_param: bytes | None, *fields: tuple[bytes, bytes | None, bytes | None, bytes]) -> bytes:
    return form((b"image", filename_param, b"image/png", PNG_BYTES), *fields)


def text_field(name: bytes, value: bytes, content_type: bytes | None = None) -> tuple[bytes, None, bytes | None, bytes]:
    return name, None, content_type, value


async def post(http: aiohttp.ClientSession, url: str, body: bytes, content_type: str = MULTIPART) -> tuple[int, bytes]:
    async with http.post(url, data=io.BytesIO(body), headers={"Content-Type": content_type}) as response:
        return response.status, await response.read()


def outside_input(server: KernieGenServer) -> set[str]:
    """Every path beside the server's data dir and in it, except input/ and the (checked) staging dir."""
    root = Path(server.state.config.data_dir).parent
    skipped = {server.state.dirs.input, server.state.dirs.temp / ".kerniegen-uploads"}
    found: set[str] = set()
    for directory, dir_names, file_names in os.walk(root):
        dir_names[:] = [name for name in dir_names if Path(directory) / name not in skipped]
        found.update(os.fsdecode((Path(directory) / name).relative_to(root)) for name in (*dir_names, *file_names))
    return found


def staged_files(server: KernieGenServer) -> list[str]:
    staging = server.state.dirs.temp / ".kerniegen-uploads"
    return os.listdir(staging) if staging.exists() else []


LONG = b"a" * 256  # one byte over the usual 255-byte limit of a file name
BAD_UPLOADS = {
    # name: (body, Content-Type); ComfyUI's answer in the comment where it is not its own 400
    "absolute-quoted": (image(quoted(b"/etc/passwd")), MULTIPART),  # aiohttp strips the "/": ENOENT, 500
    "absolute-extended": (image(extended(b"/etc/passwd")), MULTIPART),
    "windows-absolute-into-missing-dir": (image(quoted(b"C:\\x/y.png")), MULTIPART),  # ENOENT, 500
    "dotdot": (image(quoted(b"../evil.png")), MULTIPART),
    "dotdot-extended": (image(extended(b"../../evil.png")), MULTIPART),
    "dot": (image(quoted(b".")), MULTIPART),  # the input dir itself: IsADirectoryError, 500
    "dot-overwrite": (image(quoted(b"."), text_field(b"overwrite", b"true")), MULTIPART),  # 500
    "name-too-long": (image(quoted(LONG)), MULTIPART),  # ENAMETOOLONG, 500
    "path-too-long": (image(quoted(b"/".join([b"d" * 200] * 21))), MULTIPART),  # 500
    "nul-in-name": (image(extended(b"a\0b.png")), MULTIPART),  # ValueError, 500
    "name-not-utf8-extended": (image(extended(b"a\xffb.png")), MULTIPART),  # no filename: plain field, 500
    "empty-name": (image(quoted(b"")), MULTIPART),  # plain field, 500 (recorded)
    "no-filename": (form((b"image", None, None, b"x")), MULTIPART),  # plain field, 500
    "image-not-text": (form((b"image", None, b"application/octet-stream", b"x")), MULTIPART),  # 500
    "into-missing-dir": (image(quoted(b"nowhere/x.png")), MULTIPART),  # ENOENT, 500
    "under-a-file": (image(quoted(b"taken.txt/x.png")), MULTIPART),  # ENOTDIR, 500
    "subfolder-absolute": (image(quoted(b"x.png"), text_field(b"subfolder", b"/etc")), MULTIPART),
    "subfolder-dotdot": (image(quoted(b"x.png"), text_field(b"subfolder", b"../..")), MULTIPART),
    "subfolder-too-long": (image(quoted(b"x.png"), text_field(b"subfolder", LONG)), MULTIPART),  # 500
    "subfolder-path-too-long": (image(quoted(b"x.png"), text_field(b"subfolder", b"s/" * 2100)), MULTIPART),  # 500
    "subfolder-too-deep": (image(quoted(b"x.png"), text_field(b"subfolder", b"s/" * 300)), MULTIPART),
    "subfolder-too-deep-name-climbing-out": (  # the file's own path is short, its folder is not
        image(quoted(b"../" * 1490 + b"x.png"), text_field(b"subfolder", b"s/" * 1500)), MULTIPART),
    "subfolder-deeper-than-recursion": (  # fits PATH_MAX; os.makedirs would hit RecursionError, 500
        image(quoted(b"x.png"), text_field(b"subfolder", b"s/" * 1500)), MULTIPART),
    "subfolder-nul": (image(quoted(b"x.png"), text_field(b"subfolder", b"a\0b")), MULTIPART),  # 500
    "subfolder-not-utf8": (image(quoted(b"x.png"), text_field(b"subfolder", b"a\xffb")), MULTIPART),  # 500
    "subfolder-unknown-charset": (
        image(quoted(b"x.png"), text_field(b"subfolder", b"a", b"text/plain; charset=nope")), MULTIPART),  # 500
    "subfolder-not-text": (
        image(quoted(b"x.png"), text_field(b"subfolder", b"a", b"application/octet-stream")), MULTIPART),  # 500
    "subfolder-is-a-file": (image(quoted(b"x.png"), text_field(b"subfolder", b"taken.txt")), MULTIPART),  # 500
    "subfolder-over-the-field-cap": (
        image(quoted(b"x.png"), text_field(b"subfolder", b"s" * 1_100_000)), MULTIPART),  # ENAMETOOLONG, 500
    "type-unknown": (image(quoted(b"x.png"), text_field(b"type", b"etc")), MULTIPART),  # unbound variable, 500
    "no-image": (form(text_field(b"type", b"input")), MULTIPART),
    "json-body": (b"{}", "application/json"),
    "no-body": (b"", "text/plain"),
    "multipart-without-boundary": (b"--x\r\n", "multipart/form-data"),  # request.post() raises, 500
    "multipart-garbage": (b"garbage", MULTIPART),  # 500
    "urlencoded-unknown-charset": (b"image=a", "application/x-www-form-urlencoded; charset=nope"),  # 500
    "urlencoded-image": (b"image=a.png&subfolder=..%2F..", "application/x-www-form-urlencoded"),  # 500
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
async def test_bad_uploads_get_comfyuis_400(case: str, kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    body, content_type = BAD_UPLOADS[case]
    (kerniegen.state.dirs.input / "taken.txt").write_bytes(b"in the way")
    before = outside_input(kerniegen)
    for route in ("/upload/image", "/api/upload/mask"):
        assert await post(http, kerniegen.url + route, body, content_type) == (400, b""), route
    assert outside_input(kerniegen) == before
    assert sorted(os.listdir(kerniegen.state.dirs.input)) == ["taken.txt"]
    assert staged_files(kerniegen) == []


@pytest.mark.parametrize(("filename_param", "fields", "stored_as"), [
    (quoted(b"C:\\x"), (), "C:\\x"),  # no drive letters on Linux: an ordinary name, as for ComfyUI
    (quoted(b"...."), (), "...."),
    (quoted(b"a" * 255), (), "a" * 255),
    (quoted(b"a\xffb.png"), (), os.fsdecode(b"a\xffb.png")),  # raw header bytes are kept (surrogateescape)
    (quoted(b"j.png"), (text_field(b"overwrite", b"\xff\xfejunk"),), "j.png"),  # junk overwrite: do not overwrite
    (quoted(b"k.png"), ((b"overwrite", quoted(b"o"), None, b"true"),), "k.png"),  # overwrite sent as a file
], ids=["windows-drive", "only-dots", "255-bytes", "raw-non-utf8", "junk-overwrite", "overwrite-as-file"])
async def test_odd_but_storable_uploads_are_stored_in_input(
    filename_param: bytes, fields: tuple[Any, ...], stored_as: str, kerniegen: KernieGenServer,
    http: aiohttp.ClientSession,
) -> None:
    status, body = await post(http, kerniegen.url + "/upload/image", image(filename_param, *fields))
    assert status == 200, body
    assert json.loads(body) == {"name": stored_as, "subfolder": "", "type": "input"}
    assert (kerniegen.state.dirs.input / stored_as).read_bytes() == PNG_BYTES


async def test_a_renamed_duplicate_that_would_be_too_long_gets_400(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    name = b"b" * 255
    (kerniegen.state.dirs.input / name.decode()).write_bytes(b"other bytes")  # forces "name (1)": 259 bytes
    assert await post(http, kerniegen.url + "/upload/image", image(quoted(name))) == (400, b"")
    assert os.listdir(kerniegen.state.dirs.input) == [name.decode()]


async def test_a_mask_that_cannot_be_applied_gets_400(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    (kerniegen.state.dirs.input / "orig.txt").write_bytes(b"not an image")
    reference = text_field(b"original_ref", json.dumps({"filename": "orig.txt", "type": "input"}).encode())
    assert await post(http, kerniegen.url + "/upload/mask", image(quoted(b"m.png"), reference)) == (400, b"")
    assert not (kerniegen.state.dirs.input / "m.png").exists()


# -- the property ----------------------------------------------------------------------------------
SPECIAL_NAMES = ["", ".", "..", "...", "/", "//", "/etc/passwd", "C:\\x", "C:\\", "\\\\server\\share", "a/", "./a",
                 "a/..", "a/../..", "~", "%2e%2e%2f", "con", "nul", "a\0b", "\u202e", "é" * 128, "a" * 255, "a" * 256]
names = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.text(max_size=30),
    # Long components and long paths, on both sides of the filesystem's 255-byte and 4096-byte limits.
    st.builds(lambda piece, count: piece * count, st.sampled_from(["a", "é", "/", "../", ".", "\\"]),
              st.integers(min_value=0, max_value=2500)),
    # Nested directories: shallow, around KernieGen's depth limit, deep, or too long for PATH_MAX.
    st.builds(lambda count: "x/" * count, st.one_of(st.integers(0, 40), st.integers(250, 260),
                                                    st.integers(900, 1100), st.integers(2050, 2500))),
)
name_bytes = st.one_of(names.map(lambda name: name.encode("utf-8", "surrogatepass")), st.binary(max_size=30))


@st.composite
def uploads(draw: st.DrawFn) -> bytes:
    filename = draw(name_bytes)
    if draw(st.booleans()):
        filename_param = extended(filename)
    else:  # a header cannot hold a line break, so the quoted form leaves them out
        filename_param = quoted(filename.replace(b"\r", b"").replace(b"\n", b""))
    fields = []
    if draw(st.booleans()):
        fields.append(text_field(b"subfolder", draw(name_bytes), draw(st.sampled_from([None, b"text/plain"]))))
    if draw(st.booleans()):
        fields.append(text_field(b"overwrite", draw(st.sampled_from([b"true", b"1", b"0", b"", b"\xff"]))))
    return image(filename_param, *draw(st.permutations(fields)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=uploads())
async def test_any_upload_name_gets_200_or_400_and_stays_in_input(
    body: bytes, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    inputs = kerniegen.state.dirs.input
    before = outside_input(kerniegen)
    status, answer = await post(http, kerniegen.url + "/upload/image", body)
    event(f"status {status}")
    assert status in (200, 400), answer
    assert outside_input(kerniegen) == before  # nothing written (or removed) outside input/
    assert staged_files(kerniegen) == []
    if status == 400:
        assert answer == b""
        return
    reply = json.loads(answer)
    stored = Path(os.path.abspath(inputs / os.path.normpath(reply["subfolder"]) / reply["name"]))
    assert stored.is_file() and inputs in stored.parents
    assert stored.read_bytes() == PNG_BYTES


# -- other routes that take a client's file name ---------------------------------------------------
@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/userdata/" + "a" * 300, 404), ("DELETE", "/userdata/" + "a" * 300, 404),
    ("GET", "/userdata/a%00b", 404), ("POST", "/userdata/a%00b", 400), ("POST", "/userdata/" + "a" * 300, 400),
    ("POST", "/userdata/" + "%2F".join(["c" * 200] * 25), 400),
    ("POST", "/userdata/" + "d%2F" * 1500 + "x.json", 400),  # deeper than os.makedirs can recurse
    ("POST", "/userdata/src.json/move/" + "d%2F" * 1500 + "x.json", 400),
    ("POST", "/userdata/src.json/move/" + "a" * 300, 400), ("POST", "/userdata/src.json/move/a%00b", 400),
    ("POST", "/userdata/src.json/move/src.json%2Fx", 400),  # under a file
    ("POST", "/userdata/dir/move/dir%2Fsub", 400),  # a directory into itself
    ("DELETE", "/userdata/dir", 404),  # a directory is no file
    ("GET", "/userdata?dir=" + "a" * 300, 404), ("GET", "/v2/userdata?path=" + "a" * 300, 404),
    ("GET", "/" + "a" * 300, 404), ("GET", "/extensions/" + "a" * 300, 404), ("GET", "/assets/a%00.js", 404),
    ("GET", "/view?filename=" + "a" * 300, 404), ("GET", "/view?filename=a%00", 404),
])
async def test_names_the_filesystem_cannot_hold_get_4xx_elsewhere(
    method: str, path: str, status: int, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    for setup in ("/userdata/src.json", "/userdata/dir%2Finside.json"):
        async with http.post(kerniegen.url + setup, data=b"{}") as response:
            assert response.status == 200
    async with http.request(method, kerniegen.url + path, data=b"{}") as response:
        assert response.status == status, await response.text()
    user_root = Path(kerniegen.state.config.data_dir) / "user" / "default"
    assert {"src.json", "dir"} <= set(os.listdir(user_root))  # a refused move or delete changes nothing

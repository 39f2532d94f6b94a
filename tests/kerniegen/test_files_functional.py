"""/view and /upload/* on a real socket, beyond the recorded cases: conditional and ranged reads,
large files, forced downloads, re-encoding failures, streamed uploads over the cap, renaming
chains, mask references ComfyUI ignores, and uploads LoadImage can use at once."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from PIL import Image

from gateway.kerniegen.responses import SERVER_ERROR_TEXT
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import get_json, history_entry, submit
from tests.kerniegen.test_conformance_files import multipart, png, upload


async def view(http: aiohttp.ClientSession, server: KernieGenServer, query: str,
               headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(f"{server.url}/view?{query}", headers=headers or {}) as response:
        return response.status, await response.read(), dict(response.headers)


async def test_view_supports_etag_ranges_and_head(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    content = png((9, 9, 9, 9), size=64)
    await upload(http, kerniegen, "a.png", content)
    status, body, headers = await view(http, kerniegen, "filename=a.png&type=input")
    assert (status, body, headers["Content-Type"]) == (200, content, "image/png")
    assert headers["Content-Disposition"] == 'filename="a.png"'
    assert (await view(http, kerniegen, "filename=a.png&type=input", {"If-None-Match": headers["Etag"]}))[0] == 304
    status, body, headers = await view(http, kerniegen, "filename=a.png&type=input", {"Range": "bytes=-10"})
    assert (status, body) == (206, content[-10:])
    async with http.head(f"{kerniegen.url}/view?filename=a.png&type=input") as response:
        assert (response.status, await response.read()) == (200, b"")
        assert response.headers["Content-Length"] == str(len(content))


async def test_view_streams_a_large_file_intact(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    content = bytes(range(256)) * (24 * 1024)  # 6 MiB
    (kerniegen.state.dirs.output / "big.bin").write_bytes(content)
    status, body, headers = await view(http, kerniegen, "filename=big.bin")
    assert (status, len(body), body == content) == (200, len(content), True)
    assert headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(("name", "content_type"), [("page.html", "application/octet-stream"),
                                                     ("app.js", "application/octet-stream"),
                                                     ("notes.txt", "text/plain")])
async def test_view_forces_downloads_of_active_content(
    name: str, content_type: str, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    (kerniegen.state.dirs.output / name).write_text("<script>alert(1)</script>")
    assert (await view(http, kerniegen, f"filename={name}"))[2]["Content-Type"] == content_type


@pytest.mark.parametrize(
    ("query", "status"),
    [("filename=x.png&subfolder=/etc", 403), ("filename=x.png&subfolder=a/../..", 403), ("filename=", 400),
     ("filename=a..b.png", 400), ("filename=x.png [temp]&type=output", 404), ("filename=notes.txt&preview=webp", 500),
     ("filename=notes.txt&channel=a", 500)],
)
async def test_view_refusals(query: str, status: int, kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    (kerniegen.state.dirs.output / "notes.txt").write_text("hello")
    got, body, _ = await view(http, kerniegen, query)
    assert got == status
    assert body == (SERVER_ERROR_TEXT.encode() if status == 500 else b"")


async def test_view_alpha_of_an_opaque_image(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    await upload(http, kerniegen, "rgb.png", png((1, 2, 3), mode="RGB"))
    status, body, _ = await view(http, kerniegen, "filename=rgb.png&type=input&channel=a")
    with Image.open(io.BytesIO(body)) as alpha:
        assert (status, alpha.mode, alpha.getpixel((0, 0))) == (200, "RGBA", (0, 0, 0, 255))


async def test_upload_renames_until_free_and_dedups_same_bytes(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    names = [(await upload(http, kerniegen, "x.png", png((shade, 0, 0, 255))))["name"] for shade in (1, 2, 3, 2)]
    assert names == ["x.png", "x (1).png", "x (2).png", "x (1).png"]


@pytest.mark.parametrize(
    ("fields", "status"),
    [({"type": "bogus"}, 400), ({"subfolder": "/abs"}, 400), ({"subfolder": "a/../../.."}, 400),
     ({"subfolder": "deep/er"}, 200), ({"overwrite": "yes"}, 200)],
)
async def test_upload_fields(
    fields: dict[str, str], status: int, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    form = aiohttp.FormData()
    form.add_field("image", png((5, 5, 5, 5)), filename="f.png", content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    async with http.post(f"{kerniegen.url}/upload/image", data=form) as response:
        assert response.status == status
    if status == 200 and "subfolder" in fields:
        assert (kerniegen.state.dirs.input / "deep" / "er" / "f.png").is_file()


async def test_oversized_text_fields_are_refused(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    body, content_type = multipart([("image", "f.png", "image/png", b"x"), ("subfolder", None, None, b"a" * 2_000_000)])
    headers = {"Content-Type": content_type}
    async with http.post(f"{kerniegen.url}/upload/image", data=io.BytesIO(body), headers=headers) as response:
        assert (response.status, await response.read()) == (400, b"")
    assert list((kerniegen.state.dirs.temp / ".kerniegen-uploads").iterdir()) == []  # the staged image is gone


async def test_upload_into_a_missing_directory_via_the_filename_is_a_bad_upload(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    body, content_type = multipart([("image", "nowhere/f.png", "image/png", b"x")])
    headers = {"Content-Type": content_type}
    async with http.post(f"{kerniegen.url}/upload/image", data=body, headers=headers) as response:
        # ComfyUI's open() raises (500); KernieGen gives its bad-upload answer and creates nothing.
        assert (response.status, await response.read()) == (400, b"")
    assert not (kerniegen.state.dirs.input / "nowhere").exists()


async def test_streamed_upload_over_the_cap_is_refused_and_leaves_nothing(
    start_kg: StartKernieGen, http: aiohttp.ClientSession
) -> None:
    cap = 256 * 1024
    server = await start_kg(max_upload_bytes=cap)
    body, content_type = multipart([("image", "big.png", "image/png", b"\0" * (cap * 3))])

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap must hold while streaming
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    headers = {"Content-Type": content_type}
    async with http.post(f"{server.url}/upload/image", data=chunks(), headers=headers) as response:
        assert (response.status, await response.text()) == (413, f"Maximum request body size {cap} exceeded.")
    staging = server.state.dirs.temp / ".kerniegen-uploads"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert not (server.state.dirs.input / "big.png").exists()
    assert (await upload(http, server, "small.png", b"ok"))["name"] == "small.png"


@pytest.mark.parametrize(
    ("original_ref", "status", "stored"),
    [(None, 400, False), ("not json", 400, False), ("[1]", 400, False), (json.dumps({"filename": 7}), 400, False),
     (json.dumps({"filename": "orig.png", "subfolder": ["x"]}), 400, False),
     (json.dumps({"filename": "missing.png", "type": "input"}), 200, False),
     (json.dumps({"filename": "../x.png"}), 200, False),
     (json.dumps({"filename": "orig.png", "type": "input", "subfolder": "../.."}), 200, False),
     (json.dumps({"filename": "orig.png [input]"}), 200, True)],
)
async def test_mask_references(
    original_ref: str | None, status: int, stored: bool, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    await upload(http, kerniegen, "orig.png", png((7, 7, 7, 255)))
    form = aiohttp.FormData()
    form.add_field("image", png((0, 0, 0, 0)), filename="mask.png", content_type="image/png")
    if original_ref is not None:
        form.add_field("original_ref", original_ref)
    async with http.post(f"{kerniegen.url}/upload/mask", data=form) as response:
        assert response.status == status
        if status == 200:
            assert await response.json() == {"name": "mask.png", "subfolder": "", "type": "input"}
    assert (kerniegen.state.dirs.input / "mask.png").exists() == stored


async def test_uploaded_image_is_listed_and_loadable(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    await upload(http, kerniegen, "src.png", png((200, 100, 50, 255), size=24), subfolder="mine")
    await upload(http, kerniegen, "top.png", png((1, 1, 1, 255)))
    info = await get_json(http, f"{kerniegen.url}/object_info/LoadImage")
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["top.png"]  # ComfyUI lists the top level only
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "mine/src.png"}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "kg/loaded"}}}
    entry = await history_entry(http, kerniegen, (await submit(http, kerniegen, prompt))["prompt_id"])
    ref = entry["outputs"]["3"]["images"][0]
    status, body, _ = await view(http, kerniegen, f"filename={ref['filename']}&subfolder={ref['subfolder']}")
    with Image.open(io.BytesIO(body)) as saved:
        assert (status, saved.size) == (200, (24, 24))
        inverted = saved.convert("RGB").getpixel((0, 0))  # ComfyUI's float32 round trip may lose one level
        assert all(abs(got - want) <= 1 for got, want in zip(inverted, (55, 155, 205), strict=True))

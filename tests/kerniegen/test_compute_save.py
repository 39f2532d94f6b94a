"""The savers: ComfyUI's file naming and counter scheme, PNG text chunks, temp previews, latent files."""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway.kerniegen.compute import NodeExecutionError, RunContext, run_node
from gateway.kerniegen.compute_models import SimLatent
from gateway.kerniegen.compute_save import get_save_image_path
from gateway.kerniegen.inventory import Inventory

PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 2, "batch_size": 1, "color": 0}}}


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    for folder in ("input", "output", "temp"):
        (tmp_path / folder).mkdir()
    return RunContext(
        prompt_id="p", prompt=PROMPT, extra_data={}, output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
        input_dir=tmp_path / "input", send_progress=lambda *args: None, send_image=lambda *args: None,
        send_text=lambda *args: None, inventory=Inventory())


def images(count: int = 1, size: tuple[int, int] = (4, 2)) -> list[Image.Image]:
    return [Image.new("RGB", size, (index, 0, 0)) for index in range(count)]


def save(ctx: RunContext, prefix: str, count: int = 1, size: tuple[int, int] = (4, 2)) -> list[dict[str, str]]:
    output = run_node("SaveImage", "9", {"images": images(count, size), "filename_prefix": prefix}, ctx)
    assert output.outputs == ()
    assert output.ui is not None
    return output.ui["images"]


def names(refs: list[dict[str, str]]) -> list[str]:
    return [ref["filename"] for ref in refs]


def test_default_prefix_numbers_from_one(ctx: RunContext) -> None:
    assert save(ctx, "ComfyUI") == [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
    assert (ctx.output_dir / "ComfyUI_00001_.png").is_file()


def test_counter_continues_per_prefix_and_folder(ctx: RunContext) -> None:
    assert names(save(ctx, "gwref/run", count=2)) == ["run_00001_.png", "run_00002_.png"]
    assert names(save(ctx, "gwref/run")) == ["run_00003_.png"]
    assert names(save(ctx, "gwref/runner")) == ["runner_00001_.png"]  # a longer prefix is another series
    assert names(save(ctx, "other/run")) == ["run_00001_.png"]  # another subfolder is another series
    assert save(ctx, "gwref/run")[0]["subfolder"] == "gwref"


def test_counter_starts_after_the_highest_existing_file(ctx: RunContext) -> None:
    (ctx.output_dir / "shots").mkdir()
    for name in ("x_00007_.png", "x_00003_.png", "x_notanumber_.png", "x_00099_.txt", "xy_00500_.png"):
        (ctx.output_dir / "shots" / name).write_bytes(b"")
    assert names(save(ctx, "shots/x")) == ["x_00100_.png"]


def test_nested_subfolders_are_created(ctx: RunContext) -> None:
    ref = save(ctx, "a/b/c/pic")[0]
    assert ref == {"filename": "pic_00001_.png", "subfolder": "a/b/c", "type": "output"}
    assert (ctx.output_dir / "a" / "b" / "c" / "pic_00001_.png").is_file()


def test_size_and_batch_number_substitutions(ctx: RunContext) -> None:
    refs = save(ctx, "%width%x%height%/img_%batch_num%", count=2, size=(40, 30))
    assert refs == [{"filename": "img_0_00001_.png", "subfolder": "40x30", "type": "output"},
                    {"filename": "img_1_00002_.png", "subfolder": "40x30", "type": "output"}]


def test_date_substitution(ctx: RunContext) -> None:
    ref = save(ctx, "%year%-%month%/day%day%")[0]
    assert ref["subfolder"] == time.strftime("%Y-%m") and re.fullmatch(r"day\d\d_00001_\.png", ref["filename"])


@pytest.mark.parametrize("prefix", ["../escape", "/etc/pwned", "a/../../escape"])
def test_prefix_cannot_leave_the_output_folder(prefix: str, ctx: RunContext) -> None:
    with pytest.raises(NodeExecutionError) as failure:
        save(ctx, prefix)
    error = failure.value
    assert error.exception_type == "Exception"
    assert error.exception_message.startswith("**** ERROR: Saving image outside the output folder is not allowed.")
    assert str(ctx.output_dir.parent) not in error.exception_message
    assert not list(ctx.output_dir.parent.parent.glob("escape*"))


def test_get_save_image_path_matches_comfyuis_tuple(tmp_path: Path) -> None:
    folder, filename, counter, subfolder = get_save_image_path("sub/name", tmp_path, 8, 8)
    assert (folder, filename, counter, subfolder) == (tmp_path / "sub", "name", 1, "sub")
    assert folder.is_dir()


def text_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """The tEXt chunks of a PNG file, in file order."""
    data = path.read_bytes()
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            chunks.append((key, value))
        offset += 12 + length
    return chunks


def test_prompt_and_extra_pnginfo_become_text_chunks(ctx: RunContext) -> None:
    ctx.extra_data = {"extra_pnginfo": {"workflow": {"nodes": []}, "note": "héllo"}, "client_id": "c"}
    ref = save(ctx, "meta")[0]
    chunks = text_chunks(ctx.output_dir / ref["filename"])
    assert chunks == [(b"prompt", json.dumps(PROMPT).encode()), (b"workflow", b'{"nodes": []}'),
                      (b"note", b'"h\\u00e9llo"')]


def test_without_extra_pnginfo_only_the_prompt_is_embedded(ctx: RunContext) -> None:
    ref = save(ctx, "plain")[0]
    assert [key for key, _ in text_chunks(ctx.output_dir / ref["filename"])] == [b"prompt"]


def test_extra_pnginfo_that_is_not_an_object_fails_the_node(ctx: RunContext) -> None:
    ctx.extra_data = {"extra_pnginfo": ["workflow"]}
    with pytest.raises(NodeExecutionError) as failure:
        save(ctx, "bad")
    assert failure.value.exception_type == "TypeError"


def test_preview_goes_to_temp_with_a_random_prefix(ctx: RunContext) -> None:
    output = run_node("PreviewImage", "2", {"images": images(2)}, ctx)
    assert output.ui is not None
    refs = output.ui["images"]
    match = re.fullmatch(r"ComfyUI_temp_([a-z]{5})_00001_\.png", refs[0]["filename"])
    assert match and "w" not in match.group(1)  # ComfyUI's alphabet has no "w"
    assert refs[1]["filename"] == f"ComfyUI_temp_{match.group(1)}_00002_.png"
    assert all(ref["type"] == "temp" and ref["subfolder"] == "" for ref in refs)
    assert sorted(path.name for path in ctx.temp_dir.iterdir()) == names(refs)
    assert not any(ctx.output_dir.iterdir())


def test_saved_files_are_pngs_of_the_image_size(ctx: RunContext) -> None:
    for ref in save(ctx, "sized", count=3, size=(33, 17)):
        with Image.open(ctx.output_dir / ref["filename"]) as image:
            assert (image.format, image.size) == ("PNG", (33, 17))


def test_save_latent_writes_a_safetensors_file(ctx: RunContext) -> None:
    output = run_node("SaveLatent", "9", {"samples": SimLatent(8, 6, 2), "filename_prefix": "latents/ComfyUI"}, ctx)
    assert output.ui == {"latents": [{"filename": "ComfyUI_00001_.latent", "subfolder": "latents", "type": "output"}]}
    data = (ctx.output_dir / "latents" / "ComfyUI_00001_.latent").read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8:8 + header_size])
    assert header["latent_tensor"]["shape"] == [2, 4, 6, 8]
    assert header["__metadata__"]["prompt"] == json.dumps(PROMPT)
    assert len(data) == 8 + header_size + 2 * 4 * 6 * 8 * 4

"""The output nodes: SaveImage, PreviewImage, SaveImageWebsocket and SaveLatent.

File names follow ComfyUI's folder_paths.get_save_image_path: the subfolder is the part of
filename_prefix before the last "/", %width%/%height%/%year%... are substituted, and the counter
continues after the highest "<prefix>_NNNNN_" already in that folder. PreviewImage writes to temp/
as ComfyUI_temp_<5 random letters>_NNNNN_.png.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.kerniegen.compute_types import FAKE_ROOT, NodeExecutionError, NodeOutput, RunContext, node_frame
from gateway.kerniegen.images import check_images, ensure_pixel_budget
from gateway.kerniegen.pnginfo import encode_latent_file, encode_png, encode_ws_png, png_info, prompt_metadata

_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # ComfyUI's alphabet, typo ("p" twice, no "w") included


def _substitute(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for token, value in (("%width%", str(width)), ("%height%", str(height)), ("%year%", str(now.tm_year)),
                         ("%month%", f"{now.tm_mon:02}"), ("%day%", f"{now.tm_mday:02}"),
                         ("%hour%", f"{now.tm_hour:02}"), ("%minute%", f"{now.tm_min:02}"),
                         ("%second%", f"{now.tm_sec:02}")):
        prefix = prefix.replace(token, value)
    return prefix


def get_save_image_path(prefix: str, output_dir: Path, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """(folder, file name stem, next counter, subfolder) for a filename_prefix, as ComfyUI computes them."""
    root = os.path.abspath(output_dir)
    if "%" in prefix:
        prefix = _substitute(prefix, width, height)
    prefix_length = len(os.path.basename(prefix))  # of the prefix as given, not normalised, as ComfyUI does
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(root, subfolder)
    if os.path.commonpath((root, os.path.abspath(folder))) != root:
        # ComfyUI prints absolute paths here; print them as if KernieGen lived in the fake install root.
        shown_root = f"{FAKE_ROOT}/output"
        shown = os.path.normpath(os.path.join(shown_root, subfolder))
        raise NodeExecutionError(
            "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: "
            f"{shown}\n         output_dir: {shown_root}\n         commonpath: "
            f"{os.path.commonpath((shown_root, shown))}",
            exception_type="Exception",
            node_frame=node_frame("folder_paths.py", 466, "get_save_image_path", "raise Exception(err)"))

    def numbered(name: str) -> tuple[int, str]:
        head = name[: prefix_length + 1]
        try:
            digits = int(name[prefix_length + 1:].split("_")[0])
        except ValueError:
            digits = 0
        return digits, head

    try:
        candidates = [numbered(name) for name in os.listdir(folder)]
        matching = [entry for entry in candidates if entry[1][:-1] == filename and entry[1][-1:] == "_"]
        counter = max(matching)[0] + 1 if matching else 1
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        counter = 1
    return Path(folder), filename, counter, subfolder


def _write_images(inputs: dict[str, Any], ctx: RunContext, *, prefix: str, folder: Path, kind: str,
                  compress_level: int) -> NodeOutput:
    images = check_images(inputs["images"])
    width, height = images[0].size
    target, filename, counter, subfolder = get_save_image_path(prefix, folder, width, height)
    info = png_info(prompt_metadata(ctx.prompt, ctx.extra_data))
    encoded: dict[int, bytes] = {}  # a batch sharing one picture encodes it once
    results = []
    for batch_number, image in enumerate(images):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        if id(image) not in encoded:
            encoded[id(image)] = encode_png(image, info, compress_level)
        (target / name).write_bytes(encoded[id(image)])
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return NodeOutput((), {"images": results})


def save_image(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    return _write_images(inputs, ctx, prefix=inputs.get("filename_prefix", "ComfyUI"), folder=ctx.output_dir,
                         kind="output", compress_level=4)


def preview_image(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    prefix = "ComfyUI_temp_" + "".join(random.choice(_TEMP_LETTERS) for _ in range(5))
    return _write_images(inputs, ctx, prefix=prefix, folder=ctx.temp_dir, kind="temp", compress_level=1)


def save_image_websocket(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    """Each image goes out as a progress step followed by a binary PNG frame; nothing is written."""
    images = check_images(inputs["images"])
    encoded: dict[int, bytes] = {}
    for step, image in enumerate(images):
        ctx.send_progress(node_id, step, len(images))
        if id(image) not in encoded:
            encoded[id(image)] = encode_ws_png(image)
        ctx.send_image(node_id, "PNG", encoded[id(image)])
    return NodeOutput((), None)


def save_latent(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    latent = inputs["samples"]
    ensure_pixel_budget(latent.width, latent.height, latent.batch_size * 4)
    target, filename, counter, subfolder = get_save_image_path(
        inputs.get("filename_prefix", "ComfyUI"), ctx.output_dir)
    metadata = {"prompt": ""}
    metadata.update(prompt_metadata(ctx.prompt, ctx.extra_data))
    name = f"{filename}_{counter:05}_.latent"
    shape = (latent.batch_size, 4, latent.height, latent.width)
    (target / name).write_bytes(encode_latent_file(shape, metadata))
    return NodeOutput((), {"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


NODE_FUNCTIONS: dict[str, Callable[[str, dict[str, Any], RunContext], NodeOutput]] = {
    "SaveImage": save_image,
    "PreviewImage": preview_image,
    "SaveImageWebsocket": save_image_websocket,
    "SaveLatent": save_latent,
}

"""The model-free image and mask nodes, computing what ComfyUI 0.3.64 computes.

EmptyImage, ImageInvert, LoadImage (and its mask), ImageToMask and MaskToImage give ComfyUI's exact bytes;
ImageScale is exact for lanczos (ComfyUI uses Pillow there too); for the torch interpolation modes it uses
Pillow's closest filter, which is near but not bit-identical.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from gateway.kerniegen.compute_types import FAKE_ROOT, NodeExecutionError, NodeOutput, RunContext, node_frame
from gateway.kerniegen.images import (
    Images,
    Masks,
    check_images,
    distinct_count,
    ensure_pixel_budget,
    filled_batch,
    invert_table,
    map_batch,
)
from gateway.kerniegen.images_files import file_exists, resolve_annotated_path

_RESAMPLING: dict[str, Image.Resampling] = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_MASK_CHANNELS = ("red", "green", "blue", "alpha")


def empty_image(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    color = inputs.get("color", 0)
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    # Every byte survives ComfyUI's float32 round trip unchanged, so the stored bytes are the colour's.
    images = filled_batch(inputs["width"], inputs["height"], rgb, inputs.get("batch_size", 1))
    return NodeOutput((images,))


def image_invert(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    table = list(invert_table()) * 3
    return NodeOutput((map_batch(check_images(inputs["image"]), lambda image: image.point(table)),))


def image_scale(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    images = check_images(inputs["image"])
    width, height = inputs["width"], inputs["height"]
    if width == 0 and height == 0:
        return NodeOutput((images,))
    old_width, old_height = images[0].size
    if width == 0:
        width = max(1, round(old_width * height / old_height))
    elif height == 0:
        height = max(1, round(old_height * width / old_width))
    return NodeOutput((_resize(images, width, height, inputs["upscale_method"], inputs["crop"]),))


def image_scale_by(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    images = check_images(inputs["image"])
    old_width, old_height = images[0].size
    width, height = round(old_width * inputs["scale_by"]), round(old_height * inputs["scale_by"])
    return NodeOutput((_resize(images, width, height, inputs["upscale_method"], "disabled"),))


def _resize(images: Images, width: int, height: int, method: str, crop: str) -> Images:
    """comfy.utils.common_upscale: optional centre crop to the new aspect, then the resampling."""
    if width <= 0 or height <= 0:
        raise NodeExecutionError("Input and output sizes should be greater than 0, but got output (H: "
                                 f"{height}, W: {width})", exception_type="RuntimeError")
    ensure_pixel_budget(width, height, distinct_count(images))
    old_width, old_height = images[0].size
    left = top = 0
    if crop == "center":
        old_aspect, new_aspect = old_width / old_height, width / height
        if old_aspect > new_aspect:
            left = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            top = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    box = (left, top, old_width - left, old_height - top)
    resample = _RESAMPLING[method]
    return map_batch(images, lambda image: image.resize((width, height), resample, box=box))


def get_image_size(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    images = check_images(inputs["image"])
    width, height = images[0].size
    ctx.send_text(node_id, f"width: {width}, height: {height}\n batch size: {len(images)}")
    return NodeOutput((width, height, len(images)))


def image_to_mask(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    images = check_images(inputs["image"])
    index = _MASK_CHANNELS.index(inputs["channel"])
    if index >= 3:  # IMAGE is always RGB in ComfyUI, so "alpha" indexes past the last channel
        raise NodeExecutionError(
            f"index {index} is out of bounds for dimension 3 with size 3", exception_type="IndexError",
            node_frame=node_frame("comfy_extras/nodes_mask.py", 137, "image_to_mask",
                                  "mask = image[:, :, :, channels.index(channel)]", " " * 11 + "~" * 5 + "^" * 34))
    return NodeOutput((map_batch(images, lambda image: image.getchannel(index)),))


def mask_to_image(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    masks: Masks = inputs["mask"]
    return NodeOutput((map_batch(masks, lambda mask: Image.merge("RGB", (mask, mask, mask))),))


def load_image(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    images: Images = []
    masks: Masks = []
    size: tuple[int, int] | None = None
    with _open_input_image(inputs["image"], ctx) as opened:
        for frame in ImageSequence.Iterator(opened):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda value: value * (1 / 255))
            rgb = frame.convert("RGB")
            size = size or rgb.size
            if rgb.size != size:  # ComfyUI skips frames whose size differs from the first
                continue
            ensure_pixel_budget(size[0], size[1], len(images) + 1)
            images.append(rgb)
            masks.append(_alpha_mask(frame))
        if len(images) > 1 and opened.format == "MPO":  # ComfyUI keeps only the first picture of an MPO
            images, masks = images[:1], masks[:1]
    return NodeOutput((images, masks))


def load_image_mask(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    with _open_input_image(inputs["image"], ctx) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.getbands() != ("R", "G", "B", "A"):
            if image.mode == "I":
                image = image.point(lambda value: value * (1 / 255))
            image = image.convert("RGBA")
        band = inputs["channel"][0].upper()
        mask = image.getchannel(band)
    return NodeOutput(([mask.point(invert_table()) if band == "A" else mask],))


def _alpha_mask(frame: Image.Image) -> Image.Image:
    """LoadImage's MASK: 1 - alpha, or a 64x64 zero mask when the picture has no transparency."""
    if "A" in frame.getbands():
        return frame.getchannel("A").point(invert_table())
    if frame.mode == "P" and "transparency" in frame.info:
        return frame.convert("RGBA").getchannel("A").point(invert_table())
    return Image.new("L", (64, 64), 0)


def _open_input_image(name: str, ctx: RunContext) -> Image.Image:
    path = resolve_annotated_path(name, ctx.input_dir, ctx.output_dir, ctx.temp_dir)
    shown = f"{FAKE_ROOT}/input/{name}"  # as ComfyUI's messages print it, never the real path
    if path is None or not file_exists(path):
        raise NodeExecutionError(f"[Errno 2] No such file or directory: '{shown}'", exception_type="FileNotFoundError")
    if path.is_dir():
        raise NodeExecutionError(f"[Errno 21] Is a directory: '{shown}'", exception_type="IsADirectoryError")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise NodeExecutionError("image too large to load", exception_type="PIL.Image.DecompressionBombError") from None
    except UnidentifiedImageError:
        raise NodeExecutionError(f"cannot identify image file '{shown}'",
                                 exception_type="PIL.UnidentifiedImageError") from None
    try:
        ensure_pixel_budget(image.width, image.height, 1)
    except NodeExecutionError:
        image.close()
        raise
    return image


NODE_FUNCTIONS: dict[str, Callable[[str, dict[str, Any], RunContext], NodeOutput]] = {
    "EmptyImage": empty_image,
    "ImageInvert": image_invert,
    "ImageScale": image_scale,
    "ImageScaleBy": image_scale_by,
    "GetImageSize": get_image_size,
    "ImageToMask": image_to_mask,
    "MaskToImage": mask_to_image,
    "LoadImage": load_image,
    "LoadImageMask": load_image_mask,
}

"""Definitions of the model-free nodes: image and mask sources, transforms and savers.

Values are ComfyUI 0.3.64's as served on GET /object_info (07_object_info_mock_classes.json), except
SaveLatent, which is rebuilt from ComfyUI's nodes.py because the recordings only name it.
"""

from __future__ import annotations

from typing import Any

from gateway.kerniegen.nodes_defs import INPUT_IMAGES, SAVER_HIDDEN, Choices, define_node

UPSCALE_METHODS: list[str] = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS: list[str] = ["disabled", "center"]
IMAGE_TO_MASK_CHANNELS: list[str] = ["red", "green", "blue", "alpha"]
LOAD_MASK_CHANNELS: list[str] = ["alpha", "red", "green", "blue"]
MAX_COLOR = 0xFFFFFF

_IMAGE_LIST: list[Any] = [Choices(INPUT_IMAGES), {"image_upload": True}]


def _side(minimum: int) -> list[Any]:
    return ["INT", {"default": 512, "min": minimum, "max": 16384, "step": 1}]


IMAGE_NODES: dict[str, dict[str, Any]] = {
    "SaveImage": define_node(
        "SaveImage",
        required={
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {
                "default": "ComfyUI",
                "tooltip": "The prefix for the file to save. This may include formatting information such as "
                           "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}],
        },
        hidden=SAVER_HIDDEN,
        display_name="Save Image",
        description="Saves the input images to your ComfyUI output directory.",
        category="image",
        output_node=True,
    ),
    "PreviewImage": define_node(
        "PreviewImage",
        required={"images": ["IMAGE"]},
        hidden=SAVER_HIDDEN,
        display_name="Preview Image",
        # Inherited from SaveImage in ComfyUI, wrong directory and all.
        description="Saves the input images to your ComfyUI output directory.",
        category="image",
        output_node=True,
    ),
    "LoadImage": define_node(
        "LoadImage",
        required={"image": _IMAGE_LIST},
        output=("IMAGE", "MASK"),
        display_name="Load Image",
        category="image",
    ),
    "LoadImageMask": define_node(
        "LoadImageMask",
        required={"image": _IMAGE_LIST, "channel": [LOAD_MASK_CHANNELS]},
        output=("MASK",),
        display_name="Load Image (as Mask)",
        category="mask",
    ),
    "ImageScale": define_node(
        "ImageScale",
        required={
            "image": ["IMAGE"],
            "upscale_method": [UPSCALE_METHODS],
            "width": _side(0),
            "height": _side(0),
            "crop": [CROP_METHODS],
        },
        output=("IMAGE",),
        display_name="Upscale Image",
        category="image/upscaling",
    ),
    "ImageScaleBy": define_node(
        "ImageScaleBy",
        required={
            "image": ["IMAGE"],
            "upscale_method": [UPSCALE_METHODS],
            "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}],
        },
        output=("IMAGE",),
        display_name="Upscale Image By",
        category="image/upscaling",
    ),
    "ImageInvert": define_node(
        "ImageInvert",
        required={"image": ["IMAGE"]},
        output=("IMAGE",),
        display_name="Invert Image",
        category="image",
    ),
    "EmptyImage": define_node(
        "EmptyImage",
        required={
            "width": _side(1),
            "height": _side(1),
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            "color": ["INT", {"default": 0, "min": 0, "max": MAX_COLOR, "step": 1, "display": "color"}],
        },
        output=("IMAGE",),
        category="image",
    ),
    "ImageToMask": define_node(
        "ImageToMask",
        required={"image": ["IMAGE"], "channel": [IMAGE_TO_MASK_CHANNELS]},
        output=("MASK",),
        display_name="Convert Image to Mask",
        python_module="comfy_extras.nodes_mask",
        category="mask",
    ),
    "MaskToImage": define_node(
        "MaskToImage",
        required={"mask": ["MASK"]},
        output=("IMAGE",),
        display_name="Convert Mask to Image",
        python_module="comfy_extras.nodes_mask",
        category="mask",
    ),
    "GetImageSize": define_node(
        "GetImageSize",
        required={"image": ["IMAGE"]},
        hidden={"unique_id": "UNIQUE_ID"},
        output=("INT", "INT", "INT"),
        output_name=("width", "height", "batch_size"),
        display_name="Get Image Size",
        description="Returns width and height of the image, and passes it through unchanged.",
        python_module="comfy_extras.nodes_images",
        category="image",
    ),
    "SaveImageWebsocket": define_node(
        "SaveImageWebsocket",
        required={"images": ["IMAGE"]},
        python_module="custom_nodes.websocket_image_save",
        category="api/image",
        output_node=True,
    ),
    "SaveLatent": define_node(
        "SaveLatent",
        required={"samples": ["LATENT"], "filename_prefix": ["STRING", {"default": "latents/ComfyUI"}]},
        hidden=SAVER_HIDDEN,
        category="_for_testing",
        output_node=True,
    ),
}

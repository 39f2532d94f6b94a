"""Which combo inputs list file names, and which folder those files live in.

A combo's options are file names when the input is a known file input (by its name, or by its node class and
name where the name alone is ambiguous), when it takes uploads (`image_upload` and its kin: the options are the
input folder's files), or when every option, placeholders aside, ends in a model or image extension. The rule
leans towards "not files": a combo wrongly called files would show sampler names as models in the catalog and
send prompts chasing a file no backend has, while a file list missed only leaves a custom node's files out of
the catalog. Names are ComfyUI 0.3.64's (its loaders in nodes.py and comfy_extras), folders those of its
GET /models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# ComfyUI 0.3.64's GET /models, in its order: the folder names a model catalog speaks.
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
)
# Not a model folder: what LoadImage and the other upload combos list (ComfyUI's input/ directory).
INPUT_FOLDER = "input"
FOLDERS: frozenset[str] = frozenset((*MODEL_FOLDERS, INPUT_FOLDER))

# Names every loader that has them means the same way, core or custom (ComfyUI-GGUF's loaders reuse them too).
FOLDER_BY_INPUT: Mapping[str, str] = {
    "ckpt_name": "checkpoints",
    "config_name": "configs",
    "lora_name": "loras",
    "vae_name": "vae",
    "unet_name": "diffusion_models",  # ComfyUI folds models/unet into diffusion_models
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "control_net_name": "controlnet",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "upscale_model": "upscale_models",
    "photomaker_model_name": "photomaker",
    "audio_encoder_name": "audio_encoders",
    "image": INPUT_FOLDER,  # LoadImage, LoadImageMask: only ever a combo when it lists input files
}
# Names that mean a folder only in one class: `clip_name` is a CLIP vision model here; `model_name` and `name`
# are also API nodes' model choices ("kling-v1") and custom nodes' anything, so elsewhere only their options'
# extensions can make them files.
FOLDER_BY_CLASS_INPUT: Mapping[tuple[str, str], str] = {
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("ModelPatchLoader", "name"): "model_patches",
}
# Options of a combo that takes uploads are the input folder's files (the frontend's upload widgets).
UPLOAD_FLAGS: tuple[str, ...] = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")

# ComfyUI's supported_pt_extensions, plus ComfyUI-GGUF's, the most common custom model format.
MODEL_EXTENSIONS: frozenset[str] = frozenset(
    {"ckpt", "pt", "pt2", "bin", "pth", "safetensors", "pkl", "sft", "gguf"}
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({"png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"})
FILE_EXTENSIONS: frozenset[str] = MODEL_EXTENSIONS | IMAGE_EXTENSIONS
# What custom nodes put before their files to mean "no file"; it does not make a list any less a file list.
PLACEHOLDERS: frozenset[str] = frozenset({"", "none", "None", "NONE"})
MAX_EXTENSION_CHARS = 16


def extension(name: str) -> str | None:
    """The lower-cased extension of a file name's last path part ("sdxl/base.SafeTensors" → "safetensors")."""
    base = name.replace("\\", "/").rpartition("/")[2]
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem or not 0 < len(suffix) <= MAX_EXTENSION_CHARS or not suffix.isalnum():
        return None
    return suffix.lower()


def looks_like_file(name: str) -> bool:
    """A name with an extension: how a folder's real files differ from the entries a loader lists beside
    them (VAELoader's "pixel_space" and "taesd", a custom node's "None"). ComfyUI lists a model folder's files
    only with the folder's extensions, so every real one has one."""
    return extension(name) is not None


def file_folder(class_type: str, input_name: str, options: Mapping[str, object]) -> str | None:
    """The folder a combo input's options come from, when its class and name (or its upload flag) say so."""
    folder = FOLDER_BY_CLASS_INPUT.get((class_type, input_name)) or FOLDER_BY_INPUT.get(input_name)
    if folder is not None:
        return folder
    if any(options.get(flag) is True for flag in UPLOAD_FLAGS):
        return INPUT_FOLDER
    return None


def all_file_names(values: Iterable[object]) -> bool:
    """Every option but the placeholders is a name with a known model or image extension, and there is one."""
    seen = False
    for value in values:
        if isinstance(value, str) and value in PLACEHOLDERS:
            continue
        if not isinstance(value, str) or extension(value) not in FILE_EXTENSIONS:
            return False
        seen = True
    return seen

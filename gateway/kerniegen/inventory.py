"""KernieGen's model inventory: the model files it pretends to have installed.

The inventory fills the model lists in /object_info, the combo checks of validation and the
/models listings, so tests can create backends that differ in what they can run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# ComfyUI 0.3.64 lists these model folders, in this order, on GET /models (07_models.json).
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


@dataclass(frozen=True)
class Inventory:
    """File names per model folder; names may contain '/' for files in subfolders.

    Each field is named after the ComfyUI model folder it fills; folders without a field stay empty.
    """

    checkpoints: tuple[str, ...] = ("illustriousXL_v01.safetensors",)
    loras: tuple[str, ...] = ("kerniegen_detail_lora_v1.safetensors",)
    vae: tuple[str, ...] = ()
    embeddings: tuple[str, ...] = ()
    diffusion_models: tuple[str, ...] = ()  # UNETLoader's unet_name
    controlnet: tuple[str, ...] = ()
    upscale_models: tuple[str, ...] = ()
    style_models: tuple[str, ...] = ()
    gligen: tuple[str, ...] = ()

    def folders(self) -> dict[str, list[str]]:
        """Folder name -> sorted file names, for /models and /models/{folder}."""
        # ComfyUI's get_filename_list answers sorted(set(...)), whatever order the disk gives.
        known = {item.name: getattr(self, item.name) for item in fields(self)}
        return {name: sorted(set(known.get(name, ()))) for name in MODEL_FOLDERS}

    def filenames(self, folder: str) -> list[str]:
        """The sorted file list of one folder (empty for a folder KernieGen never fills)."""
        return self.folders().get(folder, [])


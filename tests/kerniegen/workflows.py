"""Prompts the KernieGen server tests submit, taken from the recorded transcripts where one exists,
plus small stand-ins for the recorder's slow chains (same shape, a fraction of the pixels)."""

from __future__ import annotations

from typing import Any

from tests.kerniegen.transcript_replay import exchanges, load


def recorded_prompt(transcript: str, index: int = 0) -> dict[str, Any]:
    """The `prompt` of the index-th POST /prompt in a transcript."""
    posts = [item for item in exchanges(load(transcript)) if item["request"]["method"] == "POST"
             and item["request"]["path"].endswith("/prompt")]
    prompt: dict[str, Any] = posts[index]["request"]["body"]["json"]["prompt"]
    return prompt


def save_image(color: int = 0, prefix: str = "kg/test", *, size: int = 64, batch_size: int = 1) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": size, "height": size, "batch_size": batch_size, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def slow_chain(color: int = 0, scales: int = 8, prefix: str = "kg/slow") -> dict[str, Any]:
    """EmptyImage -> `scales` alternating ImageScale nodes -> SaveImage, ids as the recorder used."""
    prompt: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color}},
    }
    previous = "1"
    for index in range(scales):
        node_id = str(10 + index)
        size = 64 if index % 2 == 0 else 32
        prompt[node_id] = {"class_type": "ImageScale", "inputs": {
            "image": [previous, 0], "upscale_method": "lanczos", "width": size, "height": size, "crop": "disabled"}}
        previous = node_id
    prompt["9"] = {"class_type": "SaveImage", "inputs": {"images": [previous, 0], "filename_prefix": prefix}}
    return prompt


def txt2img(seed: Any = 42, *, width: int = 512, height: int = 512, prefix: str = "kg/txt2img",
            ckpt_name: str = "illustriousXL_v01.safetensors", steps: int = 20,
            text: str = "a red fox") -> dict[str, Any]:
    """The classic txt2img graph; `seed` as given (the guardrail tests send seeds ComfyUI refuses)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def unet_txt2img(unet_name: str, *, weight_dtype: str = "default", prefix: str = "kg/unet") -> dict[str, Any]:
    """txt2img whose KSampler samples with a UNETLoader's model (text encoder and VAE from the checkpoint)."""
    prompt = txt2img(prefix=prefix)
    prompt["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": weight_dtype}}
    prompt["3"]["inputs"]["model"] = ["1", 0]
    return prompt


def image_only_txt2img(ckpt_name: str, *, prefix: str = "kg/image-only") -> dict[str, Any]:
    """txt2img with an ImageOnlyCheckpointLoader's MODEL and VAE (text still encoded with the checkpoint's CLIP)."""
    prompt = txt2img(prefix=prefix)
    prompt["1"] = {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": ckpt_name}}
    prompt["3"]["inputs"]["model"] = ["1", 0]
    prompt["8"]["inputs"]["vae"] = ["1", 2]
    return prompt

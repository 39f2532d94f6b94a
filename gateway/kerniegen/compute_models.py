"""The simulated model nodes: checkpoints, LoRAs, CLIP, latents, samplers and the VAE.

No model runs. Each node passes along a small frozen record of what it was asked to do; the samplers
fold their settings into a recipe digest and report a progress step per sampling step, and VAEDecode
paints a picture from that digest (images_pattern), at the latent's size x 8, one per batch entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gateway.kerniegen.compute_types import NodeOutput, RunContext
from gateway.kerniegen.images import Images, ensure_pixel_budget, filled_batch
from gateway.kerniegen.images_pattern import recipe_digest, render_pattern

LATENT_SCALE = 8  # one latent cell is 8x8 pixels, as for every SD-family VAE
_UNSAMPLED_GREY = (128, 128, 128)  # what decoding an all-zero latent roughly looks like


@dataclass(frozen=True)
class SimModel:
    checkpoint: str
    loras: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class SimClip:
    checkpoint: str
    loras: tuple[tuple[str, float], ...] = ()
    stop_at_layer: int = -1


@dataclass(frozen=True)
class SimVae:
    name: str


@dataclass(frozen=True)
class SimConditioning:
    text: str
    clip: SimClip


@dataclass(frozen=True)
class SimLatent:
    width: int  # in latent cells (pixels / 8)
    height: int
    batch_size: int
    recipe: bytes | None = None  # None until a sampler has "denoised" it
    text: str = ""  # the positive prompt of the last sampling, which picks the palette


def checkpoint_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    name = inputs["ckpt_name"]
    return NodeOutput((SimModel(name), SimClip(name), SimVae(name)))


def lora_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    model, clip = inputs["model"], inputs["clip"]
    strength_model, strength_clip = inputs["strength_model"], inputs["strength_clip"]
    if strength_model == 0 and strength_clip == 0:  # ComfyUI returns both untouched
        return NodeOutput((model, clip))
    name = inputs["lora_name"]
    return NodeOutput((replace(model, loras=(*model.loras, (name, strength_model))),
                       replace(clip, loras=(*clip.loras, (name, strength_clip)))))


def lora_loader_model_only(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    model, strength = inputs["model"], inputs["strength_model"]
    if strength == 0:
        return NodeOutput((model,))
    return NodeOutput((replace(model, loras=(*model.loras, (inputs["lora_name"], strength))),))


def clip_set_last_layer(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    return NodeOutput((replace(inputs["clip"], stop_at_layer=inputs["stop_at_clip_layer"]),))


def clip_text_encode(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    return NodeOutput((SimConditioning(inputs["text"], inputs["clip"]),))


def empty_latent_image(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    width, height = inputs["width"] // LATENT_SCALE, inputs["height"] // LATENT_SCALE
    return NodeOutput((SimLatent(width, height, inputs.get("batch_size", 1)),))


def latent_upscale(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    latent: SimLatent = inputs["samples"]
    width, height = inputs["width"], inputs["height"]
    if width == 0 and height == 0:
        return NodeOutput((latent,))
    # ComfyUI's arithmetic: sizes in pixels, at least 64, the missing side from the latent's aspect.
    if width == 0:
        height = max(64, height)
        width = max(64, round(latent.width * height / latent.height))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(latent.height * width / latent.width))
    else:
        width, height = max(64, width), max(64, height)
    # The picture keeps its layout; only its size changes, like an upscaled latent.
    return NodeOutput((replace(latent, width=width // LATENT_SCALE, height=height // LATENT_SCALE),))


def ksampler(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    steps = inputs["steps"] if inputs.get("denoise", 1.0) > 0 else 0
    return NodeOutput((_sample(node_id, ctx, inputs, seed=inputs["seed"], steps=steps),))


def ksampler_advanced(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    last = min(inputs["end_at_step"], inputs["steps"])
    steps = max(0, last - inputs["start_at_step"])
    return NodeOutput((_sample(node_id, ctx, inputs, seed=inputs["noise_seed"], steps=steps),))


def _sample(node_id: str, ctx: RunContext, inputs: dict[str, Any], *, seed: int, steps: int) -> SimLatent:
    latent: SimLatent = inputs["latent_image"]
    positive: SimConditioning = inputs["positive"]
    negative: SimConditioning = inputs["negative"]
    for step in range(1, steps + 1):
        ctx.send_progress(node_id, step, steps)
    if steps == 0:  # ComfyUI hands back the input latent when there is nothing to sample
        return latent
    settings = tuple(sorted((key, value) for key, value in inputs.items()
                            if isinstance(value, (int, float, str)) and not isinstance(value, bool)))
    recipe = recipe_digest(latent.recipe, seed, inputs["model"], positive, negative, settings)
    return replace(latent, recipe=recipe, text=positive.text)


def vae_loader(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    return NodeOutput((SimVae(inputs["vae_name"]),))


def vae_decode(node_id: str, inputs: dict[str, Any], ctx: RunContext) -> NodeOutput:
    latent: SimLatent = inputs["samples"]
    width, height = latent.width * LATENT_SCALE, latent.height * LATENT_SCALE
    if latent.recipe is None:
        return NodeOutput((filled_batch(width, height, _UNSAMPLED_GREY, latent.batch_size),))
    ensure_pixel_budget(width, height, latent.batch_size)
    palette = recipe_digest(latent.text)
    images: Images = [render_pattern(width, height, palette, recipe_digest(latent.recipe, inputs["vae"], index))
                      for index in range(latent.batch_size)]
    return NodeOutput((images,))


NODE_FUNCTIONS: dict[str, Callable[[str, dict[str, Any], RunContext], NodeOutput]] = {
    "CheckpointLoaderSimple": checkpoint_loader,
    "LoraLoader": lora_loader,
    "LoraLoaderModelOnly": lora_loader_model_only,
    "CLIPSetLastLayer": clip_set_last_layer,
    "CLIPTextEncode": clip_text_encode,
    "EmptyLatentImage": empty_latent_image,
    "LatentUpscale": latent_upscale,
    "KSampler": ksampler,
    "KSamplerAdvanced": ksampler_advanced,
    "VAELoader": vae_loader,
    "VAEDecode": vae_decode,
}

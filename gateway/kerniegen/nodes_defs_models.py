"""Definitions of the model nodes KernieGen simulates: loaders, text encoding, latents and samplers.

Every value is ComfyUI 0.3.64's, as served on GET /object_info (07_object_info_mock_classes.json);
the model lists are `Choices` filled from the inventory.
"""

from __future__ import annotations

from typing import Any

from gateway.kerniegen.nodes_defs import Choices, define_node

SAMPLERS: list[str] = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS: list[str] = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # 2**64 - 1: a Python int, never a float, so JSON keeps every digit
LORA_DESCRIPTION = (
    "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as "
    "applying styles. Multiple LoRA nodes can be linked together."
)
CFG_TOOLTIP = (
    "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in "
    "images more closely matching the prompt however too high values will negatively impact quality."
)


def _strength(tooltip: str | None = None) -> list[Any]:
    options: dict[str, Any] = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    if tooltip is not None:
        options["tooltip"] = tooltip
    return ["FLOAT", options]


def _latent_side(tooltip: str) -> list[Any]:
    return ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8, "tooltip": tooltip}]


MODEL_NODES: dict[str, dict[str, Any]] = {
    "KSampler": define_node(
        "KSampler",
        required={
            "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
            "seed": ["INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": CFG_TOOLTIP}],
            "sampler_name": [SAMPLERS, {"tooltip": "The algorithm used when sampling, this can affect the quality, "
                                                   "speed, and style of the generated output."}],
            "scheduler": [SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed to form "
                                                  "the image."}],
            "positive": ["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to "
                                                     "include in the image."}],
            "negative": ["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to "
                                                     "exclude from the image."}],
            "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "The amount of denoising applied, lower values will maintain the "
                                             "structure of the initial image allowing for image to image sampling."}],
        },
        output=("LATENT",),
        description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
        category="sampling",
        output_tooltips=("The denoised latent.",),
    ),
    "CheckpointLoaderSimple": define_node(
        "CheckpointLoaderSimple",
        required={"ckpt_name": [Choices("checkpoints"), {"tooltip": "The name of the checkpoint (model) to load."}]},
        output=("MODEL", "CLIP", "VAE"),
        display_name="Load Checkpoint",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        category="loaders",
        output_tooltips=(
            "The model used for denoising latents.",
            "The CLIP model used for encoding text prompts.",
            "The VAE model used for encoding and decoding images to and from latent space.",
        ),
    ),
    "CLIPTextEncode": define_node(
        "CLIPTextEncode",
        required={
            "text": ["STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
        },
        output=("CONDITIONING",),
        display_name="CLIP Text Encode (Prompt)",
        description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                    "diffusion model towards generating specific images.",
        category="conditioning",
        output_tooltips=("A conditioning containing the embedded text used to guide the diffusion model.",),
    ),
    "CLIPSetLastLayer": define_node(
        "CLIPSetLastLayer",
        required={"clip": ["CLIP"], "stop_at_clip_layer": ["INT", {"default": -1, "min": -24, "max": -1, "step": 1}]},
        output=("CLIP",),
        display_name="CLIP Set Last Layer",
        category="conditioning",
    ),
    "VAEDecode": define_node(
        "VAEDecode",
        required={
            "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
            "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
        },
        output=("IMAGE",),
        display_name="VAE Decode",
        description="Decodes latent images back into pixel space images.",
        category="latent",
        output_tooltips=("The decoded image.",),
    ),
    "VAELoader": define_node(
        "VAELoader",
        required={"vae_name": [Choices("vae", extra=("pixel_space",))]},
        output=("VAE",),
        display_name="Load VAE",
        category="loaders",
    ),
    "EmptyLatentImage": define_node(
        "EmptyLatentImage",
        required={
            "width": _latent_side("The width of the latent images in pixels."),
            "height": _latent_side("The height of the latent images in pixels."),
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096,
                                   "tooltip": "The number of latent images in the batch."}],
        },
        output=("LATENT",),
        display_name="Empty Latent Image",
        description="Create a new batch of empty latent images to be denoised via sampling.",
        category="latent",
        output_tooltips=("The empty latent image batch.",),
    ),
    "LatentUpscale": define_node(
        "LatentUpscale",
        required={
            "samples": ["LATENT"],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]],
            "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 8}],
            "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 8}],
            "crop": [["disabled", "center"]],
        },
        output=("LATENT",),
        display_name="Upscale Latent",
        category="latent",
    ),
    "KSamplerAdvanced": define_node(
        "KSamplerAdvanced",
        required={
            "model": ["MODEL"],
            "add_noise": [["enable", "disable"]],
            "noise_seed": ["INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
            "sampler_name": [SAMPLERS],
            "scheduler": [SCHEDULERS],
            "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"],
            "start_at_step": ["INT", {"default": 0, "min": 0, "max": 10000}],
            "end_at_step": ["INT", {"default": 10000, "min": 0, "max": 10000}],
            "return_with_leftover_noise": [["disable", "enable"]],
        },
        output=("LATENT",),
        display_name="KSampler (Advanced)",
        category="sampling",
    ),
    "LoraLoader": define_node(
        "LoraLoader",
        required={
            "model": ["MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}],
            "lora_name": [Choices("loras"), {"tooltip": "The name of the LoRA."}],
            "strength_model": _strength("How strongly to modify the diffusion model. This value can be negative."),
            "strength_clip": _strength("How strongly to modify the CLIP model. This value can be negative."),
        },
        output=("MODEL", "CLIP"),
        display_name="Load LoRA",
        description=LORA_DESCRIPTION,
        category="loaders",
        output_tooltips=("The modified diffusion model.", "The modified CLIP model."),
    ),
    "LoraLoaderModelOnly": define_node(
        "LoraLoaderModelOnly",
        required={"model": ["MODEL"], "lora_name": [Choices("loras")], "strength_model": _strength()},
        output=("MODEL",),
        description=LORA_DESCRIPTION,
        category="loaders",
        # ComfyUI inherits both tooltips from LoraLoader although this node has one output.
        output_tooltips=("The modified diffusion model.", "The modified CLIP model."),
    ),
}

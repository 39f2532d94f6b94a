"""The inventory as values (gateway/inventory): /object_info read in the shapes ComfyUI 0.3.64 and KernieGen
answer, junk read without raising, Inventories' keeping and refreshing against an in-memory BackendCalls and a
hand-driven clock, and the model catalog."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.backends.calls import Reply
from gateway.backends.table import Backend
from gateway.core.errors import UnknownBackend, UpstreamError
from gateway.inventory.catalog import ModelCatalog
from gateway.inventory.files import MODEL_FOLDERS, extension
from gateway.inventory.inventories import OBJECT_INFO_PATH, Inventories
from gateway.inventory.model import Inventory, InventoryError, parse_object_info, read_object_info
from gateway.kerniegen.inventory import MODEL_FOLDERS as KERNIEGEN_MODEL_FOLDERS
from gateway.kerniegen.inventory import Inventory as KernieGenInventory
from gateway.kerniegen.nodes import object_info as kerniegen_object_info

# --- ComfyUI 0.3.64's answers, as it serves them (no models installed; two uploads in input/) -------------------

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim", "uni_pc"]  # the first few of its 42
COMFYUI_OBJECT_INFO: dict[str, Any] = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [[], {"tooltip": "The name of the checkpoint (model) to load."}]}},
        "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_is_list": [False, False, False],
        "output_name": ["MODEL", "CLIP", "VAE"],
        "name": "CheckpointLoaderSimple",
        "display_name": "Load Checkpoint",
        "description": "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        "python_module": "nodes",
        "category": "loaders",
        "output_node": False,
    },
    "LoraLoaderModelOnly": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "lora_name": [[]],
                "strength_model": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}],
            }
        },
        "output": ["MODEL"],
        "output_node": False,
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
                "seed": [
                    "INT",
                    {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True},
                ],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
                "sampler_name": [SAMPLERS, {"tooltip": "The algorithm used when sampling."}],
                "scheduler": [["simple", "sgm_uniform", "karras", "exponential"], {"tooltip": "The scheduler."}],
                "positive": ["CONDITIONING"],
                "negative": ["CONDITIONING"],
                "latent_image": ["LATENT"],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            }
        },
        "output": ["LATENT"],
        "name": "KSampler",
        "display_name": "KSampler",
        "output_node": False,
    },
    "KSamplerAdvanced": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "add_noise": [["enable", "disable"]],
                "noise_seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615,
                                       "control_after_generate": True}],
                "end_at_step": ["INT", {"default": 10000, "min": 0, "max": 10000}],
            }
        },
        "output": ["LATENT"],
    },
    "CLIPTextEncode": {
        "input": {"required": {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP"]}},
        "output": ["CONDITIONING"],
    },
    "VAELoader": {"input": {"required": {"vae_name": [["pixel_space"]]}}, "output": ["VAE"]},
    "SaveImage": {
        "input": {
            "required": {"images": ["IMAGE", {"tooltip": "The images to save."}],
                         "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]},
        "output": [],
        "display_name": "Save Image",
        "output_node": True,
    },
    "LoadImage": {
        "input": {"required": {"image": [["acc_src.png", "example.png"], {"image_upload": True}]}},
        "output": ["IMAGE", "MASK"],
    },
    "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}, "output": ["IMAGE"]},
    "EmptyImage": {
        "input": {"required": {"color": ["INT", {"default": 0, "min": 0, "max": 16777215, "display": "color"}]}},
        "output": ["IMAGE"],
    },
    # a V3 node (comfy_api.latest.io), rendered by get_v1_info: its combo's type is the string "COMBO"
    "UpscaleModelLoader": {
        "input": {"required": {"model_name": ["COMBO", {"multiselect": False, "options": ["4x_ultra.pth"]}]}},
        "output": ["UPSCALE_MODEL"],
        "output_tooltips": [None],
        "deprecated": False,
        "api_node": False,
    },
}


def comfyui() -> Inventory:
    inventory = read_object_info(json.dumps(COMFYUI_OBJECT_INFO).encode())
    assert inventory.skipped == 0, inventory.problems
    return inventory


def test_numbers_keep_their_bounds_defaults_and_seed_control() -> None:
    ksampler = comfyui().node("KSampler")
    assert ksampler is not None and ksampler.outputs == ("LATENT",) and not ksampler.output_node
    seed = ksampler.inputs["seed"]
    assert (seed.type, seed.required, seed.default, seed.minimum, seed.maximum) == ("INT", True, 0, 0, 2**64 - 1)
    assert seed.control_after_generate and not seed.is_link
    cfg = ksampler.inputs["cfg"]
    assert (cfg.type, cfg.default, cfg.minimum, cfg.maximum, cfg.step) == ("FLOAT", 8.0, 0.0, 100.0, 0.1)
    assert not cfg.control_after_generate
    assert not ksampler.inputs["steps"].control_after_generate
    assert list(ksampler.inputs)[:3] == ["model", "seed", "steps"]  # the backend's order


def test_links_strings_and_hidden_inputs() -> None:
    inventory = comfyui()
    ksampler = inventory.node("KSampler")
    assert ksampler is not None
    assert ksampler.inputs["model"].is_link and ksampler.inputs["model"].type == "MODEL"
    assert ksampler.inputs["positive"].type == "CONDITIONING"
    save = inventory.node("SaveImage")
    assert save is not None and save.output_node and save.display_name == "Save Image"
    assert list(save.inputs) == ["images", "filename_prefix"]  # hidden ones are the server's to fill
    assert save.inputs["filename_prefix"].default == "ComfyUI"
    text = inventory.node("CLIPTextEncode")
    assert text is not None and text.inputs["text"].type == "STRING" and text.inputs["text"].default is None


def test_combos_in_the_classic_and_the_v3_shape() -> None:
    inventory = comfyui()
    sampler = inventory.node("KSampler").inputs["sampler_name"]  # type: ignore[union-attr]
    assert sampler.type == "COMBO" and sampler.options == tuple(SAMPLERS)
    assert not sampler.is_files and sampler.folder is None and sampler.files == ()
    upscale = inventory.node("UpscaleModelLoader").inputs["model_name"]  # type: ignore[union-attr]
    assert upscale.type == "COMBO" and upscale.options == ("4x_ultra.pth",)
    assert upscale.is_files and upscale.folder == "upscale_models"


def test_loader_lists_are_files_by_folder_even_when_empty() -> None:
    inventory = comfyui()
    # an empty list is "none installed", which the catalog must tell from "no loader for that folder"
    assert inventory.files_by_folder() == {
        "checkpoints": [], "loras": [], "vae": [], "upscale_models": ["4x_ultra.pth"]
    }
    assert inventory.files_by_folder(include_input=True)["input"] == ["acc_src.png", "example.png"]
    assert inventory.has_file("input", "example.png") and not inventory.has_file("checkpoints", "example.png")


def test_built_in_choices_are_offered_but_are_no_files() -> None:
    vae = comfyui().node("VAELoader").inputs["vae_name"]  # type: ignore[union-attr]
    assert vae.is_files and vae.folder == "vae" and vae.options == ("pixel_space",) and vae.files == ()
    assert comfyui().offers("vae_name", "pixel_space") and not comfyui().has_file("vae", "pixel_space")


def test_an_image_input_is_a_file_input_only_as_a_combo() -> None:
    inventory = comfyui()
    load = inventory.node("LoadImage").inputs["image"]  # type: ignore[union-attr]
    assert load.is_files and load.folder == "input"
    invert = inventory.node("ImageInvert").inputs["image"]  # type: ignore[union-attr]
    assert invert.is_link and not invert.is_files


def custom(inputs: dict[str, Any], class_type: str = "CustomNode", section: str = "required") -> Inventory:
    return parse_object_info({class_type: {"input": {section: inputs}, "output": []}})


def spec_of(inputs: dict[str, Any], name: str, class_type: str = "CustomNode") -> Any:
    node = custom(inputs, class_type).node(class_type)
    assert node is not None
    return node.inputs[name]


@pytest.mark.parametrize(
    ("class_type", "name", "options", "is_files", "folder"),
    [
        ("CLIPLoader", "clip_name", ["t5xxl.safetensors"], True, "text_encoders"),
        ("DualCLIPLoader", "clip_name2", ["clip_l.safetensors"], True, "text_encoders"),
        ("CLIPVisionLoader", "clip_name", ["vit.safetensors"], True, "clip_vision"),
        ("UNETLoader", "unet_name", ["flux.safetensors"], True, "diffusion_models"),
        ("ControlNetLoader", "control_net_name", ["canny.pth"], True, "controlnet"),
        ("CheckpointLoader", "config_name", ["v1-inference.yaml"], True, "configs"),
        ("UnetLoaderGGUF", "unet_name", ["flux-q4.gguf"], True, "diffusion_models"),
        ("CustomLoader", "weights", ["None", "a.safetensors", "b.ckpt"], True, None),  # by extension
        ("CustomLoader", "picture", ["cat.png", "dog.JPG"], True, None),
        ("CustomLoader", "weights", ["a.safetensors", "preset"], False, None),  # one that is no file
        ("CustomLoader", "weights", ["None"], False, None),  # placeholders alone
        ("CustomLoader", "weights", [], False, None),
        ("KlingImage2Video", "model_name", ["kling-v1", "kling-v2-master"], False, None),  # an API node's models
        ("CustomLoader", "model_name", ["sam_vit_b.pth"], True, None),  # generic name: extensions decide
        ("CustomLoader", "mode", ["fast.mode", "slow.mode"], False, None),  # an extension of no known kind
        ("LoadAudio", "audio", ["a.wav"], True, "input"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_which_combos_list_files(
    class_type: str, name: str, options: list[str], is_files: bool, folder: str | None
) -> None:
    extra = {"audio_upload": True} if name == "audio" else {}
    spec = spec_of({name: [options, extra]}, name, class_type)
    assert (spec.is_files, spec.folder) == (is_files, folder)


def test_control_after_generate_as_the_frontend_reads_it() -> None:
    inputs = {
        "seed": ["INT", {"default": 0}],  # the legacy convention: a seed by its name
        "noise_seed": ["INT", {"control_after_generate": False}],  # a declared false wins
        "other": ["INT", {"control_after_generate": True}],
        "choice": [["a", "b"], {"control_after_generate": True}],
        "ratio": ["FLOAT", {"control_after_generate": True}],  # the frontend adds it to INT and COMBO only
    }
    node = custom(inputs).node("CustomNode")
    assert node is not None
    assert {name: spec.control_after_generate for name, spec in node.inputs.items()} == {
        "seed": True, "noise_seed": False, "other": True, "choice": True, "ratio": False
    }


def test_optional_inputs_and_a_name_in_both_sections() -> None:
    inventory = parse_object_info({
        "Node": {"input": {"required": {"a": ["INT"]}, "optional": {"a": ["STRING"], "b": ["MODEL"]}}}
    })
    node = inventory.node("Node")
    assert node is not None
    assert (node.inputs["a"].type, node.inputs["a"].required) == ("INT", True)
    assert (node.inputs["b"].type, node.inputs["b"].required) == ("MODEL", False)


def test_kerniegen_reads_the_same_way_with_every_folder_it_fills() -> None:
    kg = KernieGenInventory(
        checkpoints=("base.safetensors", "sdxl/refiner.ckpt"),
        loras=("detail.safetensors",),
        vae=("ae.pt",),
        diffusion_models=("flux.safetensors",),
        controlnet=("canny.pth",),
        upscale_models=("4x.pth",),
        style_models=("style.safetensors",),
        gligen=("gligen.safetensors",),
    )
    inventory = read_object_info(json.dumps(kerniegen_object_info(kg, ["upload.png"])).encode())
    assert inventory.skipped == 0, inventory.problems
    # the folders its loaders list hold exactly what its GET /models/{folder} lists
    assert inventory.files_by_folder() == {folder: kg.filenames(folder) for folder in inventory.files_by_folder()}
    assert set(inventory.files_by_folder()) == {
        "checkpoints", "loras", "vae", "diffusion_models", "controlnet", "upscale_models", "style_models", "gligen"
    }
    assert inventory.files["input"] == ("upload.png",)
    assert inventory.offers("vae_name", "pixel_space")  # KernieGen appends it as ComfyUI does


def test_the_folder_names_are_comfyuis() -> None:
    assert MODEL_FOLDERS == KERNIEGEN_MODEL_FOLDERS


@pytest.mark.parametrize(
    ("name", "found"),
    [("a.safetensors", "safetensors"), ("sub/B.CKPT", "ckpt"), ("sub.dir\\model", None), ("pixel_space", None),
     (".hidden", None), ("trailing.", None), ("x." + "a" * 17, None), ("model v1.0", "0")],
)
def test_extension(name: str, found: str | None) -> None:
    assert extension(name) == found


# --- junk ---------------------------------------------------------------------------------------------------------


def test_junk_entries_are_skipped_and_counted() -> None:
    inventory = parse_object_info({
        "NotAnObject": [1, 2],
        "BadInput": {"input": "required"},
        "BadSection": {"input": {"required": [], "optional": {"ok": ["INT"]}}},
        "BadSpecs": {"input": {"required": {
            "empty": [], "text": "INT", "number": [7], "junk_opts": ["INT", [1]],
            "nan": ["FLOAT", {"min": math.nan, "max": math.inf, "default": True, "step": "1"}],
            "combo": [["a", None, {"x": 1}, 3, True], {"default": [1]}],
        }}, "output": "IMAGE", "display_name": 7},
    })
    assert set(inventory.nodes) == {"BadInput", "BadSection", "BadSpecs"}  # a class stays when its input is junk
    assert list(inventory.node("BadSection").inputs) == ["ok"]  # type: ignore[union-attr]
    bad = inventory.node("BadSpecs")
    assert bad is not None and bad.outputs == () and bad.display_name == "BadSpecs"
    assert list(bad.inputs) == ["junk_opts", "nan", "combo"]
    assert bad.inputs["junk_opts"].type == "INT"  # options that are no object: none
    nan = bad.inputs["nan"]
    assert (nan.minimum, nan.maximum, nan.default, nan.step) == (None, None, None, None)
    assert bad.inputs["combo"].options == ("a", 3) and bad.inputs["combo"].default is None
    # NotAnObject, BadInput's input, BadSection's required, empty, text, number, and combo's three options
    assert inventory.skipped == 9
    assert len(inventory.problems) == 7 and "NotAnObject" in inventory.problems[0]


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"", "not JSON"), (b"<html>502</html>", "not JSON"), (b"[1, 2]", "a JSON list"), (b"null", "a JSON NoneType"),
     (b"\xff\xfe{}", "not JSON"), (b"[" * 100 + b"]" * 100, "nested deeper"), (b'{"a": NaN', "not JSON")],
    ids=["empty", "html", "list", "null", "not-utf8", "deep", "cut"],
)
def test_bodies_that_are_no_json_object_are_an_error(body: bytes, problem: str) -> None:
    with pytest.raises(InventoryError, match=problem):
        read_object_info(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=40,
)
# Junk in the shape an answer has, so the reader gets past the first levels: class → {input: {section: ...}}.
spec_like = st.one_of(
    json_values,
    st.lists(st.one_of(st.sampled_from(["INT", "FLOAT", "COMBO", "STRING", "MODEL"]), json_values), max_size=3),
    st.tuples(st.lists(json_values, max_size=4), st.dictionaries(
        st.sampled_from(["default", "min", "max", "step", "options", "control_after_generate", "image_upload"]),
        json_values, max_size=4)).map(list),
)
object_info_like = st.dictionaries(
    st.text(max_size=8),
    st.one_of(json_values, st.fixed_dictionaries({
        "input": st.one_of(json_values, st.dictionaries(
            st.sampled_from(["required", "optional", "hidden"]),
            st.one_of(json_values, st.dictionaries(st.sampled_from(["ckpt_name", "seed", "image", "x"]), spec_like)),
        )),
        "output": json_values,
    })),
    max_size=4,
)


@given(st.one_of(json_values, object_info_like))
def test_any_json_is_read_without_raising(value: Any) -> None:
    inventory = parse_object_info(value)
    for node in inventory.nodes.values():
        for spec in node.inputs.values():
            assert all(isinstance(option, str | int | float) for option in spec.options)
            assert set(spec.files) <= set(spec.options)
    assert all(folder in (*MODEL_FOLDERS, "input") for folder in inventory.files)
    json.dumps(inventory.describe())
    json.dumps(inventory.files_by_folder(include_input=True))


@given(st.binary(max_size=200) | object_info_like.map(lambda value: json.dumps(value).encode()))
def test_any_bytes_are_an_inventory_or_an_inventory_error(body: bytes) -> None:
    try:
        read_object_info(body)
    except InventoryError:
        pass


# --- Inventories: kept, refreshed, expired ------------------------------------------------------------------------


def object_info_body(checkpoints: list[str]) -> bytes:
    return json.dumps({"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [checkpoints]}}}}).encode()


def reply(status: int, body: bytes) -> Reply:
    return Reply(status, "OK" if status == 200 else "Error", CIMultiDictProxy(CIMultiDict()), body)


@dataclass
class FakeBackend:
    checkpoints: list[str] = field(default_factory=lambda: ["base.safetensors"])
    answer: Reply | None = None  # instead of an /object_info made of `checkpoints`
    failure: Exception | None = None
    gate: asyncio.Event | None = None  # when set, a call waits for it


class FakeCalls:
    """An in-memory BackendCalls that answers GET /object_info per backend and counts the calls."""

    def __init__(self, *names: str) -> None:
        self.backends = {name: FakeBackend() for name in names}
        self.calls: list[tuple[str, str, str, float | None, int | None]] = []
        self.running = 0
        self.most_running = 0

    async def fetch(
        self,
        backend: Backend,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        *,
        body: bytes | None = None,
        max_bytes: int | None = None,
        timeout_seconds: float | None = None,
        kind: str = "api",
        retry: bool = True,
    ) -> Reply:
        self.calls.append((backend.name, method, target, timeout_seconds, max_bytes))
        state = self.backends[backend.name]
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0)
            if state.gate is not None:
                await state.gate.wait()
            if state.failure is not None:
                raise state.failure
            return state.answer or reply(200, object_info_body(state.checkpoints))
        finally:
            self.running -= 1

    def down(self, name: str) -> None:
        self.backends[name].failure = UpstreamError(f"cannot connect to {name}", backend=name, kind="connect")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backends(*names: str) -> dict[str, Backend]:
    return {name: Backend(name, URL(f"http://{name}.invalid")) for name in names}


def inventories(calls: FakeCalls, clock: Clock, **options: Any) -> Inventories:
    return Inventories(backends(*calls.backends), calls, clock=clock, **{"ttl_seconds": 600.0, **options})


def checkpoints(inventory: Inventory | None) -> tuple[str, ...] | None:
    return None if inventory is None else inventory.files["checkpoints"]


async def test_refresh_reads_object_info_within_the_bounds_given() -> None:
    calls, clock = FakeCalls("a"), Clock()
    inv = inventories(calls, clock, timeout_seconds=12.0, max_bytes=1234)
    assert inv.get("a") is None and inv.status("a").age_seconds is None
    assert checkpoints(await inv.refresh("a")) == ("base.safetensors",)
    assert calls.calls == [("a", "GET", OBJECT_INFO_PATH, 12.0, 1234)]
    clock.now += 30
    status = inv.status("a")
    assert status.age_seconds == 30 and not status.stale and status.last_error is None and not status.refreshing
    assert checkpoints(inv.get("a")) == ("base.safetensors",)
    assert inv.describe()[0]["node_classes"] == 1


async def test_a_failing_backend_keeps_its_last_inventory_until_max_age() -> None:
    calls, clock = FakeCalls("a"), Clock()
    inv = inventories(calls, clock)  # max age: 3 TTLs
    kept = await inv.refresh("a")
    calls.down("a")
    clock.now += 700
    with pytest.raises(UpstreamError, match="cannot connect to a"):
        await inv.refresh("a")
    status = inv.status("a")
    assert status.inventory is kept and status.stale and status.last_error == "cannot connect to a"
    clock.now += 1100  # 1800 s: still within 3 TTLs
    assert inv.get("a") is kept
    clock.now += 1
    assert inv.get("a") is None and inv.status("a").age_seconds is None
    assert inv.status("a").last_error == "cannot connect to a"


@pytest.mark.parametrize(
    ("answer", "problem", "kind"),
    [
        (reply(500, b"boom"), "answered GET /object_info with 500", "5xx"),
        (reply(404, b""), "answered GET /object_info with 404", "protocol"),
        (reply(200, b"<html>"), "answered GET /object_info with not JSON", "protocol"),
        (reply(200, b"[]"), "a JSON list, not an object of node classes", "protocol"),
    ],
    ids=["500", "404", "html", "list"],
)
async def test_bad_answers_are_upstream_errors(answer: Reply, problem: str, kind: str) -> None:
    calls, clock = FakeCalls("a"), Clock()
    calls.backends["a"].answer = answer
    inv = inventories(calls, clock)
    with pytest.raises(UpstreamError, match=problem) as caught:
        await inv.refresh("a")
    assert caught.value.kind == kind and caught.value.backend == "a"
    assert inv.get("a") is None and problem in (inv.status("a").last_error or "")


async def test_unknown_backends() -> None:
    inv = inventories(FakeCalls("a"), Clock())
    with pytest.raises(UnknownBackend):
        await inv.refresh("nope")
    with pytest.raises(UnknownBackend):
        inv.status("nope")
    assert inv.get("nope") is None
    inv.backend_checked("nope", True)  # a check of a backend not here is no error


async def test_an_unexpected_error_is_kept_and_raised() -> None:
    calls, clock = FakeCalls("a"), Clock()
    calls.backends["a"].failure = RuntimeError("bug")
    inv = inventories(calls, clock)
    with pytest.raises(RuntimeError, match="bug"):
        await inv.refresh("a")
    assert inv.status("a").last_error == "unexpected error: RuntimeError('bug')"


async def test_refreshes_in_flight_are_shared_and_survive_a_caller_that_gives_up() -> None:
    calls, clock = FakeCalls("a"), Clock()
    calls.backends["a"].gate = gate = asyncio.Event()
    inv = inventories(calls, clock)
    first = asyncio.create_task(inv.refresh("a"))
    second = asyncio.create_task(inv.refresh("a"))
    await asyncio.sleep(0.01)
    assert inv.status("a").refreshing and inv.get("a") is None  # get() answers while the refresh waits
    first.cancel()
    gate.set()
    assert checkpoints(await second) == ("base.safetensors",)
    assert first.cancelled() and len(calls.calls) == 1 and inv.get("a") is not None


async def test_due_refreshes_follow_the_ttl_the_retry_delay_and_the_health_checks() -> None:
    calls, clock = FakeCalls("a", "b", "c"), Clock()
    inv = inventories(calls, clock, ttl_seconds=100.0, retry_seconds=30.0)
    inv.backend_checked("c", False)  # seen down: read when it comes back
    await inv.refresh_due()
    assert sorted(name for name, *_ in calls.calls) == ["a", "b"]
    calls.calls.clear()
    clock.now += 99
    await inv.refresh_due()
    assert calls.calls == []
    calls.down("b")
    clock.now += 1
    await inv.refresh_due()
    assert sorted(name for name, *_ in calls.calls) == ["a", "b"]
    calls.calls.clear()
    clock.now += 29  # b failed 29 s ago: not yet again
    await inv.refresh_due()
    assert calls.calls == []
    clock.now += 1
    await inv.refresh_due()
    assert [name for name, *_ in calls.calls] == ["b"]


async def test_a_backend_back_up_is_read_again_at_once() -> None:
    calls, clock = FakeCalls("a"), Clock()
    inv = inventories(calls, clock)
    inv.backend_checked("a", True)  # first check: the loop reads it, not the check
    assert not inv.status("a").refreshing
    await inv.refresh("a")
    inv.backend_checked("a", False)
    calls.backends["a"].checkpoints = ["other.safetensors"]
    inv.backend_checked("a", True)
    assert inv.status("a").refreshing
    inv.backend_checked("a", True)  # up again: no second refresh
    await asyncio.sleep(0.01)
    assert checkpoints(inv.get("a")) == ("other.safetensors",) and len(calls.calls) == 2


async def test_concurrent_refreshes_are_bounded() -> None:
    names = tuple(f"b{i}" for i in range(6))
    calls, clock = FakeCalls(*names), Clock()
    gate = asyncio.Event()
    for name in names:
        calls.backends[name].gate = gate
    inv = inventories(calls, clock, max_concurrent_refreshes=2)
    pass_ = asyncio.create_task(inv.refresh_due())
    await asyncio.sleep(0.01)
    assert calls.running == 2 and all(inv.status(name).refreshing for name in names)
    gate.set()
    await pass_
    assert calls.most_running == 2 and all(inv.get(name) is not None for name in names)


async def test_run_refreshes_in_the_background_and_ends_its_refreshes_with_it() -> None:
    calls, clock = FakeCalls("a", "b"), Clock()
    calls.backends["b"].gate = asyncio.Event()  # b never answers
    inv = inventories(calls, clock, tick_seconds=0.01)
    runner = asyncio.create_task(inv.run())
    for _ in range(100):
        if inv.get("a") is not None:
            break
        await asyncio.sleep(0.01)
    assert inv.get("a") is not None and inv.status("b").refreshing
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert not inv.status("b").refreshing and inv.status("b").last_error is None


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_age_seconds"):
        Inventories(backends("a"), FakeCalls("a"), ttl_seconds=10, max_age_seconds=5)
    with pytest.raises(ValueError, match="ttl_seconds"):
        Inventories(backends("a"), FakeCalls("a"), ttl_seconds=0)
    assert Inventories(backends("a"), FakeCalls("a"), ttl_seconds=10).max_age_seconds == 30


# --- the catalog --------------------------------------------------------------------------------------------------


def inventory_with(ckpts: list[str], loras: list[str] | None = None) -> Inventory:
    classes: dict[str, Any] = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [ckpts]}}}}
    if loras is not None:
        classes["LoraLoader"] = {"input": {"required": {"lora_name": [loras]}}}
    classes["VAELoader"] = {"input": {"required": {"vae_name": [["pixel_space"]]}}}
    classes["LoadImage"] = {"input": {"required": {"image": [["up.png"], {"image_upload": True}]}}}
    return parse_object_info(classes)


def test_the_catalog_lists_each_file_with_the_backends_that_have_it() -> None:
    catalog = ModelCatalog({
        "zeta": inventory_with(["shared.safetensors", "z.safetensors"], ["detail.safetensors"]),
        "alpha": inventory_with(["a.ckpt", "shared.safetensors"]),
        "down": None,
    })
    assert catalog.folders() == {
        "checkpoints": {"a.ckpt": ["alpha"], "shared.safetensors": ["alpha", "zeta"], "z.safetensors": ["zeta"]},
        "loras": {"detail.safetensors": ["zeta"]},
        "vae": {},
    }
    assert catalog.describe() == {"folders": catalog.folders(), "backends": ["alpha", "zeta"],
                                  "unknown_backends": ["down"]}
    assert catalog.backend_files("alpha") == {"checkpoints": ["a.ckpt", "shared.safetensors"], "vae": []}
    assert catalog.backend_files("alpha", include_input=True)["input"] == ["up.png"]  # type: ignore[index]
    assert catalog.backend_files("down") is None and catalog.backend_files("nope") is None
    assert catalog.where_available("checkpoints", "shared.safetensors") == ["alpha", "zeta"]
    assert catalog.where_available("ckpt_name", "z.safetensors") == ["zeta"]
    assert catalog.where_available("vae_name", "pixel_space") == ["alpha", "zeta"]
    assert catalog.where_available("vae", "pixel_space") == []
    assert catalog.where_available("input", "up.png") == ["alpha", "zeta"]
    assert catalog.where_available("loras", "missing.safetensors") == []
    json.dumps(catalog.describe())


def test_what_the_guardrails_look_at() -> None:
    inventory = comfyui()
    ksampler = inventory.node("KSampler")
    assert ksampler is not None and [spec.name for spec in ksampler.seed_inputs] == ["seed"]
    assert ksampler.model_inputs == ()
    loader = inventory.node("CheckpointLoaderSimple")
    assert loader is not None and [spec.name for spec in loader.model_inputs] == ["ckpt_name"]
    assert loader.inputs["ckpt_name"].config == ([], {"tooltip": "The name of the checkpoint (model) to load."})
    upscale = inventory.node("UpscaleModelLoader")
    assert upscale is not None and upscale.inputs["model_name"].config[0] == "COMBO"  # the V3 shape, quoted so
    # uploads change with every upload, faster than an inventory: never checked
    assert inventory.node("LoadImage").model_inputs == ()  # type: ignore[union-attr]
    assert set(inventory.guarded) == {
        "KSampler", "KSamplerAdvanced", "CheckpointLoaderSimple", "LoraLoaderModelOnly", "VAELoader",
        "UpscaleModelLoader",
    }
    # a seed whose range is not declared cannot be drawn from it
    assert custom({"seed": ["INT", {"min": 0}]}).node("CustomNode").seed_inputs == ()  # type: ignore[union-attr]
    # a combo whose options all look like model files names models, whatever its name
    files = custom({"pick": [["a.safetensors", "None"]], "img": [["x.png"]]}).node("CustomNode")
    assert files is not None and [spec.name for spec in files.model_inputs] == ["pick"]


def test_an_entry_with_neither_input_nor_output_is_no_node_class() -> None:
    # what a server that is not ComfyUI's kind answers on /object_info: nothing a prompt could be checked by
    inventory = parse_object_info({"backend": "x", "headers": {"Host": "h"}})
    assert inventory.nodes == {} and inventory.skipped == 2
    assert inventory.unreadable == {"backend", "headers"}  # listed, unread: never called unknown

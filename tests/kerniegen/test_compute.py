"""Whole graphs through validate_prompt + run_node: ComfyUI's recorded bytes, determinism, sizes, speed."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway.kerniegen.compute import NodeExecutionError, RunContext, run_node
from gateway.kerniegen.compute_types import ExecutionInterrupted
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.validation import validate_prompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@dataclass
class Run:
    """One graph executed in a fresh data dir, with everything the callbacks received."""

    root: Path
    ui: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    outputs: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def file(self, ref: dict[str, str]) -> bytes:
        return (self.root / ref["type"] / ref["subfolder"] / ref["filename"]).read_bytes()


def execute(prompt: dict[str, Any], root: Path, *, extra_data: dict[str, Any] | None = None,
            inventory: Inventory | None = None, interrupt_at: int | None = None) -> Run:
    """A minimal executor: validate, then run every output's ancestors depth-first."""
    for folder in ("input", "output", "temp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    inventory = inventory or Inventory()
    result = validate_prompt(prompt, inventory, root / "input")
    assert result.status == 200, (result.error, result.node_errors)
    run = Run(root)

    def progress(node_id: str, value: int, maximum: int) -> None:
        run.events.append(("progress", node_id, value, maximum))
        if interrupt_at is not None and value == interrupt_at:
            raise ExecutionInterrupted

    context = RunContext(
        prompt_id="p", prompt=prompt, extra_data=extra_data or {}, output_dir=root / "output",
        temp_dir=root / "temp", input_dir=root / "input", send_progress=progress,
        send_image=lambda node_id, kind, data: run.events.append(("image", node_id, kind, data)),
        send_text=lambda node_id, text: run.events.append(("text", node_id, text)), inventory=inventory)

    def compute(node_id: str) -> None:
        if node_id in run.outputs:
            return
        inputs = {}
        for name, value in prompt[node_id]["inputs"].items():
            if isinstance(value, list):
                compute(value[0])
                value = run.outputs[value[0]][value[1]]
            inputs[name] = value
        output = run_node(prompt[node_id]["class_type"], node_id, inputs, context)
        run.outputs[node_id] = output.outputs
        if output.ui is not None:
            run.ui[node_id] = output.ui

    for output_id in result.outputs_to_execute:
        compute(output_id)
    return run


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def txt2img(seed: int = 42, text: str = "a red fox", width: int = 512, height: int = 512, batch_size: int = 1,
            lora_strength: float | None = None) -> dict[str, Any]:
    prompt: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "illustriousXL_v01.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                           "batch_size": batch_size}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "gen/txt2img"}},
    }
    if lora_strength is not None:
        prompt["10"] = {"class_type": "LoraLoader", "inputs": {
            "model": ["4", 0], "clip": ["4", 1], "lora_name": "kerniegen_detail_lora_v1.safetensors",
            "strength_model": lora_strength, "strength_clip": lora_strength}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
    return prompt


def saved_png(run: Run, node_id: str = "9", index: int = 0) -> bytes:
    return run.file(run.ui[node_id]["images"][index])


# --- byte-for-byte agreement with the recorded ComfyUI -------------------------------------------------------

def recorded_view_sha(label_start: str) -> str:
    exchange = next(ex for ex in load_fixture("04_view.json")["exchanges"] if ex["label"].startswith(label_start))
    return exchange["response"]["body"]["binary"]["sha256"]


def test_saved_png_is_byte_identical_to_comfyuis(tmp_path: Path) -> None:
    prompt = load_fixture("04_view_source_prompt.json")["workflow"]
    run = execute(copy.deepcopy(prompt), tmp_path)
    assert run.ui == {"3": {"images": [{"filename": "view_00001_.png", "subfolder": "gwref", "type": "output"}]}}
    assert sha256(saved_png(run, "3")) == recorded_view_sha("output file 200")


def test_preview_png_is_byte_identical_to_comfyuis(tmp_path: Path) -> None:
    prompt = load_fixture("04_view_source_prompt_temp.json")["workflow"]
    run = execute(copy.deepcopy(prompt), tmp_path)
    ref = run.ui["2"]["images"][0]
    assert (ref["subfolder"], ref["type"]) == ("", "temp")
    assert sha256(run.file(ref)) == recorded_view_sha("temp file")


def test_websocket_images_are_comfyuis_frames(tmp_path: Path) -> None:
    record = load_fixture("06_ws_binary_saveimagewebsocket_legacy.json")
    run = execute(copy.deepcopy(record["workflow"]), tmp_path)
    recorded = [message for message in record["ws_sessions"][0]["messages"]
                if message["kind"] == "binary" or message["data"]["type"] == "progress"]
    assert [event[0] for event in run.events] == [
        "progress" if message["kind"] == "text" else "image" for message in recorded]
    for event, message in zip(run.events, recorded, strict=True):
        if event[0] == "progress":
            assert event[2:] == (message["data"]["data"]["value"], message["data"]["data"]["max"])
        else:
            assert event[2] == message["binary"]["image_format"]
            assert sha256(event[3]) == message["binary"]["image"]["sha256"]
    assert run.ui == {}  # SaveImageWebsocket reports no output refs, so no "executed" message


def test_get_image_size_sends_comfyuis_text(tmp_path: Path) -> None:
    record = load_fixture("06_ws_binary_text_getimagesize.json")
    run = execute(copy.deepcopy(record["workflow"]), tmp_path)
    frame = next(message["binary"] for message in record["ws_sessions"][0]["messages"] if message["kind"] == "binary")
    assert [event for event in run.events if event[0] == "text"] == [("text", frame["node_id"], frame["text"])]
    assert run.outputs["2"] == (40, 24, 3)
    assert len(run.ui["4"]["images"]) == 3
    assert all(Image.open(io.BytesIO(run.file(ref))).size == (40, 24) for ref in run.ui["4"]["images"])


def test_batch_of_two_is_numbered_like_comfyui(tmp_path: Path) -> None:
    record = load_fixture("06_ws_batch2_save.json")
    run = execute(copy.deepcopy(record["workflow"]), tmp_path)
    executed = next(message["data"]["data"] for message in record["ws_sessions"][0]["messages"]
                    if message["kind"] == "text" and message["data"]["type"] == "executed")
    assert run.ui["2"] == executed["output"]


def test_runtime_error_is_comfyuis(tmp_path: Path) -> None:
    record = load_fixture("06_ws_execution_error.json")
    recorded = next(message["data"]["data"] for message in record["ws_sessions"][0]["messages"]
                    if message["kind"] == "text" and message["data"]["type"] == "execution_error")
    with pytest.raises(NodeExecutionError) as failure:
        execute(copy.deepcopy(record["workflow"]), tmp_path)
    error = failure.value
    assert f"{error.exception_message}\n" == recorded["exception_message"]
    assert error.exception_type == recorded["exception_type"]
    assert error.traceback == recorded["traceback"]


# --- the simulated txt2img --------------------------------------------------------------------------------

def test_same_prompt_gives_identical_png_bytes(tmp_path: Path) -> None:
    first = saved_png(execute(txt2img(), tmp_path / "a"))
    second = saved_png(execute(txt2img(), tmp_path / "b"))
    assert first == second


@pytest.mark.parametrize("change", [{"seed": 43}, {"seed": 2**64 - 1}, {"text": "a blue whale"},
                                    {"lora_strength": 0.8}], ids=repr)
def test_changing_the_recipe_changes_the_picture(change: dict[str, Any], tmp_path: Path) -> None:
    baseline = saved_png(execute(txt2img(), tmp_path / "a"))
    assert saved_png(execute(txt2img(**change), tmp_path / "b")) != baseline


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).tobytes()


def test_lora_at_zero_strength_changes_nothing(tmp_path: Path) -> None:
    # The files differ (the prompt in their metadata does), the pictures do not.
    with_lora = saved_png(execute(txt2img(lora_strength=0.0), tmp_path / "a"))
    assert pixels(with_lora) == pixels(saved_png(execute(txt2img(), tmp_path / "b")))


def test_outputs_are_valid_pngs_of_latent_size_times_eight(tmp_path: Path) -> None:
    run = execute(txt2img(width=520, height=300, batch_size=3), tmp_path)
    refs = run.ui["9"]["images"]
    assert [ref["filename"] for ref in refs] == ["txt2img_00001_.png", "txt2img_00002_.png", "txt2img_00003_.png"]
    pictures = []
    for ref in refs:
        image = Image.open(io.BytesIO(run.file(ref)))
        image.verify()
        image = Image.open(io.BytesIO(run.file(ref)))
        assert (image.format, image.size, image.mode) == ("PNG", (520, 296), "RGB")
        pictures.append(image.tobytes())
    assert len(set(pictures)) == 3  # each batch entry is its own picture


def test_picture_is_smooth_not_noise(tmp_path: Path) -> None:
    image = Image.open(io.BytesIO(saved_png(execute(txt2img(), tmp_path))))
    neighbours = [abs(image.getpixel((x, y))[0] - image.getpixel((x + 1, y))[0])
                  for x in range(0, 500, 7) for y in range(0, 500, 13)]
    assert sum(neighbours) / len(neighbours) < 4
    assert len(image.resize((8, 8)).getcolors() or []) > 8  # and not one flat colour either


def test_sampler_reports_every_step(tmp_path: Path) -> None:
    run = execute(txt2img(), tmp_path)
    assert [event[2:] for event in run.events] == [(step, 20) for step in range(1, 21)]
    assert {event[1] for event in run.events} == {"3"}


def test_interrupt_during_sampling_stops_the_node(tmp_path: Path) -> None:
    with pytest.raises(ExecutionInterrupted):
        execute(txt2img(), tmp_path, interrupt_at=5)
    assert not list((tmp_path / "output").rglob("*.png"))


def test_prompt_and_workflow_are_embedded_as_comfyui_does(tmp_path: Path) -> None:
    workflow = {"nodes": [{"id": 1}], "links": []}
    prompt = txt2img()
    run = execute(prompt, tmp_path, extra_data={"extra_pnginfo": {"workflow": workflow}, "client_id": "c"})
    image = Image.open(io.BytesIO(saved_png(run)))
    assert list(image.text) == ["prompt", "workflow"]
    assert image.text["prompt"] == json.dumps(prompt)
    assert json.loads(image.text["workflow"]) == workflow

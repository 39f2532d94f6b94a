"""Each node's computation on its own: exact pixels, sizes, masks, simulated models and failures."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway.kerniegen.compute import NodeExecutionError, RunContext, run_node
from gateway.kerniegen.compute_models import SimLatent
from gateway.kerniegen.images import invert_table, level, saved_byte
from gateway.kerniegen.inventory import Inventory


@pytest.fixture
def events() -> list[tuple[Any, ...]]:
    return []


@pytest.fixture
def ctx(tmp_path: Path, events: list[tuple[Any, ...]]) -> RunContext:
    for folder in ("input", "output", "temp"):
        (tmp_path / folder).mkdir()
    return RunContext(
        prompt_id="p", prompt={}, extra_data={}, output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
        input_dir=tmp_path / "input", send_progress=lambda *args: events.append(("progress", *args)),
        send_image=lambda *args: events.append(("image", *args)),
        send_text=lambda *args: events.append(("text", *args)), inventory=Inventory())


def empty(ctx: RunContext, width: int = 8, height: int = 6, batch_size: int = 1, color: int = 0) -> list[Image.Image]:
    inputs = {"width": width, "height": height, "batch_size": batch_size, "color": color}
    return run_node("EmptyImage", "1", inputs, ctx).outputs[0]


def float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def test_empty_image_fills_its_color_exactly(ctx: RunContext) -> None:
    images = empty(ctx, width=5, height=3, batch_size=2, color=0x12ABEF)
    assert len(images) == 2
    assert all(image.size == (5, 3) and image.mode == "RGB" for image in images)
    assert images[1].getpixel((4, 2)) == (0x12, 0xAB, 0xEF)


def test_every_color_byte_survives_comfyuis_float_round_trip() -> None:
    assert [saved_byte(level(byte)) for byte in range(256)] == list(range(256))


def test_invert_follows_comfyuis_float32_arithmetic(ctx: RunContext) -> None:
    inverted = run_node("ImageInvert", "2", {"image": empty(ctx, color=0x4100FF)}, ctx).outputs[0]
    # 1.0 - 65/255 in float32 times 255 truncates to 189, not 190: ComfyUI saves 189.
    assert inverted[0].getpixel((0, 0)) == (189, 255, 0)
    expected = [int(float32(255.0 * float32(1.0 - float32(byte / 255)))) for byte in range(256)]
    assert list(invert_table()) == expected


def test_invert_keeps_batch_and_size(ctx: RunContext) -> None:
    inverted = run_node("ImageInvert", "2", {"image": empty(ctx, batch_size=3)}, ctx).outputs[0]
    assert [image.size for image in inverted] == [(8, 6)] * 3


@pytest.mark.parametrize(("width", "height", "expected"), [
    (16, 12, (16, 12)), (0, 12, (16, 12)), (4, 0, (4, 3)), (0, 0, (8, 6)), (3, 30, (3, 30)),
])
def test_image_scale_sizes(width: int, height: int, expected: tuple[int, int], ctx: RunContext) -> None:
    inputs = {"image": empty(ctx), "upscale_method": "bilinear", "width": width, "height": height,
              "crop": "disabled"}
    assert run_node("ImageScale", "2", inputs, ctx).outputs[0][0].size == expected


def striped(width: int = 8, height: int = 4) -> list[Image.Image]:
    image = Image.new("RGB", (width, height))
    for x in range(width):
        for y in range(height):
            image.putpixel((x, y), (x * 30, y * 60, 0))
    return [image]


def test_image_scale_center_crop_keeps_the_middle(ctx: RunContext) -> None:
    inputs = {"image": striped(), "upscale_method": "nearest-exact", "width": 4, "height": 4, "crop": "center"}
    scaled = run_node("ImageScale", "2", inputs, ctx).outputs[0][0]
    # An 8x4 picture cropped to square keeps columns 2..5.
    assert [scaled.getpixel((x, 0))[0] for x in range(4)] == [60, 90, 120, 150]


def test_image_scale_lanczos_is_pillows(ctx: RunContext) -> None:
    source = striped()
    inputs = {"image": source, "upscale_method": "lanczos", "width": 13, "height": 7, "crop": "disabled"}
    scaled = run_node("ImageScale", "2", inputs, ctx).outputs[0][0]
    assert scaled.tobytes() == source[0].resize((13, 7), Image.Resampling.LANCZOS).tobytes()


def test_image_scale_by(ctx: RunContext) -> None:
    inputs = {"image": empty(ctx), "upscale_method": "area", "scale_by": 1.5}
    assert run_node("ImageScaleBy", "2", inputs, ctx).outputs[0][0].size == (12, 9)


def test_oversized_output_fails_like_an_allocation(ctx: RunContext) -> None:
    inputs = {"image": empty(ctx), "upscale_method": "lanczos", "width": 16384, "height": 16384, "crop": "disabled"}
    with pytest.raises(NodeExecutionError) as failure:
        run_node("ImageScale", "2", inputs, ctx)
    assert failure.value.exception_type == "RuntimeError"
    assert "not enough memory" in failure.value.exception_message


def test_get_image_size_reports_and_sends_text(ctx: RunContext, events: list[tuple[Any, ...]]) -> None:
    output = run_node("GetImageSize", "7", {"image": empty(ctx, width=40, height=24, batch_size=3)}, ctx)
    assert output.outputs == (40, 24, 3) and output.ui is None
    assert events == [("text", "7", "width: 40, height: 24\n batch size: 3")]


def write_input(ctx: RunContext, name: str, image: Image.Image, **save: Any) -> str:
    path = ctx.input_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return name


def test_load_png_with_alpha_gives_image_and_inverted_mask(ctx: RunContext) -> None:
    name = write_input(ctx, "sub/a.png", Image.new("RGBA", (6, 4), (10, 20, 30, 65)))
    images, masks = run_node("LoadImage", "1", {"image": name}, ctx).outputs
    assert images[0].mode == "RGB" and images[0].getpixel((5, 3)) == (10, 20, 30)
    assert masks[0].size == (6, 4) and masks[0].getpixel((0, 0)) == 189  # 1 - 65/255 in float32


@pytest.mark.parametrize(("name", "options"), [("b.jpg", {"quality": 95}), ("c.webp", {"lossless": True})])
def test_load_jpeg_and_webp(name: str, options: dict[str, Any], ctx: RunContext) -> None:
    write_input(ctx, name, Image.new("RGB", (16, 8), (200, 100, 50)), **options)
    images, masks = run_node("LoadImage", "1", {"image": name}, ctx).outputs
    assert images[0].size == (16, 8)
    assert all(abs(a - b) <= 3 for a, b in zip(images[0].getpixel((8, 4)), (200, 100, 50), strict=True))
    assert masks[0].size == (64, 64) and masks[0].getextrema() == (0, 0)  # ComfyUI's stand-in mask


def test_load_animation_gives_a_batch(ctx: RunContext) -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = ctx.input_dir / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    images, masks = run_node("LoadImage", "1", {"image": "anim.gif"}, ctx).outputs
    assert len(images) == 3 and len(masks) == 3


def test_load_image_from_output_by_annotation(ctx: RunContext) -> None:
    Image.new("RGB", (3, 3), (1, 2, 3)).save(ctx.output_dir / "made.png")
    images, _ = run_node("LoadImage", "1", {"image": "made.png [output]"}, ctx).outputs
    assert images[0].getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(("name", "kind"), [
    ("missing.png", "FileNotFoundError"), ("../escape.png", "FileNotFoundError"),
    ("notes.txt", "PIL.UnidentifiedImageError"),
])
def test_load_image_failures_hide_real_paths(name: str, kind: str, ctx: RunContext) -> None:
    (ctx.input_dir / "notes.txt").write_text("hello")
    (ctx.input_dir.parent / "escape.png").write_bytes(b"")
    with pytest.raises(NodeExecutionError) as failure:
        run_node("LoadImage", "1", {"image": name}, ctx)
    assert failure.value.exception_type == kind
    assert str(ctx.input_dir.parent) not in failure.value.exception_message
    assert "/srv/ComfyUI/input/" in failure.value.exception_message


@pytest.mark.parametrize(("channel", "expected"), [("alpha", 189), ("red", 10), ("green", 20), ("blue", 30)])
def test_load_image_mask_channels(channel: str, expected: int, ctx: RunContext) -> None:
    write_input(ctx, "m.png", Image.new("RGBA", (2, 2), (10, 20, 30, 65)))
    (mask,) = run_node("LoadImageMask", "1", {"image": "m.png", "channel": channel}, ctx).outputs[0]
    assert mask.getpixel((1, 1)) == expected


def test_image_to_mask_and_back(ctx: RunContext) -> None:
    (mask,) = run_node("ImageToMask", "2", {"image": empty(ctx, color=0x102030), "channel": "green"}, ctx).outputs[0]
    assert mask.mode == "L" and mask.getpixel((0, 0)) == 0x20
    (image,) = run_node("MaskToImage", "3", {"mask": [mask]}, ctx).outputs[0]
    assert image.getpixel((0, 0)) == (0x20, 0x20, 0x20)


def conditioning(ctx: RunContext, text: str) -> Any:
    model, clip, vae = run_node("CheckpointLoaderSimple", "4", {"ckpt_name": "m.safetensors"}, ctx).outputs
    return model, run_node("CLIPTextEncode", "6", {"text": text, "clip": clip}, ctx).outputs[0], vae


def sample(ctx: RunContext, latent: SimLatent, **settings: Any) -> SimLatent:
    model, positive, _ = conditioning(ctx, "a red fox")
    inputs = {"model": model, "seed": 1, "steps": 4, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
              "positive": positive, "negative": positive, "latent_image": latent, "denoise": 1.0, **settings}
    return run_node("KSampler", "3", inputs, ctx).outputs[0]


def test_empty_latent_is_one_eighth_of_the_pixels(ctx: RunContext) -> None:
    (latent,) = run_node("EmptyLatentImage", "5", {"width": 100, "height": 64, "batch_size": 2}, ctx).outputs
    assert (latent.width, latent.height, latent.batch_size, latent.recipe) == (12, 8, 2, None)


def test_decoding_an_unsampled_latent_gives_flat_grey(ctx: RunContext) -> None:
    _, _, vae = conditioning(ctx, "x")
    images = run_node("VAEDecode", "8", {"samples": SimLatent(4, 2, 2), "vae": vae}, ctx).outputs[0]
    assert [image.size for image in images] == [(32, 16), (32, 16)]
    assert images[0].getextrema() == ((128, 128),) * 3


def test_ksampler_progress_and_denoise_zero(ctx: RunContext, events: list[tuple[Any, ...]]) -> None:
    latent = SimLatent(8, 8, 1)
    assert sample(ctx, latent).recipe is not None
    assert events == [("progress", "3", step, 4) for step in (1, 2, 3, 4)]
    events.clear()
    assert sample(ctx, latent, denoise=0.0) is latent and events == []


@pytest.mark.parametrize(("start", "end", "steps"), [(0, 10000, 20), (5, 15, 10), (18, 30, 2), (20, 30, 0)])
def test_ksampler_advanced_steps_window(start: int, end: int, steps: int, ctx: RunContext,
                                        events: list[tuple[Any, ...]]) -> None:
    model, positive, _ = conditioning(ctx, "x")
    inputs = {"model": model, "add_noise": "enable", "noise_seed": 2**64 - 1, "steps": 20, "cfg": 8.0,
              "sampler_name": "euler", "scheduler": "karras", "positive": positive, "negative": positive,
              "latent_image": SimLatent(8, 8, 1), "start_at_step": start, "end_at_step": end,
              "return_with_leftover_noise": "disable"}
    run_node("KSamplerAdvanced", "3", inputs, ctx)
    assert [event[2:] for event in events] == [(step, steps) for step in range(1, steps + 1)]


def test_latent_upscale_then_decode(ctx: RunContext) -> None:
    latent = sample(ctx, SimLatent(64, 64, 1))
    inputs = {"samples": latent, "upscale_method": "bislerp", "width": 1024, "height": 0, "crop": "disabled"}
    (bigger,) = run_node("LatentUpscale", "10", inputs, ctx).outputs
    assert (bigger.width, bigger.height, bigger.recipe) == (128, 128, latent.recipe)


def test_lora_and_clip_layer_are_recorded(ctx: RunContext) -> None:
    model, clip, _ = run_node("CheckpointLoaderSimple", "4", {"ckpt_name": "m"}, ctx).outputs
    inputs = {"model": model, "clip": clip, "lora_name": "l", "strength_model": 0.5, "strength_clip": 1.0}
    lora_model, lora_clip = run_node("LoraLoader", "10", inputs, ctx).outputs
    assert lora_model.loras == (("l", 0.5),) and lora_clip.loras == (("l", 1.0),)
    (skipped,) = run_node("CLIPSetLastLayer", "11", {"clip": lora_clip, "stop_at_clip_layer": -2}, ctx).outputs
    assert skipped.stop_at_layer == -2
    unchanged = {"model": model, "lora_name": "l", "strength_model": 0}
    (only,) = run_node("LoraLoaderModelOnly", "12", unchanged, ctx).outputs
    assert only is model


def test_vae_decode_size_and_batch(ctx: RunContext) -> None:
    _, _, vae = conditioning(ctx, "x")
    latent = sample(ctx, SimLatent(5, 3, 2))
    images = run_node("VAEDecode", "8", {"samples": latent, "vae": vae}, ctx).outputs[0]
    assert [image.size for image in images] == [(40, 24), (40, 24)]
    assert images[0].tobytes() != images[1].tobytes()


def test_save_image_websocket_writes_nothing(ctx: RunContext, events: list[tuple[Any, ...]]) -> None:
    output = run_node("SaveImageWebsocket", "9", {"images": empty(ctx, batch_size=2)}, ctx)
    assert output.ui is None and output.outputs == ()
    kinds = [(event[0], event[2] if event[0] == "image" else event[2:]) for event in events]
    assert kinds == [("progress", (0, 2)), ("image", "PNG"), ("progress", (1, 2)), ("image", "PNG")]
    assert Image.open(io.BytesIO(events[1][3])).size == (8, 6)
    assert not any(ctx.output_dir.iterdir())


def test_widget_strings_are_converted_before_computing(ctx: RunContext) -> None:
    images = run_node("EmptyImage", "1", {"width": "7", "height": 5.9, "batch_size": 1, "color": 0}, ctx).outputs[0]
    assert images[0].size == (7, 5)


def test_missing_input_and_unknown_class_fail_cleanly(ctx: RunContext) -> None:
    with pytest.raises(NodeExecutionError) as missing:
        run_node("ImageInvert", "2", {}, ctx)
    assert missing.value.exception_type == "TypeError" and "'image'" in missing.value.exception_message
    with pytest.raises(NodeExecutionError) as unknown:
        run_node("NoSuchNode", "2", {}, ctx)
    assert unknown.value.exception_type == "KeyError"
    with pytest.raises(NodeExecutionError) as wrong:
        run_node("ImageInvert", "2", {"image": "not an image"}, ctx)
    assert wrong.value.exception_type == "AttributeError"
    assert wrong.value.traceback[0].startswith('  File "/srv/ComfyUI/execution.py"')

"""ComfyUI's real web UI (comfyui-frontend-package) in headless chromium against KernieGen, opened
directly and through the gateway: it boots without console errors, its node library is KernieGen's
classes, the default txt2img graph queued with the Run button runs, and its picture shows up. A
screenshot of each run is kept under .artifacts/browser/."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import KernieGenServer, start_kerniegen
from tests.browser import comfy_ui

# The UI asks api.comfy.org for release notes unless told not to; tests must not reach the internet.
# (ComfyUI started with --disable-api-nodes, as the recording was, skips that call by itself.)
OFFLINE_SETTINGS = {"Comfy.Notification.ShowVersionUpdates": False}
# Nodes the frontend defines itself, on every server.
FRONTEND_ONLY_NODES = {"PrimitiveNode", "Reroute", "Note", "MarkdownNote"}
KSAMPLER_WIDGETS = ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"]
# The loader classes frontend 1.27 builds its model menus from (its modelToNode store's defaults).
MODEL_MENU_PROVIDERS = {
    "checkpoints": ["CheckpointLoaderSimple", "ImageOnlyCheckpointLoader"],
    "loras": ["LoraLoader", "LoraLoaderModelOnly"], "vae": ["VAELoader"], "controlnet": ["ControlNetLoader"],
    "unet": ["UNETLoader"],
    "upscale_models": ["UpscaleModelLoader"], "style_models": ["StyleModelLoader"], "gligen": ["GLIGENLoader"],
}


@pytest.fixture
async def kerniegen(tmp_path: Path) -> Any:
    server = await start_kerniegen(KernieGenConfig(port=0, data_dir=tmp_path / "kg", step_delay_ms=5.0))
    yield server
    await server.close()


async def store_settings(base_url: str, settings: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/api/settings", json=settings) as response:
        assert response.status == 200


async def object_info_classes(base_url: str) -> set[str]:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/api/object_info") as response:
        return set(await response.json())


def assert_clean_console(driver: Any, base_url: str, moment: str) -> None:
    report = comfy_ui.console_report(driver, base_url)
    assert not report.errors, f"console errors {moment}: {comfy_ui.describe(report)}"


def check_default_graph(driver: Any, checkpoint: str) -> None:
    nodes = {node["type"]: node for node in comfy_ui.graph_nodes(driver)}
    assert set(nodes) == {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
                          "VAEDecode", "SaveImage"}
    (ckpt,) = nodes["CheckpointLoaderSimple"]["widgets"]
    assert (ckpt["name"], ckpt["value"], ckpt["options"]) == ("ckpt_name", checkpoint, [checkpoint])
    assert [widget["name"] for widget in nodes["KSampler"]["widgets"]] == KSAMPLER_WIDGETS


def run_and_capture(driver: Any, base_url: str, screenshot: Path) -> dict[str, Any]:
    comfy_ui.run_workflow(driver)
    image = comfy_ui.wait_for_output_image(driver)
    driver.save_screenshot(str(screenshot))
    print(f"\nscreenshot: {screenshot}")
    assert_clean_console(driver, base_url, "after the run")
    return image


def first_visit_then_run(driver: Any, base_url: str, checkpoint: str, classes: set[str],
                         screenshot: Path) -> dict[str, Any]:
    """A newcomer: the template browser on a blank graph first, then the UI's default graph (which
    names a checkpoint KernieGen lacks, so KernieGen's UI extension picks its own), KernieGen's node
    library, Run, the picture."""
    comfy_ui.open_ui(driver, base_url + "/")
    comfy_ui.close_first_run_dialog(driver)
    assert comfy_ui.graph_nodes(driver) == []  # ComfyUI starts a new user on a blank graph
    assert set(comfy_ui.node_library_names(driver)) - FRONTEND_ONLY_NODES == classes
    assert comfy_ui.model_menu_providers(driver) == MODEL_MENU_PROVIDERS  # every one a real KernieGen node
    assert_clean_console(driver, base_url, "at first boot")
    comfy_ui.load_default_workflow(driver)
    check_default_graph(driver, checkpoint)
    return run_and_capture(driver, base_url, screenshot)


def returning_user_saves_and_runs(driver: Any, base_url: str, checkpoint: str, screenshot: Path) -> dict[str, Any]:
    """Someone who has used the UI before, in a new browser: the UI opens on its default graph and
    itself swaps the checkpoint it names for one the server lists. Save it, Run, the picture."""
    comfy_ui.open_ui(driver, base_url + "/")
    check_default_graph(driver, checkpoint)
    comfy_ui.save_workflow_as(driver, "through the gateway")
    image = run_and_capture(driver, base_url, screenshot)
    assert_clean_console(driver, base_url, "after saving")
    return image


async def test_ui_on_kerniegen_boots_runs_the_default_graph_and_shows_the_picture(
    kerniegen: KernieGenServer, browser: Any, artifacts_dir: Path
) -> None:
    await store_settings(kerniegen.url, OFFLINE_SETTINGS)
    checkpoint = kerniegen.state.config.inventory.checkpoints[0]
    classes = await object_info_classes(kerniegen.url)
    image, seconds = await asyncio.to_thread(
        comfy_ui.timed, lambda: first_visit_then_run(browser, kerniegen.url, checkpoint, classes,
                                                     artifacts_dir / "kerniegen-direct.png"))
    print(f"browser flow on KernieGen: {seconds:.1f} s")
    assert image["src"].startswith(f"{kerniegen.url}/api/view?") and (image["width"], image["height"]) == (512, 512)
    query = parse_qs(urlsplit(image["src"]).query)
    saved = kerniegen.state.dirs.output / query.get("subfolder", [""])[0] / query["filename"][0]
    assert saved.is_file()
    history = kerniegen.state.history.page(None, None)
    ((entry,),) = [list(history.values())]
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][2]["4"]["inputs"]["ckpt_name"] == checkpoint


async def test_ui_through_the_gateway_saves_a_workflow_and_runs_the_default_graph(
    kerniegen: KernieGenServer, browser: Any, artifacts_dir: Path, start_gateway: Any
) -> None:
    gateway = await start_gateway({"kerniegen": kerniegen.url})
    await store_settings(gateway.url, {**OFFLINE_SETTINGS, "Comfy.TutorialCompleted": True})
    checkpoint = kerniegen.state.config.inventory.checkpoints[0]
    image, seconds = await asyncio.to_thread(
        comfy_ui.timed, lambda: returning_user_saves_and_runs(browser, gateway.url, checkpoint,
                                                              artifacts_dir / "kerniegen-through-gateway.png"))
    print(f"browser flow through the gateway: {seconds:.1f} s")
    assert image["src"].startswith(f"{gateway.url}/api/view?") and image["width"] == 512
    saved = kerniegen.state.config.data_dir / "user" / "default" / "workflows" / "through the gateway.json"
    assert json.loads(saved.read_text())["nodes"]  # the UI's graph, stored via /userdata/workflows%2F...

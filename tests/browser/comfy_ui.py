"""What the browser tests do in ComfyUI's web UI, as a person would: open it, close the first-run
dialog, press Run, open the Queue panel and wait for the picture, save the workflow. Reading the
page's state (graph, node library) uses the page's own objects; every action is a click or keys.
All functions are blocking; the async tests run them in a thread so the servers keep serving."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

WAIT_SECONDS = 20.0
T = TypeVar("T")

# Logs the stack of uncaught errors and rejections, so an expected upstream error can be told apart
# from any other error with the same message.
_STACK_LOGGER = """
window.addEventListener('error', e => console.log('KGTEST-ERROR ' + (e.error && e.error.stack)));
window.addEventListener('unhandledrejection', e => console.log('KGTEST-REJECTION ' + (e.reason && e.reason.stack)));
"""

# 404s ComfyUI itself answers to this frontend at boot (recorded or read from ComfyUI's handlers):
# the user's optional stylesheets, the favicon the package does not ship, listings of user
# directories that do not exist yet (07_frontend_support_routes.json), and saved node templates.
EXPECTED_404_PATHS = (
    "/user.css",
    "/api/userdata/user.css",
    "/favicon.ico",
    "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true",
    "/api/userdata?dir=subgraphs%2F&recurse=true&split=false&full_info=true",
    "/api/userdata/comfy.templates.json",
)
# Frontend 1.27.10 bug, independent of the server: registering "Comfy.Canvas.NavigationMode" runs
# its onChange, which sets "Comfy.Canvas.LeftMouseClickBehavior" before that setting is registered,
# and the settings store reads `.id` of undefined. It happens on every boot whose settings lack the
# navigation keys, against ComfyUI as much as against KernieGen.
UPSTREAM_SETTINGS_BUG = ("Cannot read properties of undefined (reading 'id')", "at Proxy.addSetting")


@dataclass
class ConsoleReport:
    """The page's console since the last read, split into what is expected and what is not."""

    errors: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)


def open_ui(driver: WebDriver, url: str) -> None:
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _STACK_LOGGER})
    driver.get(url)
    wait_ui_ready(driver)


def wait_ui_ready(driver: WebDriver) -> None:
    wait_for(driver, lambda d: d.execute_script(
        "return !!(window.app && window.app.graph && document.querySelector(\"button[aria-label='Run']\"))"))


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], seconds: float = WAIT_SECONDS) -> T:
    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)


def console_report(driver: WebDriver, base_url: str) -> ConsoleReport:
    entries = driver.get_log("browser")
    stacks = [entry["message"] for entry in entries if "KGTEST-" in entry["message"]]
    report = ConsoleReport()
    for entry in entries:
        message = entry["message"]
        if entry["level"] != "SEVERE" and "KGTEST-" not in message:
            continue
        if _is_expected(message, base_url, stacks):
            report.expected.append(message)
        else:
            report.errors.append(message)
    return report


def _is_expected(message: str, base_url: str, stacks: list[str]) -> bool:
    for path in EXPECTED_404_PATHS:
        if message.startswith(f"{base_url}{path} - Failed to load resource: the server responded with a status "
                              "of 404 (Not Found)"):
            return True
    text, stack_marker = UPSTREAM_SETTINGS_BUG
    if text in message:
        return any(text in stack and stack_marker in stack for stack in stacks)
    return False


def close_first_run_dialog(driver: WebDriver) -> None:
    """A new user gets the template browser; the templates package is not installed, so close it."""
    dialog = wait_for(driver, lambda d: _visible(d, "[aria-labelledby='global-template-workflows']"))
    dialog.find_element(By.CSS_SELECTOR, "button[aria-label='Close']").click()
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, ".p-dialog"))


def graph_nodes(driver: WebDriver) -> list[dict[str, Any]]:
    script = """return app.graph.nodes.map(n => ({type: n.type, widgets: (n.widgets || []).map(w => (
        {name: w.name, value: w.value, options: (w.options && w.options.values) || null}))}))"""
    nodes: list[dict[str, Any]] = driver.execute_script(script)
    return nodes


def _store(name: str) -> str:
    return ("document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia._s.get('"
            + name + "')")


def load_default_workflow(driver: WebDriver) -> None:
    """The UI's "Load Default Workflow" command. Frontend 1.27 lists it in no menu (only among the
    keybinding commands), so it is run through the app's command store, as its menus would."""
    driver.execute_script(f"return {_store('command')}.execute('Comfy.LoadDefaultWorkflow')")
    wait_for(driver, lambda d: len(graph_nodes(d)) == 7)


def node_library_names(driver: WebDriver) -> list[str]:
    """The classes the node library and search offer (the store behind both, after its filters)."""
    script = f"return {_store('nodeDef')}.visibleNodeDefs.map(d => d.name);"
    names: list[str] = driver.execute_script(script)
    return names


def model_menu_providers(driver: WebDriver) -> dict[str, list[str | None]]:
    """Model folder -> the loader classes the UI's model menus use for it (None where a class the UI
    expects is missing from /object_info), as the UI's model-to-node store has them after boot."""
    script = f"""const store = {_store('modelToNode')};
        if (!store) return null;
        store.registerDefaults();
        return Object.fromEntries(Object.entries(store.modelToNodeMap)
            .map(([folder, providers]) => [folder, providers.map(p => p.nodeDef ? p.nodeDef.name : null)]));"""
    providers: dict[str, list[str | None]] = driver.execute_script(script)
    return providers


def click(driver: WebDriver, selector: str) -> None:
    wait_for(driver, lambda d: _visible(d, selector)).click()


def run_workflow(driver: WebDriver) -> None:
    click(driver, "button[aria-label='Fit View (.)']")  # every node on screen, so the result is drawn
    click(driver, "button[aria-label='Run']")


def wait_for_output_image(driver: WebDriver) -> dict[str, Any]:
    """Open the Queue panel and wait until its first result is an <img> from /view that has loaded."""
    click(driver, "button.queue-tab-button")
    script = """const img = document.querySelector("img.task-output-image");
        return img && img.complete && img.naturalWidth > 0
            ? {src: img.src, width: img.naturalWidth, height: img.naturalHeight} : null;"""
    found: dict[str, Any] = wait_for(driver, lambda d: d.execute_script(script))
    return found


def save_workflow_as(driver: WebDriver, name: str) -> None:
    """Ctrl+S on an unsaved workflow asks for a name, as it does for a person."""
    # Pressed on the page, not on a node: a click on the canvas would select (and later zoom to) it.
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("s").key_up(Keys.CONTROL).perform()
    field = wait_for(driver, lambda d: _visible(d, ".p-dialog input"))
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(name, Keys.ENTER)
    wait_for(driver, lambda d: d.execute_script("return document.title").startswith(name))


def timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def describe(report: ConsoleReport) -> str:
    return json.dumps(report.errors, indent=2)


def _visible(driver: WebDriver, selector: str) -> WebElement | None:
    for element in driver.find_elements(By.CSS_SELECTOR, selector):
        if element.is_displayed():
            return element
    return None

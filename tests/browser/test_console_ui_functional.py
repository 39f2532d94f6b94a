"""The gateway console in headless chromium, as an operator uses it: two backends shown live (one stops and is
seen down without a reload), a prompt submitted through the gateway listed with its thumbnail and route, one
whose seed -1 the guardrails replaced listed with that action and its meaning, a user's backend switch that
moves that user's next request, a write without the admin token refused, and hostile names shown as text.
Screenshots (wide, phone-sized, dark) go to a temporary directory the test prints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.server import start_kerniegen
from tests.switchable_backend import SwitchableBackend
from tests.test_console_functional import seeded_prompt

ADMIN = "browser-console-admin-token-42"
HOSTILE_USER = '<img src=x onerror="document.title=\'pwned\'">'
HOSTILE_PROMPT_ID = "<b>bold</b><script>document.title='pwned'</script>"


def tiny_prompt() -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x2456C7}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "console"}},
    }


@pytest.fixture
async def kerniegens(tmp_path: Path) -> Any:
    servers = [
        await start_kerniegen(KernieGenConfig(port=0, data_dir=tmp_path / name, step_delay_ms=0))
        for name in ("one", "two")
    ]
    yield servers
    for server in servers:
        await server.close()


async def submit(gateway_url: str, headers: dict[str, str], **body: Any) -> tuple[str, str]:
    """POST /prompt through the gateway: the prompt id and the backend that took it (X-Comfy-Backend)."""
    async with aiohttp.ClientSession() as http, http.post(
        f"{gateway_url}/prompt", json={"prompt": tiny_prompt(), **body}, headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["prompt_id"]), response.headers["X-Comfy-Backend"]


async def inventory_known(gateway_url: str, name: str) -> None:
    """Wait until the gateway has read the backend's inventory: the guardrails act only then."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(f"{gateway_url}/gateway/backends/{name}/models") as response:
                if (await response.json())["known"]:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the inventory of {name} was never read")


async def put_preference(gateway_url: str, user: str, backend: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.put(
        f"{gateway_url}/gateway/preferences/{user}", json={"backend": backend}, headers=headers
    ) as response:
        return response.status


async def test_the_console_shows_backends_live_prompts_and_switches_a_users_backend(
    kerniegens: Any, browser: Any, start_gateway: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    screenshots = tmp_path_factory.mktemp("console-screenshots")
    print(f"console screenshots: {screenshots}")
    two = await SwitchableBackend(kerniegens[1].url).start()
    gateway = await start_gateway(
        {"one": kerniegens[0].url, "two": two.url},
        health_check_interval_seconds=0.3,
        queue_poll_interval_seconds=0.3,
        security={"admin_token": ADMIN},
    )
    ana_prompt, ana_backend = await submit(gateway.url, {"X-Comfy-Backend": "two", "comfy-user": "ana"})
    hostile_prompt, _ = await submit(gateway.url, {"comfy-user": HOSTILE_USER}, prompt_id=HOSTILE_PROMPT_ID)
    assert await put_preference(gateway.url, "bo", "one", ADMIN) == 200
    bo_before = await submit(gateway.url, {"comfy-user": "bo"})
    await inventory_known(gateway.url, "one")
    seeded, _ = await submit(gateway.url, {"comfy-user": "cy"}, prompt=seeded_prompt())
    calm, _ = await submit(gateway.url, {"comfy-user": "cy"})
    loop = asyncio.get_running_loop()

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        """From the browser's thread: run `coro` on the test's loop (where the servers serve) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    def wait(condition: Callable[[Any], Any], seconds: float = 20.0) -> Any:
        return WebDriverWait(browser, seconds, poll_frequency=0.1).until(condition)

    def js(script: str, *args: Any) -> Any:
        return browser.execute_script(script, *args)

    def backend_state(name: str) -> str | None:
        return js("const c = document.querySelector(`[data-backend='${arguments[0]}'].card`);"
                  "return c ? c.dataset.state : null;", name)

    def prompt_row(prompt_id: str) -> Any:
        return js("return [...document.querySelectorAll('#prompts .prompt')]"
                  ".find(li => li.dataset.promptId === arguments[0]) || null;", prompt_id)

    def drive() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        browser.get(f"{gateway.url}/gateway/console")
        js("window.sameDocument = 'yes';")  # gone if the page reloads
        wait(lambda d: backend_state("one") == "up" and backend_state("two") == "up")
        # The page can be walked by keyboard: Tab reaches the token field first (after the skip link).
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB, Keys.TAB)
        seen["tab_reaches"] = js("return document.activeElement.id;")
        seen["cards"] = [c.get_attribute("data-backend") for c in browser.find_elements(By.CSS_SELECTOR, ".card")]
        seen["default_tag"] = js("return document.querySelector(\"[data-backend='one'].card .tag\").textContent;")
        wait(lambda d: "admin token" in d.find_element(By.ID, "prompts-message").text)
        seen["refused_message"] = browser.find_element(By.ID, "prompts-message").text
        browser.save_screenshot(str(screenshots / "1-no-token.png"))

        # The token, typed and used: kept in sessionStorage, never in the address bar.
        browser.find_element(By.ID, "token").send_keys(ADMIN)
        browser.find_element(By.ID, "token-save").click()
        wait(lambda d: (row := prompt_row(ana_prompt)) is not None and row.get_attribute("data-state") == "done")
        wait(lambda d: js("const i = arguments[0].querySelector('.thumbs img');"
                          "return !!(i && i.complete && i.naturalWidth > 0);", prompt_row(ana_prompt)))
        row = prompt_row(ana_prompt)
        seen["ana_route"] = row.get_attribute("data-route")
        seen["ana_backend"] = row.get_attribute("data-backend")
        seen["thumb"] = js("const i = arguments[0].querySelector('.thumbs img');"
                           "return [i.src.slice(0, 5), i.naturalWidth, i.dataset.view];", row)
        seen["url"] = browser.current_url
        seen["stored_token"] = js("return sessionStorage.getItem('comfy-gateway-admin-token');")

        # Hostile names are text: the row shows them verbatim, and nothing of them became an element.
        hostile = wait(lambda d: prompt_row(hostile_prompt))
        seen["hostile_id_text"] = hostile.find_element(By.CSS_SELECTOR, ".id").text
        seen["hostile_user_text"] = hostile.find_element(By.CSS_SELECTOR, ".meta").text
        seen["injected"] = js("return [document.title, document.querySelectorAll('b, img[src=\"x\"]').length,"
                              " document.scripts.length];")

        # A prompt opens to why it went where it went, what the guardrails did, and its history entry.
        row.find_element(By.CSS_SELECTOR, "button").send_keys(Keys.ENTER)  # a native button: the keyboard opens it
        wait(lambda d: '"outputs"' in prompt_row(ana_prompt).find_element(By.CSS_SELECTOR, ".history").text)
        seen["why"] = prompt_row(ana_prompt).find_element(By.CSS_SELECTOR, ".why").text
        seeded_row = wait(lambda d: prompt_row(seeded))
        seen["seeded_row"] = (seeded_row.get_attribute("data-guardrails"),
                              [t.text for t in seeded_row.find_elements(By.CSS_SELECTOR, ".meta .tag.guardrail")])
        seeded_row.find_element(By.CSS_SELECTOR, "button").send_keys(Keys.ENTER)
        seen["seeded_details"] = wait(lambda d: prompt_row(seeded).find_element(
            By.CSS_SELECTOR, ".guardrails-done li[data-action='seed_normalized']").text)
        calm_row = wait(lambda d: prompt_row(calm))
        seen["calm_row"] = (calm_row.get_attribute("data-guardrails"),
                            len(calm_row.find_elements(By.CSS_SELECTOR, ".meta .guardrails")))
        calm_row.find_element(By.CSS_SELECTOR, "button").send_keys(Keys.ENTER)
        seen["calm_details"] = wait(lambda d: prompt_row(calm).find_element(By.CSS_SELECTOR, ".guardrails-none").text)
        browser.save_screenshot(str(screenshots / "2-prompts.png"))

        # Bo's switch: from one to two, by keyboard-reachable radio buttons; bo's next request lands on two.
        bo_radio = "[data-user='bo'] input[data-backend='{}']"
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, bo_radio.format("one")))
        seen["bo_checked_before"] = browser.find_element(By.CSS_SELECTOR, bo_radio.format("one")).is_selected()
        browser.find_element(By.CSS_SELECTOR, bo_radio.format("one")).send_keys(Keys.ARROW_RIGHT)  # as a keyboard does
        wait(lambda d: "Saved: bo → two" in d.find_element(By.ID, "users-message").text)
        seen["bo_after"] = run(submit(gateway.url, {"comfy-user": "bo"}))

        # Without the token, a write is refused and the switch stays where it was.
        browser.find_element(By.ID, "token-forget").click()
        wait(lambda d: "admin token" in d.find_element(By.ID, "users-message").text)
        seen["refused_without_token"] = run(put_preference(gateway.url, "bo", "one", None))
        browser.find_element(By.ID, "token").send_keys(ADMIN)
        browser.find_element(By.ID, "token-save").click()
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, bo_radio.format("one")))
        js("sessionStorage.setItem('comfy-gateway-admin-token', 'not-the-token');")
        browser.find_element(By.CSS_SELECTOR, bo_radio.format("one")).click()
        wait(lambda d: "Refused" in d.find_element(By.ID, "users-message").text)
        seen["refused_in_page"] = browser.find_element(By.ID, "users-message").text
        seen["bo_still"] = run(submit(gateway.url, {"comfy-user": "bo"}))
        js("sessionStorage.setItem('comfy-gateway-admin-token', arguments[0]); loadUsers();", ADMIN)
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, bo_radio.format("two")))

        # Backend two stops: its card goes down by itself, in the same document.
        run(two.stop())
        wait(lambda d: backend_state("two") == "down")
        seen["two_error"] = js("return document.querySelector(\"[data-backend='two'].card dl\").textContent;")
        seen["same_document"] = js("return window.sameDocument;")
        js("window.scrollTo(0, 0);")
        browser.save_screenshot(str(screenshots / "3-backend-down.png"))

        browser.set_window_size(390, 844)  # a phone
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme",
                                                                              "value": "dark"}]})
        seen["dark_background"] = js("return getComputedStyle(document.body).backgroundColor;")
        seen["page_width"] = js("return document.documentElement.scrollWidth;")
        js("window.scrollTo(0, 0);")
        browser.save_screenshot(str(screenshots / "4-phone-dark.png"))
        return seen

    seen = await asyncio.to_thread(drive)

    assert seen["cards"] == ["one", "two"] and seen["default_tag"] == "default"
    assert seen["tab_reaches"] == "token"
    assert "Refused (401" in seen["refused_message"]
    assert ana_backend == "two" and seen["ana_backend"] == "two" and seen["ana_route"] == "header"
    assert seen["thumb"][0] == "blob:" and seen["thumb"][1] == 32 and "subfolder=two" in seen["thumb"][2]
    assert ADMIN not in seen["url"] and seen["stored_token"] == ADMIN
    assert seen["hostile_id_text"] == HOSTILE_PROMPT_ID and HOSTILE_USER in seen["hostile_user_text"]
    assert seen["injected"] == ["comfy-gateway console", 0, 1]
    assert "X-Comfy-Backend header" in seen["why"]
    assert seen["calm_row"] == ("", 0) and seen["calm_details"] == "The guardrails changed nothing."
    assert seen["seeded_row"] == ("seed_normalized", ["seed_normalized"])
    assert seen["seeded_details"].startswith("seed_normalized — a seed below its input's minimum")
    assert bo_before[1] == "one" and seen["bo_checked_before"] is True
    assert seen["bo_after"][1] == "two"
    assert seen["refused_without_token"] == 401
    assert "Refused (401" in seen["refused_in_page"] and seen["bo_still"][1] == "two"
    assert "Last error" in seen["two_error"] and seen["same_document"] == "yes"
    assert seen["dark_background"] == "rgb(18, 19, 23)" and seen["page_width"] <= 390

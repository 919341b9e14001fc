"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright.

The driver holds CONNECT with the mouse, a finger and the keyboard; the operator answers on the
card. Everything behind the page is real: the agent on a python-can virtual bus with the
simulated car and roof module, Mosquitto, the fake gpsd. Screenshots of both panels go to
``artifacts/`` (git-ignored) with the page's load timings.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from peers import require, under_ci

from hw_sim.console import ConsoleServer
from hw_sim.gpsd import FakeGpsd
from hw_sim.mosquitto import Mosquitto
from hw_sim.scenario import CONTACT, VEHICLE, Scenario

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    if under_ci():
        raise
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 1000}
HOLD_MS = 2200  # the driver's hold: an action that lasts, not a wait for something
SHORT_MS = 1000
TIMEOUT_MS = 10_000

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = require("chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture
async def sim(
    tmp_path: Path, mosquitto: Mosquitto, fake_gpsd: FakeGpsd
) -> AsyncIterator[tuple[ConsoleServer, Scenario]]:
    async with (
        Scenario(tmp_path, mosquitto.port, fake_gpsd.port, auto_ack=None) as scenario,
        ConsoleServer(
            scenario.backend,
            car=scenario.car,
            led=scenario.led,
            gps=fake_gpsd,
            port=0,
            hold_ms=scenario.config.button.hold_ms,
            cancel_window_s=scenario.config.button.cancel_window_s,
            bus=f"virtual:{scenario.channel}",
        ) as console,
    ):
        assert await scenario.agent.wait_gps_fix(timeout=10)
        yield console, scenario


class Opened:
    def __init__(self, page: Page, problems: list[str], timings: dict[str, Any]) -> None:
        self.page = page
        self.problems = problems  # console errors, page errors, failed requests
        self.timings = timings


async def open_console(browser: Browser, url: str, **context: Any) -> Opened:
    ctx = await browser.new_context(viewport=VIEWPORT, **context)
    page = await ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"{r.url} failed"))
    await page.goto(url)
    await expect(page.locator("#link")).to_have_text("live")
    # the page's own mark: the first snapshot over the WebSocket is on screen
    live_ms = await page.evaluate("performance.getEntriesByName('console-live')[0].startTime")
    nav = json.loads(
        await page.evaluate(
            "JSON.stringify(performance.getEntriesByType('navigation')[0].toJSON())"
        )
    )
    resources = await page.evaluate(
        "performance.getEntriesByType('resource').map(r => r.transferSize)"
    )
    timings = {
        "dom_content_loaded_ms": round(nav["domContentLoadedEventEnd"], 1),
        "load_event_ms": round(nav["loadEventEnd"], 1),
        "live_ms": round(live_ms, 1),
        "bytes": nav["transferSize"] + sum(resources),
    }
    return Opened(page, problems, timings)


async def hold_button(page: Page, ms: int) -> None:
    box = await page.locator("#connect").bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()
    # the hold time shows while the button is held
    await expect(page.locator("#hold-time")).to_have_attribute("data-result", "holding")
    await expect(page.locator("#hold-time")).to_have_text(re.compile(r"^\d\.\d s$"))
    await page.wait_for_timeout(ms)
    await page.mouse.up()


async def test_a_mouse_hold_calls_and_the_operators_answer_connects(
    browser: Browser, sim: tuple[ConsoleServer, Scenario]
) -> None:
    console, scenario = sim
    opened = await open_console(browser, console.url)
    page = opened.page
    led = page.locator("#led")
    await expect(led).to_have_attribute("data-mode", "ready")
    await expect(page.locator(".agent[data-state=online]")).to_have_count(1)

    await hold_button(page, HOLD_MS)
    await expect(led).to_have_attribute("data-mode", "calling")
    await expect(page.locator("#led-name")).to_have_text("calling")
    await expect(page.locator("#hold-time")).to_have_attribute("data-result", "long")

    card = page.locator(".card")
    await expect(card).to_have_count(1)
    await expect(card.locator(".contact-name")).to_have_text(CONTACT["name"])
    await expect(card.locator(".plate")).to_have_text(str(VEHICLE["registration_plate"]))
    await expect(card.locator(".badge.state")).to_have_text("New: awaiting answer")
    # the car on both maps, the country outlines around it, the fix's trust
    await expect(card.locator("svg.region .car-marker")).to_be_visible()
    await expect(card.locator("svg.close .car-marker")).to_be_visible()
    await expect(card.locator("svg.close circle.accuracy")).to_have_attribute(
        "data-trusted", "true"
    )
    await expect(card.locator("svg.region path.border")).to_have_count(1)
    await expect(card.locator("svg.region text.country", has_text="CH")).to_have_count(1)
    await expect(card.locator(".badge.trust")).to_have_text("trusted fix")

    ARTIFACTS.mkdir(exist_ok=True)
    await page.locator("#car-panel").screenshot(path=ARTIFACTS / "console-car-calling.png")
    await page.locator("#ops-panel").screenshot(path=ARTIFACTS / "console-operator-new.png")

    await card.locator("[data-action=received]").click()
    await expect(led).to_have_attribute("data-mode", "connected")
    await expect(card.locator(".badge.state")).to_have_text("Received")
    assert scenario.backend.invalid == []

    await page.locator("#car-panel").screenshot(path=ARTIFACTS / "console-car-connected.png")
    await page.locator("#ops-panel").screenshot(path=ARTIFACTS / "console-operator-received.png")
    await page.screenshot(path=ARTIFACTS / "console.png", full_page=True)
    (ARTIFACTS / "console-timing.json").write_text(json.dumps(opened.timings, indent=2) + "\n")
    print(f"\nfirst load: {opened.timings}")
    assert opened.problems == []


async def test_a_one_second_press_shows_no_card(
    browser: Browser, sim: tuple[ConsoleServer, Scenario]
) -> None:
    console, scenario = sim
    opened = await open_console(browser, console.url)
    page = opened.page
    await hold_button(page, SHORT_MS)
    await expect(page.locator("#hold-time")).to_have_attribute("data-result", "short")
    agent = scenario.agent
    await agent.wait_until(lambda: not agent.button.pressed, timeout=5)  # the agent saw it go
    assert not agent.calls
    await expect(page.locator("#led")).to_have_attribute("data-mode", "ready")
    await expect(page.locator(".card")).to_have_count(0)
    await expect(page.locator("#no-cards")).to_be_visible()
    assert opened.problems == []


async def test_keyboard_only_tab_to_connect_and_hold_space(
    browser: Browser, sim: tuple[ConsoleServer, Scenario]
) -> None:
    console, _ = sim
    opened = await open_console(browser, console.url)
    page = opened.page
    await page.keyboard.press("Tab")
    await expect(page.locator("#connect")).to_be_focused()
    await page.keyboard.down("Space")
    await expect(page.locator("#hold-time")).to_have_attribute("data-result", "holding")
    await page.wait_for_timeout(HOLD_MS)
    await page.keyboard.up("Space")
    await expect(page.locator("#led")).to_have_attribute("data-mode", "calling")
    await expect(page.locator(".card .contact-name")).to_have_text(CONTACT["name"])
    assert opened.problems == []


async def test_a_finger_hold_calls(browser: Browser, sim: tuple[ConsoleServer, Scenario]) -> None:
    console, _ = sim
    opened = await open_console(browser, console.url, has_touch=True)
    page = opened.page
    box = await page.locator("#connect").bounding_box()
    assert box is not None
    point = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
    touch = await page.context.new_cdp_session(page)
    await touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [point]})
    await expect(page.locator("#hold-time")).to_have_attribute("data-result", "holding")
    await page.wait_for_timeout(HOLD_MS)
    await touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    await expect(page.locator("#led")).to_have_attribute("data-mode", "calling")
    await expect(page.locator(".card")).to_have_count(1)
    await touch.detach()
    assert opened.problems == []

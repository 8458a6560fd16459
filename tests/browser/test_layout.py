"""Tabs from the keyboard, a phone-sized screen, and the dark theme."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.pagekit import Server, make_steps, open_page, selected_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INSTANCES = '.tab-button[data-tab="instances"]'
SETUP = '.tab-button[data-tab="vastai-setup"]'
LONG_SSH = "ssh -p 41022 root@203.0.113.7 -L 8080:localhost:8080 -L 8888:localhost:8888"


def expect_selected(page: Page, tab: str) -> None:
    other = "instances" if tab == "vastai-setup" else "vastai-setup"
    selected = page.locator(f'.tab-button[data-tab="{tab}"]')
    expect(selected).to_have_attribute("aria-selected", "true")
    expect(selected).to_have_attribute("tabindex", "0")
    expect(page.locator(f'.tab-button[data-tab="{other}"]')).to_have_attribute(
        "aria-selected", "false"
    )
    expect(page.locator(f'.tab-button[data-tab="{other}"]')).to_have_attribute("tabindex", "-1")
    expect(page.locator(f"#{tab}")).to_be_visible()
    expect(page.locator(f"#{other}")).to_be_hidden()


def test_tabs_follow_the_aria_pattern(server: Server, page: Page) -> None:
    open_page(page, server)
    assert page.get_attribute('[role="tablist"]', "aria-label")
    for tab in page.locator('[role="tab"]').all():
        panel = page.locator(f"#{tab.get_attribute('aria-controls')}")
        expect(panel).to_have_attribute("role", "tabpanel")
        expect(panel).to_have_attribute("aria-labelledby", tab.get_attribute("id"))
    progress = page.locator("#workflow-progress")
    expect(progress).to_have_attribute("role", "progressbar")
    expect(progress).to_have_attribute("aria-valuemin", "0")
    expect(progress).to_have_attribute("aria-valuemax", "100")


def test_keyboard_navigation_of_the_tabs(server: Server, page: Page) -> None:
    open_page(page, server)
    expect_selected(page, "instances")
    # Tab reaches the selected tab first (roving tabindex: the other one is skipped).
    page.keyboard.press("Tab")  # skip link
    page.keyboard.press("Tab")  # header: live indicator is not focusable, token button hidden
    expect(page.locator(INSTANCES)).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.locator(SETUP)).to_be_focused()
    expect_selected(page, "vastai-setup")
    page.keyboard.press("ArrowRight")  # wraps around
    expect(page.locator(INSTANCES)).to_be_focused()
    expect_selected(page, "instances")
    page.keyboard.press("ArrowLeft")  # wraps the other way
    expect_selected(page, "vastai-setup")
    page.keyboard.press("Home")
    expect_selected(page, "instances")
    page.keyboard.press("End")
    expect_selected(page, "vastai-setup")
    expect(page.locator(SETUP)).to_be_focused()
    # Enter and Space activate a focused tab.
    page.locator(INSTANCES).focus()
    page.keyboard.press("Enter")
    expect_selected(page, "instances")
    page.locator(SETUP).focus()
    page.keyboard.press("Space")
    expect_selected(page, "vastai-setup")
    # Tab from the selected tab goes into its panel, not to the other tab.
    page.keyboard.press("Tab")
    expect(page.locator("#vastai-setup")).to_be_focused()
    assert selected_tab(page) == "vastai-setup"


def test_focus_is_visible(server: Server, page: Page) -> None:
    open_page(page, server)
    page.locator(INSTANCES).focus()
    page.keyboard.press("ArrowRight")
    outline = page.eval_on_selector(SETUP, "el => getComputedStyle(el).outlineStyle")
    assert outline not in ("", "none")


def test_usable_at_375_px(server: Server, other_context: Callable[..., BrowserContext]) -> None:
    server.seed(
        {
            "workflow_id": "phone_check",
            "status": "running",
            "current_step": 1,
            "steps": make_steps(
                ["completed", "in_progress", "pending", "pending", "pending", "pending"]
            ),
            "ssh_connection": LONG_SSH,
        }
    )
    page = other_context(viewport={"width": 375, "height": 740}, is_mobile=True).new_page()
    open_page(page, server)
    for tab in ("vastai-setup", "instances"):
        page.click(f'.tab-button[data-tab="{tab}"]')
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{tab} scrolls sideways by {overflow}px"
    page.click('.tab-button[data-tab="vastai-setup"]')
    for selector in ("#sshConnectionString", "#run-workflow-btn", "#workflow-progress"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, selector


def test_dark_theme(server: Server, page: Page) -> None:
    open_page(page, server)
    background = "getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(background)
    assert light != dark

    def brightness(color: str) -> float:
        red, green, blue = (int(part) for part in color[color.index("(") + 1 : -1].split(",")[:3])
        return (red + green + blue) / 3

    assert brightness(dark) < 60 < 200 < brightness(light)

"""With WORKFLOW_STATE_TOKEN set, the page asks for the token once and sends it everywhere."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, Request, expect

from tests.browser.pagekit import TOKEN, Server, expect_steps

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_token_prompt_then_every_call_carries_it(token_server: Server, page: Page, console) -> None:
    console.allow(r"status of 401")  # the browser's own note on the first, token-less call
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    page.goto(token_server.url + "/")

    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#token-input")).to_be_focused()
    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    expect(page.locator("#token-error")).to_contain_text("refused")
    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    expect(dialog).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    assert page.evaluate("sessionStorage.getItem('workflowStateToken')") == TOKEN

    # From now on nothing is refused: run a workflow through the protected routes.
    refused: list[str] = []
    page.on("response", lambda r: r.status == 401 and refused.append(r.url))
    page.click('.tab-button[data-tab="vastai-setup"]')
    page.click("#run-workflow-btn")
    expect(page.locator("#setup-result")).to_have_text("✅ Workflow completed successfully!")
    expect_steps(page, ["completed"] * 6, running=False)
    assert token_server.state()["status"] == "completed"
    # EventSource cannot send the header: the stream is read with fetch() and the token.
    expect(page.locator("#live-indicator")).to_have_text("Live")
    streams = [r for r in requests if r.url.endswith("/stream")]  # a workflow's, the list's
    assert streams and all(r.resource_type == "fetch" for r in streams)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in streams)

    # A reload in the same tab asks no more: the token is in sessionStorage.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    expect(dialog).to_be_hidden()
    expect(page.locator("#setup-result")).to_have_text(
        "✅ Previous workflow completed successfully!"
    )
    assert refused == []
    # The token travels in a header only, never in a URL.
    assert not [r.url for r in requests if TOKEN in r.url]
    api_calls = [r for r in requests if "/workflow" in r.url and r.resource_type == "fetch"]
    with_token = [r for r in api_calls if r.headers.get("authorization") == f"Bearer {TOKEN}"]
    assert len(api_calls) - len(with_token) == 2  # the first 401 and the refused wrong token


def test_dismissing_the_prompt_leaves_a_way_back(token_server: Server, page: Page, console) -> None:
    console.allow(r"status of 401")
    page.goto(token_server.url + "/")
    expect(page.locator("#token-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#token-dialog")).to_be_hidden()
    result = page.locator("#setup-result")
    expect(result).to_have_class(re.compile(r"\berror\b"))
    expect(result).to_contain_text("access token")
    page.click("#token-btn")
    page.fill("#token-input", TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    expect(page.locator("#run-workflow-btn")).to_be_enabled()

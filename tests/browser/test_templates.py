"""The page's words live in index.html's templates: every message has one, and they read right."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.browser.pagekit import Server, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RENDER = """async (args) => {
  const { MESSAGE_KEYS, message } = await import('/static/js/controllers/messages.js');
  const { messageContent } = await import('/static/js/views/templates.js');
  const found = document.querySelectorAll('template[data-message]');
  const templates = [...found].map((template) => template.dataset.message);
  const text = {};
  for (const key of MESSAGE_KEYS) {
    const holder = document.createElement('p');
    holder.append(messageContent(message(key, args)));
    text[key] = holder.textContent;
  }
  return { keys: MESSAGE_KEYS, templates, text };
}"""


def test_every_message_has_exactly_one_template(server: Server, page: Page) -> None:
    out = open_page(page, server).evaluate(RENDER, {})
    assert sorted(out["templates"]) == sorted(out["keys"])
    assert len(set(out["templates"])) == len(out["templates"])


def test_the_contracts_restore_messages_are_exact(server: Server, page: Page) -> None:
    text = open_page(page, server).evaluate(RENDER, {})["text"]
    assert text["restored-running"] == "⚠️ Workflow was in progress. You may need to restart it."
    assert text["restored-completed"] == "✅ Previous workflow completed successfully!"
    assert text["restored-failed"] == "❌ Previous workflow failed."
    # Contract section 9: a run on the server, and one taken over after an interruption.
    assert text["running-on-server"] == "⏳ Workflow is running on the server."
    assert text["resumed"] == "🔁 Workflow resumed after an interruption."


def test_slots_take_their_values_as_text(server: Server, page: Page) -> None:
    args = {"step": 2, "total": 6, "label": "<b>Set UI Home</b>", "detail": "Disk full"}
    text = open_page(page, server).evaluate(RENDER, args)["text"]
    assert text["failed-at"] == "❌ Workflow failed at step 2 (<b>Set UI Home</b>)."
    assert text["start-error"] == "❌ Could not start the workflow: Disk full"

"""The reusable client module (service/static/js/state-client.js), driven inside the real page."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.pagekit import Server, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOWN = '{"success": false, "message": "Storage is down", "error": "backend_unavailable"}'

CLIENT_ERRORS = """async () => {
  const { StateClient, ApiError, describeError } = await import('/static/js/state-client.js');
  const client = new StateClient();
  const out = {};
  const capture = async (name, call) => {
    try {
      await call();
      out[name] = 'no error';
    } catch (error) {
      out[name] = {
        isApiError: error instanceof ApiError,
        status: error.status,
        code: error.code,
        message: error.message,
        text: describeError(error),
      };
    }
  };
  await client.clear();
  await capture('no_workflow', () => client.patchStep(0, { status: 'completed' }));
  const done = await client.save({
    workflow_id: 'wf_done', status: 'completed', steps: [{ action: 'x', status: 'completed' }],
  });
  await capture('finished', () => client.merge({ status: 'failed' }));
  const stale = done.version - 1;
  await capture('stale', () => client.save({ workflow_id: 'wf_new' }, { ifMatch: stale }));
  await capture('invalid', () => client.save({ status: 'bogus' }));
  const running = await client.save({
    workflow_id: 'wf_run', steps: [{ action: 'x', status: 'pending' }],
  });
  const other = { status: 'completed', workflow_id: 'wf_other' };
  await capture('mismatch', () => client.patchStep(0, other));
  const mine = { status: 'completed', workflow_id: 'wf_run' };
  const patched = await client.patchStep(0, mine, { ifMatch: running.version });
  out.patched = patched.steps[0].status;
  out.summary = await client.summary();
  const got = await client.getState();
  out.version = got.version;
  out.notModified = (await client.getState({ ifNoneMatch: got.version })).notModified;
  await capture('unknown_action', () => client.runAction({ action: 'nope' }, {}));
  return out;
}"""


def test_errors_carry_status_code_and_message(server: Server, page: Page, console) -> None:
    console.allow(r"status of (400|404|409|412)")  # the browser's notes on the refusals
    open_page(page, server)
    out = page.evaluate(CLIENT_ERRORS)
    assert out["no_workflow"]["status"] == 404
    assert out["no_workflow"]["code"] == "no_workflow"
    assert out["finished"]["status"] == 409
    assert out["finished"]["code"] == "workflow_finished"
    assert "already finished" in out["finished"]["text"]
    assert out["stale"]["status"] == 412
    assert "nothing was overwritten" in out["stale"]["text"]
    assert out["invalid"]["status"] == 400
    assert out["invalid"]["code"] == "invalid_state"
    assert "status" in out["invalid"]["message"]  # the server's sentence names the field
    assert out["mismatch"]["status"] == 409
    assert out["mismatch"]["code"] == "workflow_mismatch"
    assert out["unknown_action"]["status"] == 404
    for name in ("no_workflow", "finished", "stale", "invalid", "mismatch", "unknown_action"):
        assert out[name]["isApiError"], name
    assert out["patched"] == "completed"
    assert out["summary"]["workflow_id"] == "wf_run"
    assert out["summary"]["progress_percent"] == 100
    assert out["version"] == str(server.state()["version"])
    assert out["notModified"] is True


def test_503_is_retried_with_a_reconnecting_note(server: Server, page: Page, console) -> None:
    console.allow(r"status of 503")
    server.seed(
        {
            "workflow_id": "wf_503",
            "status": "completed",
            "current_step": 0,
            "steps": [{"action": "test_ssh", "status": "completed"}],
        }
    )
    refusals = {"left": 2}

    def flaky(route: Route) -> None:
        if route.request.method == "GET" and refusals["left"] > 0:
            refusals["left"] -= 1
            route.fulfill(
                status=503,
                headers={"Retry-After": "0"},
                content_type="application/json",
                body=DOWN,
            )
        else:
            route.fallback()

    page.route(re.compile(r"/workflow/state$"), flaky)
    page.goto(server.url + "/")
    note = page.locator("#reconnect-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Reconnecting")
    expect(page.locator("body")).to_have_attribute("data-workflow-ready", "true")
    expect(note).to_be_hidden()
    expect(page.locator("#setup-result")).to_have_text(
        "✅ Previous workflow completed successfully!"
    )
    assert refusals["left"] == 0


def test_sse_parser_handles_any_chunking(server: Server, page: Page) -> None:
    open_page(page, server)
    stream = (
        "retry: 2000\r\n: keepalive\r\n\r\n"
        'id: 7\r\nevent: state\r\ndata: {"success":true,"active":false,"state":null}\r\n\r\n'
        "id: 8\nevent: state\ndata: line one\ndata: line two\n\n"
        "event: other\ndata: x\n\n"
    )
    events = page.evaluate(
        """async (stream) => {
          const { SseParser } = await import('/static/js/live.js');
          const results = [];
          for (let size = 1; size <= stream.length; size += 1) {
            const seen = [];
            const parser = new SseParser((event) => seen.push(event));
            for (let i = 0; i < stream.length; i += size) parser.push(stream.slice(i, i + size));
            results.push(JSON.stringify({ seen, retry: parser.retry }));
          }
          return [...new Set(results)].map((text) => JSON.parse(text));
        }""",
        stream,
    )
    assert events == [
        {
            "seen": [
                {
                    "type": "state",
                    "data": '{"success":true,"active":false,"state":null}',
                    "id": "7",
                },
                {"type": "state", "data": "line one\nline two", "id": "8"},
                {"type": "other", "data": "x", "id": "8"},
            ],
            "retry": 2000,
        }
    ]

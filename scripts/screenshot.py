"""Render the real page to docs/screenshot.png (light) and docs/screenshot-dark.png (dark).

    python scripts/screenshot.py [--out DIR]

Starts gunicorn (`deploy/gunicorn.conf.py`, as in production) on a throwaway JSON-file state,
with a steps file whose first steps call a small step endpoint of this script (so their cards
show what a host application answers) and whose fourth step is the built-in simulator, held for
minutes. It stores two finished setups, starts a real run on the server, waits until that run is
at its fourth step, opens the page on it in Debian's Chromium (never a downloaded browser) and
saves the VastAI Setup tab following the run, once per color scheme. Exits 0 on success, 1 when
Chromium or the server is missing. The status line's emoji need a color emoji font, as a
person's browser has (Debian: `apt-get install fonts-noto-color-emoji`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The service's built-in steps, as the page tests know them (not the service's internals).
from tests.browser.pagekit import DEFAULT_ACTIONS, DEFAULT_LABELS  # noqa: E402
from tests.support import CHROMIUM, CHROMIUM_ARGS, Gunicorn, http  # noqa: E402

ACTIONS = list(DEFAULT_ACTIONS)
DEFAULT_STEPS = [
    {"action": action, "label": label}
    for action, label in zip(DEFAULT_ACTIONS, DEFAULT_LABELS, strict=True)
]
HELD = "sync_instance"  # the step the run is at in the picture
SKIPPED = "setup_civitdl"  # switched off, to show a skipped step
SSH = "ssh -p 41022 root@203.0.113.7 -L 8080:localhost:8080"

# What a host application's endpoints might answer, shown under each card.
NOTES = {
    "completed": {
        "test_ssh": "Connected as root, 8 × RTX 4090",
        "set_ui_home": "UI home is /workspace/ComfyUI",
        "setup_civitdl": "civitdl 2.1 installed",
        "sync_instance": "412 files synced",
        "install_custom_nodes": "14 custom nodes installed",
        "verify_dependencies": "All dependencies present",
    },
    "failed": {"sync_instance": "rsync: connection closed by 198.51.100.71"},
}


class StepEndpoint(BaseHTTPRequestHandler):
    """A host application's step endpoint: `POST /<action>` answers that step's note."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        action = self.path.strip("/")
        answer = {"success": True, "message": NOTES["completed"].get(action, "done")}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def configured_steps(endpoint: str) -> list[dict]:
    """The default steps: the held one on the simulator, the others at the endpoint."""
    return [
        {**step, **({} if step["action"] == HELD else {"endpoint": f"{endpoint}/{step['action']}"})}
        for step in DEFAULT_STEPS
    ]


def finished(workflow_id: str, status: str, statuses: list[str], ssh: str) -> dict:
    """A finished setup as a client would store it."""
    current = max(i for i, s in enumerate(statuses) if s != "pending")
    steps = [
        {"index": i, "action": action, "status": step_status, "enabled": step_status != "skipped"}
        for i, (action, step_status) in enumerate(zip(ACTIONS, statuses, strict=True))
    ]
    for step in steps:
        if step["status"] in NOTES:
            step["data"] = {"message": NOTES[step["status"]].get(step["action"], "")}
    return {
        "workflow_id": workflow_id,
        "status": status,
        "current_step": current,
        "steps": steps,
        "ssh_connection": ssh,
    }


def seed(url: str, steps: list[dict]) -> str:
    """Two finished setups (they fill the Instances tab), then a run of `steps`; its id."""
    for state in (
        finished(
            "workflow_1764100000000_a1b2c3",
            "completed",
            ["completed"] * 6,
            "ssh -p 40112 root@198.51.100.24 -L 8080:localhost:8080",
        ),
        finished(
            "workflow_1764100500000_d4e5f6",
            "failed",
            ["completed", "completed", "completed", "failed", "pending", "pending"],
            "ssh -p 38417 root@198.51.100.71 -L 8080:localhost:8080",
        ),
    ):
        status, _, body = http("POST", url + "/workflow/state", state)
        if status != 200:
            raise RuntimeError(f"seeding failed: {status} {body}")
    # As the page sends it: each step with its endpoint (what the server calls for it).
    run = {
        "steps": [
            {
                **step,
                "index": i,
                "status": "skipped" if step["action"] == SKIPPED else "pending",
                "enabled": step["action"] != SKIPPED,
            }
            for i, step in enumerate(steps)
        ],
        "status": "running",
        "ssh_connection": SSH,
        "label": "RTX 4090 box",
        "run": True,
    }
    status, _, body = http("POST", url + "/workflows", run)
    if status != 201:
        raise RuntimeError(f"starting the run failed: {status} {body}")
    return body["state"]["workflow_id"]


def wait_for_held_step(url: str, workflow_id: str, timeout: float = 30) -> None:
    """Wait until the run is at the held step (the steps before it answered)."""
    held = ACTIONS.index(HELD)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = http("GET", f"{url}/workflows/{workflow_id}")
        if status == 200 and body["state"]["steps"][held]["status"] == "in_progress":
            return
        if status == 200 and body["state"]["status"] != "running":
            raise RuntimeError(f"the run ended: {body['state']['status']}")
        time.sleep(0.1)
    raise RuntimeError(f"the run did not reach {HELD} within {timeout} s")


def render(url: str, workflow_id: str, out: Path) -> list[Path]:
    """Save the page following the run, in light and dark."""
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for scheme, name in (("light", "screenshot.png"), ("dark", "screenshot-dark.png")):
                context = browser.new_context(
                    viewport={"width": 1200, "height": 860},
                    device_scale_factor=1,
                    color_scheme=scheme,
                    reduced_motion="reduce",  # arrows and spinners at rest, not mid-animation
                )
                page = context.new_page()
                page.goto(f"{url}/?workflow={workflow_id}")
                page.wait_for_selector('body[data-workflow-ready="true"]')
                page.wait_for_selector("#vastai-setup:not([hidden])")
                page.wait_for_selector('#live-indicator[data-mode="live"]')
                page.mouse.move(0, 0)
                path = out / name
                page.screenshot(path=str(path), full_page=True)
                written.append(path)
                context.close()
        finally:
            browser.close()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write the PNGs")
    args = parser.parse_args()
    if not CHROMIUM:
        print("screenshot: Chromium not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="wss-screenshot-"))
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), StepEndpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    steps = configured_steps(f"http://127.0.0.1:{endpoint.server_address[1]}")
    steps_file = directory / "steps.json"
    steps_file.write_text(json.dumps(steps))
    server = Gunicorn(
        {
            "WORKFLOW_STATE_URL": f"file://{directory}/workflow_state.json",
            "WORKFLOW_STATE_TTL": "600",
            "WORKFLOW_STEPS_FILE": str(steps_file),
            "WORKFLOW_DEMO_STEP_SECONDS": "600",  # the held step: longer than the pictures take
            "WORKFLOW_STEP_DELAY_MS": "0",
        },
        workers=1,
        log_path=directory / "gunicorn.log",
    )
    try:
        server.start()
        workflow_id = seed(server.url, steps)
        wait_for_held_step(server.url, workflow_id)
        for path in render(server.url, workflow_id, args.out):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    except Exception as error:  # one line for a person, not a traceback
        print(f"screenshot: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        endpoint.shutdown()
        endpoint.server_close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render the real page to docs/screenshot.png (light) and docs/screenshot-dark.png (dark).

    python scripts/screenshot.py [--out DIR]

Starts gunicorn (`deploy/gunicorn.conf.py`, as in production) on a throwaway JSON-file state,
stores two finished setups and one halfway through, opens the page in Debian's Chromium
(never a downloaded browser) and saves the VastAI Setup tab as it restores that run, once per
color scheme. Exits 0 on success, 1 when Chromium or the server is missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.pages import DEFAULT_STEPS  # noqa: E402
from tests.support import CHROMIUM, CHROMIUM_ARGS, Gunicorn, http  # noqa: E402

ACTIONS = [step["action"] for step in DEFAULT_STEPS]

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


def workflow(workflow_id: str, status: str, statuses: list[str], ssh: str) -> dict:
    """A state as the page stores it."""
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


def seed(url: str) -> None:
    """Two finished setups (they fill the Instances tab) and one mid-run."""
    states = [
        workflow(
            "workflow_1764100000000_a1b2c3",
            "completed",
            ["completed"] * 6,
            "ssh -p 40112 root@198.51.100.24 -L 8080:localhost:8080",
        ),
        workflow(
            "workflow_1764100500000_d4e5f6",
            "failed",
            ["completed", "completed", "completed", "failed", "pending", "pending"],
            "ssh -p 38417 root@198.51.100.71 -L 8080:localhost:8080",
        ),
        workflow(
            "workflow_1764101000000_0a9b8c",
            "running",
            ["completed", "completed", "skipped", "in_progress", "pending", "pending"],
            "ssh -p 41022 root@203.0.113.7 -L 8080:localhost:8080",
        ),
    ]
    for state in states:
        status, _, body = http("POST", url + "/workflow/state", state)
        if status != 200:
            raise RuntimeError(f"seeding failed: {status} {body}")


def render(url: str, out: Path) -> list[Path]:
    """Save the page in light and dark."""
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
                page.goto(url + "/")
                page.wait_for_selector('body[data-workflow-ready="true"]')
                page.wait_for_selector("#vastai-setup:not([hidden])")
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
    server = Gunicorn(
        {
            "WORKFLOW_STATE_URL": f"file://{directory}/workflow_state.json",
            "WORKFLOW_STATE_TTL": "600",
        },
        workers=1,
        log_path=directory / "gunicorn.log",
    )
    try:
        server.start()
        seed(server.url)
        for path in render(server.url, args.out):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    except Exception as error:  # one line for a person, not a traceback
        print(f"screenshot: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

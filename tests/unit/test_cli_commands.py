"""The CLI in-process, through click's CliRunner: output, options, exit codes and signals.

tests/integration/test_cli.py runs the same commands as subprocesses, as an operator does.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from service.cli import cli
from service.config import from_env
from service.storage import CurrentWorkflow
from service.store import build_store
from tests.conftest import steps
from tests.support import free_port, wait_until


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A file storage URL of the test's own."""
    return f"file://{tmp_path}/state/workflow_state.json"


@pytest.fixture
def store(url: str) -> Iterator[CurrentWorkflow]:
    """The workflow the CLI sees (owner public's current one), to write and read back."""
    opened = CurrentWorkflow(build_store(from_env({"WORKFLOW_STATE_URL": url})), "public")
    yield opened
    opened.close()


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run `python -m service ARGS` in this process."""
    return CliRunner().invoke(cli, list(args), env=env, prog_name="python -m service")


def running(store: CurrentWorkflow, workflow_id: str = "wf-1", current: int = 2) -> dict[str, Any]:
    """Save a running 5-step workflow at step `current` (in progress)."""
    plan = steps(5)
    for index in range(current):
        plan[index]["status"] = "completed"
    plan[current]["status"] = "in_progress"
    return store.save({"workflow_id": workflow_id, "current_step": current, "steps": plan}).state


def one_line(result: Result) -> str:
    """Return stderr after checking it is one line with no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


def test_status_reads_the_storage_the_environment_names(url, store):
    running(store)
    result = run("status", env={"WORKFLOW_STATE_URL": url})
    assert result.exit_code == 0, result.stderr
    assert "Workflow  wf-1" in result.stdout
    assert "Step      3 of 5: step2 (in_progress)" in result.stdout
    assert "Progress  40% done" in result.stdout  # two of five steps completed
    assert f"Storage   {url}" in result.stdout


def test_url_option_is_the_same_setting_as_the_variable(url, store, tmp_path):
    running(store)
    elsewhere = {"WORKFLOW_STATE_URL": f"file://{tmp_path}/other/state.json"}
    by_option = run("--url", url, "--json", "status", env=elsewhere)
    assert by_option.exit_code == 0, by_option.stderr
    assert json.loads(by_option.stdout)["workflow_id"] == "wf-1"
    # Parsed by config.py's rules, with config.py's message.
    refused = run("--url", "ftp://x/y", "status")
    assert refused.exit_code == 2
    assert "WORKFLOW_STATE_URL has unsupported scheme 'ftp'" in one_line(refused)


@pytest.mark.parametrize("args", [("--json", "status"), ("status", "--json")])
def test_json_before_or_after_the_command(args, url, store):
    running(store)
    result = run("--url", url, *args)
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["workflow_id"] == "wf-1" and summary["progress_percent"] == 60.0


def test_clear_cancel_and_history(url, store):
    assert run("--url", url, "cancel").stdout == "There is no workflow to cancel.\n"
    running(store, "wf-c")
    assert run("--url", url, "cancel").stdout == "Cancelled workflow wf-c at step 3 of 5 (step2).\n"
    assert store.get().state["status"] == "cancelled"
    history = run("--url", url, "history", "--json", "--limit", "1")
    assert [w["workflow_id"] for w in json.loads(history.stdout)] == ["wf-c"]
    cleared = json.loads(run("--url", url, "--json", "clear").stdout)
    assert cleared["success"] is True and cleared["workflow_id"] == "wf-c"
    assert store.get().state is None


def test_a_guard_on_another_workflow_exits_2_with_one_line(url, store):
    running(store, "wf-1")
    result = run("--url", url, "cancel", "--workflow-id", "wf-other")
    assert result.exit_code == 2
    assert "wf-other" in one_line(result)
    assert store.get().state["status"] == "running"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "Usage:"),
        (("frobnicate",), "No such command"),
        (("history", "--limit", "0"), "--limit"),
        (("history", "--limit", "101"), "--limit"),
        (("watch", "--count", "-1"), "--count"),
        (("watch", "--timeout", "nan"), "--timeout"),
        (("status", "--bogus"), "--bogus"),
    ],
)
def test_usage_errors_exit_2(args, words, url):
    result = run("--url", url, *args)
    assert result.exit_code == 2
    assert words in result.stderr
    assert result.stdout == ""


def test_storage_down_exits_1_with_one_line():
    result = run("--url", f"redis://127.0.0.1:{free_port()}/0", "status")
    assert result.exit_code == 1
    assert one_line(result).startswith("workflow-state: storage unavailable: Redis at")


def test_a_bad_setting_exits_2_naming_it(url):
    result = run("--url", url, "status", env={"WORKFLOW_STATE_TTL": "soon"})
    assert result.exit_code == 2
    assert "WORKFLOW_STATE_TTL" in one_line(result)


def test_watch_prints_the_state_then_changes_until_count_lines(url, store):
    running(store, "wf-w", current=0)
    stop = threading.Event()

    def keep_writing() -> None:
        # Changes until the watch has seen one: it subscribes at some moment this test can't see.
        index = 0
        while not stop.wait(0.05):
            store.update_step(index % 5, {"status": "in_progress"})
            index += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = run("--url", url, "--json", "watch", "--count", "2", "--timeout", "20")
    finally:
        stop.set()
        writer.join()
    assert result.exit_code == 0, result.stderr
    first, change = (json.loads(line) for line in result.stdout.splitlines())
    assert first["kind"] == "snapshot" and first["workflow_id"] == "wf-w"
    assert change["kind"] == "change" and int(change["id"]) > int(first["id"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_watch_ends_cleanly_on_a_signal_even_when_sigint_was_ignored(signum, url):
    # As `(trap '' INT; ...) &` starts it: Python then installs no KeyboardInterrupt handler.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    ignored = signal.getsignal(signum)

    def signal_the_watch() -> None:
        wait_until(lambda: signal.getsignal(signum) is not ignored)  # the watch's own handler
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=signal_the_watch)
    sender.start()
    try:
        result = run("--url", url, "watch")
    finally:
        sender.join()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # put back as it was
        signal.signal(signal.SIGINT, before)
    # The signal may come before or after the first snapshot is printed: either way the watch
    # ends at once, cleanly, with exit 0 and nothing on stderr.
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""

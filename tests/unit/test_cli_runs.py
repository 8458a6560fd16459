"""The CLI's resume and retry, in-process: answers given, secrets asked for, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import cli
from service.config import from_env
from service.storage import StateStore
from service.store import build_store
from tests.conftest import steps
from tests.support.runs import calling

QUESTION = {
    "message": "Trust the host key?",
    "input": [
        {"name": "trust", "type": "boolean"},
        {"name": "folder", "type": "choice", "choices": ["/models", "/data"]},
        {"name": "password", "type": "secret", "label": "Password"},
    ],
}


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A file storage URL of the test's own."""
    return f"file://{tmp_path}/state/workflow_state.json"


@pytest.fixture
def store(url: str) -> Iterator[StateStore]:
    """The storage the CLI uses, to write and read back."""
    opened = build_store(from_env({"WORKFLOW_STATE_URL": url}))
    yield opened
    opened.close()


def run(url: str, *args: str, given: str | None = None) -> Result:
    """Run `python -m service ARGS` in this process, with `given` on standard input."""
    return CliRunner().invoke(
        cli, list(args), input=given, env={"WORKFLOW_STATE_URL": url}, prog_name="python -m service"
    )


def blocked(store: StateStore, workflow_id: str = "wf") -> None:
    """Store a workflow whose first step asks QUESTION (as a runner writes it)."""
    held, _ = calling(store, workflow_id)
    store.block_step("public", workflow_id, held, 0, QUESTION)


def test_resume_takes_answers_asks_the_secret_and_queues_a_run(url: str, store: StateStore):
    blocked(store)
    status = run(url, "status", "wf")
    assert "Trust the host key?" in status.stdout and "resume wf" in status.stdout
    result = run(
        url, "resume", "wf", "--input", "trust=yes", "--input", "folder=/data", given="s3cret\n"
    )
    assert result.exit_code == 0, result.output
    assert "Resumed workflow wf" in result.stdout and "s3cret" not in result.output
    state = store.get("public", "wf").state
    assert state["status"] == "running" and state["run"]["status"] == "queued"
    assert state["steps"][0]["status"] == "pending" and "blocked" not in state["steps"][0]
    kept = store.get_input("public", "wf")
    assert kept["input"] == {"trust": True, "folder": "/data", "password": "s3cret"}


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--input", "password=x"), "secret"),
        (("--input", "trust=maybe"), "true or false"),
        (("--input", "nope=1"), "NAME=VALUE"),
        (("--input", "folder=/tmp"), "choices"),
    ],
)
def test_resume_refuses_what_does_not_answer_and_changes_nothing(url, store, args, said):
    blocked(store)
    result = run(url, "resume", "wf", "--input", "trust=no", *args, given="pw\n")
    assert result.exit_code == 2 and said in result.stderr, result.output
    assert store.get("public", "wf").state["status"] == "blocked"
    assert store.get_input("public", "wf") is None


def test_retry_runs_a_failed_workflow_again_and_refuses_others(url: str, store: StateStore):
    plan = steps(3)
    plan[0]["status"], plan[1]["status"] = "completed", "failed"
    store.save(
        "public", {"workflow_id": "wf", "status": "failed", "current_step": 1, "steps": plan}
    )
    result = run(url, "retry", "wf")
    assert result.exit_code == 0, result.output
    assert "from step 2" in result.stdout
    state = store.get("public", "wf").state
    assert [s["status"] for s in state["steps"]] == ["completed", "pending", "pending"]
    again = run(url, "retry", "wf")
    assert again.exit_code == 2 and "only a failed workflow" in again.stderr
    assert run(url, "retry", "ghost").exit_code == 1
    assert run(url, "resume", "ghost").exit_code == 1

"""Pure parts of server runs: advancing and releasing a run (service/runs.py), the allow-list of
step endpoints and its setting, the queue's names, and where a run queue may live."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service import runs
from service.config import ConfigError, from_env, origin
from service.runner.control import wants_run
from service.runner.queue import CLUSTER_REFUSED, job_id, member, queue_connection, split_member
from service.runner.steps import check_origin
from service.runs import Fence

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def running(*statuses: str) -> dict[str, Any]:
    """A workflow with steps of these statuses, whose run attempt 1 is claimed."""
    state = {
        "workflow_id": "wf",
        "status": "running",
        "current_step": 0,
        "steps": [{"action": f"s{i}", "status": s} for i, s in enumerate(statuses)],
        "start_time": "2030-01-02T03:00:00.000Z",
        "last_update": "2030-01-02T03:00:00.000Z",
        "version": 1,
    }
    queued = runs.request_run(state, now=NOW, lease=15)
    return runs.claim_run(queued, Fence(0, 1), "h:1", now=NOW, lease=15)


def test_advance_completes_a_step_and_starts_the_next_unsettled_one():
    state = runs.runner_step(
        running("pending", "skipped", "pending"), Fence(0, 1), 0, "in_progress", now=NOW
    )
    later = NOW + timedelta(seconds=1)
    new = runs.advance(state, Fence(0, 1), 0, "completed", {"x": 1}, now=later)
    assert [s["status"] for s in new["steps"]] == ["completed", "skipped", "in_progress"]
    assert new["steps"][0]["data"] == {"x": 1}
    assert new["steps"][2]["attempts"] == 1
    assert new["current_step"] == 2
    assert new["run"]["status"] == "running"


def test_advance_finishes_the_run_after_the_last_step():
    state = runs.runner_step(
        running("completed", "pending"), Fence(0, 1), 1, "in_progress", now=NOW
    )
    new = runs.advance(state, Fence(0, 1), 1, "completed", now=NOW)
    assert (new["status"], new["run"]["status"]) == ("completed", "done")


def test_advance_with_a_failed_step_fails_the_workflow_and_starts_nothing():
    state = runs.runner_step(running("pending", "pending"), Fence(0, 1), 0, "in_progress", now=NOW)
    new = runs.advance(state, Fence(0, 1), 0, "failed", {"message": "no"}, now=NOW)
    assert [s["status"] for s in new["steps"]] == ["failed", "pending"]
    assert (new["status"], new["run"]["status"]) == ("failed", "done")


def test_advance_is_fenced_on_the_attempt():
    state = runs.runner_step(running("pending"), Fence(0, 1), 0, "in_progress", now=NOW)
    with pytest.raises(runs.RunSuperseded):
        runs.advance(state, Fence(0, 2), 0, "completed", now=NOW)


def test_release_queues_the_next_attempt_and_fences_the_old_one():
    state = runs.runner_step(running("pending"), Fence(0, 1), 0, "in_progress", now=NOW)
    released = runs.release_run(state, Fence(0, 1), now=NOW, lease=0)
    assert released["run"] == {
        **state["run"],
        "attempt": 2,
        "runner": None,
        "status": "queued",
        "lease_expires": "2030-01-02T03:04:05.000Z",
        "takeovers": 1,  # the person sees an interruption
        "call": {**state["run"]["call"], "token": None},  # the call's token is dead
    }
    assert released["steps"][0]["status"] == "in_progress"
    with pytest.raises(runs.RunSuperseded):
        runs.release_run(released, Fence(0, 1), now=NOW, lease=0)
    with pytest.raises(runs.RunSuperseded):  # only a claimed run is released
        runs.release_run(released, Fence(0, 2), now=NOW, lease=0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Ops.Example.com/api/x?y=1", "https://ops.example.com:443"),
        ("http://10.0.0.5/x", "http://10.0.0.5:80"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("https://user:pw@ops.example.com:8443", "https://ops.example.com:8443"),
    ],
)
def test_an_origin_is_scheme_host_and_port(url: str, expected: str):
    assert origin(url) == expected


def test_check_origin_allows_listed_origins_and_paths_only():
    allowed = frozenset({"https://ops.example.com:443"})
    assert check_origin("https://ops.example.com/deploy", allowed) is None
    assert check_origin("/workflow/actions/test_ssh", allowed) is None
    for endpoint in (
        "http://ops.example.com/deploy",  # another scheme is another origin
        "https://ops.example.com:8443/deploy",
        "https://169.254.169.254/latest/meta-data",
        "https://ops.example.com.evil.test/x",
        "https://ops.example.com@evil.test/x",
    ):
        refused = check_origin(endpoint, allowed)
        assert refused is not None and refused.status == "failed", endpoint
        assert "is not an allowed step endpoint" in refused.message


def test_the_origins_setting_is_checked():
    config = from_env({"WORKFLOW_STEP_ORIGINS": "https://a.example, http://b.example:81/"})
    assert config["STEP_ORIGINS"] == ("https://a.example:443", "http://b.example:81")
    for bad in ("ftp://a.example", "https://a.example/path", "*", "https://"):
        with pytest.raises(ConfigError, match="WORKFLOW_STEP_ORIGINS"):
            from_env({"WORKFLOW_STEP_ORIGINS": bad})


def test_job_ids_and_index_members():
    made = job_id("bob@example.org", "wf:1.a", Fence(1796675680047361, 3))
    assert made.startswith("run-") and made.endswith("-1796675680047361-3")
    assert all(c.isalnum() or c in "-_" for c in made)  # what RQ accepts
    one = Fence(7, 3)
    assert job_id("bob@example.org", "wf:1.a", one) != job_id("bob@example.org", "wf:1.b", one)
    # A workflow deleted and created again under the same id gets jobs of its own.
    assert job_id("bob@example.org", "wf:1.a", one) != job_id("bob", "wf:1.a", Fence(9, 3))
    assert split_member(member("bob@example.org", "wf:1.a").encode()) == (
        "bob@example.org",
        "wf:1.a",
    )
    assert split_member(b"garbage") is None


def test_a_cluster_cannot_host_the_queue_without_a_queue_url():
    config = from_env({"WORKFLOW_STATE_URL": "redis+cluster://127.0.0.1:7000"})
    with pytest.raises(ConfigError) as refused:
        queue_connection(config, store=None)  # type: ignore[arg-type]
    assert str(refused.value) == CLUSTER_REFUSED
    assert "WORKFLOW_QUEUE_URL" in CLUSTER_REFUSED
    given = {**config, "QUEUE_URL": "redis://127.0.0.1:6390/1"}
    assert queue_connection(given, store=None) is not None  # type: ignore[arg-type]


def test_run_true_asks_for_a_run_and_nothing_else_does():
    assert wants_run({"run": True}) is True
    assert wants_run({"run": False}) is False
    assert wants_run({"steps": []}) is False
    with pytest.raises(Exception, match="'run'"):
        wants_run({"run": 1})

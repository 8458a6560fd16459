"""The CLI as an operator runs it: a subprocess, on a test-owned redis-server and on a file."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import from_env
from service.storage import CurrentWorkflow
from service.store import build_store
from tests.conftest import steps
from tests.support import ROOT, RedisServer, free_port

pytestmark = pytest.mark.slow


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a CLI run: this one without WORKFLOW_*/REDIS_URL, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_") and k != "REDIS_URL"
    }
    env.update({"PYTHONPATH": str(ROOT), **extra})
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `python -m service ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(params=["redis", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment that points the CLI (and `store`) at an empty backend."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        return {"WORKFLOW_STATE_URL": server.url}
    return {"WORKFLOW_STATE_URL": f"file://{tmp_path}/state/workflow_state.json"}


@pytest.fixture
def store(storage: dict[str, str]) -> Iterator[CurrentWorkflow]:
    """The workflow the CLI sees (owner public's current one), to write to and read back."""
    opened = CurrentWorkflow(build_store(from_env(storage)), "public")
    yield opened
    opened.close()


def running(store: CurrentWorkflow, workflow_id: str = "wf-1", current: int = 2) -> dict[str, Any]:
    """Save a running 5-step workflow at step `current` (in progress) and return it."""
    plan = steps(5)
    for index in range(current):
        plan[index]["status"] = "completed"
    plan[current]["status"] = "in_progress"
    body = {"workflow_id": workflow_id, "current_step": current, "steps": plan}
    return store.save(body).state


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Return stderr after checking it is one line with no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- status --------------------------------------------------------------------------------


def test_status_with_no_state(storage):
    result = cli(storage, "status")
    assert result.returncode == 0, result.stderr
    assert "No workflow state" in result.stdout
    as_json = cli(storage, "status", "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {"active": False, "workflow_id": None, "status": None}


def test_status_prints_the_summary(storage, store):
    running(store, current=2)
    result = cli(storage, "status")
    assert result.returncode == 0, result.stderr
    assert "wf-1" in result.stdout
    assert "running" in result.stdout
    assert "3 of 5: step2 (in_progress)" in result.stdout
    assert "40% done" in result.stdout  # two of five steps completed, for a person
    # --json before or after the command: the same summary GET /workflow/state/summary serves.
    for args in (("--json", "status"), ("status", "--json")):
        summary = json.loads(cli(storage, *args).stdout)
        assert summary["workflow_id"] == "wf-1"
        assert summary["active"] is True
        assert summary["current_step"] == 2
        assert summary["total_steps"] == 5
        assert summary["progress_percent"] == 60.0  # the seed's formula
        assert summary["completed_percent"] == 40


# --- clear and cancel ----------------------------------------------------------------------


def test_clear_deletes_the_state(storage, store):
    running(store)
    result = cli(storage, "clear")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Cleared workflow wf-1 (it was running).\n"
    assert store.get().state is None
    again = cli(storage, "clear")
    assert again.returncode == 0
    assert again.stdout == "Nothing to clear.\n"
    # --json keeps what the words leave out: the workflow cleared (none) and the version taken.
    as_json = json.loads(cli(storage, "clear", "--json").stdout)
    assert as_json["success"] is True and as_json["workflow_id"] is None
    assert isinstance(as_json["version"], int)


def test_cancel_a_running_workflow_then_a_finished_one(storage, store):
    before = running(store)
    result = cli(storage, "cancel")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Cancelled workflow wf-1 at step 3 of 5 (step2).\n"
    state = store.get().state
    assert state["status"] == "cancelled"
    # As POST /workflows/<id>/cancel (contract section 9): the running step is cancelled too.
    assert state["steps"] == [
        {**step, "status": "cancelled"} if step["status"] == "in_progress" else step
        for step in before["steps"]
    ]
    assert state["version"] > before["version"]

    again = cli(storage, "cancel")
    assert again.returncode == 0
    assert "already cancelled" in again.stdout
    assert store.get().state == state  # nothing written

    store.clear()
    nothing = cli(storage, "cancel", "--json")
    assert nothing.returncode == 0
    assert json.loads(nothing.stdout)["cancelled"] is False


def test_cancel_guarded_by_another_workflow_id_is_refused(storage, store):
    running(store, "wf-1")
    result = cli(storage, "cancel", "--workflow-id", "wf-other")
    assert result.returncode == 2
    assert "wf-other" in one_line_error(result)
    assert store.get().state["status"] == "running"
    assert cli(storage, "cancel", "--workflow-id", "wf-1").returncode == 0
    assert store.get().state["status"] == "cancelled"


# --- history -------------------------------------------------------------------------------


def test_history_lists_finished_workflows_newest_first(storage, store):
    empty = cli(storage, "history")
    assert empty.returncode == 0 and "No finished workflows" in empty.stdout
    for name, status in (("first", "completed"), ("second", "failed"), ("third", "cancelled")):
        store.save({"workflow_id": name, "status": status, "steps": steps(2, "completed")})
    running(store, "still-running")
    human = cli(storage, "history")
    assert human.returncode == 0, human.stderr
    rows = [line for line in human.stdout.splitlines()[1:] if line.strip()]
    assert [row.split()[-1] for row in rows] == ["third", "second", "first"]
    assert "failed" in rows[1]
    workflows = json.loads(cli(storage, "history", "--json", "--limit", "2").stdout)
    assert [w["workflow_id"] for w in workflows] == ["third", "second"]


# --- many workflows: list, and one workflow by id -------------------------------------------


def test_list_pages_through_every_workflow_and_status_clear_take_one_id(redis_server):
    redis_server.flush()
    env = {"WORKFLOW_STATE_URL": redis_server.url}
    store = build_store(from_env(env))
    try:
        # More than a page (100) of ids in no particular order, and some moved by later writes.
        names = [f"wf-{(index * 37) % 131:03d}" for index in range(131)]
        written = [
            store.create("public", {"workflow_id": n, "steps": steps(3)}).state for n in names
        ]
        for name in names[:100:9]:
            written.append(store.update_step("public", name, 1, {"status": "in_progress"}).state)
        store.create("alice", {"workflow_id": names[0], "steps": steps(3)})
        latest = {state["workflow_id"]: state for state in written}
        order = [
            state["workflow_id"]
            for state in sorted(
                latest.values(), key=lambda s: (s["last_update"], s["workflow_id"]), reverse=True
            )
        ]

        listed = cli(env, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [entry["workflow_id"] for entry in json.loads(listed.stdout)] == order
        human = cli(env, "list", "--limit", "120")
        assert [line.split()[-1] for line in human.stdout.splitlines()[1:]] == order[:120]

        # A workflow deep in the list, not the current one: status and clear act on it alone.
        target = order[110]
        summary = json.loads(cli(env, "status", target, "--json").stdout)
        assert summary["workflow_id"] == target
        assert summary["last_update"] == latest[target]["last_update"]
        cleared = cli(env, "clear", target)
        assert cleared.returncode == 0, cleared.stderr
        assert cleared.stdout == f"Cleared workflow {target} (it was running).\n"
        assert store.get("public", target).state is None
        after = json.loads(cli(env, "list", "--json").stdout)
        assert [entry["workflow_id"] for entry in after] == [n for n in order if n != target]
        assert store.get("public").state["workflow_id"] == names[-1]  # still the current one
        assert store.get("alice", names[0]).state is not None
        gone = cli(env, "status", target)
        assert gone.returncode == 1
        assert f"no workflow {target!r} for owner public" in one_line_error(gone)
    finally:
        store.close()


# --- errors --------------------------------------------------------------------------------


def test_every_command_exits_1_for_an_id_the_owner_does_not_have(storage, store):
    running(store, "there")
    for command in ("status", "clear", "cancel", "watch", "run"):
        result = cli(storage, command, "ghost")
        assert result.returncode == 1, (command, result)
        assert one_line_error(result).startswith(
            "workflow-state: no workflow 'ghost' for owner public: "
        ), command
        assert result.stdout == ""
    assert store.get().state["status"] == "running"


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("history", "--limit", "0"),
        ("history", "--limit", "101"),
        ("history", "--limit", "ten"),
        ("watch", "--count", "-1"),
        ("status", "--bogus"),
    ],
)
def test_usage_errors_exit_2(args, tmp_path):
    result = cli({"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json"}, *args)
    assert result.returncode == 2, result
    assert "usage:" in result.stderr.lower()
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"WORKFLOW_STATE_URL": "ftp://host/x"}, "WORKFLOW_STATE_URL"),
        ({"WORKFLOW_STATE_TTL": "soon"}, "WORKFLOW_STATE_TTL"),
        ({"WORKFLOW_STATE_SECRET_KEY": "not-a-key"}, "WORKFLOW_STATE_SECRET_KEY"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(env, names):
    result = cli(env, "status")
    assert result.returncode == 2
    assert names in one_line_error(result)


@pytest.mark.parametrize("command", ["status", "clear", "cancel", "history", "watch"])
def test_redis_down_exits_1_with_one_line(command):
    result = cli({"WORKFLOW_STATE_URL": f"redis://127.0.0.1:{free_port()}/0"}, command)
    assert result.returncode == 1, result
    line = one_line_error(result)
    assert "unavailable" in line and "Redis" in line
    assert result.stdout == ""


def test_file_storage_down_exits_1(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = cli({"WORKFLOW_STATE_URL": f"file://{blocker}/state.json"}, "status")
    assert result.returncode == 1
    assert str(blocker) in one_line_error(result)


def test_redis_stopped_while_in_use_exits_1_then_recovers(own_redis: RedisServer):
    env = {"WORKFLOW_STATE_URL": own_redis.url}
    assert cli(env, "status").returncode == 0
    own_redis.stop()
    assert cli(env, "status").returncode == 1
    own_redis.start()
    assert cli(env, "status").returncode == 0


# --- watch ---------------------------------------------------------------------------------


class Watch:
    """`python -m service ARGS` (a watch) in the background, its lines read as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", *args],
            cwd=ROOT,
            env=cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 10) -> str:
        """Return the next line, or fail after `timeout` seconds."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            ended = self.process.poll()
            detail = "" if ended is None else f"; it exited {ended}: {self.process.stderr.read()}"
            raise AssertionError(f"watch printed nothing within {timeout}s{detail}") from None

    def finish(self, timeout: float = 10) -> tuple[int, str]:
        """Wait for the process to end; return its exit code and stderr."""
        code = self.process.wait(timeout=timeout)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()

    def rest(self) -> list[str]:
        """Return the lines printed and not read yet (call once the process ended)."""
        self.reader.join(timeout=5)
        return [self.lines.get() for _ in range(self.lines.qsize())]

    def kill(self) -> None:
        """Make sure the process is gone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    started: list[Watch] = []
    yield started
    for watch in started:
        watch.kill()


def test_watch_prints_each_change_once_and_exactly_count_lines(storage, store, watches):
    watch = Watch(storage, "watch", "--count", "5", "--timeout", "30")
    watches.append(watch)
    assert "no workflow" in watch.next()  # the state as found: subscribed from here on
    store.clear()  # a delete of nothing: still no workflow, so no line
    running(store, "wf-w", current=0)
    store.merge({"ssh_connection": "ssh root@203.0.113.5"})  # nothing a line shows
    store.update_step(0, {"status": "completed"})
    store.update_step(1, {"status": "in_progress"})
    store.clear()
    store.clear()  # gone already: no second line
    running(store, "wf-x", current=0)
    lines = [watch.next() for _ in range(4)]
    assert "wf-w running step 1/5 step0 in_progress 20%" in lines[0]
    assert "wf-w running step 1/5 step0 completed 20%" in lines[1]
    assert "wf-w running step 2/5 step1 in_progress 40%" in lines[2]
    assert lines[3].endswith(" cleared")
    code, stderr = watch.finish()
    assert code == 0, stderr
    assert watch.rest() == []  # five lines in all, wf-x's not among them


@pytest.mark.parametrize(("status", "code"), [("completed", 0), ("failed", 3), ("cancelled", 4)])
def test_watch_ends_when_the_workflow_finishes(storage, store, watches, status, code):
    running(store, "wf-end", current=1)
    watch = Watch(storage, "watch", "--timeout", "30")
    watches.append(watch)
    assert "wf-end running step 2/5" in watch.next()
    store.merge({"status": status})
    assert f"wf-end {status} step 2/5" in watch.next()
    assert watch.finish() == (code, "")
    assert watch.rest() == []


def test_watch_of_a_finished_workflow_prints_it_and_ends(storage, store):
    store.save({"workflow_id": "wf-done", "status": "failed", "steps": steps(2, "completed")})
    result = cli(storage, "watch", "wf-done", "--json")
    assert result.returncode == 3, result.stderr
    [line] = result.stdout.splitlines()
    assert json.loads(line)["status"] == "failed"


def test_watch_json_lines_and_a_change_made_before_the_first_line(storage, store, watches):
    running(store, "wf-before", current=1)
    watch = Watch(storage, "--json", "watch", "--timeout", "30")
    watches.append(watch)
    first = json.loads(watch.next())
    assert first["kind"] == "snapshot"
    assert first["workflow_id"] == "wf-before"
    assert first["step"] == {
        "index": 1,
        "action": "step1",
        "label": "Step 1",
        "status": "in_progress",
    }
    store.merge({"status": "failed"})
    change = json.loads(watch.next())
    assert change["kind"] == "change"
    assert change["status"] == "failed" and change["active"] is False
    assert int(change["id"]) == int(first["id"]) + 1
    assert watch.finish()[0] == 3


def test_watch_reports_expiry(tmp_path, watches):
    # A running workflow nobody writes to expires after WORKFLOW_STATE_STALE_TTL.
    env = {"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json", "WORKFLOW_STATE_STALE_TTL": "1"}
    store = CurrentWorkflow(build_store(from_env(env)), "public")
    watch = Watch(env, "watch", "--count", "3", "--timeout", "30")
    watches.append(watch)
    watch.next()
    saved = running(store, "short")
    assert "short running" in watch.next()
    assert f"#{saved['version']}:expired expired" in watch.next(timeout=5)
    assert watch.finish()[0] == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_watch_stops_cleanly_on_ctrl_c_and_sigterm(signum, storage, watches):
    watch = Watch(storage, "watch")
    watches.append(watch)
    watch.next()
    watch.process.send_signal(signum)
    code, stderr = watch.finish(timeout=5)
    assert code == 0
    assert "Traceback" not in stderr


def test_watch_exits_at_its_timeout(storage, watches):
    watch = Watch(storage, "watch", "--timeout", "0.5")
    watches.append(watch)
    watch.next()
    assert watch.finish(timeout=10)[0] == 0


def test_watch_follows_redis_through_a_restart(own_redis: RedisServer, watches):
    env = {"WORKFLOW_STATE_URL": own_redis.url}
    store = CurrentWorkflow(build_store(from_env(env)), "public")
    watch = Watch(env, "watch", "--timeout", "30")
    watches.append(watch)
    watch.next()
    running(store, "before-restart", current=0)
    assert "before-restart" in watch.next()
    own_redis.stop()
    own_redis.start()  # empty: the test server keeps nothing across a restart
    running(store, "after-restart", current=1)
    # The feed resubscribes and prints the state it finds (no workflow, if it was back before
    # the write), then goes on with the changes.
    seen = [watch.next(timeout=10)]
    while "after-restart" not in seen[-1]:
        assert len(seen) < 3, seen
        seen.append(watch.next(timeout=10))

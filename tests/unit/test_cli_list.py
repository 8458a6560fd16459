"""`list`; `status|watch|cancel|clear [WORKFLOW_ID] --owner U`: in-process, file and fakeredis.

tests/test_cli.py runs `list` against a real redis-server as a subprocess, across full pages.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner, Result

from service import cli as cli_module
from service.cli import cli
from service.config import from_env
from service.storage import StateStore
from service.store import build_store
from tests.conftest import steps

PUBLIC = "public"


@pytest.fixture(params=["file", "fakeredis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StateStore]:
    """The storage the CLI of this test reads, opened here too to write and read back."""
    if request.param == "file":
        settings = from_env({"WORKFLOW_STATE_URL": f"file://{tmp_path}/state/state.json"})
    else:
        server = fakeredis.FakeServer()
        settings = {
            **from_env({"WORKFLOW_STATE_URL": "redis://fakeredis/0"}),
            # The CLI's own store and this one share the fake server (and its pub/sub).
            "REDIS_CLIENT_FACTORY": lambda: fakeredis.FakeRedis(server=server),
        }
    monkeypatch.setattr(cli_module.Invocation, "config", lambda self: dict(settings))
    opened = build_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make `list` read 3 workflows per storage call, so a few workflows take several pages."""
    monkeypatch.setattr(cli_module, "LIST_PAGE", 3)
    return 3


def run(*args: str) -> Result:
    """Run `python -m service ARGS` in this process."""
    return CliRunner().invoke(cli, list(args), prog_name="python -m service")


def ok(*args: str) -> Result:
    """Run a command that must succeed."""
    result = run(*args)
    assert result.exit_code == 0, (args, result.stderr, result.exception)
    assert result.stderr == ""
    return result


def listed(*args: str) -> list[dict[str, Any]]:
    """Return what `list --json ARGS` prints."""
    return json.loads(ok("list", "--json", *args).stdout)


def create(
    store: StateStore, owner: str, workflow_id: str, status: str = "running", size: int = 5
) -> dict[str, Any]:
    """Create a workflow of `size` steps at step 3 (in progress unless finished); return it."""
    plan = steps(size, "completed")
    plan[2]["status"] = "in_progress" if status == "running" else status
    for step in plan[3:]:
        step["status"] = "pending"
    body = {"workflow_id": workflow_id, "status": status, "current_step": 2, "steps": plan}
    return store.create(owner, body).state


def newest_first(states: list[dict[str, Any]]) -> list[str]:
    """Return the ids of the latest of `states` per id in list order (last_update, then id)."""
    latest = {state["workflow_id"]: state for state in states}
    ordered = sorted(latest.values(), key=lambda s: (s["last_update"], s["workflow_id"]))
    return [state["workflow_id"] for state in reversed(ordered)]


def one_line(result: Result) -> str:
    """Return stderr after checking it is one line with no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


# --- list ----------------------------------------------------------------------------------


def test_list_pages_through_an_owners_workflows_most_recent_first(store, small_pages):
    # Ids out of alphabetical order, and an old one touched last: the order is last_update's.
    written = [create(store, PUBLIC, name) for name in ("m", "c", "x", "a", "q", "b", "z", "k")]
    written.append(store.update_step(PUBLIC, "c", 3, {"status": "in_progress"}).state)
    create(store, "alice", "alices-own")
    expected = newest_first(written)
    assert expected[0] == "c"

    entries = listed()
    assert [entry["workflow_id"] for entry in entries] == expected  # 9 ids: 3 pages of 3
    assert {entry["owner"] for entry in entries} == {PUBLIC}
    [c] = [entry for entry in entries if entry["workflow_id"] == "c"]
    assert c == {"owner": PUBLIC, **store.list(PUBLIC, limit=1).entries[0]}
    # --limit across a page boundary; the human lines in the same order.
    assert [entry["workflow_id"] for entry in listed("--limit", "5")] == expected[:5]
    human = ok("list").stdout.splitlines()
    assert human[0].split() == ["UPDATED", "STATUS", "STEP", "PROGRESS", "WORKFLOW"]
    assert [line.split()[-1] for line in human[1:]] == expected
    assert human[1].split()[1:] == ["running", "4/5", "80%", "c"]


def test_list_filters_by_status(store, small_pages):
    written = [create(store, PUBLIC, f"run-{i}") for i in range(4)]
    written += [create(store, PUBLIC, f"done-{i}", "completed") for i in range(2)]
    written.append(store.cancel(PUBLIC, "run-1").state)
    written.append(create(store, PUBLIC, "failed-0", "failed"))
    order = newest_first(written)
    finished = {"done-0", "done-1", "run-1", "failed-0"}

    running = [e["workflow_id"] for e in listed("--status", "running")]
    assert running == [name for name in order if name not in finished]
    by_status = [e["workflow_id"] for e in listed("--status", "finished")]
    assert by_status == [name for name in order if name in finished]
    assert [e["workflow_id"] for e in listed("--status", "all")] == order

    assert ok("list", "--owner", "nobody").stdout == "No workflows for owner nobody.\n"
    empty = ok("list", "--owner", "nobody", "--status", "running")
    assert empty.stdout == "No running workflows for owner nobody.\n"
    assert listed("--owner", "nobody") == []


def test_list_of_every_owner_interleaves_them_by_last_update(store, small_pages):
    written = []
    for name in ("m", "c", "x", "a"):  # not in alphabetical order: the order is last_update's
        for owner in ("alice", PUBLIC, "bob.b@example"):
            written.append((owner, create(store, owner, name)))
    # The same id for three owners: one entry each, told apart by the owner.
    latest = sorted(written, key=lambda w: (w[1]["last_update"], w[1]["workflow_id"], w[0]))
    expected = [(owner, state["workflow_id"]) for owner, state in reversed(latest)]

    entries = listed("--owner", "*")
    assert [(e["owner"], e["workflow_id"]) for e in entries] == expected
    assert [(e["owner"], e["workflow_id"]) for e in listed("--owner", "*", "--limit", "7")] == (
        expected[:7]
    )
    human = ok("list", "--owner", "*").stdout.splitlines()
    assert human[0].split() == ["UPDATED", "STATUS", "STEP", "PROGRESS", "OWNER", "WORKFLOW"]
    table = human[1 : human.index("")]
    assert [tuple(line.split()[-2:]) for line in table] == expected
    # Then each owner's share: queued runs and the bytes its workflows take stored.
    shares = human[human.index("") + 1 :]
    assert shares[0].split() == ["OWNER", "QUEUED", "RUNS", "STORED"]
    stored = {owner: store.owner_bytes(owner) for owner in ("alice", PUBLIC, "bob.b@example")}
    assert all(size > 0 for size in stored.values())
    assert [line.split() for line in shares[1:]] == [
        [owner, "0", str(stored[owner]), "bytes"] for owner in sorted(stored)
    ]
    assert {(e["owner"], e["owner_bytes"], e["owner_queued_runs"]) for e in entries} == {
        (owner, stored[owner], 0) for owner in stored
    }
    finished = ok("list", "--owner", "*", "--status", "finished")
    assert finished.stdout.startswith("No finished workflows for any owner.\n")
    store.create("alice", {"workflow_id": "queued", "steps": steps(1)})
    ok("run", "queued", "--owner", "alice")  # nothing here runs it: it stays queued
    queued = {e["owner"]: e["owner_queued_runs"] for e in listed("--owner", "*")}
    assert queued == {"alice": 1, PUBLIC: 0, "bob.b@example": 0}


def test_list_of_every_owner_with_no_owners(store):
    assert ok("list", "--owner", "*").stdout == "No workflows for any owner.\n"  # no owners
    assert listed("--owner", "*") == []


# --- one workflow by id --------------------------------------------------------------------


def test_status_cancel_and_clear_act_on_the_named_workflow_only(store):
    create(store, PUBLIC, "wf-a")
    create(store, PUBLIC, "wf-b")  # the current one
    create(store, "alice", "wf-a")
    alices = store.get("alice", "wf-a").state

    summary = json.loads(ok("status", "wf-a", "--json").stdout)
    assert summary["workflow_id"] == "wf-a" and summary["progress_percent"] == 60.0
    assert json.loads(ok("status", "--json").stdout)["workflow_id"] == "wf-b"
    human = ok("status", "wf-a", "--owner", "alice").stdout
    assert "Workflow  wf-a\nOwner     alice\n" in human
    assert f"Version   {alices['version']}\n" in human

    assert ok("cancel", "wf-a").stdout.startswith("Cancelled workflow wf-a at step 3 of 5")
    assert store.get(PUBLIC, "wf-a").state["status"] == "cancelled"
    assert store.get(PUBLIC, "wf-b").state["status"] == "running"
    assert store.get("alice", "wf-a").state == alices

    cleared = json.loads(ok("clear", "wf-a", "--json").stdout)
    assert cleared["workflow_id"] == "wf-a" and cleared["success"] is True
    assert store.get(PUBLIC, "wf-a").state is None
    assert store.get(PUBLIC).state["workflow_id"] == "wf-b"  # still there, still current
    assert store.get("alice", "wf-a").state == alices

    # No id: the owner's current workflow.
    assert ok("clear", "--owner", "alice").stdout == "Cleared workflow wf-a (it was running).\n"
    assert store.get("alice", "wf-a").state is None
    assert store.get(PUBLIC, "wf-b").state["status"] == "running"


@pytest.mark.parametrize(
    "args",
    [
        ("status", "ghost"),
        ("status", "ghost", "--json"),
        ("clear", "ghost"),
        ("cancel", "ghost"),
        ("watch", "ghost", "--timeout", "5"),
        ("run", "ghost"),
        ("run", "gone"),
        ("status", "alices", "--owner", PUBLIC),  # another owner's id is not there either
        ("clear", "gone"),  # cleared
    ],
)
def test_a_named_workflow_that_is_not_there_exits_1_with_one_line(store, args):
    create(store, "alice", "alices")
    create(store, PUBLIC, "gone")
    create(store, PUBLIC, "current")
    store.delete(PUBLIC, "gone")
    before = [
        store.get(owner, name).state for owner, name in (("alice", "alices"), (PUBLIC, "current"))
    ]
    result = run(*args)
    assert result.exit_code == 1
    assert one_line(result) == (
        f"workflow-state: no workflow {args[1]!r} for owner public: never created, cleared or "
        "expired"
    )
    assert result.stdout == ""
    after = [
        store.get(owner, name).state for owner, name in (("alice", "alices"), (PUBLIC, "current"))
    ]
    assert after == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("list", "--status", "done"), "--status"),
        (("list", "--limit", "0"), "--limit"),
        (("list", "--limit", "many"), "--limit"),
        (("list", "--owner", "no one"), "--owner 'no one' is not a valid user name"),
        (("list", "--bogus"), "--bogus"),
        (("list", "extra"), "unexpected extra argument"),
        (("status", "--owner", "*"), "--owner '*' is not a valid user name"),
        (("status", "bad id!"), "Workflow id 'bad id!' is not valid"),
        (("watch", "bad/id"), "Workflow id 'bad/id' is not valid"),
        (("clear", "x" * 129), "is not valid"),
        (("cancel", "a b", "--owner", "alice"), "is not valid"),
        (("status", "one", "two"), "unexpected extra argument"),
    ],
)
def test_usage_errors_exit_2_and_change_nothing(store, args, words):
    create(store, PUBLIC, "kept")
    kept = store.get(PUBLIC, "kept").state
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert store.get(PUBLIC, "kept").state == kept


def test_watch_follows_the_named_workflow_only(store):
    create(store, PUBLIC, "followed")
    create(store, PUBLIC, "other")  # the current one, changing all along
    # The same id for another owner, not followed; created last so that its counter is ahead of
    # public's (both start from the clock), and its changes would not pass as old ones.
    create(store, "alice", "followed", size=4)
    stop = threading.Event()

    def keep_writing() -> None:
        # Until the watch has seen its changes: it subscribes at a moment this test can't see.
        index = 0
        while not stop.wait(0.02):
            for owner, name in ((PUBLIC, "other"), ("alice", "followed"), (PUBLIC, "followed")):
                store.update_step(owner, name, index % 5, {"status": "in_progress"})
            index += 1

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = run("--json", "watch", "followed", "--count", "4", "--timeout", "20")
    finally:
        stop.set()
        writer.join()
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["kind"] for line in lines] == ["snapshot", "change", "change", "change"]
    # Public's, not alice's (4 steps) nor the current one.
    assert {(line["workflow_id"], line["total_steps"]) for line in lines} == {("followed", 5)}
    ids = [int(line["id"]) for line in lines]
    assert ids == sorted(set(ids))


def test_watch_of_a_named_workflow_prints_when_it_is_cleared(store, monkeypatch):
    create(store, PUBLIC, "short-lived")
    create(store, PUBLIC, "current")
    checked = threading.Event()
    found = cli_module._found

    def found_and_tell(*args: Any) -> Any:
        try:
            return found(*args)
        finally:
            checked.set()

    # The watch refuses a workflow that is not there when it starts: clear only once it looked.
    monkeypatch.setattr(cli_module, "_found", found_and_tell)
    stop = threading.Event()

    def clear_and_create() -> None:
        checked.wait(20)
        while not stop.wait(0.02):
            store.update_step(PUBLIC, "current", 0, {"status": "in_progress"})
            store.delete(PUBLIC, "short-lived")
            create(store, PUBLIC, "short-lived")

    writer = threading.Thread(target=clear_and_create)
    writer.start()
    try:
        result = run("watch", "short-lived", "--count", "3", "--timeout", "20")
    finally:
        stop.set()
        writer.join()
    assert result.exit_code == 0, result.stderr
    # Its changes alternate: cleared, created again; never the current workflow's.
    first, *changes = result.stdout.splitlines()
    assert "short-lived" in first or first.endswith(" no workflow")
    assert len(changes) == 2
    assert sum(line.endswith(" cleared") for line in changes) == 1, changes
    assert sum(" short-lived running step 3/5 " in line for line in changes) == 1, changes

"""The JSON-file backend: what is on disk, permissions, symlinks, corruption and failures."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from service import create_app
from service.storage import CurrentWorkflow, FileStore, StorageUnavailable
from tests.conftest import steps
from tests.support import ROOT, Tmpfs, wait_until
from tests.support.routes import STATE


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def config_file(state_dir: Path) -> Path:
    """The path WORKFLOW_STATE_URL names: the state directory is beside it."""
    return state_dir / "workflow_state.json"


@pytest.fixture
def owner_dir(state_dir: Path) -> Path:
    """Where owner public (every seed client) keeps its workflows."""
    return state_dir / "workflows" / "public"


@pytest.fixture
def state_file(owner_dir: Path) -> Path:
    """The file of workflow "wf", which these tests make owner public's current one."""
    return owner_dir / "wf.json"


@pytest.fixture
def url(config_file: Path) -> str:
    return f"file://{config_file}"


@pytest.fixture
def make_client(url: str):
    def make(**overrides):
        return create_app({"STATE_URL": url, **overrides}).test_client()

    return make


def store_at(url: str, **options) -> CurrentWorkflow:
    """Open owner public's current workflow on the file backend at `url`."""
    return CurrentWorkflow(FileStore(url, **options), "public")


@pytest.fixture
def client(make_client):
    return make_client()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_file_holds_exactly_the_served_state(client, state_file):
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(2), "extra": {"a": [1, 2]}})
    client.patch(f"{STATE}/steps/1", json={"status": "failed"})
    assert json.loads(state_file.read_text()) == client.get(STATE).get_json()["state"]


def test_files_are_0600_and_a_created_directory_0700(client, state_dir, owner_dir):
    client.post(STATE, json={"workflow_id": "wf", "status": "completed", "steps": steps(1)})
    for directory in (state_dir, state_dir / "workflows", owner_dir):
        assert mode(directory) == 0o700
    for path in [*owner_dir.iterdir(), state_dir / "workflows.events"]:
        assert mode(path) == 0o600, path
    assert {p.name for p in owner_dir.iterdir()} >= {
        "wf.json",
        ".lock",
        ".seq",
        ".current",
        ".index",
        ".history",
    }


def test_no_temp_files_are_left_behind(client, state_dir):
    for i in range(5):
        client.post(STATE, json={"steps": steps(2), "n": i})
        client.patch(f"{STATE}/steps/0", json={"status": "completed"})
    client.delete(STATE)
    assert not [p for p in state_dir.rglob("*") if ".tmp-" in p.name]


def test_the_counter_survives_delete_and_expiry(make_client, state_file):
    client = make_client(STATE_TTL=1)
    v1 = client.post(STATE, json={"status": "completed"}).get_json()["state"]["version"]
    wait_until(lambda: client.get(STATE).get_json()["state"] is None, timeout=5)
    v2 = client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)}).get_json()
    assert v2["state"]["version"] == v1 + 1
    client.delete(STATE)
    assert not state_file.exists()
    assert client.post(STATE, json={"steps": steps(1)}).get_json()["state"]["version"] == v1 + 3


def test_expiry_is_checked_on_read_in_every_process(make_client, state_file):
    writer = make_client(STATE_TTL=1)
    reader = make_client(STATE_TTL=1)
    writer.post(STATE, json={"status": "completed", "steps": steps(1)})
    assert reader.get(STATE).get_json()["state"]["status"] == "completed"
    wait_until(lambda: reader.get(STATE).get_json()["state"] is None, timeout=5)


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"status": "running"}', b"\xff"])
def test_a_corrupt_file_is_moved_aside_and_logged(client, owner_dir, state_file, content, caplog):
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)})
    state_file.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="service.storage"):
        assert client.get(STATE).get_json()["state"] is None
    aside = list(owner_dir.glob(state_file.name + ".corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert mode(aside[0]) == 0o600
    assert "not a valid state" in caplog.text
    assert client.post(STATE, json={"steps": steps(1)}).status_code == 200


@pytest.mark.parametrize("which", ["state", "lock"])
def test_a_symlink_is_never_followed(client, owner_dir, state_file, tmp_path, which):
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)})
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    target = state_file if which == "state" else owner_dir / ".lock"
    target.unlink()
    target.symlink_to(outside)
    for response in (
        client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)}),
        client.patch(f"{STATE}/steps/0", json={"status": "completed"}),
        client.delete(STATE),
    ):
        assert response.status_code == 503
        body = response.get_json()
        assert body["error"] == "backend_unavailable"
        assert "symlink" in body["message"]
    assert outside.read_text() == "precious"
    assert mode(outside) == stat.S_IMODE(outside.stat().st_mode)
    if which == "state":
        assert client.get(STATE).status_code == 503
    assert client.get("/readyz").status_code == 503


@pytest.fixture
def tmpfs_state_dir(state_dir):
    if not Tmpfs.available():
        pytest.skip("mounting a tmpfs needs root; the simulated-errno cases below still run")
    mount = Tmpfs(state_dir, size="64k").mount()
    yield mount
    mount.unmount()


def test_a_read_only_filesystem_answers_503_naming_it(client, tmpfs_state_dir):
    before = client.post(STATE, json={"steps": steps(1)}).get_json()["state"]
    tmpfs_state_dir.remount("ro")
    for response in (
        client.post(STATE, json={"steps": steps(2)}),
        client.patch(f"{STATE}/steps/0", json={"status": "completed"}),
        client.delete(STATE),
    ):
        assert response.status_code == 503
        assert "read-only" in response.get_json()["message"]
    assert client.get(STATE).get_json()["state"] == before
    tmpfs_state_dir.remount("rw")
    assert client.post(STATE, json={"steps": steps(2)}).status_code == 200


def test_a_full_disk_answers_503_and_keeps_the_old_state(client, tmpfs_state_dir, state_dir):
    before = client.post(STATE, json={"steps": steps(1)}).get_json()["state"]
    filler = state_dir / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"x" * 1024)
    os.close(fd)
    response = client.post(STATE, json={"steps": steps(50), "pad": "y" * 8000})
    assert response.status_code == 503
    assert "no space left" in response.get_json()["message"]
    assert client.get(STATE).get_json()["state"] == before
    assert not [p for p in state_dir.rglob("*") if ".tmp-" in p.name]
    filler.unlink()
    assert client.post(STATE, json={"steps": steps(2)}).status_code == 200


@pytest.mark.parametrize(
    ("code", "words"), [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")]
)
def test_a_failing_disk_answers_503_and_keeps_the_old_state(
    client, state_dir, monkeypatch, code, words
):
    before = client.post(STATE, json={"steps": steps(1)}).get_json()["state"]
    real_write = os.write

    def failing_write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(state_dir)):
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    response = client.post(STATE, json={"steps": steps(3)})
    assert response.status_code == 503
    assert words in response.get_json()["message"]
    assert response.headers["Retry-After"]
    monkeypatch.setattr(os, "write", real_write)
    assert client.get(STATE).get_json()["state"] == before
    assert not [p for p in state_dir.rglob("*") if ".tmp-" in p.name]
    assert client.post(STATE, json={"steps": steps(3)}).status_code == 200


def test_a_writer_killed_before_the_rename_leaves_the_old_state(url, owner_dir):
    """A process dies between writing the temp file and os.replace: readers see the old state."""
    store = store_at(url)
    before = store.save({"workflow_id": "wf", "steps": steps(1)}).state
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from service.storage import FileStore
        store = FileStore("{url}")
        store.get("public")  # the start-up work done, the next rename is the write's
        def die(*args):
            os._exit(9)
        os.replace = die
        store.save("public", {{"workflow_id": "wf", "note": "new"}})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == 9
    assert store_at(url).get().state == before
    assert json.loads((owner_dir / "wf.json").read_text()) == before
    # The killed writer's flock died with it: the next writer is not blocked.
    assert store.save({"workflow_id": "next"}).state["workflow_id"] == "next"


def test_lock_file_serialises_writers_across_processes(url, owner_dir):
    """A process holding the lock file makes writers here wait (and time out)."""
    store = store_at(url, lock_wait=0.2)
    store.save({"steps": steps(1)})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)",
            str(owner_dir / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StorageUnavailable, match="lock"):
            store.update_step(0, {"status": "completed"})
    finally:
        holder.kill()
        holder.wait()
    assert store.update_step(0, {"status": "completed"}).state["steps"][0]["status"] == "completed"


def test_a_relative_or_remote_file_url_is_refused():
    for url in ("file://relative.json", "file://host/x.json", "file:///dir/"):
        with pytest.raises(ValueError, match="WORKFLOW_STATE_URL"):
            FileStore(url)


def test_the_journal_is_followed_across_rotations_without_a_gap(url, monkeypatch):
    from service.storage import RESYNC
    from service.storage import file as file_backend

    monkeypatch.setattr(file_backend, "EVENTS_MAX_BYTES", 700)  # rotate every few writes
    store = store_at(url)
    store.save({"steps": steps(2)})
    stop = threading.Event()
    feed = store.events(stop)
    assert next(feed) is RESYNC
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.extend(e.id for e in feed))
    reader.start()
    versions = []
    for n in range(20):
        versions.append(store.save({"steps": steps(2), "n": n}).version)
        # One write per look of the follower, so each rotation happens while it holds the
        # old journal open; it must drain that one before moving on.
        wait_until(lambda: len(received) == len(versions), timeout=5)
    versions.append(store.clear())
    wait_until(lambda: len(received) == len(versions), timeout=5)
    stop.set()
    reader.join(timeout=5)
    assert received == [str(v) for v in versions]


def test_a_follower_that_fell_behind_several_rotations_is_told_to_resync(url, monkeypatch):
    from service.storage import RESYNC
    from service.storage import file as file_backend

    monkeypatch.setattr(file_backend, "EVENTS_MAX_BYTES", 700)
    store = store_at(url)
    store.save({"steps": steps(2)})
    stop = threading.Event()
    feed = store.events(stop)
    assert next(feed) is RESYNC
    first = store.save({"n": 0}).version
    assert next(feed).id == str(first)
    # The follower is not looking while the journal rotates several times.
    last = [store.save({"steps": steps(2), "n": n}).version for n in range(1, 15)][-1]
    seen = []
    for event in feed:
        seen.append(event)
        if event.id == str(last):
            break
    stop.set()
    assert RESYNC in seen


def test_files_found_corrupt_in_the_same_second_are_all_kept(client, owner_dir, state_file):
    client.post(STATE, json={"workflow_id": "wf", "steps": steps(1)})
    for content in (b"first", b"second", b"third"):
        state_file.write_bytes(content)
        assert client.get(STATE).get_json()["state"] is None
    aside = list(owner_dir.glob(state_file.name + ".corrupt-*"))
    assert sorted(path.read_bytes() for path in aside) == [b"first", b"second", b"third"]
    assert all(re.fullmatch(r".*\.corrupt-\d+(-\d+)?", path.name) for path in aside)


def test_an_expired_workflow_takes_its_kept_answer_with_it(tmp_path):
    store = FileStore(f"file://{tmp_path}/state.json", stale_ttl=1)
    try:
        store.save("public", {"workflow_id": "asked", "steps": steps(1)})
        store.put_input("public", "asked", {"incarnation": 1, "step": 0, "input": {"pw": "s3"}})
        answer = tmp_path / "workflows" / "public" / "asked.input"
        assert answer.exists()
        # Once the workflow expired, the next write of its owner prunes it, answer and all.
        wait_until(lambda: store.get("public", "asked").state is None, timeout=5)
        store.save("public", {"workflow_id": "other", "steps": steps(1)})
        assert not answer.exists()
        assert store.get_input("public", "asked") is None
    finally:
        store.close()

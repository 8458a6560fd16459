"""The storage contract on the JSON-file backend, what is on disk, and the migration
of the single state file of an earlier version."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from service.storage import FileStore, StateStore
from tests.conftest import steps
from tests.contract.store_contract import ALICE, StoreContract
from tests.support import layout, wait_until


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "workflow_state.json"


@pytest.fixture
def make_store(state_file: Path) -> Iterator[Callable[..., FileStore]]:
    stores: list[FileStore] = []

    def make(**options: Any) -> FileStore:
        stores.append(FileStore(f"file://{state_file}", **options))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


class TestFileStore(StoreContract):
    @pytest.fixture
    def plant(self) -> Callable[..., None]:
        def plant(store: FileStore, owner: str, workflow_id: str, raw: bytes, score=None) -> None:
            path = Path(store.root) / owner / f"{workflow_id}.json"
            path.write_bytes(raw)
            if score is not None:
                index_path = path.parent / ".index"
                index = json.loads(index_path.read_text())
                index[workflow_id] = [score, index[workflow_id][1]]
                index_path.write_text(json.dumps(index))

        return plant

    @pytest.fixture
    def drop_counter(self) -> Callable[[StateStore, str], None]:
        def drop(store: FileStore, owner: str) -> None:
            os.unlink(os.path.join(store.root, owner, ".seq"))

        return drop

    @pytest.fixture
    def hold_lock(self) -> Callable[..., AbstractContextManager[None]]:
        @contextlib.contextmanager
        def hold(store: FileStore, owner: str, workflow_id: str) -> Iterator[None]:
            # One lock file per owner; a second open file conflicts even in this process.
            fd = os.open(os.path.join(store.root, owner, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

        return hold

    @pytest.fixture
    def quarantined(self) -> Callable[[FileStore, str], list[bytes]]:
        def aside(store: FileStore, owner: str) -> list[bytes]:
            return [path.read_bytes() for path in Path(store.root, owner).glob("*.corrupt-*")]

        return aside


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_one_file_per_workflow_0600_in_directories_0700(make_store, state_file):
    store = make_store()
    store.create(ALICE, {"workflow_id": "a:1", "status": "completed", "steps": steps(1)})
    store.create(ALICE, {"workflow_id": "b", "steps": steps(1)})
    root = state_file.parent / "workflows"
    owner = root / ALICE
    assert {p.name for p in owner.iterdir()} == {
        "a:1.json",
        "b.json",
        ".seq",
        ".current",
        ".index",
        ".history",
        ".lock",
    }
    assert json.loads((owner / "a:1.json").read_text()) == store.get(ALICE, "a:1").state
    assert (owner / ".current").read_text() == "b"
    for directory in (state_file.parent, root, owner):
        assert mode(directory) == 0o700
    for path in owner.iterdir():
        assert mode(path) == 0o600, path
    assert mode(state_file.parent / "workflows.events") == 0o600
    assert not [p for p in state_file.parent.rglob("*") if ".tmp-" in p.name]


def test_an_expired_workflow_file_is_removed_by_a_later_write(make_store, state_file):
    store = make_store(ttl=1)
    store.create(ALICE, {"workflow_id": "done", "status": "completed"})
    done = state_file.parent / "workflows" / ALICE / "done.json"
    assert done.exists()
    wait_until(lambda: store.get(ALICE, "done").state is None, timeout=5)
    assert done.exists()  # reads leave it; the next write under the owner's lock removes it
    store.create(ALICE, {"workflow_id": "next"})
    assert not done.exists()
    assert "done" not in json.loads(done.with_name(".index").read_text())


def old_file(state_file: Path, version: int = 42) -> dict[str, Any]:
    """Write the files an earlier version left: the state, its counter and its history."""
    state, older = layout.single_workflow_state(version)
    state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state))
    Path(f"{state_file}.seq").write_text(str(version))
    Path(f"{state_file}.history.json").write_text(json.dumps([older]))
    return state


def test_the_single_state_file_moves_into_public_keeping_its_version(make_store, state_file):
    state = old_file(state_file)
    store = make_store()
    current = store.get("public")
    assert current.state == state
    assert current.event_id == "42"
    assert [h["workflow_id"] for h in store.history("public")] == ["older"]
    assert [e["version"] for e in store.list("public").entries] == [42]
    for leftover in (state_file, Path(f"{state_file}.seq"), Path(f"{state_file}.history.json")):
        assert not leftover.exists()
    assert store.update_step("public", None, 0, {"status": "completed"}).version == 43
    assert make_store().get("public").version == 43  # nothing left to move for the next one


def test_migration_keeps_the_counter_of_a_deleted_state(make_store, state_file):
    state_file.parent.mkdir(mode=0o700, parents=True)
    Path(f"{state_file}.seq").write_text("77")
    store = make_store()
    assert store.get("public").state is None
    assert store.save("public", {"workflow_id": "next"}).version == 78


def test_a_corrupt_old_state_file_is_moved_aside(make_store, state_file):
    state_file.parent.mkdir(mode=0o700, parents=True)
    state_file.write_text("{not json")
    Path(f"{state_file}.seq").write_text("9")
    store = make_store()
    assert store.save("public", {"workflow_id": "next"}).version == 10
    assert list(state_file.parent.glob("workflow_state.json.corrupt-*"))


def test_temp_files_of_killed_writers_in_owner_directories_are_removed_on_start(state_file):
    owner = state_file.parent / "workflows" / ALICE
    owner.mkdir(mode=0o700, parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a writer killed mid-write: its pid is no longer a process
    left_over = [f".wf.json.tmp-{gone.pid}-0badc0de", f"..index.tmp-{gone.pid}-12345678"]
    kept = [f".wf.json.tmp-{os.getpid()}-abcdef01", "notes.txt"]  # a live writer's; not ours
    for name in left_over + kept:
        (owner / name).write_text("partial")
    FileStore(f"file://{state_file}").close()
    assert {path.name for path in owner.iterdir()} == set(kept)

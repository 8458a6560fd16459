"""Faults against the real server (gunicorn, several workers), with processes the tests own.

The promise: under faults the service keeps answering (a 503 JSON error within 2 s, never a
hang or a 500), loses no acknowledged write, touches nothing outside its state directory, and
serves again as soon as the fault is gone, without a restart. The in-process versions of some
of these live in test_outage.py, test_storage_redis.py and test_storage_file.py; these run the
production server, where workers, threads and the kernel's connection handling take part.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client as httpclient
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service import model
from service.openapi import build_document
from service.storage import CurrentWorkflow, RedisStore, StorageUnavailable
from tests.conftest import steps
from tests.support import REDIS_SERVER, Gunicorn, RedisServer, Tmpfs, wait_until
from tests.support.openapi_check import OpenAPIDocument
from tests.support.routes import STATE, STORAGE_ROUTES

pytestmark = pytest.mark.slow

DOC = OpenAPIDocument(build_document())
WRITES = [route for route in STORAGE_ROUTES if route[0] in ("POST", "PATCH")]


def send(
    base: str, method: str, path: str, body: Any = None, timeout: float = 10
) -> tuple[int, dict[str, str], Any, float]:
    """Send one request on a fresh connection; check the answer against /openapi.json.

    Return (status, headers, parsed body, seconds taken).
    """
    parts = urlsplit(base)
    conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    payload = None if body is None else json.dumps(body)
    started = time.monotonic()
    try:
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    headers = dict(response.getheaders())
    DOC.check(method, path, response.status, headers, raw)
    return response.status, headers, json.loads(raw) if raw else None, elapsed


def assert_unavailable(answer: tuple[int, dict[str, str], Any, float], words: str = "") -> None:
    """Check the answer is the contract's 503: JSON error, Retry-After, within 2 s."""
    status, headers, body, elapsed = answer
    assert status == 503, body
    assert body["error"] == "backend_unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert elapsed < 2.0, f"answered after {elapsed:.2f}s"
    assert words.lower() in body["message"].lower(), body["message"]


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at once (so they land on different workers); return their results."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.fixture
def redis_gunicorn(own_redis: RedisServer) -> Iterator[Gunicorn]:
    """Three gunicorn workers on a redis-server this test may kill, pause and restart."""
    server = Gunicorn({"WORKFLOW_STATE_URL": own_redis.url}, workers=3).start()
    wait_until(lambda: len(server.worker_pids()) == 3)
    yield server
    server.stop()


# --- Redis down ------------------------------------------------------------------------------


def test_redis_killed_then_restarted(redis_gunicorn: Gunicorn, own_redis: RedisServer):
    server = redis_gunicorn
    master, workers = server.process.pid, set(server.worker_pids())
    assert send(server.url, "POST", STATE, {"steps": steps(2)})[0] == 200

    own_redis.stop()
    # Twice over, in parallel, so every worker meets the outage (each has its own client).
    answers = in_parallel([lambda r=route: send(server.url, *r) for route in STORAGE_ROUTES * 2])
    for answer in answers:
        assert_unavailable(answer, "redis")
    assert send(server.url, "GET", "/healthz")[0] == 200  # liveness never touches storage

    own_redis.start()
    back = time.monotonic()

    def all_serving() -> float | None:
        began = time.monotonic()
        rounds = in_parallel([lambda r=route: send(server.url, *r) for route in STORAGE_ROUTES * 2])
        return began if all(status < 500 for status, *_ in rounds) else None

    serving_since = wait_until(all_serving, timeout=10, interval=0.01)
    assert serving_since - back < 1.0, f"served again {serving_since - back:.2f}s after"
    assert server.process.pid == master and set(server.worker_pids()) == workers, "restarted"


@pytest.mark.skipif(REDIS_SERVER is None, reason="CLIENT PAUSE needs a real redis-server")
def test_redis_paused_answers_503_within_the_bound(redis_gunicorn: Gunicorn, own_redis):
    server = redis_gunicorn
    assert send(server.url, "POST", STATE, {"workflow_id": "wf", "steps": steps(2)})[0] == 200
    own_redis.pause(4)
    paused = time.monotonic()
    answers = in_parallel([lambda r=route: send(server.url, *r) for route in STORAGE_ROUTES * 2])
    assert time.monotonic() - paused < 3.5, "the answers came once the pause was over"
    for answer in answers:
        assert_unavailable(answer)
    wait_until(lambda: send(server.url, "GET", STATE)[0] == 200, timeout=10)
    assert send(server.url, "GET", STATE)[2]["state"]["workflow_id"] == "wf"


@pytest.mark.skipif(REDIS_SERVER is None, reason="CLIENT PAUSE needs a real redis-server")
def test_parallel_calls_on_a_paused_redis_each_fail_within_the_bound(own_redis: RedisServer):
    """Many threads of one process, fresh connections and warm ones: none waits past 2 s.

    redis-py retries a fresh connection's handshake inside its command retry; unflattened, a
    hung Redis cost four I/O timeouts (2.1 s) instead of two.
    """
    store = CurrentWorkflow(RedisStore(own_redis.url), "public")
    store.save({"workflow_id": "wf", "steps": steps(2)})
    calls = [store.get, store.history, store.ping] * 4 + [
        lambda: store.update_step(0, {"status": "completed"}),
        lambda: store.merge({"note": 1}),
        lambda: store.save({"steps": steps(1)}),
    ] * 2

    def timed(call: Callable[[], Any]) -> tuple[float, str]:
        started = time.monotonic()
        try:
            call()
        except StorageUnavailable as error:
            return time.monotonic() - started, error.message
        return time.monotonic() - started, "answered"

    own_redis.pause(3)
    results = in_parallel([lambda c=call: timed(c) for call in calls])
    assert all(message != "answered" for _, message in results)
    slowest = max(seconds for seconds, _ in results)
    assert slowest < 2.0, sorted(results)[-3:]
    store.close()


# --- a dead lock holder ----------------------------------------------------------------------


def test_a_dead_lock_holder_makes_writers_wait_bounded_then_succeed(redis_gunicorn, own_redis):
    """WORKFLOW_STATE_LOCK_WAIT (1 s by default) bounds the wait; the lock's own TTL ends it."""
    server = redis_gunicorn
    redis = own_redis.client()
    assert send(server.url, "POST", STATE, {"workflow_id": "wf", "steps": steps(3)})[0] == 200

    # A holder that died 0.4 s before its lock runs out: a writer waits, then succeeds.
    lock = "workflow:{public}:lock:wf"
    redis.set(lock, "crashed-writer", px=400)
    status, _, body, elapsed = send(
        server.url, "PATCH", f"{STATE}/steps/0", {"status": "completed"}
    )
    assert status == 200, body
    assert 0.2 < elapsed < 1.0

    # A holder whose lock outlives the wait: every writer, on every worker, gets a 503 naming
    # the lock within 2 s; readers never wait.
    redis.set(lock, "crashed-writer", px=4000)
    set_at = time.monotonic()
    answers = in_parallel([lambda r=route: send(server.url, *r) for route in WRITES * 3])
    for answer in answers:
        assert_unavailable(answer, "lock")
        assert answer[3] > 0.8, "gave up before the lock wait"
    status, _, body, elapsed = send(server.url, "GET", STATE)
    assert status == 200 and elapsed < 0.5
    assert body["state"]["steps"][0]["status"] == "completed"

    def written() -> bool:
        return send(server.url, "PATCH", f"{STATE}/steps/1", {"status": "completed"})[0] == 200

    wait_until(written, timeout=8)
    assert time.monotonic() - set_at < 4.0 + 1.5  # the lock's TTL, plus at most one wait
    assert not redis.exists(lock)


# --- a worker killed under load --------------------------------------------------------------

CLIENTS = 16
WRITES_EACH = 30


class Client:
    """One of the load's clients: a keep-alive connection, renewed when it breaks."""

    def __init__(self, base: str, index: int) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.index = index
        self.conn: httpclient.HTTPConnection | None = None
        self.acked: dict[int, int] = {}  # n -> version of every acknowledged write
        self.attempted: list[int] = []
        self.refused: list[tuple[int, Any]] = []

    def write(self, n: int) -> None:
        """PATCH this client's step with n; remember whether it was acknowledged."""
        self.attempted.append(n)
        body = {"status": "in_progress", "data": {"n": n}, "workflow_id": "load"}
        try:
            if self.conn is None:
                self.conn = httpclient.HTTPConnection(self.host, self.port, timeout=10)
            self.conn.request(
                "PATCH",
                f"{STATE}/steps/{self.index}",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            response = self.conn.getresponse()
            answer = json.loads(response.read())
        except (OSError, httpclient.HTTPException):
            # The worker died mid-request: not acknowledged (it may or may not have landed).
            self.conn = None
            return
        if response.status == 200:
            self.acked[n] = answer["state"]["version"]
        else:
            self.refused.append((response.status, answer))


def busiest_worker(server: Gunicorn, exclude: list[int]) -> int:
    """Return the worker holding the most client connections (Linux /proc), so a kill cuts some.

    Clients keep their connection alive, and the kernel may hand them all to the other workers.
    """
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == server.port and fields[3] == "01":  # ESTABLISHED
                    established.add(f"socket:[{fields[9]}]")

    def connections(pid: int) -> int:
        count = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    count += os.readlink(f"/proc/{pid}/fd/{fd}") in established
        return count

    candidates = [pid for pid in server.worker_pids() if pid not in exclude]
    return max(candidates, key=connections)


@pytest.mark.parametrize("kind", ["redis", "file"])
def test_a_worker_killed_under_load_loses_no_acknowledged_write(kind, tmp_path, request):
    if kind == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_server.flush()
        env = {"WORKFLOW_STATE_URL": redis_server.url}
    else:
        env = {"WORKFLOW_STATE_URL": f"file://{tmp_path}/state/workflow_state.json"}
    # A killed lock holder's lock lives 1 s; the others may wait for it rather than fail.
    env |= {"WORKFLOW_STATE_LOCK_TIMEOUT": "1", "WORKFLOW_STATE_LOCK_WAIT": "1.5"}
    server = Gunicorn(env, workers=3).start()
    try:
        wait_until(lambda: len(server.worker_pids()) == 3)
        saved = send(server.url, "POST", STATE, {"workflow_id": "load", "steps": steps(CLIENTS)})
        assert saved[0] == 200
        clients = [Client(server.url, i) for i in range(CLIENTS)]
        progress = threading.Semaphore(0)

        def run(client: Client) -> None:
            for n in range(1, WRITES_EACH + 1):
                client.write(n)
                progress.release()

        threads = [threading.Thread(target=run, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        killed: list[int] = []
        done = 0
        for share in (0.25, 0.6):
            # Kill a worker once this share of all writes has been sent.
            while done < int(CLIENTS * WRITES_EACH * share):
                assert progress.acquire(timeout=30)
                done += 1
            victim = busiest_worker(server, exclude=killed)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()

        # The state still parses, on disk or in Redis, and is what every worker serves.
        status, _, body, _ = send(server.url, "GET", STATE)
        assert status == 200
        final = body["state"]
        assert final == model.parse_stored(json.dumps(final))
        if kind == "file":
            on_disk = (tmp_path / "state" / "workflows" / "public" / "load.json").read_text()
            assert model.parse_stored(on_disk) == final
        else:
            assert json.loads(redis_server.client().get("workflow:{public}:state:load")) == final
        # No acknowledged write was lost: each step holds its client's last acknowledged n, or
        # a later one whose answer the kill swallowed.
        versions = []
        for client in clients:
            landed = final["steps"][client.index]["data"]["n"]
            assert client.acked, f"client {client.index} got nothing acknowledged"
            assert landed >= max(client.acked), (client.index, landed, max(client.acked))
            assert landed in client.attempted
            versions += client.acked.values()
        assert len(versions) == len(set(versions)), "two acknowledged writes share a version"
        # The other workers went on serving: most writes were acknowledged, the rest were
        # the requests the kills cut (plus any 503 while a dead worker's lock ran out).
        acked = len(versions)
        assert acked >= CLIENTS * WRITES_EACH - 2 * CLIENTS * len(killed)
        cut = sum(len(c.attempted) - len(c.acked) - len(c.refused) for c in clients)
        assert cut > 0, "the kills cut no request: the test did not test anything"
        for client in clients:
            assert all(status == 503 for status, _ in client.refused), client.refused
        # The master replaced the killed workers.
        wait_until(
            lambda: len(server.worker_pids()) == 3 and not set(killed) & set(server.worker_pids())
        )
        assert send(server.url, "GET", f"{STATE}/summary")[0] == 200
    finally:
        server.stop()


# --- the file backend on a broken disk -------------------------------------------------------


def tree(root: Path, skip: Path) -> dict[str, tuple[int, int, str]]:
    """Fingerprint every file and directory under `root` except `skip`: mode, mtime, content."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        info = path.lstat()
        digest = ""
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_symlink():
            digest = os.readlink(path)
        found[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, digest)
    return found


@contextlib.contextmanager
def filled(directory: Path) -> Iterator[None]:
    """Fill the filesystem holding `directory` to the last byte; free it afterwards."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x")
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


FAULTS = {
    # name: (needs a tmpfs, words the 503 message must contain, GET still answers 200)
    "read-only": (True, "read-only", True),
    "full-disk": (True, "no space left", True),
    "symlink-at-state": (False, "symlink", False),
    "symlink-at-lock": (False, "symlink", True),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_state_directory_answers_503_and_touches_nothing_outside(fault, tmp_path):
    needs_tmpfs, words, readable = FAULTS[fault]
    if needs_tmpfs and not Tmpfs.available():
        pytest.skip("a tmpfs needs root; test_storage_file.py simulates the errno instead")
    state_dir = tmp_path / "state"
    mount = Tmpfs(state_dir, size="256k").mount() if needs_tmpfs else None
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("do not touch")
    (outside / "config.json").write_text('{"keep": true}')
    os.chmod(outside / "config.json", 0o644)
    state_file = state_dir / "workflow_state.json"
    server = Gunicorn({"WORKFLOW_STATE_URL": f"file://{state_file}"}, workers=2).start()
    try:
        saved = send(server.url, "POST", STATE, {"workflow_id": "wf", "steps": steps(2)})
        assert saved[0] == 200
        before = saved[2]["state"]
        if fault.startswith("symlink"):
            owner_dir = state_dir / "workflows" / "public"
            target = owner_dir / ("wf.json" if fault == "symlink-at-state" else ".lock")
            target.unlink()
            target.symlink_to(outside / "precious.txt")
        elif fault == "read-only":
            mount.remount("ro")
        fingerprint = tree(tmp_path, skip=state_dir)
        with filled(state_dir) if fault == "full-disk" else contextlib.nullcontext():
            answers = in_parallel([lambda r=route: send(server.url, *r) for route in WRITES * 2])
            for answer in answers:
                assert_unavailable(answer, words)
            read = send(server.url, "GET", STATE)
            if readable:
                assert (read[0], read[2]["state"]) == (200, before)
            else:
                assert_unavailable(read, words)
            deleted = send(server.url, "DELETE", STATE)
            if fault == "full-disk":
                # A DELETE is how room is made: it works on a full disk, and the state is gone.
                assert deleted[0] == 200, deleted[2]
                assert send(server.url, "GET", STATE)[2]["state"] is None
            else:
                assert_unavailable(deleted, words)
            if fault.startswith("symlink"):
                assert_unavailable(send(server.url, "GET", "/readyz"), words)
        assert tree(tmp_path, skip=state_dir) == fingerprint, "something outside was touched"
        assert (outside / "precious.txt").read_text() == "do not touch"

        # Repaired, it serves again without a restart.
        if fault.startswith("symlink"):
            target.unlink()
        elif fault == "read-only":
            mount.remount("rw")
        again = send(server.url, "POST", STATE, {"workflow_id": "wf2", "steps": steps(1)})
        assert again[0] == 200, again[2]
        assert not [p for p in state_dir.rglob("*") if ".tmp-" in p.name]
    finally:
        server.stop()
        if mount is not None:
            mount.unmount()


def test_a_symlink_planted_before_the_first_write_is_refused(tmp_path: Path):
    """A symlink where the state file will be created is refused, never written through."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("root:x:0:0")
    (state_dir / "workflow_state.json").symlink_to(victim)
    server = Gunicorn({"WORKFLOW_STATE_URL": f"file://{state_dir}/workflow_state.json"}, workers=1)
    server.start()
    try:
        assert_unavailable(send(server.url, "POST", STATE, {"steps": steps(1)}), "symlink")
        assert victim.read_text() == "root:x:0:0"
        assert os.readlink(state_dir / "workflow_state.json") == str(victim)
    finally:
        server.stop()


def test_errno_words_name_the_problem():
    """The 503 messages the fault tests look for are the ones the backend writes."""
    from service.storage.file import _problem

    assert _problem(OSError(errno.ENOSPC, "x")) == "no space left on device"
    assert _problem(OSError(errno.EROFS, "x")) == "read-only file system"
    assert "symlink" in _problem(OSError(errno.ELOOP, "x"))

"""Many owners, many workflows, the real server (contract section 8, issue 10's acceptance test).

Two gunicorn instances of 3 workers each share one test-owned redis-server (and, smaller, one
instance of 3 workers shares a file backend). Owners are users of a tokens file. Every owner
creates its workflows through both instances; then threads PATCH every step of every workflow
once, each step of a workflow from a different thread, alternating instances, while other
owners try to read, write and delete those same workflows. Afterwards:

- no update is lost: every step shows what was written, and every acknowledged answer shows
  exactly the writes of that workflow with a lower version (the writes were serialized);
- versions never repeat within an owner and grow along each client's requests, across the
  owner's workflows and both instances;
- no owner ever reached another's workflow: 404 `no_workflow` every time, and lists hold only
  the owner's own;
- every list, paged with cursors, is complete and ordered by last_update, ties by id, descending;
- nothing answered a 5xx.
"""

from __future__ import annotations

import http.client as httpclient
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import steps
from tests.support import Gunicorn, RedisServer, wait_until
from tests.support.identity import write_tokens
from tests.support.routes import WORKFLOWS

pytestmark = pytest.mark.slow

STEPS = 4
# More threads than steps, so the steps of one workflow are each PATCHed by a different thread.
THREADS = 8
# Each step gets its own status; none is "pending", so a lost write shows.
WRITTEN = ("in_progress", "completed", "failed", "skipped")
# Every INTRUDE-th PATCH is followed by another owner's attempt at the same workflow.
INTRUDE = 6
INTRUSIONS = ("GET", "PATCH", "DELETE", "SUMMARY")


def token_of(owner: str) -> str:
    """Return the test's bearer token of `owner`."""
    return f"{owner}-token-{sum(map(ord, owner))}"


@dataclass
class Ledger:
    """What every thread saw, gathered under one lock."""

    guard: threading.Lock = field(default_factory=threading.Lock)
    # Any answer that was not the expected one: (method, path, owner, status, body).
    unexpected: list[tuple[str, str, str, int, Any]] = field(default_factory=list)
    server_errors: list[tuple[str, str, int, Any]] = field(default_factory=list)

    def saw(self, method: str, path: str, status: int, body: Any) -> None:
        if status >= 500:
            with self.guard:
                self.server_errors.append((method, path, status, body))

    def wrong(self, method: str, path: str, owner: str, status: int, body: Any) -> None:
        with self.guard:
            self.unexpected.append((method, path, owner, status, body))


class Client:
    """One thread's keep-alive connections, one per instance; each request names its owner."""

    def __init__(self, urls: list[str], ledger: Ledger) -> None:
        self.ledger = ledger
        self.connections = []
        for url in urls:
            parts = urlsplit(url)
            self.connections.append(
                httpclient.HTTPConnection(parts.hostname, parts.port, timeout=20)
            )

    def request(
        self, instance: int, owner: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """Send one request to instance `instance` as `owner`; return (status, parsed body)."""
        conn = self.connections[instance % len(self.connections)]
        headers = {"Authorization": f"Bearer {token_of(owner)}"}
        payload = None
        if body is not None:
            payload = json.dumps(body)
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        parsed = json.loads(raw) if raw else None
        self.ledger.saw(method, path, response.status, parsed)
        return response.status, parsed

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


def in_threads(
    urls: list[str], ledger: Ledger, work: Callable[[int, Client], None], count: int = THREADS
) -> None:
    """Run `work(thread index, client)` in `count` threads at once; re-raise the first error."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        client = Client(urls, ledger)
        try:
            start.wait(timeout=30)
            work(index, client)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class Ack:
    """An acknowledged step PATCH: which step, by which thread, and the state it answered."""

    owner: str
    workflow_id: str
    step: int
    thread: int
    state: dict[str, Any]


def written(workflow_id: str, step: int, thread: int) -> dict[str, Any]:
    """Return the step PATCH body one thread sends for one step."""
    return {"status": WRITTEN[step], "data": {"workflow": workflow_id, "step": step, "by": thread}}


def shows(state: dict[str, Any], step: int, body: dict[str, Any]) -> bool:
    """Tell whether `state`'s step holds what `body` wrote."""
    return (
        state["steps"][step]["status"] == body["status"]
        and state["steps"][step].get("data") == body["data"]
    )


def stranger(owners: list[str], owner: str, n: int) -> str:
    """Return the `n`-th other owner than `owner`, going round all of them."""
    return owners[(owners.index(owner) + 1 + n % (len(owners) - 1)) % len(owners)]


def list_order(entry: dict[str, Any]) -> tuple[int, str]:
    """Return an entry's place in a list (sorted descending): last_update in ms, then id."""
    when = datetime.fromisoformat(entry["last_update"].replace("Z", "+00:00"))
    return int(when.timestamp() * 1000), entry["workflow_id"]


def check_many_owners(urls: list[str], owners: list[str], per_owner: int, page: int) -> None:
    """Create, PATCH concurrently, probe across owners, read back, and check it all."""
    ledger = Ledger()

    # --- create: every owner's workflows, through every instance, from every thread --------
    created: dict[str, list[dict[str, Any]]] = {owner: [] for owner in owners}
    # (owner, thread) -> the versions of that thread's acknowledged writes, in request order:
    # each thread sends one request at a time, so they must grow.
    sequences: dict[tuple[str, int], list[int]] = {}
    creates = [(owner, n) for n in range(per_owner) for owner in owners]

    def create(index: int, client: Client) -> None:
        for n, (owner, _) in enumerate(creates[index::THREADS]):
            status, body = client.request(
                index + n, owner, "POST", WORKFLOWS, {"steps": steps(STEPS)}
            )
            if status != 201:
                ledger.wrong("POST", WORKFLOWS, owner, status, body)
                continue
            with ledger.guard:
                created[owner].append(body["state"])
                sequences.setdefault((owner, index), []).append(body["state"]["version"])

    in_threads(urls, ledger, create)
    assert not ledger.unexpected, json.dumps(ledger.unexpected[:8])
    owner_of = {s["workflow_id"]: owner for owner, states in created.items() for s in states}
    assert len(owner_of) == len(owners) * per_owner, "a generated workflow id repeated"

    # --- PATCH: each step of each workflow once, each from another thread --------------------
    # Workflows are taken in the same order by every thread, so the threads work on the same
    # few workflows at any moment: the steps of one workflow land at once, on different
    # processes of different instances.
    workflows = [created[owner][n]["workflow_id"] for n in range(per_owner) for owner in owners]
    acks: list[Ack] = []

    def patch(index: int, client: Client) -> None:
        sent = 0
        for w, workflow_id in enumerate(workflows):
            for step in range(STEPS):
                if (w + step) % THREADS != index:
                    continue
                owner = owner_of[workflow_id]
                path = f"{WORKFLOWS}/{workflow_id}/steps/{step}"
                status, body = client.request(
                    index + sent, owner, "PATCH", path, written(workflow_id, step, index)
                )
                sent += 1
                if status != 200:
                    ledger.wrong("PATCH", path, owner, status, body)
                    continue
                with ledger.guard:
                    acks.append(Ack(owner, workflow_id, step, index, body["state"]))
                    sequences.setdefault((owner, index), []).append(body["state"]["version"])
                if sent % INTRUDE == 0:
                    intrude(client, index + sent, owner, workflow_id, step, sent // INTRUDE)

    def intrude(
        client: Client, instance: int, owner: str, workflow_id: str, step: int, n: int
    ) -> None:
        """Try the workflow as another owner: every route must answer as for no workflow."""
        other = stranger(owners, owner, n)
        kind = INTRUSIONS[n % len(INTRUSIONS)]
        path = f"{WORKFLOWS}/{workflow_id}"
        if kind == "GET":
            status, body = client.request(instance, other, "GET", path)
        elif kind == "SUMMARY":
            path += "/summary"
            status, body = client.request(instance, other, "GET", path)
        elif kind == "DELETE":
            status, body = client.request(instance, other, "DELETE", path)
        else:
            path += f"/steps/{step}"
            status, body = client.request(
                instance, other, "PATCH", path, {"status": "pending", "data": {"intruder": other}}
            )
        if (status, (body or {}).get("error")) != (404, "no_workflow"):
            ledger.wrong(f"intruder {kind}", path, other, status, body)

    in_threads(urls, ledger, patch)
    assert not ledger.unexpected, json.dumps(ledger.unexpected[:8])
    assert len(acks) == len(workflows) * STEPS

    # --- read back: each workflow by its owner, and by another owner (each in turn) ----------
    final: dict[str, dict[str, Any]] = {}
    reads = []
    for w, workflow_id in enumerate(workflows):
        owner = owner_of[workflow_id]
        reads += [(owner, workflow_id), (stranger(owners, owner, w), workflow_id)]

    def read(index: int, client: Client) -> None:
        for n, (owner, workflow_id) in enumerate(reads[index::THREADS]):
            path = f"{WORKFLOWS}/{workflow_id}"
            status, body = client.request(index + n, owner, "GET", path)
            if owner == owner_of[workflow_id]:
                if status != 200:
                    ledger.wrong("GET", path, owner, status, body)
                    continue
                with ledger.guard:
                    final[workflow_id] = body["state"]
            elif (status, (body or {}).get("error")) != (404, "no_workflow"):
                ledger.wrong("GET", path, owner, status, body)

    in_threads(urls, ledger, read)
    assert not ledger.unexpected, json.dumps(ledger.unexpected[:8])

    # No lost update: every step shows its write, and each answer shows exactly the writes of
    # its workflow with lower versions (so they were applied one after another).
    by_workflow: dict[str, list[Ack]] = {}
    for ack in acks:
        by_workflow.setdefault(ack.workflow_id, []).append(ack)
    for workflow_id, its in by_workflow.items():
        state = final[workflow_id]
        assert state["version"] == max(ack.state["version"] for ack in its), workflow_id
        for ack in its:
            body = written(workflow_id, ack.step, ack.thread)
            assert shows(state, ack.step, body), (workflow_id, ack.step, state["steps"])
            for seen in its:
                applied = ack.state["version"] >= seen.state["version"]
                step = ack.state["steps"][seen.step]
                expected = written(workflow_id, seen.step, seen.thread)
                assert shows(ack.state, seen.step, expected) == applied, (
                    f"{workflow_id}: the answer of version {ack.state['version']} shows step "
                    f"{seen.step} as {step}, written at version {seen.state['version']}"
                )

    # Versions: never shared within an owner, and growing along each thread's requests, across
    # the owner's workflows and the instances.
    for owner in owners:
        versions = [s["version"] for s in created[owner]]
        versions += [ack.state["version"] for ack in acks if ack.owner == owner]
        assert len(versions) == len(set(versions)), f"{owner}: two states share a version"
    for (owner, thread), sequence in sequences.items():
        assert sequence == sorted(set(sequence)), f"{owner}, thread {thread}: {sequence}"

    # Lists: complete, the owner's own only, in order, paged by cursors over every instance.
    for o, owner in enumerate(owners):
        client = Client(urls, ledger)
        try:
            entries, cursor, pages = [], None, 0
            while True:
                query = f"?limit={page}" + (f"&cursor={cursor}" if cursor else "")
                status, body = client.request(o + pages, owner, "GET", WORKFLOWS + query)
                assert status == 200, body
                assert len(body["workflows"]) <= page
                entries += body["workflows"]
                pages += 1
                cursor = body["next_cursor"]
                if cursor is None:
                    break
                # A cursor that leads nowhere new must not page forever.
                assert pages <= per_owner // page + 1, f"{owner}: {pages} pages of {page}"
        finally:
            client.close()
        ids = [entry["workflow_id"] for entry in entries]
        strangers = [i for i in ids if owner_of.get(i) != owner]
        assert not strangers, f"{owner} lists {strangers}"
        assert sorted(ids) == sorted(s["workflow_id"] for s in created[owner]), owner
        assert pages == -(-per_owner // page), (owner, pages)
        assert entries == sorted(entries, key=list_order, reverse=True), owner
        for entry in entries:
            state = final[entry["workflow_id"]]
            assert (entry["version"], entry["last_update"]) == (
                state["version"],
                state["last_update"],
            )

    assert not ledger.server_errors, ledger.server_errors[:5]


def server_env(tmp_path: Path, owners: list[str], url: str) -> dict[str, str]:
    """Return the servers' settings: storage at `url`, `owners` in a tokens file (no admin)."""
    path = write_tokens(tmp_path / "tokens.json", {o: (token_of(o), False) for o in owners})
    return {
        "WORKFLOW_STATE_URL": url,
        "WORKFLOW_STATE_TOKENS_FILE": str(path),
        # What is checked here is correctness, not latency: on a host shared with other work
        # (CI's two cores) a writer may wait past the default 1 s for the lock, a 503 that says
        # nothing about lost updates. The lock wait itself is tested elsewhere.
        "WORKFLOW_STATE_LOCK_WAIT": "10",
    }


def all_at_once(calls: list[Callable[[], Any]]) -> None:
    """Run `calls` in threads and wait for all of them (servers start and stop in parallel)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


@pytest.fixture
def servers() -> Iterator[list[Gunicorn]]:
    """The servers a test starts; all stopped at its end, at once (each waits out its grace)."""
    started: list[Gunicorn] = []
    yield started
    if started:
        all_at_once([server.stop for server in started])


def start(servers: list[Gunicorn], env: dict[str, str], count: int) -> list[str]:
    """Start `count` instances of 3 workers with `env`; return their URLs once all workers run."""
    servers += [Gunicorn(env, workers=3) for _ in range(count)]
    all_at_once([server.start for server in servers])
    for server in servers:
        wait_until(lambda s=server: len(s.worker_pids()) == 3)
    return [server.url for server in servers]


def test_eight_owners_fifty_workflows_each_on_two_instances_of_one_redis(
    own_redis: RedisServer, tmp_path: Path, servers: list[Gunicorn]
):
    owners = [f"user{i}" for i in range(8)]
    urls = start(servers, server_env(tmp_path, owners, own_redis.url), count=2)
    check_many_owners(urls, owners, per_owner=50, page=20)


def test_three_owners_twenty_workflows_each_on_the_file_backend(
    tmp_path: Path, servers: list[Gunicorn]
):
    owners = ["ada", "bo.b", "c@d-e_f"]
    url = f"file://{tmp_path}/state/workflow_state.json"
    urls = start(servers, server_env(tmp_path, owners, url), count=1)
    check_many_owners(urls, owners, per_owner=20, page=7)

"""A Redis failover under load, end to end: real gunicorn, real redis-server and redis-sentinel.

16 writers PATCH their own step with an increasing counter while probes call every route; the
master is killed with SIGKILL. Every answer is a 200 (or the route's own refusal) or a 503
`backend_unavailable` within 2 s, never a 500; every route serves again within 2 s of the
sentinels announcing the new master; no acknowledged write is lost (with
WORKFLOW_STATE_MIN_REPLICAS=1); and a stream opened before the failover delivers the writes
made after it.

The group has two replicas: with MIN_REPLICAS=1 the new master needs a replica of its own to
acknowledge writes, and the one replica of a 1+1 group is the one promoted.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import steps
from tests.support import STATE, STREAM, Gunicorn, SSEClient, http, wait_until
from tests.support.sentinel import REDIS_SENTINEL, SKIP_REASON, SentinelGroup

pytestmark = pytest.mark.skipif(REDIS_SENTINEL is None, reason=SKIP_REASON)

WRITERS = 16
# After the new master is announced: how soon every route must serve, and how long to watch.
RECOVERY_BUDGET = 2.0
WATCH_AFTER_PROMOTION = 4.0


@dataclass(frozen=True)
class Call:
    """One request a writer or probe made, on the test's monotonic clock."""

    route: str
    started: float
    ended: float
    status: int | None
    body: Any

    @property
    def ok(self) -> bool:
        """Served: 2xx, or the refusal the probe asks for (412 for a stale If-Match)."""
        return self.status is not None and (200 <= self.status < 300 or self.status == 412)


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    """1 master, 2 replicas, 3 sentinels."""
    group = SentinelGroup(replicas=2).start()
    yield group
    print(group.logs())  # shown only when the test failed
    group.close()


@pytest.fixture
def backend(group: SentinelGroup) -> dict[str, Any]:
    """Put conftest's `make_app` apps (the in-process probe) on the group's sentinel URL."""
    return {"STATE_URL": group.url}


@pytest.fixture
def server(group: SentinelGroup) -> Iterator[Gunicorn]:
    """Gunicorn with 3 workers on the sentinel URL, MIN_REPLICAS=1."""
    server = Gunicorn(
        {"WORKFLOW_STATE_URL": group.url, "WORKFLOW_STATE_MIN_REPLICAS": "1"}, workers=3
    ).start()
    yield server
    server.stop()


def timed(route: str, send: Callable[[], tuple[int | None, Any]]) -> Call:
    """Run one request and time it; a connection error is recorded as status None."""
    started = time.monotonic()
    try:
        status, body = send()
    except OSError as error:
        status, body = None, repr(error)
    return Call(route, started, time.monotonic(), status, body)


class Load:
    """Writers and probes running until `stop` is set; every call is kept."""

    def __init__(self, base: str, probe_app_client: Any) -> None:
        self.base = base
        self.local = probe_app_client
        self.stop = threading.Event()
        self.calls: list[Call] = []
        self.guard = threading.Lock()
        # Per writer: the counter of its last acknowledged write, and every version acknowledged.
        self.last_acked = [0] * WRITERS
        self.acked_versions: list[int] = []
        self.threads = [
            threading.Thread(target=self._writer, args=(index,), daemon=True)
            for index in range(WRITERS)
        ] + [threading.Thread(target=self._probe, daemon=True)]

    def start(self) -> Load:
        """Start every writer and the probe."""
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        """Stop and wait for every thread."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _keep(self, call: Call) -> None:
        with self.guard:
            self.calls.append(call)

    def _http(self, method: str, path: str, body: Any = None, headers=None) -> tuple[int, Any]:
        status, _, parsed = http(method, self.base + path, body, headers=headers, timeout=5)
        return status, parsed

    def _writer(self, index: int) -> None:
        counter = 0
        while not self.stop.is_set():
            counter += 1
            body = {"status": "in_progress", "data": {"n": counter}}
            call = timed(
                "PATCH step",
                lambda body=body: self._http("PATCH", f"{STATE}/steps/{index}", body),
            )
            self._keep(call)
            if call.status == 200:
                with self.guard:
                    self.last_acked[index] = counter
                    self.acked_versions.append(call.body["state"]["version"])
            elif call.status == 503:
                time.sleep(0.02)  # a client backs off a little after a 503

    def _stream_answers(self) -> tuple[int | None, Any]:
        client = SSEClient(self.base + STREAM, timeout=5)
        try:
            if client.status != 200:
                return client.status, client.response.read()
            client.next(timeout=5)  # the snapshot
            return 200, None
        finally:
            client.close()

    def _local(self, method: str, body: Any = None) -> tuple[int, Any]:
        response = self.local.open(STATE, method=method, json=body)
        return response.status_code, response.get_json()

    def _probe(self) -> None:
        """Call every route in turn (POST and DELETE on a second key, in process)."""
        probes: list[tuple[str, Callable[[], tuple[int | None, Any]]]] = [
            ("GET state", lambda: self._http("GET", STATE)),
            ("GET summary", lambda: self._http("GET", f"{STATE}/summary")),
            ("GET history", lambda: self._http("GET", "/workflow/history")),
            ("GET readyz", lambda: self._http("GET", "/readyz")),
            ("PATCH merge", lambda: self._http("PATCH", STATE, {"probe": time.time()})),
            # A stale If-Match: the whole write path runs, and 412 is its served answer.
            ("POST stale", lambda: self._http("POST", STATE, {"steps": []}, {"If-Match": '"1"'})),
            ("GET stream", self._stream_answers),
            ("POST", lambda: self._local("POST", {"workflow_id": "probe", "steps": steps(1)})),
            ("DELETE", lambda: self._local("DELETE")),
        ]
        while not self.stop.is_set():
            for route, send in probes:
                self._keep(timed(route, send))


def test_a_killed_master_loses_no_acknowledged_write_and_every_route_recovers(
    group, server, make_app
):
    status, _, saved = http(
        "POST", server.url + STATE, {"workflow_id": "wf", "steps": steps(WRITERS)}
    )
    assert status == 200, saved
    stream = SSEClient(server.url + STREAM, timeout=30)
    assert stream.status == 200
    assert stream.next()["json"]["state"]["workflow_id"] == "wf"
    # Keys of its own (another prefix), so its POST and DELETE leave the writers' workflow be.
    probe_app = make_app(STATE_PREFIX="probe", MIN_REPLICAS=1)
    load = Load(server.url, probe_app.test_client()).start()
    try:
        wait_until(lambda: min(load.last_acked) >= 5, timeout=20)
        killed = time.monotonic()
        group.kill_master()
        promoted = group.wait_for_event("+switch-master", after=killed, timeout=30)
        wait_until(lambda: time.monotonic() > promoted + WATCH_AFTER_PROMOTION, timeout=30)
    finally:
        load.finish()
    calls = load.calls
    report(group, load, killed, promoted)

    # Never a 500, never a hang: served, or 503 backend_unavailable within 2 s.
    for call in calls:
        assert call.ok or call.status == 503, call
        if call.status == 503:
            assert call.ended - call.started < 2.0, call
            if call.route != "GET stream":
                assert call.body["error"] == "backend_unavailable", call
    # Before the kill everything was served; from 2 s after the promotion, everything is again.
    before = [call for call in calls if call.ended < killed]
    assert before and all(call.ok for call in before), [c for c in before if not c.ok][:5]
    late = [call for call in calls if call.started >= promoted + RECOVERY_BUDGET]
    routes = {call.route for call in calls}
    assert {call.route for call in late} == routes, "a route was not tried after recovery"
    assert all(call.ok for call in late), [call for call in late if not call.ok][:5]

    # No acknowledged write lost: each writer's step holds its last acknowledged counter (or a
    # later one, from a write that ran but was answered 503), and the counter of versions never
    # went back below an acknowledged version.
    status, _, body = http("GET", server.url + STATE)
    assert status == 200
    final = body["state"]
    for index, acked in enumerate(load.last_acked):
        assert final["steps"][index]["data"]["n"] >= acked, (index, acked, final["steps"][index])
    assert max(load.acked_versions) <= final["version"]
    assert int(group.current_master().client().get("workflow:{public}:seq")) >= final["version"]

    # The stream opened before the failover delivers a write made after it.
    status, _, body = http("PATCH", server.url + STATE, {"marker": "after-failover"})
    assert status == 200, body

    def marker_arrives() -> bool:
        event = stream.next(timeout=10)
        return (event["json"]["state"] or {}).get("marker") == "after-failover"

    wait_until(marker_arrives, timeout=15, interval=0)
    stream.close()


def report(group: SentinelGroup, load: Load, killed: float, promoted: float) -> None:
    """Print the measured failover (shown with -s, or when the test fails)."""
    calls = sorted(load.calls, key=lambda call: call.started)
    first_ok: dict[str, float] = {}
    unavailable: dict[str, int] = defaultdict(int)
    for call in calls:
        if call.started >= killed and not call.ok:
            unavailable[call.route] += 1
        if call.started >= promoted and call.ok and call.route not in first_ok:
            first_ok[call.route] = call.ended - promoted
    down = group.first_event("+sdown", after=killed)
    chosen = group.first_event("+promoted-slave", after=killed)
    slowest = max((call.ended - call.started for call in calls if call.status == 503), default=0)
    median = statistics.median(
        call.ended - call.started for call in calls if call.started >= killed
    )
    print(
        f"\nkill -> +sdown {down[0] - killed if down else float('nan'):.3f}s, "
        f"-> +promoted-slave {chosen[0] - killed if chosen else float('nan'):.3f}s, "
        f"-> first +switch-master {promoted - killed:.3f}s (the promotion the budget counts "
        f"from); {len(load.acked_versions)} writes acknowledged, {len(calls)} calls; "
        f"slowest 503 {slowest:.3f}s; median answer after the kill "
        f"{median:.3f}s"
    )
    for route in sorted(first_ok, key=first_ok.get):
        print(
            f"  {route:12} served {first_ok[route]:+.3f}s after promotion, "
            f"{unavailable[route]} answers 503 since the kill"
        )
    for call in [call for call in calls if call.started >= promoted and not call.ok][-5:]:
        print(f"  not served at {call.started - promoted:+.3f}s: {call.route} {call.body}")
    for seen, port, channel, data in group.events:
        if seen >= killed and channel in ("+sdown", "+odown", "+promoted-slave", "+switch-master"):
            print(f"    {seen - promoted:+.3f}s sentinel {port} {channel} {data[:70]}")

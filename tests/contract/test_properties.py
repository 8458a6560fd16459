"""A Hypothesis state machine drives the API against a simple model, on every backend.

Rules: POST, step PATCH, merge PATCH, DELETE, GET, summary, and time passing (a finished
state's TTL, or a running state's stale TTL, runs out). After every rule the answer must be
the one the model predicts, and the stored state (the Redis key or the file) must be exactly
the model's. Versions only ever go up, across deletes and expiry.

Time is simulated, so the run never sleeps: on the file backend the store's clock is shifted
forward; on Redis every key whose remaining TTL is within the simulated span is expired with
PEXPIRE, which is what the span passing would do to it.
"""

from __future__ import annotations

import json
import tempfile
import time as real_time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import service.storage.base as storage_base
import service.storage.file as storage_file
from service import create_app
from service.storage import StateStore
from tests.support import RedisServer, layout, wait_until
from tests.support.routes import STATE

TTL = 30
FAILED_TTL = 300
STALE_TTL = 600
STATUSES = ("running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
STEP_STATUSES = ("pending", "in_progress", "completed", "failed", "skipped", "cancelled")
SERVER_FIELDS = ("last_update", "version", "incarnation", "completed_percent")
MISSING = object()

# --- what a client may send ------------------------------------------------------------------

step_lists = st.lists(
    st.builds(
        lambda i, status: {"action": f"s{i}", "status": status},
        st.integers(0, 3),
        st.sampled_from(STEP_STATUSES),
    ),
    max_size=3,
)


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.just(MISSING), strategy)


post_bodies = st.fixed_dictionaries(
    {},
    optional={
        "workflow_id": st.sampled_from(["a", "b"]),
        "status": st.sampled_from([*STATUSES, "bogus"]),
        "current_step": st.integers(0, 3),
        "steps": step_lists,
        "start_time": st.just("2026-01-02T03:04:05.000Z"),
        "ssh_connection": st.one_of(st.none(), st.just("ssh root@h")),
        "note": st.integers(0, 2),
    },
)
merge_bodies = st.one_of(
    # What the page sends (finish, cancel, note progress), then anything the rules allow.
    st.fixed_dictionaries({"status": st.sampled_from(STATUSES)}),
    st.fixed_dictionaries({"current_step": st.integers(0, 3), "note": st.integers(0, 2)}),
    st.fixed_dictionaries({"ssh_connection": st.one_of(st.none(), st.just("ssh root@m"))}),
    st.fixed_dictionaries(
        {},
        optional={
            "workflow_id": st.sampled_from(["a", "b"]),
            "status": st.sampled_from([*STATUSES, "bogus"]),
            "current_step": st.integers(0, 3),
            "steps": step_lists,
            "ssh_connection": st.one_of(st.none(), st.just("ssh root@m")),
            "note": st.integers(0, 2),
        },
    ),
)
# Mostly no If-Match: with one, most writes are (rightly) refused before they reach the model.
if_match_choices = st.sampled_from(["none", "none", "none", "current", "stale", "star"])


# --- the model -------------------------------------------------------------------------------


def content(state: dict[str, Any]) -> dict[str, Any]:
    """A state without the fields the server stamps."""
    return {k: v for k, v in state.items() if k not in SERVER_FIELDS}


def valid(state: dict[str, Any]) -> bool:
    """The contract's field rules, for the fields the machine generates."""
    steps = state["steps"]
    return (
        state["status"] in STATUSES
        and all(step["status"] in STEP_STATUSES for step in steps)
        # Below the number of steps, 0 when there are none.
        and state["current_step"] < max(len(steps), 1)
    )


def progress(state: dict[str, Any]) -> float:
    """Return the contract's progress_percent for a state."""
    total = len(state["steps"])
    return round((state["current_step"] + 1) / total * 100, 2) if total else 0


class ShiftedClock:
    """The `time` module, with time() moved forward by `offset` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        """Return the shifted unix time."""
        return real_time.time() + self.offset

    def now(self) -> datetime:
        """Return the shifted moment in UTC."""
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


class Storage:
    """One empty storage per example, of one backend kind, and a way to let time pass."""

    def __init__(
        self, kind: str, root: Path, redis_server: RedisServer | None, clock: ShiftedClock
    ):
        self.kind = kind
        self.clock = clock
        self.raw: Any = None
        if kind == "fakeredis":
            server = fakeredis.FakeServer()
            self.raw = fakeredis.FakeRedis(server=server)
            self.config = {
                "STATE_URL": "redis://fakeredis/0",
                "REDIS_CLIENT_FACTORY": lambda: fakeredis.FakeRedis(server=server),
            }
        elif kind == "redis":
            assert redis_server is not None
            redis_server.flush()
            self.raw = redis_server.client()
            self.config = {"STATE_URL": redis_server.url}
        else:
            clock.offset = 0.0
            self.path = Path(tempfile.mkdtemp(dir=root)) / "workflow_state.json"
            self.config = {"STATE_URL": f"file://{self.path}"}

    def stored(self, store: StateStore) -> dict[str, Any] | None:
        """Return the current workflow's document as it sits in storage (None when absent)."""
        raw = layout.raw_state(store)
        return None if raw is None else json.loads(raw)

    def pttl(self, store: StateStore) -> int:
        """Return the current workflow's remaining TTL in ms (-2 when absent)."""
        if layout.current_id(store) is None:
            return -2
        return self.raw.pttl(layout.state_location(store))

    def advance(self, store: StateStore, seconds: int) -> None:
        """Let `seconds` pass for the stored states."""
        if self.raw is None:
            self.clock.offset += seconds
            return
        for key in self.raw.keys("workflow:{public}:state:*"):
            remaining = self.raw.pttl(key)
            if 0 < remaining <= seconds * 1000:
                self.raw.pexpire(key, 1)
                wait_until(lambda k=key: self.raw.exists(k) == 0, timeout=5, interval=0.002)


def make_machine(kind: str, root: Path, redis_server: RedisServer | None, clock: ShiftedClock):
    """Build the state machine class for one backend."""

    class WorkflowStateMachine(RuleBasedStateMachine):
        """The API against the model: every answer and the stored state must agree."""

        def __init__(self) -> None:
            super().__init__()
            self.storage = Storage(kind, root, redis_server, clock)
            config = {
                "TESTING": True,
                "STATE_TTL": TTL,
                "STATE_FAILED_TTL": FAILED_TTL,
                "STATE_STALE_TTL": STALE_TTL,
            }
            self.app = create_app({**config, **self.storage.config})
            self.client = self.app.test_client()
            self.store = self.app.extensions["workflow_state"]
            self.model: dict[str, Any] | None = None
            self.last_version = 0

        def teardown(self) -> None:
            """Release the app's storage handles."""
            self.app.extensions["workflow_state"].close()

        # --- helpers ---------------------------------------------------------------------

        def if_match_header(self, choice: str) -> tuple[dict[str, str], frozenset | None]:
            """Turn a choice into an If-Match header and what it allows (None = no header)."""
            if choice == "none":
                return {}, None
            if choice == "star":
                return {"If-Match": "*"}, frozenset({"*"})
            version = self.model["version"] if self.model and choice == "current" else 0
            return {"If-Match": f'"{version}"'}, frozenset({str(version)})

        def precondition_fails(self, allowed: frozenset | None) -> bool:
            """Tell whether If-Match (as allowed versions) refuses the model's state."""
            if allowed is None:
                return False
            if self.model is None:
                return True
            return "*" not in allowed and str(self.model["version"]) not in allowed

        def expect(self, response: Any, status: int, error: str | None = None) -> dict[str, Any]:
            """Check the status (and error code) of an answer; return its body."""
            body = response.get_json()
            assert response.status_code == status, (status, response.status_code, body)
            if error is not None:
                assert body["error"] == error, body
            return body

        def accept(self, response: Any, expected: dict[str, Any] | None) -> None:
            """Check a 200 write: unchanged when `expected` is None, else the new content."""
            state = self.expect(response, 200)["state"]
            if expected is None:
                assert state == self.model
                return
            assert content(state) == expected
            assert state["version"] > self.last_version, "a version was reused"
            self.last_version = state["version"]
            self.model = state

        # --- rules -----------------------------------------------------------------------

        @initialize(workflow_id=st.sampled_from(["a", "b"]), count=st.integers(1, 3))
        def begin(self, workflow_id: str, count: int) -> None:
            """Start every run with a running workflow."""
            self.start(workflow_id, count)

        @rule(workflow_id=st.sampled_from(["a", "b"]), count=st.integers(1, 3))
        def start(self, workflow_id: str, count: int) -> None:
            """POST a fresh running workflow (so the other rules have something to work on)."""
            body = {
                "workflow_id": workflow_id,
                "steps": [{"action": f"s{i}", "status": "pending"} for i in range(count)],
            }
            self.post(body, "none")

        @rule(body=post_bodies, choice=if_match_choices)
        def post(self, body: dict[str, Any], choice: str) -> None:
            """POST a whole state."""
            headers, allowed = self.if_match_header(choice)
            response = self.client.post(STATE, json=body, headers=headers)
            if not body:
                self.expect(response, 400, "state_required")
                return
            candidate = {
                "workflow_id": body.get("workflow_id", MISSING),
                "status": body.get("status", "running"),
                "current_step": body.get("current_step", 0),
                "steps": body.get("steps", []),
                "start_time": body.get("start_time", MISSING),
            }
            candidate.update((k, v) for k, v in body.items() if k not in candidate)
            if candidate.get("ssh_connection") is None:
                candidate.pop("ssh_connection", None)
            if not valid(candidate):
                self.expect(response, 400, "invalid_state")
                return
            if self.precondition_fails(allowed):
                self.expect(response, 412, "precondition_failed")
                return
            current = self.model
            same_workflow = (
                current is not None and candidate["workflow_id"] == current["workflow_id"]
            )
            if current is not None and current["status"] in FINISHED and same_workflow:
                if candidate["start_time"] is MISSING:
                    candidate["start_time"] = current["start_time"]
                if candidate == content(current):
                    self.accept(response, None)
                else:
                    self.expect(response, 409, "workflow_finished")
                return
            served = self.expect(response, 200)["state"]
            # The server fills what was absent: take its values for those.
            for field in ("workflow_id", "start_time"):
                if candidate[field] is MISSING:
                    candidate[field] = served[field]
            self.accept(response, candidate)

        @rule(
            index=st.integers(0, 3),
            status=st.sampled_from([*STEP_STATUSES, "bogus"]),
            data=_optional(st.one_of(st.none(), st.fixed_dictionaries({"n": st.integers(0, 2)}))),
            guard=_optional(st.sampled_from(["a", "b"])),
            choice=if_match_choices,
        )
        def patch_step(self, index: int, status: str, data: Any, guard: Any, choice: str) -> None:
            """PATCH one step."""
            body: dict[str, Any] = {"status": status}
            if data is not MISSING:
                body["data"] = data
            if guard is not MISSING:
                body["workflow_id"] = guard
            headers, allowed = self.if_match_header(choice)
            response = self.client.patch(f"{STATE}/steps/{index}", json=body, headers=headers)
            if status not in STEP_STATUSES:
                self.expect(response, 400, "invalid_state")
                return
            current = self.model
            if current is None:
                self.expect(response, 404, "no_workflow")
                return
            if self.precondition_fails(allowed):
                self.expect(response, 412, "precondition_failed")
                return
            if guard is not MISSING and guard != current["workflow_id"]:
                self.expect(response, 409, "workflow_mismatch")
                return
            if index >= len(current["steps"]):
                self.expect(response, 400, "invalid_index")
                return
            new = content(current)
            step = {**current["steps"][index], "status": status}
            if data not in (MISSING, None):
                step["data"] = data
            new["steps"] = [*current["steps"][:index], step, *current["steps"][index + 1 :]]
            new["current_step"] = index
            if current["status"] in FINISHED:
                if new == content(current):
                    self.accept(response, None)
                else:
                    self.expect(response, 409, "workflow_finished")
                return
            self.accept(response, new)

        @rule(fields=merge_bodies, choice=if_match_choices)
        def merge(self, fields: dict[str, Any], choice: str) -> None:
            """PATCH top-level fields."""
            headers, allowed = self.if_match_header(choice)
            response = self.client.patch(STATE, json=fields, headers=headers)
            current = self.model
            if not fields:
                self.expect(response, 400, "state_required")
                return
            if current is None:
                self.expect(response, 404, "no_workflow")
                return
            if self.precondition_fails(allowed):
                self.expect(response, 412, "precondition_failed")
                return
            if "workflow_id" in fields and fields["workflow_id"] != current["workflow_id"]:
                self.expect(response, 409, "workflow_mismatch")
                return
            new = {**content(current), **fields}
            if "ssh_connection" in fields and fields["ssh_connection"] is None:
                del new["ssh_connection"]
            if not valid(new):
                self.expect(response, 400, "invalid_state")
                return
            if current["status"] in FINISHED:
                if new == content(current):
                    self.accept(response, None)
                else:
                    self.expect(response, 409, "workflow_finished")
                return
            self.accept(response, new)

        @precondition(lambda self: self.model is not None)
        @rule()
        def delete(self) -> None:
            """DELETE the state."""
            body = self.expect(self.client.delete(STATE), 200)
            assert body == {"success": True, "message": "Workflow state cleared"}
            self.model = None

        @rule(conditional=st.booleans())
        def get(self, conditional: bool) -> None:
            """GET the state, sometimes with the current ETag."""
            headers = {}
            if conditional and self.model is not None:
                headers["If-None-Match"] = f'"{self.model["version"]}"'
            response = self.client.get(STATE, headers=headers)
            if headers:
                assert response.status_code == 304
                return
            body = self.expect(response, 200)
            active = self.model is not None and self.model["status"] == "running"
            percent = 0 if self.model is None else progress(self.model)
            assert body == {
                "success": True,
                "active": active,
                "progress_percent": percent,
                "state": self.model,
            }
            if self.model is not None:
                assert response.headers["ETag"] == f'"{self.model["version"]}"'

        @rule()
        def summary(self) -> None:
            """GET the summary."""
            summary = self.expect(self.client.get(f"{STATE}/summary"), 200)["summary"]
            if self.model is None:
                assert summary == {"active": False, "workflow_id": None, "status": None}
                return
            assert summary["workflow_id"] == self.model["workflow_id"]
            assert summary["total_steps"] == len(self.model["steps"])
            assert summary["progress_percent"] == progress(self.model)

        @precondition(lambda self: self.model is not None)
        @rule()
        def ttl_runs_out(self) -> None:
            """WORKFLOW_STATE_TTL passes: a completed or cancelled state expires; a failed one (it
            can be retried) and a running one stay."""
            self.storage.advance(self.store, TTL + 1)
            if self.model is not None and self.model["status"] in ("completed", "cancelled"):
                self.model = None

        @precondition(lambda self: self.model is not None)
        @rule()
        def stale_ttl_runs_out(self) -> None:
            """WORKFLOW_STATE_STALE_TTL passes with no write: any state expires."""
            self.storage.advance(self.store, STALE_TTL + 1)
            self.model = None

        # --- invariants ------------------------------------------------------------------

        @invariant()
        def storage_holds_the_model(self) -> None:
            """The Redis key or the file holds exactly the model's state."""
            stored = self.storage.stored(self.store)
            if self.model is not None:
                assert stored == self.model
            elif self.storage.raw is not None:
                assert stored is None

        @invariant()
        def ttl_matches_the_status(self) -> None:
            """A completed or cancelled state carries the short TTL, a failed one the failed TTL
            (it can be retried), a running one the stale TTL."""
            if self.storage.raw is None or self.model is None:
                return
            remaining = self.storage.pttl(self.store)
            if self.model["status"] == "failed":
                assert TTL * 1000 < remaining <= FAILED_TTL * 1000
            elif self.model["status"] in FINISHED:
                assert 0 < remaining <= TTL * 1000
            else:
                assert TTL * 1000 < remaining <= STALE_TTL * 1000

    return WorkflowStateMachine


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[ShiftedClock]:
    """Shift the file backend's clock (what it stamps and what it checks expiry against)."""
    shifted = ShiftedClock()
    monkeypatch.setattr(storage_file, "time", shifted)
    monkeypatch.setattr(storage_base, "utc_now", shifted.now)
    yield shifted


@pytest.mark.parametrize("kind", ["fakeredis", "redis", "file"])
def test_the_api_follows_the_model(kind: str, request, tmp_path: Path, clock: ShiftedClock):
    redis_server = request.getfixturevalue("redis_server") if kind == "redis" else None
    machine = make_machine(kind, tmp_path, redis_server, clock)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=50,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )

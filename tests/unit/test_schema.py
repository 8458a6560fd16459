"""The one schema source: validation and the published document say the same thing.

Every refused field is named with the sentence the document gives as that field's description;
what the validation accepts is what the published JSON Schema accepts; the bodies of contract
sections 8 and 9 are published and describe the answers those routes will give.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service import model, runs, schema
from service.openapi import build_document
from service.storage import HISTORY_MAX

DOCUMENT = build_document()
COMPONENTS = DOCUMENT["components"]["schemas"]
REGISTRY = Registry().with_resource(
    "urn:doc", Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)
STEP = {"action": "a", "status": "pending"}
STATE = {
    "workflow_id": "wf",
    "status": "running",
    "current_step": 0,
    "steps": [STEP] * 3,
    "start_time": "2026-01-01T00:00:00.000Z",
}
STORED = {**STATE, "last_update": "2026-01-01T00:00:01.000Z", "version": 7}


def validator(name: str) -> Draft202012Validator:
    """A JSON Schema validator for the published component `name`."""
    return Draft202012Validator({"$ref": f"urn:doc#/components/schemas/{name}"}, registry=REGISTRY)


def described(name: str, field: str) -> str:
    """The description the document gives a property of component `name` (or of its $ref)."""
    node = COMPONENTS[name]["properties"][field]
    if "description" not in node:
        node = COMPONENTS[node["$ref"].rsplit("/", 1)[-1]]
    return node["description"]


def refusal(state: dict[str, Any], *, stored: bool = False, merged: bool = False) -> str:
    """The message validation refuses `state` with."""
    with pytest.raises(model.InvalidState) as caught:
        model.validate(state, stored=stored, merged=merged)
    return caught.value.message


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("workflow_id", "", "workflow_id"),
        ("workflow_id", "has space", "workflow_id"),
        ("workflow_id", "x" * 129, "workflow_id"),
        ("workflow_id", "wf\n", "workflow_id"),
        ("workflow_id", 12, "workflow_id"),
        ("workflow_id", None, "workflow_id"),
        ("status", "paused", "status"),
        ("current_step", -1, "current_step"),
        ("current_step", "1", "current_step"),
        ("current_step", 1.0, "current_step"),
        ("current_step", True, "current_step"),
        ("steps", "abc", "steps"),
        ("steps", [STEP] * (schema.MAX_STEPS + 1), "steps"),
        ("start_time", "yesterday", "start_time"),
        ("start_time", 12, "start_time"),
        ("ssh_connection", 12, "ssh_connection"),
        ("ssh_connection", {"$encrypted": "token"}, "ssh_connection"),
    ],
)
def test_a_refused_field_is_named_with_its_documented_rule(field, value, path):
    rule = described("StateInput", field)
    assert refusal({**STATE, field: value}) == f"Invalid field '{path}': {rule}"


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (1, "Invalid field 'steps[1]': must be an object"),
        ({"status": "pending"}, "Invalid field 'steps[1].action': must be a non-empty string"),
        (
            {"action": "", "status": "x"},
            "Invalid field 'steps[1].action': must be a non-empty string",
        ),
        (
            {"action": "a", "status": "done"},
            "Invalid field 'steps[1].status': must be one of pending, in_progress, completed, "
            "failed, skipped, cancelled",
        ),
        (
            {"action": "a"},
            "Invalid field 'steps[1].status': must be one of pending, in_progress, completed, "
            "failed, skipped, cancelled",
        ),
    ],
)
def test_a_refused_step_field_is_named_with_its_position(step, message):
    assert refusal({**STATE, "steps": [STEP, step, STEP]}) == message


def test_the_rules_no_schema_keyword_can_say_still_name_the_field():
    assert refusal({**STATE, "current_step": 3}) == (
        "Invalid field 'current_step': must be less than the number of steps (3)"
    )
    deep: Any = 1
    for _ in range(schema.MAX_DEPTH):
        deep = [deep]
    assert refusal({**STATE, "note": deep}) == (
        f"Invalid field 'state': must not nest deeper than {schema.MAX_DEPTH} levels"
    )
    model.validate({**STATE, "note": deep[0]})  # exactly MAX_DEPTH levels


def test_a_stored_document_needs_the_server_fields_and_may_hold_a_sealed_secret():
    model.validate({**STORED, "ssh_connection": {"$encrypted": "token"}}, stored=True)
    assert refusal({**STORED, "version": 0}, stored=True) == (
        "Invalid field 'version': must be an integer >= 1"
    )
    without = {k: v for k, v in STORED.items() if k != "last_update"}
    assert refusal(without, stored=True) == (
        "Invalid field 'last_update': must be an ISO-8601 string"
    )
    for bad in ({"$encrypted": 1}, {"$encrypted": "t", "more": 1}):
        assert refusal({**STORED, "ssh_connection": bad}, stored=True) == (
            "Invalid field 'ssh_connection': must be a string"
        )


def test_what_was_always_accepted_still_is():
    # Lone surrogates are valid JSON; nulls clear a secret; other fields are kept as sent.
    model.validate({**STATE, "steps": [{"action": "\ud800", "status": "skipped", "x": [1]}]})
    model.validate({**STATE, "ssh_connection": None, "note": "\ud800", "run": "anything"})
    model.validate({**STATE, "start_time": "2026-01-01"})  # ISO-8601 as Python reads it


def test_current_step_is_0_when_there_are_no_steps_but_stored_ones_stay_readable():
    for current_step in (5, 10**29):
        assert refusal({**STATE, "steps": [], "current_step": current_step}).startswith(
            "Invalid field 'current_step': must be"
        )
    assert refusal({**STATE, "steps": [], "current_step": 5}, merged=True) == (
        "Invalid field 'current_step': must be 0 when there are no steps"
    )
    model.validate({**STATE, "steps": [], "current_step": 0})
    # Written before the rule: still a state, not a corrupt document moved aside.
    model.validate({**STORED, "steps": [], "current_step": 10**29}, stored=True)


@pytest.mark.parametrize("workflow_id", ["stream", ".", ".."])
def test_a_new_workflow_may_not_take_an_id_that_names_a_route(workflow_id):
    assert refusal({**STATE, "workflow_id": workflow_id}) == (
        "Invalid field 'workflow_id': must be 1-128 characters of A-Z a-z 0-9 _ . : -, and not "
        "stream, . or .. (they name routes, not workflows)"
    )
    # One created before the rule can still be changed and read.
    model.validate({**STATE, "workflow_id": workflow_id}, merged=True)
    model.validate({**STORED, "workflow_id": workflow_id}, stored=True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"data": {}}, "Invalid field 'status': " + schema.one_of(schema.STEP_STATUSES)),
        ({"status": "done"}, "Invalid field 'status': " + schema.one_of(schema.STEP_STATUSES)),
        ({"status": "failed", "data": [1]}, "Invalid field 'data': must be an object or null"),
        (
            {"status": "failed", "workflow_id": 3},
            "Invalid field 'workflow_id': must be a string or null",
        ),
    ],
)
def test_a_step_change_is_refused_naming_the_field(body, message):
    with pytest.raises(model.InvalidState) as caught:
        model.parse_step_change(body)
    assert caught.value.message == message


def test_a_step_change_keeps_its_parts():
    change = model.parse_step_change({"status": "failed", "data": None, "workflow_id": None})
    assert change == {
        "status": "failed",
        "data": None,
        "has_data": True,
        "guard": None,
        "options": {},
    }
    deep: Any = {}
    for _ in range(schema.MAX_DATA_DEPTH):
        deep = {"d": deep}
    with pytest.raises(model.InvalidState, match="'data': must not nest deeper than 29"):
        model.parse_step_change({"status": "failed", "data": deep})


# --- validation and document agree ------------------------------------------------------------

VALUES = {
    "workflow_id": st.sampled_from(
        ["wf", "a.b:c-d_9", "", "a b", "x" * 129, 1, None, "é", "stream", "..", ".", "..."]
    ),
    "status": st.sampled_from([*schema.STATUSES, "paused", None, 1]),
    "current_step": st.sampled_from([0, 1, 2, 999, 1000, -1, 1.5, "0", True, None]),
    "steps": st.lists(
        st.sampled_from(
            [
                STEP,
                {"action": "b", "status": "completed", "data": {"k": [1]}},
                {"action": ""},
                {"action": "a", "status": "done"},
                {"status": "pending"},
                [],
                "s",
                None,
            ]
        ),
        max_size=4,
    )
    | st.sampled_from(["steps", None, {}]),
    # "format" is an annotation in JSON Schema 2020-12: only strings and non-strings differ.
    "start_time": st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+02:00", 5]),
    "ssh_connection": st.sampled_from(["ssh root@h", None, 5, ["x"], {"$encrypted": "t"}]),
    "note": st.sampled_from(["kept", 1, None, {"any": ["thing"]}]),
}


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({}, optional=VALUES))
def test_the_validation_accepts_exactly_what_the_document_accepts(body):
    # The candidate a POST makes: defaults where absent. The document's StateInput has no
    # defaults, so the same dict goes to both. The one rule JSON Schema can't say:
    # current_step below the number of steps.
    state = {**STATE, **body}
    try:
        schema.check_state(state)
        accepted = True
    except schema.FieldError:
        accepted = False
    steps = state["steps"]
    beyond = (
        isinstance(steps, list)
        and steps
        and isinstance(state["current_step"], int)
        and state["current_step"] >= len(steps)
    )
    assert accepted == (validator("StateInput").is_valid(state) and not beyond), state


# --- the bodies of sections 8 and 9, ready for their routes ----------------------------------

ENTRY = {
    "active": True,
    "workflow_id": "wf",
    "status": "running",
    "current_step": 1,
    "total_steps": 4,
    "progress_percent": 50.0,
    "completed_percent": 25,
    "start_time": STATE["start_time"],
    "last_update": STORED["last_update"],
    "version": 9,
}
RUN = {
    "attempt": 2,
    "runner": "web-1:4242",
    "heartbeat": "2026-01-01T00:00:05.000Z",
    "lease_expires": "2026-01-01T00:00:20.000Z",
    "status": "running",
}


@pytest.mark.parametrize(
    ("name", "instance", "valid"),
    [
        ("CreateWorkflowInput", {"steps": [STEP], "run": True}, True),
        ("CreateWorkflowInput", {"run": "yes"}, False),
        ("CreateWorkflowInput", {}, False),
        ("WorkflowEntry", ENTRY, True),
        ("WorkflowEntry", {k: v for k, v in ENTRY.items() if k != "version"}, False),
        ("WorkflowList", {"success": True, "workflows": [ENTRY], "next_cursor": "c1"}, True),
        ("WorkflowList", {"success": True, "workflows": [], "next_cursor": None}, True),
        ("WorkflowList", {"success": True, "workflows": [ENTRY] * 101, "next_cursor": None}, False),
        ("WorkflowChange", ENTRY, True),
        ("WorkflowChange", {"workflow_id": "wf", "state": None}, True),
        ("WorkflowChange", {"workflow_id": "wf", "state": {}}, False),
        ("WorkflowEvent", {"event": "workflow", "data": json.dumps(ENTRY)}, True),
        ("Run", RUN, True),
        ("Run", {**RUN, "status": "queued", "runner": None}, True),
        ("Run", {**RUN, "status": "paused"}, False),
        ("Run", {**RUN, "attempt": 0}, False),
        ("Run", {**RUN, "lease_expires": None}, False),
        ("RunStarted", {"success": True, "message": "Workflow run started", "state": STORED}, True),
        ("RunStarted", {"success": True, "message": "started", "state": STORED}, False),
        ("UserName", "ada.lovelace@example", True),
        ("UserName", "a b", False),
    ],
)
def test_the_bodies_of_sections_8_and_9_are_published(name, instance, valid):
    assert validator(name).is_valid(instance) is valid


def test_the_limits_and_names_are_the_ones_the_code_uses():
    assert schema.HISTORY_MAX == HISTORY_MAX
    assert schema.RUN_STATUSES == runs.RUN_STATUSES


def test_a_run_the_rules_make_is_a_published_run():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    queued = runs.request_run({**STORED}, now=now, lease=15)
    assert validator("Run").is_valid(queued["run"]), queued["run"]


def test_the_level_by_level_depth_walk_matches_a_recursive_one():
    def depth(value: Any) -> int:
        if isinstance(value, dict):
            return 1 + max(map(depth, value.values()), default=0)
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        return 0

    @settings(max_examples=300, deadline=None)
    @given(
        st.recursive(
            st.integers() | st.text(max_size=2),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
            max_leaves=40,
        ),
        st.integers(0, 6),
    )
    def agree(value: Any, limit: int) -> None:
        assert schema.depth_exceeds(value, limit) == (depth(value) > limit)

    agree()


# --- strict JSON: what every body (a client's, a step endpoint's answer) is parsed as ---------


def test_strict_json_reads_numbers_as_json_has_them():
    # One kind of number: 2.0 is the integer 2 (which an integer field takes), 1.5 stays 1.5.
    parsed = schema.loads(b'{"a": 2.0, "b": 1.5, "c": -0.0, "d": 1e2, "e": 7, "f": "\\ud800"}')
    assert parsed == {"a": 2, "b": 1.5, "c": 0, "d": 100, "e": 7, "f": "\ud800"}
    assert [type(value) for value in parsed.values()] == [int, float, int, int, int, str]


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}', "1e999", "[-1e400]"])
def test_strict_json_refuses_numbers_no_json_reader_can_read(text):
    with pytest.raises(schema.NumberNotJson):
        schema.loads(text)


@pytest.mark.parametrize("text", ["", "{", "[" * 100_000 + "]" * 100_000, b"\xff"])
def test_strict_json_refuses_what_is_not_json(text):
    with pytest.raises(ValueError):
        schema.loads(text)

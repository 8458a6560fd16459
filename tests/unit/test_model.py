"""The pure state model: no storage, no HTTP, no clock but the one passed in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service import model

NOW = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)


def state(**fields):
    base = model.new_state(
        {"workflow_id": "wf", "steps": [{"action": "a", "status": "pending"}] * 3, **fields},
        now=NOW,
        random_hex="ab12",
    )
    base["version"] = 1
    return base


def test_new_state_defaults_and_generated_id():
    fresh = model.new_state({"note": "x"}, now=NOW, random_hex="cafe")
    assert fresh == {
        "workflow_id": f"workflow_{int(NOW.timestamp() * 1000)}_cafe",
        "status": "running",
        "current_step": 0,
        "steps": [],
        "start_time": "2026-11-26T12:00:00.123Z",
        "note": "x",
        "last_update": "2026-11-26T12:00:00.123Z",
    }


@pytest.mark.parametrize(
    ("current", "total", "expected"),
    [(2, 5, 60.0), (2, 4, 75.0), (0, 3, 33.33), (0, 0, 0), (4, 5, 100.0)],
)
def test_progress_percent(current, total, expected):
    steps = [{"action": "a", "status": "pending"}] * total
    assert model.progress_percent({"current_step": current, "steps": steps}) == expected


def test_summary_of_nothing():
    assert model.summarize(None) == {"active": False, "workflow_id": None, "status": None}


def test_finished_is_final_but_an_exact_repeat_is_accepted():
    done = state(status="completed")
    repeat = model.new_state(
        {k: v for k, v in done.items() if k != "version"}, now=NOW, random_hex="x"
    )
    assert model.apply_save(done, repeat, repeat) is None
    with pytest.raises(model.WorkflowFinished):
        model.apply_save(done, {**repeat, "current_step": 2}, repeat)
    other = {**repeat, "workflow_id": "other"}
    assert model.apply_save(done, other, other) == other


def test_a_repeat_without_start_time_matches_the_stamped_one():
    done = state(status="failed")
    body = {"workflow_id": "wf", "status": "failed", "steps": done["steps"]}
    later = datetime(2027, 1, 1, tzinfo=UTC)
    assert model.apply_save(done, model.new_state(body, now=later, random_hex="x"), body) is None


def test_step_change_and_guards():
    current = state()
    change = model.parse_step_change({"status": "completed", "data": {"k": 1}, "workflow_id": "wf"})
    new = model.apply_step(current, 1, change, now=NOW)
    assert new["steps"][1] == {"action": "a", "status": "completed", "data": {"k": 1}}
    assert current["steps"][1] == {"action": "a", "status": "pending"}  # inputs are not mutated
    assert new["current_step"] == 1
    with pytest.raises(model.InvalidIndex):
        model.apply_step(current, 3, change, now=NOW)
    with pytest.raises(model.WorkflowMismatch):
        model.apply_step(current, 0, {**change, "guard": "other"}, now=NOW)
    with pytest.raises(model.NoWorkflow):
        model.apply_step(None, 0, change, now=NOW)


def test_if_match():
    current = state()
    model.check_if_match(current, None)
    model.check_if_match(current, frozenset({"1"}))
    model.check_if_match(current, frozenset({"*"}))
    with pytest.raises(model.PreconditionFailed):
        model.check_if_match(current, frozenset({"2"}))
    with pytest.raises(model.PreconditionFailed):
        model.check_if_match(None, frozenset({"*"}))


def test_newly_finished_only_once():
    running, done = state(), state(status="completed")
    assert model.newly_finished(running, done)
    assert model.newly_finished(None, done)
    assert not model.newly_finished(done, done)
    assert model.newly_finished(done, {**done, "workflow_id": "next"})
    assert not model.newly_finished(done, running)


@pytest.mark.parametrize("text", ["0", "12", "999"])
def test_step_index_parses_digits(text):
    assert model.parse_step_index(text) == int(text)


@pytest.mark.parametrize(
    "text", ["", "-1", "1.0", "abc", "١", "1e3", "1000", "999999999", "9999999999", " 1"]
)
def test_step_index_rejects_the_rest(text):
    with pytest.raises(model.InvalidIndex):
        model.parse_step_index(text)


def test_stored_documents_are_validated():
    good = state()
    assert model.parse_stored(__import__("json").dumps(good)) == good
    for bad in ["x", "[]", '{"status": "running"}', '{"a":' * 50 + "1" + "}" * 50]:
        with pytest.raises(ValueError):
            model.parse_stored(bad)
    without_version = {k: v for k, v in good.items() if k != "version"}
    with pytest.raises(ValueError):
        model.parse_stored(__import__("json").dumps(without_version))


def test_ttl_and_expiry_follow_the_status():
    assert model.ttl_seconds(state(), 30, 86400) == 86400
    assert model.ttl_seconds(state(status="cancelled"), 30, 86400) == 30
    assert model.expires_at(state(status="completed"), 30, 86400) == pytest.approx(
        NOW.timestamp() + 30, abs=0.001
    )

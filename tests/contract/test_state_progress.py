"""GET /workflow/state and the stream's `state` event carry the summary's progress_percent."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from tests.conftest import steps
from tests.support import STATE, STREAM


def first_state_event(client: FlaskClient) -> str:
    """Open the stream and return the data of its first `state` event (the snapshot)."""
    response = client.get(STREAM, buffered=False)
    try:
        text = ""
        for chunk in response.response:
            text += chunk.decode()
            for frame in text.split("\n\n")[:-1]:
                lines = frame.split("\n")
                if "event: state" in lines:
                    return "\n".join(
                        line[len("data: ") :] for line in lines if line.startswith("data: ")
                    )
        raise AssertionError(f"no state event in {text!r}")
    finally:
        response.close()


@pytest.mark.parametrize(
    ("current", "total"), [(0, 0), (0, 3), (1, 3), (2, 5), (3, 6), (0, 7), (5, 7), (32, 33)]
)
def test_the_state_body_carries_the_summarys_percent(client, current, total):
    client.post(STATE, json={"current_step": current, "steps": steps(total)})
    body = client.get(STATE).get_json()
    summary = client.get(f"{STATE}/summary").get_json()["summary"]
    assert body["progress_percent"] == summary["progress_percent"]
    assert type(body["progress_percent"]) is type(summary["progress_percent"])


@pytest.mark.parametrize(
    ("current", "total", "text"), [(0, 2, "50"), (1, 2, "100"), (0, 3, "33.33"), (0, 8, "12.5")]
)
def test_a_whole_percent_reads_the_same_in_every_json_reader(client, current, total, text):
    """`50`, never `50.0`: jq 1.6 prints 50.0 as 50 and jq 1.7 as 50.0; the CLI prints 50%."""
    client.post(STATE, json={"current_step": current, "steps": steps(total)})
    for path in (STATE, f"{STATE}/summary"):
        raw = client.get(path).get_data(as_text=True)
        assert f'"progress_percent":{text},' in raw.replace(" ", ""), raw


def test_no_state_has_percent_zero(client):
    assert client.get(STATE).get_json() == {
        "success": True,
        "active": False,
        "progress_percent": 0,
        "state": None,
    }


@pytest.mark.parametrize("stored", [None, {"current_step": 1, "steps": steps(3)}])
def test_the_stream_snapshot_is_the_get_body(client, stored):
    if stored is not None:
        client.post(STATE, json=stored)
    data = first_state_event(client)
    assert data == client.get(STATE).get_data(as_text=True)
    assert "progress_percent" in json.loads(data)

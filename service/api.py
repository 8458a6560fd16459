"""The state API under /workflow: parse the request, call the store, answer. Nothing more."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import model, schema
from .errors import json_response
from .identity import current_identity
from .storage import HISTORY_MAX, Snapshot, dumps
from .store import get_store

bp = Blueprint("api", __name__, url_prefix="/workflow")
SUMMARY_EXTENSION = "workflow_state_summary"
ANSWERS_EXTENSION = "workflow_state_answers"
JSON = "application/json"

SAVED = "Workflow state saved"
CLEARED = "Workflow state cleared"
NO_STORE = "no-store"
NOT_STORED = (("Cache-Control", NO_STORE),)


def read_json() -> Any:
    """Return the request body parsed as strict JSON, or raise StateRequired."""
    data = request.get_data(cache=False)
    limit = request.max_content_length
    # A chunked body is cut at the limit without an error; anything left means too large.
    chunked = request.content_length is None
    if (
        chunked
        and limit is not None
        and len(data) >= limit
        and request.environ["wsgi.input"].read(1)
    ):
        raise RequestEntityTooLarge()
    if not data.strip():
        raise model.StateRequired("State data is required: the request body is empty")
    try:
        return schema.loads(data)
    except ValueError:
        raise model.StateRequired("State data is required: the body is not valid JSON") from None


def if_match() -> frozenset[str] | None:
    """Return the If-Match versions ("*" included), or None when the header is absent.

    An empty If-Match names no version at all: it is taken as absent, not as one no state has.
    """
    if not (request.headers.get("If-Match") or "").strip():
        return None
    tags = request.if_match
    if tags.star_tag:
        return frozenset({"*"})
    return frozenset(tags.as_set(include_weak=True))


def state_body(state: dict[str, Any] | None, state_json: str) -> str:
    """Serialise the GET /workflow/state body, which is also the stream's `state` data."""
    active = "true" if model.is_active(state) else "false"
    # The summary's value, so no client re-implements Python's rounding.
    percent = 0 if state is None else model.progress_percent(state)
    return (
        f'{{"success":true,"active":{active},"progress_percent":{json.dumps(percent)},'
        f'"state":{state_json}}}'
    )


def saved(
    snapshot: Snapshot,
    status: int = 200,
    message: str = SAVED,
    headers: dict[str, str] | None = None,
) -> Response:
    """Answer a write with the state as stored, its version as ETag."""
    return json_response(
        f'{{"success":true,"message":"{message}","state":{snapshot.json}}}',
        status,
        {"ETag": f'"{snapshot.version}"', "Cache-Control": NO_STORE, **(headers or {})},
    )


# The ETag of "no state". Every such answer has the same body, and no state has version 0. An
# expired state's version would be wrong here: a client holding that state would get a 304.
NO_STATE_ETAG = "0"


class Answers:
    """The GET answers an app made lately: each state's body and headers, by its stored JSON.

    Between two writes every GET of a state answers the same bytes, and making them again
    (flags, percent, ETag, werkzeug's checks of each header) was a third of the route. The key
    is the stored JSON itself, which holds the version, and the entry keeps the ETag it was made
    with: an answer is never served for any other version than the one just read.
    """

    SIZE = 512  # about 1.5 KB each for the reference workflow; past it, start afresh

    def __init__(self) -> None:
        self._made: dict[str, tuple[str, bytes, tuple[tuple[str, str], ...]]] = {}

    def answer(self, snapshot: Snapshot, etag: str) -> tuple[bytes, tuple[tuple[str, str], ...]]:
        """Return the body and headers of a GET of `snapshot` with `etag`."""
        made = self._made.get(snapshot.json)
        if made is not None and made[0] == etag:
            return made[1], made[2]
        body = state_body(snapshot.state, snapshot.json).encode()
        headers = (*NOT_STORED, ("ETag", f'"{etag}"'))
        if len(self._made) >= self.SIZE:
            self._made = {}  # another thread may still hold the old one: it stays whole
        self._made[snapshot.json] = (etag, body, headers)
        return body, headers


def state_answer(snapshot: Snapshot, etag: str) -> Response:
    """Answer a GET of a state: its body with `etag`, or 304 when If-None-Match names it."""
    body, headers = current_app.extensions[ANSWERS_EXTENSION].answer(snapshot, etag)
    # Parsed only when sent: most GETs carry no If-None-Match.
    if "HTTP_IF_NONE_MATCH" in request.environ and request.if_none_match.contains_weak(etag):
        return Response(status=304, headers=headers)
    return ready_response(body, headers)


def ready_response(body: bytes, headers: tuple[tuple[str, str], ...]) -> Response:
    """Answer 200 with a JSON body and headers that are already valid text."""
    response = Response(body, mimetype=JSON)
    # werkzeug's Headers would check and copy each pair again, on every request.
    response.headers._list.extend(headers)  # type: ignore[attr-defined]
    return response


def query_number(name: str, default: int, maximum: int) -> int:
    """Return the whole-number query parameter `name` from 1 to `maximum`, or raise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 or not 1 <= int(raw) <= maximum:
        raise model.InvalidState(name, f"must be a whole number from 1 to {maximum}")
    return int(raw)


@bp.get("/state")
def get_state() -> Response:
    """Answer the current state, with its version as ETag ("0" when there is none)."""
    snapshot = get_store().get(current_identity().owner)
    return state_answer(
        snapshot, NO_STATE_ETAG if snapshot.state is None else str(snapshot.version)
    )


@bp.post("/state")
def save_state() -> Response:
    """Save or replace the whole state."""
    return saved(get_store().save(current_identity().owner, read_json(), if_match=if_match()))


@bp.patch("/state")
def merge_state() -> Response:
    """Replace top-level fields of the stored state."""
    owner = current_identity().owner
    return saved(get_store().merge(owner, None, read_json(), if_match=if_match()))


@bp.patch("/state/steps/<index>")
def update_step(index: str) -> Response:
    """Update one step's status (and data) atomically."""
    position = model.parse_step_index(index)
    owner = current_identity().owner
    return saved(get_store().update_step(owner, None, position, read_json(), if_match=if_match()))


@bp.delete("/state")
def clear_state() -> Response:
    """Delete the state; succeeds also when there was none."""
    get_store().delete(current_identity().owner, None)
    return json_response(f'{{"success":true,"message":"{CLEARED}"}}')


class SummaryCache:
    """The last summary an app served, with the stored JSON it was made from.

    Between writes every summary is the same, and re-deriving it was most of the route's cost.
    """

    def __init__(self) -> None:
        self._last: tuple[str, bytes] = ("", b"")

    def body(self, snapshot: Snapshot) -> bytes:
        """Return the summary body for `snapshot`, derived at most once per stored state."""
        last = self._last  # one read: another thread may replace it meanwhile
        if last[0] == snapshot.json:
            return last[1]
        body = dumps({"success": True, "summary": model.summarize(snapshot.state)}).encode()
        self._last = (snapshot.json, body)
        return body


@bp.get("/state/summary")
def summary() -> Response:
    """Answer the progress summary."""
    store = get_store()
    body = current_app.extensions[SUMMARY_EXTENSION].body(store.get(current_identity().owner))
    return ready_response(body, NOT_STORED)


@bp.get("/history")
def history() -> Response:
    """Answer the last finished workflows, newest first."""
    limit = query_number("limit", HISTORY_MAX, HISTORY_MAX)
    workflows = get_store().history(current_identity().owner, limit)
    return json_response(
        dumps({"success": True, "workflows": workflows}), headers={"Cache-Control": NO_STORE}
    )


def init_app(app: Flask) -> None:
    """Register the state routes, with summary and answer caches of this app's own."""
    app.extensions[SUMMARY_EXTENSION] = SummaryCache()
    app.extensions[ANSWERS_EXTENSION] = Answers()
    app.register_blueprint(bp)

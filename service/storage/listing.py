"""Listing an owner's workflows: the order, the status filter, list entries and cursors.

A list is ordered by `last_update` (ms) descending, ties by workflow id descending: the order of
a Redis sorted set read with ZREVRANGEBYSCORE, and of `position()` sorted in reverse. A cursor
names the last entry of a page (its position) and is bound to the owner and the filter by a
checksum, so a cursor that was not issued, or was issued for another list, is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import model

STATUSES = ("running", "finished", "all")
LIMIT_MAX = 100
LIMIT_DEFAULT = 50
# A cursor is a few dozen characters; anything much longer was not issued here.
CURSOR_MAX_LENGTH = 512
_CHECK_BYTES = 8

Position = tuple[int, str]  # (last_update in ms, workflow id)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: its entries and the cursor of the next page (None on the last)."""

    entries: list[dict[str, Any]]
    next_cursor: str | None


def check_status(status: Any) -> str:
    """Return a list filter (running, finished or all), or raise InvalidState naming `status`."""
    if status not in STATUSES:
        raise model.InvalidState("status", "must be one of " + ", ".join(STATUSES))
    return status


def check_limit(limit: Any) -> int:
    """Return a page size from 1 to 100, or raise InvalidState naming `limit`."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= LIMIT_MAX:
        raise model.InvalidState("limit", f"must be a whole number from 1 to {LIMIT_MAX}")
    return limit


def matches(state: Mapping[str, Any], status: str) -> bool:
    """Tell whether a state belongs in a list filtered by `status`."""
    if status == "all":
        return True
    return model.is_finished(state) == (status == "finished")


def score(state: Mapping[str, Any]) -> int:
    """Return the sort score of a state: its last_update in unix milliseconds."""
    return int(model.parse_time(state["last_update"]).timestamp() * 1000)


class ListEntry(dict):
    """A list entry, with its JSON as it was made (`json`: valid until the entry is changed)."""

    json: str


# id(state) -> (the state, its entry). A stored state is never mutated once read (states are
# shared), and the state is kept beside its entry so its id cannot be reused meanwhile: a page
# of 50 then summarises and serialises only the states that changed since the last page.
_ENTRIES: dict[int, tuple[Mapping[str, Any], ListEntry]] = {}
ENTRIES_KEPT = 2048


def list_entry(state: Mapping[str, Any]) -> ListEntry:
    """Return a workflow as a list shows it: its summary and its version (a dict of its own)."""
    kept = _ENTRIES.get(id(state))
    if kept is None or kept[0] is not state:
        made = ListEntry(model.summarize(state), version=state["version"])
        made.json = json.dumps(made, separators=(",", ":"))
        if len(_ENTRIES) >= ENTRIES_KEPT:
            _ENTRIES.clear()
        kept = _ENTRIES[id(state)] = (state, made)
    entry = ListEntry(kept[1])
    entry.json = kept[1].json
    return entry


def page_json(entries: list[dict[str, Any]]) -> str:
    """Serialise a page's entries as a JSON array, each ListEntry as it was made."""
    return (
        "["
        + ",".join(
            entry.json if type(entry) is ListEntry else json.dumps(entry, separators=(",", ":"))
            for entry in entries
        )
        + "]"
    )


def _check(owner: str, status: str, position: Position) -> str:
    text = f"{owner}\0{status}\0{position[0]}\0{position[1]}".encode()
    return hashlib.sha256(text).hexdigest()[: 2 * _CHECK_BYTES]


def _pack(fields: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


NOT_ISSUED = "The cursor is not one this service issued for this list; start again without a cursor"


def _unpack(cursor: Any, size: int) -> list[Any]:
    """Return a cursor's fields, or raise InvalidCursor when it cannot be one of ours."""
    refused = model.InvalidCursor(NOT_ISSUED)
    if not isinstance(cursor, str) or not 0 < len(cursor) <= CURSOR_MAX_LENGTH:
        raise refused
    try:
        fields = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise refused from None
    if (
        not isinstance(fields, list)
        or len(fields) != size
        or not isinstance(fields[0], int)
        or isinstance(fields[0], bool)
        or not all(isinstance(field, str) for field in fields[1:])
    ):
        raise refused
    return fields


def encode_cursor(owner: str, status: str, position: Position) -> str:
    """Return the opaque cursor of the page that follows `position` in this owner's list."""
    return _pack([position[0], position[1], _check(owner, status, position)])


def decode_cursor(cursor: str | None, owner: str, status: str) -> Position | None:
    """Return the position a cursor names, or raise InvalidCursor for one not issued here."""
    if cursor is None:
        return None
    when, workflow_id, _ = _unpack(cursor, 3)
    # Issued here means: it is exactly what encoding its position for this list gives.
    if encode_cursor(owner, status, (when, workflow_id)) != cursor:
        raise model.InvalidCursor(NOT_ISSUED)
    return when, workflow_id


# An admin's list of every owner (`?owner=*`) orders by (last_update, owner, id), descending.
EVERY_OWNER = "*"
EveryPosition = tuple[int, str, str]  # (last_update in ms, owner, workflow id)


def encode_every_cursor(status: str, position: EveryPosition) -> str:
    """Return the cursor of the page after `position` in the list of every owner's workflows."""
    when, owner, workflow_id = position
    return _pack(
        [when, owner, workflow_id, _check(EVERY_OWNER, status, (when, f"{owner}\0{workflow_id}"))]
    )


def decode_every_cursor(cursor: str | None, status: str) -> EveryPosition | None:
    """Return the position an every-owner cursor names, or raise InvalidCursor."""
    if cursor is None:
        return None
    when, owner, workflow_id, _ = _unpack(cursor, 4)
    if encode_every_cursor(status, (when, owner, workflow_id)) != cursor:
        raise model.InvalidCursor(NOT_ISSUED)
    return when, owner, workflow_id


def owner_position(cursor: EveryPosition | None, owner: str) -> Position | None:
    """Return the position in `owner`'s own list where an every-owner page continues."""
    if cursor is None:
        return None
    when, cursor_owner, workflow_id = cursor
    if owner < cursor_owner:
        return when + 1, ""  # its entries at `when` come after the cursor's
    if owner == cursor_owner:
        return when, workflow_id
    return when, ""  # its entries at `when` came before the cursor's


def after(position: Position, cursor: Position | None) -> bool:
    """Tell whether an entry at `position` comes after `cursor` in list order."""
    return cursor is None or position < cursor

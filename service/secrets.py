"""Encrypt secret state fields at rest with Fernet keys that rotate by prepending."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .model import ENCRYPTED_MARK, is_encrypted

log = logging.getLogger(__name__)

# Fields whose values never reach storage (or a log line) in clear text.
SECRET_FIELDS = ("ssh_connection",)


class FieldCipher:
    """Seal secret fields before a state is stored and open them after it is read."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("WORKFLOW_STATE_SECRET_KEY is empty")
        try:
            # MultiFernet encrypts with the first key and decrypts with any: rotation by prepending.
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except (ValueError, TypeError):
            raise ValueError(
                "WORKFLOW_STATE_SECRET_KEY must be comma-separated Fernet keys "
                "(32 url-safe base64-encoded bytes each)"
            ) from None

    def seal(self, state: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of `state` with each secret field replaced by {"$encrypted": token}."""
        sealed = state
        for field in SECRET_FIELDS:
            value = state.get(field)
            if isinstance(value, str):
                if sealed is state:
                    sealed = dict(state)
                token = self._fernet.encrypt(value.encode()).decode()
                sealed[field] = {ENCRYPTED_MARK: token}
        return sealed

    def encrypt(self, text: str) -> str:
        """Return a token sealing `text` with the first key."""
        return self._fernet.encrypt(text.encode()).decode()

    def decrypt(self, token: str) -> str | None:
        """Return a sealed value's text, or None when no configured key opens it."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            return None


def open_fields(state: dict[str, Any], cipher: FieldCipher | None) -> dict[str, Any]:
    """Decrypt sealed fields with `cipher`; a field no key opens is answered as None and logged."""
    opened = state
    for field in SECRET_FIELDS:
        value = state.get(field)
        if not is_encrypted(value):
            continue
        if opened is state:
            opened = dict(state)
        opened[field] = cipher.decrypt(value[ENCRYPTED_MARK]) if cipher is not None else None
        if opened[field] is None:
            log.warning(
                "stored field %s of workflow %s cannot be decrypted with any configured key; "
                "answering null",
                field,
                state.get("workflow_id"),
            )
    return opened


def keep_unopened(sealed: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Carry over a stored sealed field that no key could open and the write left as null.

    A write starts from the opened state, where such a field reads as None. Storing that None
    would destroy the secret for good, e.g. when one instance runs with a wrong key list, so
    the sealed value is kept as it was until a key that opens it is configured again.
    """
    if previous is None:
        return sealed
    kept = sealed
    for field in SECRET_FIELDS:
        if field in sealed and sealed[field] is None and is_encrypted(previous.get(field)):
            if kept is sealed:
                kept = dict(sealed)
            kept[field] = previous[field]
    return kept


def needs_opening(state: dict[str, Any]) -> bool:
    """Tell whether a stored state carries any sealed field."""
    return any(is_encrypted(state.get(field)) for field in SECRET_FIELDS)

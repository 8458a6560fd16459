"""Identity helpers: tokens files as operators write them, and a route that echoes who is asking."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from flask import Blueprint, jsonify

from service.config import SETTINGS
from service.identity import current_identity

# The settings service/identity.py reads, by environment variable.
IDENTITY_SETTINGS = (
    "WORKFLOW_STATE_TOKEN",
    "WORKFLOW_STATE_TOKENS_FILE",
    "WORKFLOW_STATE_USER_HEADER",
    "WORKFLOW_STATE_TRUSTED_PROXIES",
    "WORKFLOW_STATE_ADMINS",
)
# Where the echo blueprint answers: under both protected prefixes, and on an open path.
WHOAMI = "/workflow/_whoami"
WHOAMI_LIST = "/workflows/_whoami"
WHOAMI_OPEN = "/_whoami"


def sha256_hex(token: str) -> str:
    """Return what `printf %s "$TOKEN" | sha256sum` prints for `token` (without the ` -`)."""
    return hashlib.sha256(token.encode()).hexdigest()


def write_tokens(path: Path, users: dict[str, tuple[str, bool]]) -> Path:
    """Write a tokens file of {user: (token, admin)} atomically, as an operator's script would."""
    entries = {user: {"token_sha256": sha256_hex(t), "admin": a} for user, (t, a) in users.items()}
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(json.dumps(entries))
    os.replace(fresh, path)
    return path


def identity_config(**environ: str) -> dict[str, object]:
    """Return the app config the identity environment variables give, parsed by config.py."""
    config = {}
    for setting in SETTINGS:
        if setting.env in IDENTITY_SETTINGS:
            raw = environ.get(setting.env)
            config[setting.key] = (
                setting.default if raw is None else setting.parse(setting.env, raw)
            )
    return config


def whoami_blueprint() -> Blueprint:
    """A test-only blueprint echoing current_identity() (the list route allows `owner=*`)."""
    bp = Blueprint("whoami", __name__)

    @bp.get(WHOAMI)
    @bp.get(WHOAMI_OPEN)
    def whoami():
        return jsonify(dataclasses.asdict(current_identity()))

    @bp.get(WHOAMI_LIST)
    def whoami_list():
        return jsonify(dataclasses.asdict(current_identity(allow_all_owners=True)))

    return bp

"""Read the service's configuration from the environment, in one place.

Every setting has a default here, an environment variable that overrides it, and a row in
README's config table. `create_app(test_config)` applies the test override on top.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def _number(convert: Callable[[str], Any], *, minimum: float, strict: bool) -> Callable:
    """Build a parser for a number that must be above (or at least) `minimum`."""
    noun = "a whole number" if convert is int else "a number"
    bound = f"greater than {minimum:g}" if strict else f"{minimum:g} or more"

    def parse(name: str, raw: str) -> Any:
        try:
            value = convert(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {noun}, got {raw!r}") from None
        # `not value >= minimum` also catches NaN.
        if not value >= minimum or (strict and value == minimum):
            raise ConfigError(f"{name} must be {bound}, got {raw!r}")
        return value

    return parse


_positive_int = _number(int, minimum=0, strict=True)
_non_negative_int = _number(int, minimum=0, strict=False)
_positive_float = _number(float, minimum=0, strict=True)
_non_negative_float = _number(float, minimum=0, strict=False)


def _text(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _csv(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# Letters, digits and dashes: WSGI turns "-" into "_", so a name with "_" would be ambiguous.
HEADER_NAME_RE = re.compile(r"[A-Za-z0-9-]{1,64}\Z")


def _header_name(name: str, raw: str) -> str:
    value = raw.strip()
    if not HEADER_NAME_RE.match(value) or value.lower() == "authorization":
        raise ConfigError(
            f"{name} must be a header name of letters, digits and '-' (not Authorization), "
            f"got {raw!r}"
        )
    return value


def _networks(name: str, raw: str) -> tuple[Any, ...]:
    from .identity import parse_networks

    return parse_networks(name, _csv(name, raw))


def _user_names(name: str, raw: str) -> tuple[str, ...]:
    from .identity import USER_NAME_RULE, is_user_name

    names = _csv(name, raw)
    for user in names:
        if not is_user_name(user):
            raise ConfigError(f"{name}: {user!r} is not a valid user name ({USER_NAME_RULE})")
    return names


def _base_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"{name} must be an http(s) URL such as http://127.0.0.1:8000, got {raw!r}"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"{name} has a bad port, got {raw!r}") from None
    return value


def _log_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("text", "json"):
        raise ConfigError(f"{name} must be 'text' or 'json', got {raw!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One environment variable: the config key it fills, its default and its parser."""

    env: str
    key: str
    default: Any
    parse: Callable[[str, str], Any]


# The one list of settings. README's config table mirrors it; tests check they agree.
SETTINGS: tuple[Setting, ...] = (
    Setting("WORKFLOW_STATE_URL", "STATE_URL", None, _text),
    Setting("WORKFLOW_STATE_KEY", "STATE_KEY", "workflow:state", _text),
    Setting("WORKFLOW_STATE_TTL", "STATE_TTL", 30, _positive_int),
    Setting("WORKFLOW_STATE_STALE_TTL", "STATE_STALE_TTL", 86400, _positive_int),
    Setting("WORKFLOW_STATE_CORS_ORIGINS", "CORS_ORIGINS", ("*",), _csv),
    Setting("WORKFLOW_STATE_MAX_BODY", "MAX_CONTENT_LENGTH", 262144, _positive_int),
    Setting("WORKFLOW_STATE_TOKEN", "STATE_TOKEN", None, _text),
    Setting("WORKFLOW_STATE_TOKENS_FILE", "STATE_TOKENS_FILE", None, _text),
    Setting("WORKFLOW_STATE_USER_HEADER", "USER_HEADER", None, _header_name),
    Setting("WORKFLOW_STATE_TRUSTED_PROXIES", "TRUSTED_PROXIES", (), _networks),
    Setting("WORKFLOW_STATE_ADMINS", "ADMINS", (), _user_names),
    Setting("WORKFLOW_STATE_SECRET_KEY", "STATE_SECRET_KEYS", (), _csv),
    Setting("WORKFLOW_STATE_LOG_FORMAT", "LOG_FORMAT", "text", _log_format),
    Setting("WORKFLOW_STATE_LOCK_TIMEOUT", "LOCK_TIMEOUT", 5.0, _positive_float),
    Setting("WORKFLOW_STATE_LOCK_WAIT", "LOCK_WAIT", 1.0, _positive_float),
    Setting("WORKFLOW_STATE_IO_TIMEOUT", "IO_TIMEOUT", 0.5, _positive_float),
    Setting("WORKFLOW_STREAM_KEEPALIVE", "STREAM_KEEPALIVE", 10.0, _positive_float),
    Setting("WORKFLOW_STEPS_FILE", "STEPS_FILE", None, _text),
    Setting("WORKFLOW_DEMO_STEP_SECONDS", "DEMO_STEP_SECONDS", 2.0, _non_negative_float),
    Setting("WORKFLOW_DEMO_FAIL", "DEMO_FAIL", None, _text),
    Setting("WORKFLOW_STEP_DELAY_MS", "STEP_DELAY_MS", 250, _non_negative_int),
    Setting("WORKFLOW_STEP_TIMEOUT", "STEP_TIMEOUT", 600.0, _positive_float),
    Setting("WORKFLOW_RUN_LEASE", "RUN_LEASE", 15.0, _positive_float),
    Setting("WORKFLOW_SELF_URL", "SELF_URL", None, _base_url),
)


def default_state_url(environ: Mapping[str, str], cwd: str) -> str:
    """Return the storage URL used when WORKFLOW_STATE_URL is unset: REDIS_URL, else a file."""
    redis_url = environ.get("REDIS_URL", "").strip()
    if redis_url:
        return redis_url
    return "file://" + os.path.join(cwd, "var", "workflow_state.json")


def default_self_url(environ: Mapping[str, str]) -> str:
    """Return where a runner reaches this service when WORKFLOW_SELF_URL is unset.

    gunicorn binds 0.0.0.0:$PORT or 127.0.0.1:8000 (deploy/gunicorn.conf.py), and loopback
    reaches either, so a worker on the web server's host needs no setting.
    """
    port = environ.get("PORT", "").strip() or "8000"
    return f"http://127.0.0.1:{port}"


def from_env(environ: Mapping[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Build the config dict: defaults, overridden by whatever the environment sets."""
    environ = os.environ if environ is None else environ
    config = {setting.key: setting.default for setting in SETTINGS}
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is not None and raw.strip() != "":
            config[setting.key] = setting.parse(setting.env, raw)
    if not config["STATE_URL"]:
        config["STATE_URL"] = default_state_url(environ, cwd or os.getcwd())
    if not config["SELF_URL"]:
        config["SELF_URL"] = default_self_url(environ)
    return config


def check_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """Return a one-line description of what is wrong with the environment, or None."""
    from .identity import Authenticator
    from .pages import load_steps
    from .store import build_store

    try:
        config = from_env(environ)
        Authenticator(config)
        build_store(config).close()
        load_steps(config["STEPS_FILE"])
    except ValueError as error:  # ConfigError, UnknownBackend and bad keys are ValueErrors
        return str(error)
    return None

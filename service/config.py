"""Read the service's configuration from the environment, in one place.

Every setting has a default here, an environment variable that overrides it, and a row in
README's config table. `create_app(test_config)` applies the test override on top.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


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
    Setting("WORKFLOW_STATE_SECRET_KEY", "STATE_SECRET_KEYS", (), _csv),
    Setting("WORKFLOW_STATE_LOG_FORMAT", "LOG_FORMAT", "text", _log_format),
    Setting("WORKFLOW_STATE_LOCK_TIMEOUT", "LOCK_TIMEOUT", 5.0, _positive_float),
    Setting("WORKFLOW_STATE_LOCK_WAIT", "LOCK_WAIT", 1.0, _positive_float),
    Setting("WORKFLOW_STATE_IO_TIMEOUT", "IO_TIMEOUT", 0.5, _positive_float),
    Setting("WORKFLOW_STATE_MIN_REPLICAS", "MIN_REPLICAS", 0, _non_negative_int),
    Setting("WORKFLOW_STREAM_KEEPALIVE", "STREAM_KEEPALIVE", 10.0, _positive_float),
    Setting("WORKFLOW_STEPS_FILE", "STEPS_FILE", None, _text),
    Setting("WORKFLOW_DEMO_STEP_SECONDS", "DEMO_STEP_SECONDS", 2.0, _non_negative_float),
    Setting("WORKFLOW_DEMO_FAIL", "DEMO_FAIL", None, _text),
    Setting("WORKFLOW_STEP_DELAY_MS", "STEP_DELAY_MS", 250, _non_negative_int),
)


def default_state_url(environ: Mapping[str, str], cwd: str) -> str:
    """Return the storage URL used when WORKFLOW_STATE_URL is unset: REDIS_URL, else a file."""
    redis_url = environ.get("REDIS_URL", "").strip()
    if redis_url:
        return redis_url
    return "file://" + os.path.join(cwd, "var", "workflow_state.json")


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
    return config


def check_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """Return a one-line description of what is wrong with the environment, or None."""
    from .pages import load_steps
    from .store import build_store

    try:
        config = from_env(environ)
        build_store(config).close()
        load_steps(config["STEPS_FILE"])
    except ValueError as error:  # ConfigError, UnknownBackend and bad keys are ValueErrors
        return str(error)
    return None

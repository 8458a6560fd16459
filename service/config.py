"""Read the service's configuration from the environment, in one place.

Every setting has a default here, an environment variable that overrides it, and a row in
README's config table. `create_app(test_config)` applies the test override on top. This is the
only module that reads `os.environ`; everything else gets its settings from here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from . import model


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


# A user name names a directory on the file backend too, hence no "/" and never "." or "..".
USER_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")
USER_NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ . @ -, and not . or .."

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_user_name(name: str) -> bool:
    """Tell whether `name` may name a user (and so an owner)."""
    return USER_NAME_RE.match(name) is not None and name not in (".", "..")


def parse_networks(name: str, parts: Iterable[str | Network]) -> tuple[Network, ...]:
    """Parse addresses and CIDR networks (`10.0.0.0/8`, `::1`); raise ConfigError naming `name`."""
    networks = []
    for part in parts:
        try:
            # strict: `10.0.0.1/8` (host bits set) is more likely a typo than a wish.
            networks.append(ipaddress.ip_network(part))
        except ValueError as error:
            raise ConfigError(
                f"{name} must be comma-separated addresses or CIDR networks, got {part!r}: {error}"
            ) from None
    return tuple(networks)


def _networks(name: str, raw: str) -> tuple[Network, ...]:
    return parse_networks(name, _csv(name, raw))


def _user_names(name: str, raw: str) -> tuple[str, ...]:
    names = _csv(name, raw)
    for user in names:
        if not is_user_name(user):
            raise ConfigError(f"{name}: {user!r} is not a valid user name ({USER_NAME_RULE})")
    return names


def _key_prefix(name: str, raw: str) -> str:
    # Braces would move an owner's keys out of the hash slot their {<owner>} tag picks.
    value = raw.strip()
    if any(char in value for char in "{} \t\r\n"):
        raise ConfigError(f"{name} must not contain braces or white space, got {raw!r}")
    return value


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


def origin(url: str) -> str:
    """Return a URL's origin as `scheme://host:port` (lower case, port always written).

    Raises ValueError for anything but an http(s) URL with a host.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower()
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _origins(name: str, raw: str) -> tuple[str, ...]:
    found = []
    for part in _csv(name, raw):
        parts = urlsplit(part)
        try:
            if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
                raise ValueError("an origin has no path, query or user")
            found.append(origin(part))
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated origins such as https://ops.example.com:8443, "
                f"got {part!r}"
            ) from None
    return tuple(found)


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
    Setting("WORKFLOW_STATE_PREFIX", "STATE_PREFIX", "workflow", _key_prefix),
    Setting("WORKFLOW_STATE_MAX_WORKFLOWS", "MAX_WORKFLOWS", 1000, _positive_int),
    # Bytes of stored JSON: one workflow's, and one owner's unexpired workflows together (0: no
    # limit).
    Setting("WORKFLOW_STATE_MAX_WORKFLOW_BYTES", "MAX_WORKFLOW_BYTES", 1 << 20, _non_negative_int),
    Setting("WORKFLOW_STATE_MAX_OWNER_BYTES", "MAX_OWNER_BYTES", 64 << 20, _non_negative_int),
    Setting("WORKFLOW_STATE_TTL", "STATE_TTL", 30, _positive_int),
    Setting("WORKFLOW_STATE_STALE_TTL", "STATE_STALE_TTL", 86400, _positive_int),
    Setting("WORKFLOW_STATE_FAILED_TTL", "STATE_FAILED_TTL", 86400, _positive_int),
    Setting("WORKFLOW_STATE_CORS_ORIGINS", "CORS_ORIGINS", ("*",), _csv),
    Setting("WORKFLOW_STATE_MAX_BODY", "MAX_CONTENT_LENGTH", 262144, _positive_int),
    Setting("WORKFLOW_STATE_BODY_TIMEOUT", "BODY_TIMEOUT", 10.0, _positive_float),
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
    Setting("WORKFLOW_STATE_MIN_REPLICAS", "MIN_REPLICAS", 0, _non_negative_int),
    Setting("WORKFLOW_STREAM_KEEPALIVE", "STREAM_KEEPALIVE", 10.0, _positive_float),
    Setting("WORKFLOW_STEPS_FILE", "STEPS_FILE", None, _text),
    Setting("WORKFLOW_DEMO_STEP_SECONDS", "DEMO_STEP_SECONDS", 2.0, _non_negative_float),
    Setting("WORKFLOW_DEMO_FAIL", "DEMO_FAIL", None, _text),
    Setting("WORKFLOW_STEP_DELAY_MS", "STEP_DELAY_MS", 250, _non_negative_int),
    Setting("WORKFLOW_STEP_TIMEOUT", "STEP_TIMEOUT", 600.0, _positive_float),
    Setting("WORKFLOW_RUN_LEASE", "RUN_LEASE", 15.0, _positive_float),
    Setting("WORKFLOW_SELF_URL", "SELF_URL", None, _base_url),
    Setting("WORKFLOW_STEP_ORIGINS", "STEP_ORIGINS", (), _origins),
    Setting("WORKFLOW_QUEUE_URL", "QUEUE_URL", None, _text),
    Setting("WORKFLOW_RUN_WORKERS", "RUN_WORKERS", 1, _positive_int),
    Setting("WORKFLOW_RUNS_PER_OWNER", "RUNS_PER_OWNER", 0, _non_negative_int),
    # Set by deploy/gunicorn.conf.py, not by hand: prometheus_client's multiprocess directory
    # (it reads the variable itself too, when first imported) and each worker's connections.
    Setting("PROMETHEUS_MULTIPROC_DIR", "METRICS_DIR", None, _text),
    Setting("WORKFLOW_WORKER_CAPACITY", "WORKER_CAPACITY", 0, _non_negative_int),
)
DEFAULTS: dict[str, Any] = {setting.key: setting.default for setting in SETTINGS}


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


def from_env(
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Build the config dict: defaults, overridden by the environment, then by `overrides`.

    `overrides` are values of the same variables given another way (a CLI option), parsed by
    the same rules.
    """
    environ = os.environ if environ is None else environ
    if overrides:
        environ = {**environ, **overrides}
    config = dict(DEFAULTS)
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is not None and raw.strip() != "":
            config[setting.key] = setting.parse(setting.env, raw)
    if not config["STATE_URL"]:
        config["STATE_URL"] = default_state_url(environ, cwd or os.getcwd())
    if not config["SELF_URL"]:
        config["SELF_URL"] = default_self_url(environ)
    return config


def _option(key: str) -> Any:
    """Declare a StoreOptions field filled from config key `key`, with that setting's default."""
    return field(default=DEFAULTS[key], metadata={"config_key": key})


@dataclass(frozen=True)
class StoreOptions:
    """What a state store needs besides its URL; each default is its setting's default."""

    key: str = _option("STATE_KEY")
    prefix: str = _option("STATE_PREFIX")
    max_workflows: int = _option("MAX_WORKFLOWS")
    max_workflow_bytes: int = _option("MAX_WORKFLOW_BYTES")
    max_owner_bytes: int = _option("MAX_OWNER_BYTES")
    ttl: int = _option("STATE_TTL")
    stale_ttl: int = _option("STATE_STALE_TTL")
    failed_ttl: int = _option("STATE_FAILED_TTL")
    lock_timeout: float = _option("LOCK_TIMEOUT")
    lock_wait: float = _option("LOCK_WAIT")
    io_timeout: float = _option("IO_TIMEOUT")
    min_replicas: int = _option("MIN_REPLICAS")
    secret_keys: tuple[str, ...] = _option("STATE_SECRET_KEYS")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StoreOptions:
        """Pick the store's options out of a config dict (from_env's, or an app's)."""
        return cls(**{f.name: config[f.metadata["config_key"]] for f in fields(cls)})


# The reference workflow: setting up a VastAI GPU instance.
DEFAULT_STEPS: tuple[dict[str, str], ...] = (
    {"action": "test_ssh", "label": "Test SSH"},
    {"action": "set_ui_home", "label": "Set UI Home"},
    {"action": "setup_civitdl", "label": "Set up CivitDL"},
    {"action": "sync_instance", "label": "Sync Instance"},
    {"action": "install_custom_nodes", "label": "Install Custom Nodes"},
    {"action": "verify_dependencies", "label": "Verify Dependencies"},
)


def load_steps(path: str | None) -> list[dict[str, str]]:
    """Read and check the WORKFLOW_STEPS_FILE list, or return the built-in VastAI steps."""
    if not path:
        return [dict(step) for step in DEFAULT_STEPS]
    try:
        with open(path, encoding="utf-8") as handle:
            steps = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError(f"WORKFLOW_STEPS_FILE {path!r} cannot be read as JSON: {error}") from None
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"WORKFLOW_STEPS_FILE {path!r} must hold a non-empty JSON list")
    checked = []
    for position, step in enumerate(steps):
        where = f"WORKFLOW_STEPS_FILE {path!r}, step {position}"
        if not isinstance(step, dict):
            raise ConfigError(f"{where}: must be an object")
        action, label = step.get("action"), step.get("label", step.get("action"))
        if not isinstance(action, str) or not model.WORKFLOW_ID_RE.match(action):
            raise ConfigError(f"{where}: 'action' must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"{where}: 'label' must be a non-empty string")
        entry = {"action": action, "label": label}
        endpoint = step.get("endpoint")
        if endpoint is not None:
            if not isinstance(endpoint, str) or not re.match(r"(/|https?://)\S*\Z", endpoint):
                raise ConfigError(f"{where}: 'endpoint' must be a path or an http(s) URL")
            entry["endpoint"] = endpoint
        checked.append(entry)
    return checked

"""Who is asking: the user behind each request, and the owner whose workflows it acts on.

The identity settings (service/config.py) give three ways to know the user:

- none of them set: everyone is `public`, one shared namespace, as in the seed;
- bearer tokens: the shared WORKFLOW_STATE_TOKEN (user `public`) and the per-user
  WORKFLOW_STATE_TOKENS_FILE (SHA-256 hashes, re-read when the file changes), either or both;
- WORKFLOW_STATE_USER_HEADER, believed only from a peer in WORKFLOW_STATE_TRUSTED_PROXIES.

How they combine (docs/security.md): a request that carries the user header is judged by the
header alone: a trusted peer makes its value the user, any other peer gets a 401. Otherwise the
bearer token decides when any token is configured. Otherwise the request is `public` when no
mode is configured at all, and a 401 when the header mode is.

`init_app` identifies every /workflow* request (but preflights) before any route runs; routes
call `current_identity()`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, request

from . import hooks

# The name rule and the network parser are setting parsers too, so they live in config.py.
from .config import (
    USER_NAME_RULE,
    ConfigError,
    Network,
    is_user_name,
    parse_networks,
)
from .errors import error_response

log = logging.getLogger(__name__)

PUBLIC = "public"
# `?owner=*`: an admin's list of every owner's workflows.
ALL_OWNERS = "*"
OWNER_PARAM = "owner"
# /workflow/* and /workflows*; an unknown path under them is refused too, revealing no routes.
PROTECTED_PREFIX = "/workflow"
# Seconds between two looks at the tokens file's modification time.
RELOAD_INTERVAL = 1.0
TOKENS_FILE_ENV = "WORKFLOW_STATE_TOKENS_FILE"
TOKEN_FIELDS = frozenset({"token_sha256", "admin"})
SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}\Z")
EMPTY_DIGEST = hashlib.sha256(b"").digest()
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="workflow-state"'}
EXTENSION = "workflow_identity"


@dataclass(frozen=True)
class Identity:
    """Who is asking (`user`, `admin`) and whose workflows the request acts on (`owner`).

    `owner` is `user` unless an admin asked for another with `?owner=<user>`. `all_owners` is an
    admin's `?owner=*` (then `owner` stays the admin's own name, so nothing ever acts on `*`).
    """

    user: str
    admin: bool
    owner: str
    all_owners: bool = False


# Everyone, when no identity mode is set: one object for every request that names no owner.
PUBLIC_IDENTITY = Identity(PUBLIC, False, PUBLIC)


class Refused(Exception):
    """The request cannot be identified (401), names a bad owner (400) or a forbidden one (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> Response:
        """Answer in the contract's error shape; a 401 carries its challenge."""
        return error_response(
            self.status, self.code, self.message, CHALLENGE if self.status == 401 else None
        )


def _unauthorized(message: str) -> Refused:
    return Refused(401, "unauthorized", message)


def _invalid_owner(message: str) -> Refused:
    return Refused(400, "invalid_owner", f"{message} (a user name is {USER_NAME_RULE})")


@dataclass(frozen=True)
class TokenUser:
    """One bearer token's user: the SHA-256 digest of the token, and whether it is an admin."""

    user: str
    digest: bytes
    admin: bool


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"{key!r} is listed twice")
        seen.add(key)
    return dict(pairs)


def _token_user(user: Any, entry: Any) -> TokenUser:
    where = f"{TOKENS_FILE_ENV}: user {user!r}"
    if not isinstance(user, str) or not is_user_name(user):
        raise ConfigError(f"{where} is not a valid user name ({USER_NAME_RULE})")
    if not isinstance(entry, dict) or not entry.keys() <= TOKEN_FIELDS:
        raise ConfigError(f"{where} must be an object with 'token_sha256' and optional 'admin'")
    digest = entry.get("token_sha256")
    if not isinstance(digest, str) or not SHA256_HEX_RE.match(digest):
        raise ConfigError(f"{where}: 'token_sha256' must be 64 hex digits (sha256sum's output)")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise ConfigError(f"{where}: 'admin' must be true or false")
    if bytes.fromhex(digest) == EMPTY_DIGEST:
        raise ConfigError(f"{where}: 'token_sha256' is the hash of an empty token")
    return TokenUser(user, bytes.fromhex(digest), admin)


def load_tokens_file(path: str, shared: Iterable[TokenUser] = ()) -> tuple[TokenUser, ...]:
    """Read the tokens file, after the `shared` users; raise ConfigError naming what is wrong."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise ConfigError(f"{TOKENS_FILE_ENV} {path!r} cannot be read: {error.strerror}") from None
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except ValueError as error:  # JSONDecodeError, a duplicate user, bytes that are not UTF-8
        raise ConfigError(f"{TOKENS_FILE_ENV} {path!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{TOKENS_FILE_ENV} {path!r} must hold a JSON object of users")
    users = (*shared, *(_token_user(user, entry) for user, entry in data.items()))
    by_digest: dict[bytes, str] = {}
    for one in users:
        other = by_digest.setdefault(one.digest, one.user)
        if other != one.user:
            # One token must name one user; the shared WORKFLOW_STATE_TOKEN counts as `public`.
            raise ConfigError(f"{TOKENS_FILE_ENV}: users {other!r} and {one.user!r} share a token")
    return users


def _signature(path: str) -> tuple[int, ...] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    # The inode too: a file replaced by rename (or a Kubernetes secret's symlink swap) is new.
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


class TokensFile:
    """The bearer users: the shared token's and the tokens file's, re-read when the file changes.

    An operator adds or removes a user without a restart: the file's modification time is looked
    at once a second at most. A changed file that is unreadable or invalid is logged and the
    users read before stay, so a typo does not lock everybody out.
    """

    def __init__(
        self,
        path: str,
        shared: tuple[TokenUser, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._shared = shared
        self._clock = clock
        # Taken before reading: a change during the read is then seen at the next look.
        self._signature = _signature(path)
        self._users = load_tokens_file(path, shared)
        self._looked = clock()

    def users(self) -> tuple[TokenUser, ...]:
        """Return the users, re-reading the file if it changed since the last look."""
        now = self._clock()
        if now - self._looked < RELOAD_INTERVAL:
            return self._users
        self._looked = now
        signature = _signature(self.path)
        if signature == self._signature:
            return self._users
        self._signature = signature
        try:
            self._users = load_tokens_file(self.path, self._shared)
        except ConfigError as error:
            log.error("%s; keeping the %d users read before", error, len(self._users))
        else:
            log.info("%s re-read: %d users", TOKENS_FILE_ENV, len(self._users))
        return self._users


def match_token(header: str | None, users: Iterable[TokenUser]) -> TokenUser | None:
    """Return the user whose token an Authorization header carries, comparing in constant time.

    The supplied token's digest is compared with every user's, with no early exit, so the time
    taken tells neither which user matched nor how much of a token was right.
    """
    scheme, _, supplied = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    # Headers arrive as latin-1 text; its bytes are what the client sent (UTF-8 from a browser).
    wire = supplied.strip().encode("latin-1", "replace")
    if not wire:
        return None
    digest = hashlib.sha256(wire).digest()
    found = None
    for user in users:
        if hmac.compare_digest(digest, user.digest):
            found = user
    return found


def peer_address(environ: Mapping[str, Any]) -> str:
    """Return the TCP peer's address as the server saw it (never X-Forwarded-For)."""
    # If a ProxyFix is ever wrapped around the app it rewrites REMOTE_ADDR from X-Forwarded-For,
    # which is the client's word; the address it replaced is the peer's.
    original = environ.get("werkzeug.proxy_fix.orig") or {}
    return original.get("REMOTE_ADDR") or environ.get("REMOTE_ADDR") or ""


def is_trusted(address: str, networks: Iterable[Network]) -> bool:
    """Tell whether `address` lies in one of `networks` (an IPv4-mapped IPv6 address as IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # empty (a Unix socket) or not an address
        return False
    candidates: tuple[Any, ...] = (ip,)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates = (ip, ip.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)


class Authenticator:
    """Tell who is asking, by the identity settings of one app."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        token = config.get("STATE_TOKEN")
        # The shared token is one more bearer user, `public`, compared the same way.
        self.shared: tuple[TokenUser, ...] = (
            (TokenUser(PUBLIC, hashlib.sha256(token.encode()).digest(), False),) if token else ()
        )
        path = config.get("STATE_TOKENS_FILE")
        self.tokens = TokensFile(path, self.shared) if path else None
        self.header: str | None = config.get("USER_HEADER")
        self.proxies = parse_networks(
            "WORKFLOW_STATE_TRUSTED_PROXIES", config.get("TRUSTED_PROXIES") or ()
        )
        self.admins = frozenset(config.get("ADMINS") or ())
        if self.header and not self.proxies:
            raise ConfigError(
                "WORKFLOW_STATE_USER_HEADER needs WORKFLOW_STATE_TRUSTED_PROXIES: the proxy "
                "addresses it is believed from"
            )
        if self.proxies and not self.header:
            raise ConfigError(
                "WORKFLOW_STATE_TRUSTED_PROXIES is set but WORKFLOW_STATE_USER_HEADER is not"
            )
        if self.admins and not self.header:
            raise ConfigError(
                "WORKFLOW_STATE_ADMINS names admins of WORKFLOW_STATE_USER_HEADER, which is not "
                "set (token users are admins by the tokens file's 'admin')"
            )
        # No identity mode set: every request is `public`.
        self.everyone_public = not self.header and not self.uses_tokens

    @property
    def uses_tokens(self) -> bool:
        """Tell whether a bearer token can identify a request."""
        return bool(self.shared) or self.tokens is not None

    def bearer_users(self) -> tuple[TokenUser, ...]:
        """Return every user a bearer token can name."""
        return self.tokens.users() if self.tokens is not None else self.shared

    def user(self, headers: Mapping[str, str], environ: Mapping[str, Any]) -> tuple[str, bool]:
        """Return (user, admin) for a request; raise Refused when it cannot be identified."""
        if self.header:
            # An empty header is no header (nginx sends an empty variable as an empty value).
            value = headers.get(self.header)
            if value:
                peer = peer_address(environ)
                if not is_trusted(peer, self.proxies):
                    log.warning("%s refused from untrusted peer %r", self.header, peer)
                    raise _unauthorized(
                        f"The {self.header} header is accepted only from a trusted proxy"
                    )
                if not is_user_name(value):
                    raise _invalid_owner(f"The {self.header} header is not a valid user name")
                return value, value in self.admins
        if self.uses_tokens:
            found = match_token(headers.get("Authorization"), self.bearer_users())
            if found is None:
                raise _unauthorized(
                    "A valid bearer token is required (Authorization: Bearer <token>)"
                )
            return found.user, found.admin
        if self.header:
            raise _unauthorized(f"No user: sign in through the proxy that sends {self.header}")
        return PUBLIC, False


def owner_for(user: str, admin: bool, asked: list[str]) -> Identity:
    """Return the identity of `user` acting on the owner named by the `?owner=` values `asked`."""
    if not asked:
        return Identity(user, admin, user)
    if len(asked) > 1:
        raise _invalid_owner("Give ?owner= once")
    wanted = asked[0]
    if wanted == ALL_OWNERS:
        if not admin:
            raise Refused(403, "forbidden", "Only an admin may list every owner's workflows")
        return Identity(user, admin, user, all_owners=True)
    if not is_user_name(wanted):
        raise _invalid_owner(f"?owner={wanted!r} is not a valid user name")
    if wanted != user and not admin:
        raise Refused(
            403,
            "forbidden",
            f"Only an admin may act on another owner's workflows: you are {user!r}, "
            f"not {wanted!r} (leave ?owner= out to act on your own)",
        )
    return Identity(user, admin, wanted)


def identify(authenticator: Authenticator, req: Any) -> Identity:
    """Return who is asking in `req` and on whose workflows (Refused when that cannot be)."""
    if authenticator.everyone_public:
        user, admin = PUBLIC, False
    else:
        user, admin = authenticator.user(req.headers, req.environ)
    # Parsing the query string costs more than the rest of this: most requests have none.
    if not req.environ.get("QUERY_STRING"):
        if user == PUBLIC and not admin:
            return PUBLIC_IDENTITY
        return Identity(user, admin, user)
    return owner_for(user, admin, req.args.getlist(OWNER_PARAM))


def _identify() -> Identity:
    return identify(current_app.extensions[EXTENSION], request._get_current_object())


def current_identity(*, allow_all_owners: bool = False) -> Identity:
    """Return who is asking and on whose workflows, identifying the request if not done yet.

    A list route passes `allow_all_owners=True` and reads `identity.all_owners`; any other
    route refuses an admin's `?owner=*` with 400 `invalid_owner`.
    """
    identity = g.get("identity")
    if identity is None:
        identity = g.identity = _identify()
    if identity.all_owners and not allow_all_owners:
        raise Refused(
            400, "invalid_owner", "?owner=* (every owner) is accepted only when listing workflows"
        )
    return identity


def still_identified() -> Callable[[], bool]:
    """Return a check that this request's caller would still be let in as the same identity.

    For a stream, which outlives the request that opened it: a user removed from the tokens
    file (re-read within a second) hears nothing more. Only bearer tokens can be revoked here;
    a proxy's user header is the proxy's to stop.
    """
    authenticator: Authenticator = current_app.extensions[EXTENSION]
    if authenticator.tokens is None or (
        authenticator.header and request.headers.get(authenticator.header)
    ):
        return lambda: True
    identity = current_identity(allow_all_owners=True)
    authorization = request.headers.get("Authorization")

    # Asked before every frame: matched again only when the tokens file was re-read (the users
    # tuple is a new one), not once per frame against every user.
    last: list[Any] = [None, True]  # [the users matched against, the answer]

    def check() -> bool:
        users = authenticator.bearer_users()
        if users is not last[0]:
            found = match_token(authorization, users)
            last[:] = [
                users,
                found is not None
                and found.user == identity.user
                and (found.admin or identity.owner == identity.user),
            ]
        return last[1]

    return check


# Methods a browser sends from another site's form or script without asking first.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _own_hosts(req: Any) -> set[str]:
    """Return the host[:port] names this request was sent to: Host, and the proxy's
    X-Forwarded-Host (a header no page of another site can set on a form or simple request)."""
    named = [req.headers.get("Host", ""), *req.headers.get("X-Forwarded-Host", "").split(",")]
    return {name.strip().lower() for name in named if name.strip()}


def _same_origin(origin: str, req: Any) -> bool:
    """Tell whether an Origin names the host the request was sent to (scheme aside: the proxy
    may end TLS, so the service sees http for the page's https)."""
    scheme, _, host = origin.partition("://")
    return scheme in ("http", "https") and host.lower() in _own_hosts(req)


def _cross_site_write(authenticator: Authenticator, req: Any, origins: Any) -> bool:
    """Tell whether a browser sent this write from another site, through a signing-in proxy.

    There the user's credentials are the proxy's cookie, which the browser attaches to another
    site's `<form method=post>` too (no preflight: a POST needs no Content-Type here). Such a
    write is refused unless its Origin is listed in WORKFLOW_STATE_CORS_ORIGINS. A browser that
    sends Sec-Fetch-Site says where the write comes from; an older one sends only Origin, which
    is then another site's unless it names the host the request was sent to. Bearer tokens are
    never attached by a browser on its own, so other modes need no such check.
    """
    if not authenticator.header or req.method in SAFE_METHODS:
        return False
    sent_from = req.headers.get("Origin")
    site = req.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("cross-site", "same-site") and sent_from not in origins
    if sent_from is None or sent_from in origins:
        return False  # browsers send Origin with every cross-site POST, PATCH or DELETE
    return not _same_origin(sent_from, req)


# A step's progress report: its progress token is its only identity (checked by the route).
PROGRESS_REPORT = re.compile(r"/workflows/[^/]+/steps/[^/]+/progress\Z")


def is_progress_report(method: str, path: str) -> bool:
    """Tell whether a request is a step's progress report, which names no user."""
    return method == "POST" and PROGRESS_REPORT.match(path) is not None


def init_app(app: Flask) -> None:
    """Check the identity settings (ConfigError if wrong) and identify every /workflow* request."""
    authenticator = app.extensions[EXTENSION] = Authenticator(app.config)

    origins = app.config["CORS_ORIGINS"]

    def check(req: Any, ctx: dict[str, Any]) -> None:
        # Browsers send preflights without credentials; cors.py answers them.
        if (
            req.method != "OPTIONS"
            and req.path.startswith(PROTECTED_PREFIX)
            and not is_progress_report(req.method, req.path)
        ):
            if _cross_site_write(authenticator, req, origins):
                raise Refused(
                    403,
                    "forbidden",
                    "A write from another site is refused; list its origin in "
                    "WORKFLOW_STATE_CORS_ORIGINS to allow it",
                )
            ctx["identity"] = identify(authenticator, req)

    app.register_error_handler(Refused, Refused.response)
    hooks.steps_of(app).add(before=check)

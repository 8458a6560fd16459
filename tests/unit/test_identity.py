"""service/identity.py without HTTP: names, token matching, the tokens file, proxies, owners."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest

from service import identity
from service.config import ConfigError
from service.identity import (
    Identity,
    Refused,
    TokensFile,
    TokenUser,
    is_trusted,
    is_user_name,
    load_tokens_file,
    match_token,
    owner_for,
)
from service.store import check_environment
from tests.support import ROOT
from tests.support.identity import sha256_hex, write_tokens


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@pytest.mark.parametrize(
    "name",
    ["a", "alice", "Alice.Smith", "alice@example.com", "svc-ci_01", "...", ".a", "a.", "x" * 64],
)
def test_good_user_names(name):
    assert is_user_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "x" * 65,
        "a/b",
        "../etc",
        "a b",
        "*",
        "a:b",
        "{a}",
        "al\nice",
        "alice\n",
        "é",
        "a\x00",
    ],
)
def test_bad_user_names(name):
    assert not is_user_name(name)


USERS = tuple(TokenUser(f"user{i}", digest(f"token-{i}"), i == 2) for i in range(5))


@pytest.mark.parametrize("index", range(5))
def test_a_token_finds_its_user_after_comparing_every_entry(monkeypatch, index):
    calls = []
    real = identity.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(identity.hmac, "compare_digest", spy)
    assert match_token(f"Bearer token-{index}", USERS) == USERS[index]
    # No early exit: the first user's token costs as many comparisons as the last one's.
    assert calls == [user.digest for user in USERS]


def test_a_wrong_token_compares_every_entry_too(monkeypatch):
    calls = []
    real = identity.hmac.compare_digest
    monkeypatch.setattr(
        identity.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b)
    )
    assert match_token("Bearer token-", USERS) is None
    # Always two SHA-256 digests: equal lengths, whatever was supplied.
    assert calls == [(digest("token-"), user.digest) for user in USERS]


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic token-1", "token-1", "Bearertoken-1"],
)
def test_no_token_matches_nothing(header):
    assert match_token(header, USERS) is None


def test_the_scheme_is_case_insensitive_and_spaces_are_ignored():
    assert match_token("bEaReR   token-3  ", USERS) == USERS[3]


def test_a_token_is_compared_as_the_bytes_on_the_wire():
    users = (TokenUser("u", digest("clé-🔑"), False),)
    wire = "Bearer " + "clé-🔑".encode().decode("latin-1")
    assert match_token(wire, users) == users[0]
    assert match_token("Bearer clé-🔑", users) is None  # not UTF-8 on the wire: other bytes


def tokens_file(tmp_path: Path, content: object) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_the_tokens_file_gives_users_and_admins(tmp_path):
    path = write_tokens(tmp_path / "t.json", {"alice": ("a-token", False), "root": ("r", True)})
    users = load_tokens_file(str(path))
    assert users == (
        TokenUser("alice", digest("a-token"), False),
        TokenUser("root", digest("r"), True),
    )


def test_admin_is_optional_and_hex_may_be_upper_case(tmp_path):
    path = tokens_file(tmp_path, {"bob": {"token_sha256": sha256_hex("b").upper()}})
    assert load_tokens_file(path) == (TokenUser("bob", digest("b"), False),)


def test_the_shared_token_comes_first_as_public(tmp_path):
    path = write_tokens(tmp_path / "t.json", {"alice": ("a", False)})
    shared = TokenUser("public", digest("shared"), False)
    assert load_tokens_file(str(path), (shared,)) == (
        shared,
        TokenUser("alice", digest("a"), False),
    )


GOOD_HASH = sha256_hex("x")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[]", "JSON object of users"),
        ('"alice"', "JSON object of users"),
        (b"\xff\xfe{}", "not valid JSON"),
        ({"../x": {"token_sha256": GOOD_HASH}}, "valid user name"),
        ({"..": {"token_sha256": GOOD_HASH}}, "valid user name"),
        ({"": {"token_sha256": GOOD_HASH}}, "valid user name"),
        ({"a b": {"token_sha256": GOOD_HASH}}, "valid user name"),
        ({"alice": GOOD_HASH}, "must be an object"),
        ({"alice": {}}, "token_sha256"),
        ({"alice": {"token_sha256": "abc"}}, "64 hex digits"),
        ({"alice": {"token_sha256": GOOD_HASH + "0"}}, "64 hex digits"),
        ({"alice": {"token_sha256": "g" * 64}}, "64 hex digits"),
        ({"alice": {"token_sha256": 5}}, "64 hex digits"),
        ({"alice": {"token_sha256": GOOD_HASH, "admin": "yes"}}, "'admin'"),
        ({"alice": {"token_sha256": GOOD_HASH, "admn": True}}, "must be an object"),
        ({"alice": {"token_sha256": sha256_hex("")}}, "empty token"),
        ({"alice": {"token_sha256": GOOD_HASH}, "bob": {"token_sha256": GOOD_HASH}}, "share"),
        (
            f'{{"alice": {{"token_sha256": "{GOOD_HASH}"}}, '
            f'"alice": {{"token_sha256": "{sha256_hex("y")}"}}}}',
            "listed twice",
        ),
    ],
)
def test_a_bad_tokens_file_is_one_line_naming_the_variable(tmp_path, content, words):
    if isinstance(content, bytes):
        (tmp_path / "tokens.json").write_bytes(content)
        path = str(tmp_path / "tokens.json")
    else:
        path = tokens_file(tmp_path, content)
    with pytest.raises(ConfigError) as raised:
        load_tokens_file(path)
    message = str(raised.value)
    assert "WORKFLOW_STATE_TOKENS_FILE" in message and words in message, message
    assert "\n" not in message


def test_a_missing_or_unreadable_tokens_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"WORKFLOW_STATE_TOKENS_FILE .* cannot be read"):
        load_tokens_file(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"WORKFLOW_STATE_TOKENS_FILE .* cannot be read"):
        load_tokens_file(str(tmp_path))  # a directory


def test_the_shared_token_must_not_be_a_users_token(tmp_path):
    path = write_tokens(tmp_path / "t.json", {"alice": ("same", False)})
    with pytest.raises(ConfigError, match="'public' and 'alice' share a token"):
        load_tokens_file(str(path), (TokenUser("public", digest("same"), False),))


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_tokens_file_is_re_read_when_it_changes_at_most_once_a_second(tmp_path, caplog):
    path = write_tokens(tmp_path / "t.json", {"alice": ("a", False)})
    clock = Clock()
    book = TokensFile(str(path), clock=clock)
    assert [u.user for u in book.users()] == ["alice"]
    write_tokens(path, {"alice": ("a", False), "bob": ("b", True)})
    clock.now += 0.5
    assert [u.user for u in book.users()] == ["alice"]  # not looked at yet
    clock.now += 0.6
    with caplog.at_level(logging.INFO, logger="service.identity"):
        assert book.users() == (
            TokenUser("alice", digest("a"), False),
            TokenUser("bob", digest("b"), True),
        )
    assert "re-read: 2 users" in caplog.text


def test_an_unchanged_file_is_not_read_again(tmp_path, monkeypatch):
    path = write_tokens(tmp_path / "t.json", {"alice": ("a", False)})
    clock = Clock()
    book = TokensFile(str(path), clock=clock)
    monkeypatch.setattr(identity, "load_tokens_file", pytest.fail)
    for _ in range(3):
        clock.now += 5
        assert [u.user for u in book.users()] == ["alice"]


def test_a_broken_or_removed_file_keeps_the_users_read_before(tmp_path, caplog):
    path = write_tokens(tmp_path / "t.json", {"alice": ("a", False)})
    clock = Clock()
    shared = (TokenUser("public", digest("shared"), False),)
    book = TokensFile(str(path), shared, clock=clock)
    before = book.users()
    path.write_text('{"alice": ')
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="service.identity"):
        assert book.users() == before
    assert "WORKFLOW_STATE_TOKENS_FILE" in caplog.text and "keeping the 2 users" in caplog.text
    os.remove(path)
    clock.now += 2
    assert book.users() == before
    write_tokens(path, {"carol": ("c", False)})
    clock.now += 2
    assert [u.user for u in book.users()] == ["public", "carol"]


def networks(*parts: str):
    return [ipaddress.ip_network(p) for p in parts]


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.7.7", True),
        ("192.168.7.8", False),
        ("fd00::1", True),
        ("fd12:3456::9", True),
        ("fe80::1", False),
        ("::1", False),
        ("::ffff:10.9.9.9", True),  # IPv4 through a dual-stack socket
        ("::ffff:11.0.0.1", False),
        ("", False),  # a Unix socket
        ("unix", False),
        ("10.1.2.3, 11.0.0.1", False),
    ],
)
def test_a_peer_is_trusted_only_inside_the_networks(address, trusted):
    assert is_trusted(address, networks("10.0.0.0/8", "192.168.7.7", "fd00::/8")) is trusted


def test_peer_address_ignores_what_a_proxy_fix_made_of_forwarded_headers():
    environ = {"REMOTE_ADDR": "10.0.0.1", "werkzeug.proxy_fix.orig": {"REMOTE_ADDR": "8.8.8.8"}}
    assert identity.peer_address(environ) == "8.8.8.8"
    assert identity.peer_address({"REMOTE_ADDR": "10.0.0.1"}) == "10.0.0.1"
    assert identity.peer_address({}) == ""


def refused(call, *args) -> Refused:
    with pytest.raises(Refused) as raised:
        call(*args)
    return raised.value


def test_no_owner_asked_is_the_users_own():
    assert owner_for("alice", False, []) == Identity("alice", False, "alice")


def test_anyone_may_name_themselves():
    assert owner_for("alice", False, ["alice"]) == Identity("alice", False, "alice")


def test_an_admin_may_name_another_owner_or_all():
    assert owner_for("root", True, ["bob"]) == Identity("root", True, "bob")
    assert owner_for("root", True, ["*"]) == Identity("root", True, "root", all_owners=True)


def test_a_non_admin_naming_another_owner_is_forbidden():
    error = refused(owner_for, "alice", False, ["bob"])
    assert (error.status, error.code) == (403, "forbidden")
    assert "'alice'" in error.message and "'bob'" in error.message and "admin" in error.message
    error = refused(owner_for, "alice", False, ["*"])
    assert (error.status, error.code) == (403, "forbidden")


@pytest.mark.parametrize("asked", [[""], [".."], ["."], ["a/b"], ["x" * 65], ["bob", "bob"]])
@pytest.mark.parametrize("admin", [False, True])
def test_a_bad_owner_is_400_for_everyone(asked, admin):
    error = refused(owner_for, "alice", admin, asked)
    assert (error.status, error.code) == (400, "invalid_owner")


def test_identity_is_immutable():
    me = Identity("alice", False, "alice")
    with pytest.raises(AttributeError):
        me.owner = "bob"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"WORKFLOW_STATE_TRUSTED_PROXIES": "10.0.0.1/8"}, "WORKFLOW_STATE_TRUSTED_PROXIES"),
        ({"WORKFLOW_STATE_TRUSTED_PROXIES": "localhost"}, "WORKFLOW_STATE_TRUSTED_PROXIES"),
        ({"WORKFLOW_STATE_TRUSTED_PROXIES": "10.0.0.0/33"}, "WORKFLOW_STATE_TRUSTED_PROXIES"),
        ({"WORKFLOW_STATE_TRUSTED_PROXIES": "fd00::/7, ::1/200"}, "WORKFLOW_STATE_TRUSTED_PROXIES"),
        ({"WORKFLOW_STATE_USER_HEADER": "X-User"}, "WORKFLOW_STATE_TRUSTED_PROXIES"),
        ({"WORKFLOW_STATE_TRUSTED_PROXIES": "10.0.0.0/8"}, "WORKFLOW_STATE_USER_HEADER"),
        ({"WORKFLOW_STATE_ADMINS": "root"}, "WORKFLOW_STATE_ADMINS"),
        ({"WORKFLOW_STATE_USER_HEADER": "X_User"}, "WORKFLOW_STATE_USER_HEADER"),
        ({"WORKFLOW_STATE_USER_HEADER": "X User"}, "WORKFLOW_STATE_USER_HEADER"),
        ({"WORKFLOW_STATE_USER_HEADER": "Authorization"}, "WORKFLOW_STATE_USER_HEADER"),
        (
            {
                "WORKFLOW_STATE_USER_HEADER": "X-User",
                "WORKFLOW_STATE_TRUSTED_PROXIES": "127.0.0.1",
                "WORKFLOW_STATE_ADMINS": "root,../x",
            },
            "WORKFLOW_STATE_ADMINS",
        ),
        ({"WORKFLOW_STATE_TOKENS_FILE": "/nonexistent/tokens.json"}, "WORKFLOW_STATE_TOKENS_FILE"),
    ],
)
def test_a_bad_identity_setting_refuses_the_start_in_one_line(tmp_path, env, words):
    problem = check_environment({"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json", **env})
    assert problem is not None and words in problem and "\n" not in problem, problem


def test_an_invalid_tokens_file_refuses_the_start(tmp_path):
    path = tokens_file(tmp_path, {"alice": {"token_sha256": "nope"}})
    problem = check_environment(
        {"WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json", "WORKFLOW_STATE_TOKENS_FILE": path}
    )
    assert problem is not None and "WORKFLOW_STATE_TOKENS_FILE" in problem and "alice" in problem


def test_the_shared_token_in_the_tokens_file_refuses_the_start(tmp_path):
    path = write_tokens(tmp_path / "t.json", {"alice": ("same-token", False)})
    problem = check_environment(
        {
            "WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json",
            "WORKFLOW_STATE_TOKENS_FILE": str(path),
            "WORKFLOW_STATE_TOKEN": "same-token",
        }
    )
    assert problem is not None and "share a token" in problem


def test_good_identity_settings_start(tmp_path):
    path = write_tokens(tmp_path / "t.json", {"alice": ("a", False)})
    assert (
        check_environment(
            {
                "WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json",
                "WORKFLOW_STATE_TOKEN": "shared",
                "WORKFLOW_STATE_TOKENS_FILE": str(path),
                "WORKFLOW_STATE_USER_HEADER": "X-Forwarded-User",
                "WORKFLOW_STATE_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8, ::1, fd00::/8",
                "WORKFLOW_STATE_ADMINS": "root, alice@example.com",
            }
        )
        is None
    )


def test_the_documented_tokens_file_and_recipe_work(tmp_path):
    doc = (ROOT / "docs" / "security.md").read_text()
    example = re.search(r"```json\n(.*?)```", doc, re.S).group(1)
    users = load_tokens_file(tokens_file(tmp_path, example))
    assert [(u.user, u.admin) for u in users] == [("alice", False), ("root", True)]
    # The operator's recipe hashes exactly the token's bytes, as the service does.
    recipe = "printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1"
    assert recipe in doc
    printed = subprocess.run(
        ["sh", "-c", recipe],
        env={"TOKEN": "clé-token", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert printed == sha256_hex("clé-token")

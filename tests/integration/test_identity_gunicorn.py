"""Who is asking, under the real server: the peer gunicorn saw decides whether the user header
counts, the tokens file is re-read by every worker, and a bad identity setting stops the start.

Linux routes all of 127.0.0.0/8 to the loopback interface, so one server bound on 127.0.0.1
sees a client that binds 127.0.0.2 as a different peer: trusted, while 127.0.0.1 is not.
"""

from __future__ import annotations

import json
import socket
import subprocess
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, STATE, VENV_BIN, Gunicorn, http, wait_until
from tests.support.identity import write_tokens

pytestmark = pytest.mark.slow

HEADER = "X-Forwarded-User"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def send(
    server: Gunicorn,
    source: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    """Send one request from the local address `source`; return (status, parsed body)."""
    host = "::1" if ":" in source else "127.0.0.1"
    connection = HTTPConnection(host, server.port, timeout=10, source_address=(source, 0))
    try:
        payload = None if body is None else json.dumps(body)
        sent = {**(headers or {}), **({"Content-Type": "application/json"} if payload else {})}
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


@pytest.fixture
def proxied(tmp_path: Path):
    """Two workers that believe the user header from 127.0.0.2 and ::1, not from 127.0.0.1."""
    server = Gunicorn(
        {
            "WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json",
            "WORKFLOW_STATE_USER_HEADER": HEADER,
            "WORKFLOW_STATE_TRUSTED_PROXIES": "127.0.0.2/32, ::1/128",
            "WORKFLOW_STATE_ADMINS": "root",
        },
        workers=2,
    )
    binds = f"--bind 127.0.0.1:{server.port}"
    if ipv6_loopback():
        binds += f" --bind [::1]:{server.port}"
    server.env["GUNICORN_CMD_ARGS"] = binds
    server.start()
    yield server
    server.stop()


def test_the_header_counts_only_from_a_trusted_peer(proxied):
    status, body = send(proxied, "127.0.0.1", "POST", STATE, {HEADER: "alice"}, {"steps": []})
    assert (status, body["error"]) == (401, "unauthorized")
    # X-Forwarded-For is the client's word, not the peer's.
    forged = {HEADER: "alice", "X-Forwarded-For": "127.0.0.2", "X-Real-IP": "127.0.0.2"}
    assert send(proxied, "127.0.0.1", "GET", STATE, forged)[0] == 401
    assert send(proxied, "127.0.0.1", "GET", STATE)[0] == 401

    status, body = send(proxied, "127.0.0.2", "POST", STATE, {HEADER: "alice"}, {"steps": []})
    assert (status, body["success"]) == (200, True)
    status, body = send(proxied, "127.0.0.2", "GET", f"{STATE}?owner=alice", {HEADER: "alice"})
    assert (status, body["state"]["steps"]) == (200, [])
    assert send(proxied, "127.0.0.2", "GET", f"{STATE}?owner=bob", {HEADER: "alice"})[0] == 403
    assert send(proxied, "127.0.0.2", "GET", f"{STATE}?owner=bob", {HEADER: "root"})[0] == 200
    status, body = send(proxied, "127.0.0.2", "GET", STATE, {HEADER: "../etc"})
    assert (status, body["error"]) == (400, "invalid_owner")
    # A trusted proxy that names nobody gets nobody in.
    assert send(proxied, "127.0.0.2", "GET", STATE)[0] == 401

    output = proxied.output()
    assert "refused from untrusted peer '127.0.0.1'" in output


def test_the_header_from_an_ipv6_proxy(proxied):
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    status, body = send(proxied, "::1", "GET", STATE, {HEADER: "alice"})
    assert (status, body["success"]) == (200, True)
    assert send(proxied, "127.0.0.1", "GET", STATE, {HEADER: "alice"})[0] == 401


def test_every_worker_re_reads_the_tokens_file(tmp_path: Path):
    tokens = write_tokens(tmp_path / "tokens.json", {"alice": ("alice-token-9", False)})
    server = Gunicorn(
        {
            "WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json",
            "WORKFLOW_STATE_TOKENS_FILE": str(tokens),
        },
        workers=2,
    ).start()
    try:
        carol = {"Authorization": "Bearer carol-token-7"}
        assert http("GET", server.url + STATE, headers=carol)[0] == 401
        write_tokens(tokens, {"alice": ("alice-token-9", False), "carol": ("carol-token-7", False)})

        def every_answer_lets_carol_in() -> bool:
            # Fresh connections land on either worker; ten in a row all pass only when both did.
            return all(http("GET", server.url + STATE, headers=carol)[0] == 200 for _ in range(10))

        wait_until(every_answer_lets_carol_in, timeout=10, interval=0.2)
        alice = {"Authorization": "Bearer alice-token-9"}
        assert http("GET", server.url + STATE, headers=alice)[0] == 200
        output = server.output()
        assert "alice-token-9" not in output and "carol-token-7" not in output
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WORKFLOW_STATE_TOKENS_FILE": "{tmp}/missing.json"}, "WORKFLOW_STATE_TOKENS_FILE"),
        ({"WORKFLOW_STATE_TOKENS_FILE": "{tmp}/bad.json"}, "WORKFLOW_STATE_TOKENS_FILE"),
        ({"WORKFLOW_STATE_USER_HEADER": HEADER}, "WORKFLOW_STATE_TRUSTED_PROXIES"),
        (
            {"WORKFLOW_STATE_USER_HEADER": HEADER, "WORKFLOW_STATE_TRUSTED_PROXIES": "10.0.0.1/8"},
            "WORKFLOW_STATE_TRUSTED_PROXIES",
        ),
    ],
)
def test_gunicorn_refuses_to_start_on_a_bad_identity_setting(tmp_path, env, variable):
    (tmp_path / "bad.json").write_text('{"alice": {"token_sha256": "not hex"}}')
    environ = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    result = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "service.wsgi:app"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "WORKFLOW_STATE_URL": f"file://{tmp_path}/state.json",
            **environ,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr

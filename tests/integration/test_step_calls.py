"""Step calls against real local HTTP servers: answers, failures, timeouts and cancels.

In this (threaded) process, as in an RQ worker; and in subprocesses, one plain and one that
gevent monkey-patches first, as a gunicorn web worker on the file backend does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.runner.steps import StepCall, StepResult, StepSettings, perform_step
from tests.support import ROOT, free_port, wait_until
from tests.support.endpoints import MuteServer, SilentListener, StepEndpoints, make_certificate

SECRET = "ssh -p 2222 root@203.0.113.9"
# Cancel takes effect within this (the contract's "within 1 s").
CANCEL_BUDGET = 1.0


@pytest.fixture(scope="module")
def endpoints() -> Iterator[StepEndpoints]:
    server = StepEndpoints().start()
    yield server
    server.close()


def step(endpoint: str | None, *, index: int = 1) -> StepCall:
    return StepCall("wf-1", "sync_instance", index, 3, SECRET, endpoint)


def run(endpoint: str, base: str, timeout: float = 10.0, **extra: Any) -> StepResult:
    settings = StepSettings(self_url=base, timeout=timeout, demo_seconds=0, **extra)
    return perform_step(step(endpoint), settings)


def cancel_after(delay: float) -> tuple[threading.Event, list[float]]:
    """Return an event that a timer sets after `delay`, and where it notes when it did."""
    cancel, when = threading.Event(), []

    def fire() -> None:
        when.append(time.monotonic())
        cancel.set()

    threading.Timer(delay, fire).start()
    return cancel, when


# --- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "data"),
    [
        ("/ok", "completed", {"host": "gpu-7", "message": "done"}),
        ("/ok-empty", "completed", None),
        ("/fail", "failed", {"free": 0, "message": "disk full"}),
        ("/boom", "failed", {"http_status": 500, "message": "boom"}),
        (
            "/500",
            "failed",
            {"http_status": 500, "message": "{E}/500 answered 500 without a message"},
        ),
        ("/html", "failed", {"message": "{E}/html answered 502 with a body that is not JSON"}),
        ("/text", "failed", {"message": "{E}/text answered 200 with a body that is not JSON"}),
        ("/list", "failed", {"message": "{E}/list answered 200 with JSON that is not an object"}),
        ("/huge", "failed", {"message": "{E}/huge answered 200 with more than 1048576 bytes"}),
        (
            "/bigdata",
            "failed",
            {
                "message": "{E}/bigdata answered 200 with data too large to keep (100012 bytes, "
                "the most is 65536)"
            },
        ),
        (
            "/deep",
            "failed",
            {
                "message": "{E}/deep answered 200 with data that cannot be kept: it must not "
                "nest deeper than 29 levels"
            },
        ),
        (
            "/nan",
            "failed",
            {
                "message": "{E}/nan answered 200 with a body that is not JSON: "
                "NaN is not a JSON number"
            },
        ),
        ("/hangup", "failed", {"message": "{E}/hangup closed the connection without an answer"}),
        (
            "/cutoff",
            "failed",
            {"message": "{E}/cutoff closed the connection in the middle of its answer"},
        ),
        (
            "/redirect",
            "failed",
            {"http_status": 302, "message": "{E}/redirect answered 302 with no body"},
        ),
        ("/missing", "failed", {"http_status": 404, "message": "no test endpoint /missing"}),
    ],
)
def test_answers(endpoints: StepEndpoints, path: str, status: str, data: Any):
    result = run(path, endpoints.url)
    expected = json.loads(json.dumps(data).replace("{E}", f"Step endpoint {endpoints.url}"))
    assert (result.status, result.data) == (status, expected)


def test_the_endpoint_gets_the_contract_body_and_json_headers(endpoints: StepEndpoints):
    before = len(endpoints.calls("/ok"))
    run(f"{endpoints.url}/ok", "http://127.0.0.1:1")  # an absolute URL: the base is not used
    calls = endpoints.calls("/ok")
    assert len(calls) == before + 1
    assert calls[-1]["body"] == {
        "workflow_id": "wf-1",
        "action": "sync_instance",
        "index": 1,
        "attempt": 3,
        "step_attempt": 1,
        "ssh_connection": SECRET,
    }
    assert calls[-1]["headers"]["Content-Type"] == "application/json"


def test_a_path_is_called_on_this_service_with_its_headers_and_a_url_without(
    endpoints: StepEndpoints,
):
    token = {"Authorization": "Bearer local-token"}
    run("/ok?from=path", endpoints.url, self_headers=token)
    assert endpoints.calls("/ok")[-1]["headers"].get("Authorization") == "Bearer local-token"
    run(f"{endpoints.url}/ok", "http://127.0.0.1:1", self_headers=token)
    assert "Authorization" not in endpoints.calls("/ok")[-1]["headers"]


def test_a_refused_connection_fails_at_once():
    port = free_port()
    started = time.monotonic()
    result = run(f"http://127.0.0.1:{port}/step", "http://unused")
    assert result.status == "failed"
    assert result.message == f"Step endpoint http://127.0.0.1:{port}/step refused the connection"
    assert time.monotonic() - started < 1


def test_an_unknown_host_fails_with_a_sentence():
    result = run("http://no-such-host.invalid/step", "http://unused", timeout=5)
    assert result.status == "failed"
    # Resolvers differ: an answer "no such name" at once, or none before the timeout.
    assert result.message.startswith("Step endpoint http://no-such-host.invalid/step ")
    assert "could not be reached" in result.message or "timed out" in result.message


# --- timeouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/slow?seconds=30", "/drip?seconds=30"])
def test_the_timeout_bounds_the_whole_call(endpoints: StepEndpoints, path: str):
    # /drip sends a byte every 0.2 s: no socket read ever times out, the call still must.
    started = time.monotonic()
    result = run(path, endpoints.url, timeout=0.6)
    elapsed = time.monotonic() - started
    shown = path.split("?")[0]
    assert result.status == "failed"
    assert result.message == f"Step endpoint {endpoints.url}{shown} timed out after 0.6 s"
    assert 0.6 <= elapsed < 1.5


def test_a_connect_that_never_completes_times_out():
    silent = SilentListener()
    try:
        result = run(f"{silent.url}/step", "http://unused", timeout=0.5)
    finally:
        silent.close()
    assert result.message == f"Step endpoint {silent.url}/step timed out after 0.5 s"


# --- cancel -------------------------------------------------------------------------------------


def measure_cancel(endpoint: str, settings: StepSettings) -> tuple[StepResult, float]:
    cancel, when = cancel_after(0.3)
    result = perform_step(step(endpoint), settings, cancel)
    return result, time.monotonic() - when[0]


def test_cancel_interrupts_a_slow_answer_within_a_second(endpoints: StepEndpoints):
    settings = StepSettings(self_url=endpoints.url, timeout=30, demo_seconds=0)
    result, latency = measure_cancel("/slow?seconds=30", settings)
    assert result.status == "cancelled" and result.data is None
    assert latency < CANCEL_BUDGET, latency


def step_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "step-call" and t.is_alive()]


def test_cancel_and_timeout_close_the_connection_from_the_waiting_side(
    endpoints: StepEndpoints,
):
    settings = StepSettings(self_url=endpoints.url, timeout=30, demo_seconds=0)
    for how in ("cancel", "timeout"):
        seen = len(endpoints.hangups())
        if how == "cancel":
            cancel, when = cancel_after(0.3)
            result = perform_step(step("/hold"), settings, cancel)
            assert result.status == "cancelled"
            stopped = when[0]
        else:
            short = StepSettings(self_url=endpoints.url, timeout=0.3, demo_seconds=0)
            result = perform_step(step("/hold"), short)
            assert result.message.endswith("/hold timed out after 0.3 s")
            stopped = time.monotonic()
        # The endpoint sees the caller hang up, and the call's thread ends: nothing lingers.
        hangup = wait_until(lambda seen=seen: endpoints.hangups()[seen:], timeout=CANCEL_BUDGET)[0]
        assert hangup - stopped < CANCEL_BUDGET
        wait_until(lambda: not step_threads(), timeout=CANCEL_BUDGET)


def test_cancel_interrupts_a_connect_and_a_tls_handshake_within_a_second():
    silent, mute = SilentListener(), MuteServer()
    settings = StepSettings(self_url="http://unused", timeout=30, demo_seconds=0)
    try:
        for url in (f"{silent.url}/step", f"https://127.0.0.1:{mute.port}/step"):
            result, latency = measure_cancel(url, settings)
            assert result.status == "cancelled", url
            assert latency < CANCEL_BUDGET, (url, latency)
            wait_until(lambda: not step_threads(), timeout=CANCEL_BUDGET)
    finally:
        silent.close()
        mute.close()


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def test_an_untrusted_certificate_fails_with_a_sentence(certificate: tuple[str, str]):
    server = StepEndpoints(certificate).start()
    try:
        result = run(f"{server.url}/ok", "http://unused")
    finally:
        server.close()
    assert result.status == "failed"
    assert result.message.startswith(f"Step endpoint {server.url}/ok failed the TLS check")
    assert server.calls() == []


# --- secrets ------------------------------------------------------------------------------------


def test_no_log_line_carries_the_secret(endpoints: StepEndpoints, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    for path in ("/ok", "/echo-secret", "/html", "/hangup"):
        run(path, endpoints.url)
    result = run("/echo-secret", endpoints.url)
    # The endpoint repeats it in its message, which is stored for the owner to read...
    assert SECRET in result.message
    # ...but no log line, of any logger, shows it.
    assert len(caplog.records) >= 5
    for record in caplog.records:
        assert "203.0.113.9" not in record.getMessage()
        assert "203.0.113.9" not in (record.exc_text or "")


# --- threads and gevent, in processes of their own ----------------------------------------------

PROBE = r"""
import json, os, sys, time
if os.environ["PROBE_MODE"] == "gevent":
    from gevent import monkey
    monkey.patch_all()
import threading
from service.runner.steps import StepCall, StepSettings, perform_step

args = json.loads(sys.argv[1])
ticks = [0]
stop = threading.Event()

def tick():
    # Proof the process stays responsive while a step waits (under gevent: the hub is free).
    while not stop.is_set():
        ticks[0] += 1
        time.sleep(0.01)

threading.Thread(target=tick, daemon=True).start()
out = {}
for name, endpoint, timeout, cancel_at in args["cases"]:
    settings = StepSettings(self_url=args["base"], timeout=timeout, demo_seconds=30)
    cancel, fired = threading.Event(), []
    def fire(cancel=cancel, fired=fired):
        fired.append(time.monotonic())
        cancel.set()
    if cancel_at is not None:
        threading.Timer(cancel_at, fire).start()
    ticks[0] = 0
    started = time.monotonic()
    result = perform_step(StepCall("wf", "act", 0, 1, "root@h", endpoint), settings, cancel)
    ended = time.monotonic()
    lingering = True
    while time.monotonic() < ended + 1:
        if not [t for t in threading.enumerate() if t.name == "step-call" and t.is_alive()]:
            lingering = False
            break
        time.sleep(0.01)
    out[name] = {
        "lingering": lingering,
        "status": result.status,
        "message": result.message,
        "elapsed": ended - started,
        "latency": ended - fired[0] if fired else None,
        "ticks": ticks[0],
    }
stop.set()
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["threads", "gevent"])
def test_calls_and_cancels_in_a_threaded_and_a_gevent_process(
    mode: str, endpoints: StepEndpoints, certificate: tuple[str, str], tmp_path: Path
):
    tls = StepEndpoints(certificate).start()
    silent, mute = SilentListener(), MuteServer()
    cases = [
        ("ok", "/ok", 10, None),
        ("tls_ok", f"{tls.url}/ok", 10, None),
        ("timeout", "/slow?seconds=30", 0.5, None),
        ("cancel_answer", "/slow?seconds=30", 30, 0.3),
        ("cancel_hold", "/hold", 30, 0.3),
        ("cancel_connect", f"{silent.url}/x", 30, 0.3),
        ("cancel_handshake", f"https://127.0.0.1:{mute.port}/x", 30, 0.3),
        ("cancel_simulator", None, 30, 0.3),
    ]
    env = {**os.environ, "PROBE_MODE": mode, "SSL_CERT_FILE": certificate[0]}
    env["PYTHONPATH"] = str(ROOT)
    try:
        finished = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps({"base": endpoints.url, "cases": cases})],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
    finally:
        tls.close()
        silent.close()
        mute.close()
    assert finished.returncode == 0, finished.stderr
    out = json.loads(finished.stdout)
    assert out["ok"]["status"] == "completed" and out["ok"]["message"] == "done"
    assert out["tls_ok"]["status"] == "completed", out["tls_ok"]
    assert out["timeout"]["status"] == "failed"
    assert out["timeout"]["message"].endswith("/slow timed out after 0.5 s")
    assert 0.5 <= out["timeout"]["elapsed"] < 1.5
    hangups = endpoints.hangups()
    assert hangups, "the /hold endpoint never saw the caller hang up"
    for name in ("ok", "tls_ok", "timeout"):
        assert not out[name]["lingering"], (name, out[name])
    for name in ("cancel_answer", "cancel_hold", "cancel_connect", "cancel_handshake"):
        # The call itself stopped, not just the wait for it.
        assert not out[name]["lingering"], (name, out[name])
    for name in (
        "cancel_answer",
        "cancel_hold",
        "cancel_connect",
        "cancel_handshake",
        "cancel_simulator",
    ):
        assert out[name]["status"] == "cancelled", (name, out[name])
        assert out[name]["latency"] < CANCEL_BUDGET, (name, out[name])
        # ~30 ticks in 0.3 s if nothing blocked the process; a blocked gevent hub gives ~1.
        assert out[name]["ticks"] >= 10, (name, out[name])
    assert "root@h" not in finished.stderr

"""What a person installs, and that it is enough: `make run` installs only requirements.txt,
which runs the server and, with Redis, a worker that completes steps whose endpoints are paths
on the service; `make test` adds the tools; a non-editable install serves the page.

No package index is used: the environments are made from this checkout's .venv
(tests/support/installs.py), holding only the distributions pip would install for the pins.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from hashlib import sha256
from pathlib import Path

import pytest

from tests.support import ROOT, RedisServer, free_port, http, wait_until
from tests.support.installs import (
    closure,
    fresh_clone,
    install_stamps,
    installed_bytes,
    linked_venv,
    make_dry_run,
    mark_installed,
    person_env,
    pins,
    stop_group,
)
from tests.support.runs import run_path_steps

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None, reason="make is missing"),
]

RUNTIME = pins(ROOT / "requirements.txt")
# What `python -m venv` puts in every venv besides.
VENV_TOOLS = ["pip", "setuptools"]
MEGABYTE = 1024 * 1024
README_REDIS = "127.0.0.1:6379"
# This project alone, built with the venv's own setuptools: no package index is asked.
OFFLINE_PIP = ["--quiet", "--no-index", "--no-deps", "--no-build-isolation"]
[README_REDIS_RUN] = re.findall(r"^REDIS_URL=\S+ make run$", (ROOT / "README.md").read_text(), re.M)


@pytest.fixture(scope="module")
def run_only_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone whose .venv holds what `make run` installs (requirements.txt), and no more."""
    clone = fresh_clone(tmp_path_factory.mktemp("run-only"))
    linked_venv(clone / ".venv", [*RUNTIME, *VENV_TOOLS])
    for stamp in install_stamps(clone, "run"):
        (clone / stamp).touch()
    mark_installed(clone)
    assert "pip install" not in make_dry_run(clone, "run")
    return clone


def listening(port: int) -> bool:
    """Tell whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("address", ["as-written", "PORT"])
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_readmes_make_run_runs_path_steps_with_only_the_run_requirements(
    run_only_clone: Path, request: pytest.FixtureRequest, tmp_path: Path, backend: str, address: str
):
    """README's `make run` and `REDIS_URL=… make run`: gunicorn's gevent worker (and with
    Redis, honcho and the run worker) start from requirements.txt alone; the server listens
    where README says; the runner calls the steps' path endpoints on it: the workflow completes."""
    env = {**person_env(tmp_path), "WORKFLOW_DEMO_STEP_SECONDS": "0.1"}
    if address == "as-written":
        if listening(8000):
            pytest.skip("127.0.0.1:8000 is taken on this machine (the PORT case still runs)")
        base, listens = "http://127.0.0.1:8000", "http://127.0.0.1:8000"
    else:
        port = free_port()
        env["PORT"] = str(port)
        base, listens = f"http://127.0.0.1:{port}", f"http://0.0.0.0:{port}"
    command = "make run"
    if backend == "redis":
        redis: RedisServer = request.getfixturevalue("own_redis")
        command = README_REDIS_RUN.replace(README_REDIS, f"127.0.0.1:{redis.port}")
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-e", "-c", command],
            cwd=run_only_clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: process.poll() is not None or http("GET", f"{base}/readyz")[0] == 200,
            timeout=60,
            interval=0.1,
        )
        assert process.poll() is None, log.read_text()[-3000:]
        wait_until(lambda: f"Listening at: {listens} " in log.read_text())
        state = run_path_steps(base, f"paths-{backend}-{address.lower()}")
        assert [step["status"] for step in state["steps"]] == ["completed", "completed"], (
            state,
            log.read_text()[-3000:],
        )
        assert state["status"] == "completed"
    finally:
        stop_group(process)


def test_the_run_requirements_are_under_150_mb():
    """docs/development.md states the size of `make run`'s .venv; it stays under 150 MB."""
    size = installed_bytes(closure([*RUNTIME, *VENV_TOOLS]))
    assert size < 150 * MEGABYTE, f"{size / MEGABYTE:.0f} MB"
    assert "playwright" not in {d.metadata["Name"].lower() for d in closure(RUNTIME)}


STUB_PYTHON = """#!/bin/sh
# Stands in for python: `-m venv DIR` makes DIR/bin/python (this script); the rest is logged.
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
echo "$*" >> "{log}"
"""


def test_each_make_target_installs_its_own_requirements_once(tmp_path: Path):
    """`make run` installs requirements.txt, `make test` requirements-dev.txt; either after the
    other installs only what is missing, and a changed file reinstalls only where it counts."""
    clone = fresh_clone(tmp_path)
    log = tmp_path / "pip.log"
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON.replace("{log}", str(log)))
    stub.chmod(0o755)

    def install(target: str) -> list[str]:
        """Build `make <target>`'s install stamps; return the requirement files pip got."""
        log.write_text("")
        for stamp in install_stamps(clone, target):
            subprocess.run(["make", stamp, f"PYTHON={stub}"], cwd=clone, check=True)
        return re.findall(r"-r (\S+)", log.read_text())

    def would_install(target: str) -> bool:
        return "pip install" in make_dry_run(clone, target)

    assert install("run") == ["requirements.txt"]
    assert not would_install("run") and would_install("test")
    assert install("test") == ["requirements-dev.txt"]
    assert not would_install("run") and not would_install("test")

    with open(clone / "requirements-dev.txt", "a") as dev:
        dev.write("# a tool more\n")
    assert not would_install("run") and would_install("test")
    with open(clone / "requirements.txt", "a") as run:
        run.write("# a package more\n")
    assert would_install("run") and would_install("test")

    shutil.rmtree(clone / ".venv")  # the other order: `make test` first covers `make run`
    assert install("test") == ["requirements-dev.txt"]
    assert not would_install("run")


HOST_TEST = """
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import service

EXPECTED = json.loads(Path(__file__).with_name("expected.json").read_text())


def test_the_installed_service_serves_its_page(workflow_state_server):
    assert Path(service.__file__).is_relative_to(EXPECTED["site"]), service.__file__
    for path, digest in EXPECTED["files"].items():
        try:
            with urllib.request.urlopen(workflow_state_server.url + path) as answer:
                body = answer.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"GET {path}: {error.code}") from None
        assert hashlib.sha256(body).hexdigest() == digest, path
"""


def test_a_non_editable_install_serves_the_page_through_the_pytest_plugin(tmp_path: Path):
    """`pip install <checkout>` (docs/testing.md), then the plugin's fixture serves `/` and
    every file under `/static/`, from the installed package, with the checkout gone."""
    clone = fresh_clone(tmp_path)
    venv = linked_venv(tmp_path / "venv", [*RUNTIME, *VENV_TOOLS, "pytest"])
    env = {**person_env(tmp_path), "PIP_CONFIG_FILE": "/dev/null"}
    install = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", *OFFLINE_PIP, str(clone)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    static = ROOT / "service" / "static"
    files = {"/": static / "index.html"}
    files.update({f"/static/{p.relative_to(static).as_posix()}": p for p in static.rglob("*")})
    digests = {url: sha256(p.read_bytes()).hexdigest() for url, p in files.items() if p.is_file()}
    shutil.rmtree(clone)
    host = tmp_path / "host"
    host.mkdir()
    site = next((venv / "lib").glob("python3*/site-packages"))
    (host / "expected.json").write_text(json.dumps({"site": str(site), "files": digests}))
    (host / "test_host.py").write_text(HOST_TEST)
    result = subprocess.run(
        [venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", str(host)],
        cwd=host,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout

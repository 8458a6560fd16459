"""Every command in README runs as written on a fresh clone (issue 14).

README's `sh` blocks run in order, as a person would type them, in a copy of the repository
(what a clone has: no var/, no caches) that uses this checkout's installed `.venv`:

- `make test` is not run (it is this suite); it must be exactly the command `.ci/run` runs.
- A block that ends in `make run` starts the server as written, in the background; each of
  its workers must log where the state is, once; the next blocks talk to it. Only its address
  changes: `127.0.0.1:8000` becomes a free port (given as `PORT`, as README's configuration
  table says), and a Redis URL's `127.0.0.1:6379` the test's own redis-server (never the
  shared one).
- A block whose first line is `# runs until Ctrl-C` must still be running once it has printed
  something; it then gets Ctrl-C (SIGINT).
- Any other block runs under `bash -e -o pipefail`, with `curl` failing on an HTTP error.
- `# needs: redis-server` blocks get a test-owned redis-server and `REDIS_URL`. A block using
  `jq`, `curl` or `redis-cli` is skipped where that tool is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, RedisServer, free_port, http, wait_until
from tests.support.installs import fresh_clone, make_dry_run, person_env, stop_group

pytestmark = pytest.mark.slow

README = (ROOT / "README.md").read_text()
BLOCK_RE = re.compile(r"^```sh\n(.*?)^```$", re.M | re.S)
NEEDS_RE = re.compile(r"\A# needs: (.+)\n")
UNTIL_CTRL_C = "# runs until Ctrl-C\n"
DEFAULT_ADDRESS = "127.0.0.1:8000"
README_REDIS = "127.0.0.1:6379"
WORKERS = 2  # WEB_CONCURRENCY's default (README's configuration table)
TOOLS = ("curl", "jq", "redis-cli")
# A person sees an HTTP error in curl's output; a script needs the exit status for it.
PRELUDE = 'curl() { command curl --fail-with-body "$@"; }\n'


def commands(block: str) -> list[str]:
    """Return a block's lines that are not comments or blank, without trailing comments."""
    lines = (line.split(" #", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


BLOCKS = BLOCK_RE.findall(README)


@dataclass
class Session:
    """The reader's situation: a clone, the server they started last, the Redis it uses."""

    clone: Path
    env: dict[str, str]
    logs: Path
    server: subprocess.Popen | None = None
    port: int | None = None
    redis: RedisServer | None = None
    serving: int | None = None  # the index of the `make run` block that started the server

    def rewrite(self, block: str) -> str:
        """Point the block at the test's server and Redis; change nothing else."""
        if self.port is not None:
            block = block.replace(DEFAULT_ADDRESS, f"127.0.0.1:{self.port}")
        if self.redis is not None:
            block = block.replace(README_REDIS, f"127.0.0.1:{self.redis.port}")
        assert README_REDIS not in block, "a README block would touch the shared Redis"
        return block

    def block_env(self, block: str) -> dict[str, str]:
        """The reader's environment; a `# needs: redis-server` block has REDIS_URL set."""
        env = dict(self.env)
        if needs_of(block) == "redis-server":
            env["REDIS_URL"] = self.redis.url
        return env

    def provide(self, needs: str | None) -> None:
        """Give a block what its `# needs:` line asks for, or skip it."""
        if needs == "redis-server":
            if self.redis is None:
                self.redis = RedisServer().start()
        else:
            assert needs is None, f"unknown '# needs:' {needs!r}"

    def serve_as_before(self, index: int) -> None:
        """Have the server running that the reader started last before block `index`."""
        started = [i for i in range(index) if is_server(BLOCKS[i])]
        assert started, "the README starts the server before it uses it"
        if self.serving != started[-1]:
            self.provide(needs_of(BLOCKS[started[-1]]))
            self.start_server(started[-1])

    def start_server(self, index: int) -> None:
        """Run a `make run` block in the background and wait until it serves."""
        block = BLOCKS[index]
        self.stop_server()  # the reader stops the old one first: both want the same port
        self.serving = index
        self.port = free_port()
        log = self.logs / f"server-{self.port}.log"
        env = {**self.block_env(block), "PORT": str(self.port)}
        with open(log, "wb") as out:
            self.server = subprocess.Popen(
                ["bash", "-e", "-c", self.rewrite(block)],
                cwd=self.clone,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def serving_or_exited() -> bool:
            if self.server.poll() is not None:
                return True
            return http("GET", f"http://127.0.0.1:{self.port}/healthz", timeout=2)[0] == 200

        wait_until(serving_or_exited, timeout=60, interval=0.1)
        assert self.server.poll() is None, f"make run exited:\n{log.read_text()[-3000:]}"
        expected = (
            f"storage: redis at {self.redis.url}"
            if "REDIS_URL" in block
            else f"storage: file at {self.clone}/var/workflow_state.json"
        )

        def logged_by_each_worker() -> bool:
            # Text lines carry "[<pid>] service.store"; README's default is 2 workers.
            pids = re.findall(
                rf"\[(\d+)\] service\.store \[-\] {re.escape(expected)}$", log.read_text(), re.M
            )
            assert len(pids) == len(set(pids)), "a worker logged its storage line twice"
            return len(pids) == WORKERS

        wait_until(logged_by_each_worker, timeout=10)

    def stop_server(self) -> None:
        """Ctrl-C the server (make, gunicorn and its workers: one process group)."""
        if self.server is None:
            return
        stop_group(self.server)
        self.server = None

    def close(self) -> None:
        self.stop_server()
        if self.redis is not None:
            self.redis.close()


def make_run_would_install(clone: Path) -> bool:
    """Tell whether `make run` would (re)install the venv: never do that to the shared one."""
    return "pip install" in make_dry_run(clone, "run")


@pytest.fixture(scope="module")
def session() -> Session:
    """The clone and the processes the README's blocks start, shared by the blocks in order."""
    if shutil.which("make") is None:
        pytest.skip("make is missing")
    directory = Path(tempfile.mkdtemp(prefix="wss-readme-"))
    clone = fresh_clone(directory, venv=Path(sys.executable).parent.parent)
    if make_run_would_install(clone):
        pytest.skip("make run would install into the shared .venv (its install stamp is stale)")
    current = Session(clone=clone, env=person_env(directory), logs=directory)
    yield current
    current.close()
    shutil.rmtree(directory, ignore_errors=True)


def is_server(block: str) -> bool:
    """Tell whether a block starts the server (its last command is `make run`)."""
    lines = commands(block)
    return bool(lines) and lines[-1].endswith("make run")


def needs_of(block: str) -> str | None:
    match = NEEDS_RE.match(block)
    return match.group(1).strip() if match else None


def block_id(index: int, block: str) -> str:
    first = commands(block)[0] if commands(block) else "empty"
    return f"{index + 1:02d}-{re.sub(r'[^a-z0-9]+', '-', first.lower())[:40].strip('-')}"


def test_readme_is_short_and_has_blocks():
    assert len(README.splitlines()) <= 300
    assert any(commands(b) == ["make run"] for b in BLOCKS)
    assert any(commands(b) == ["make test"] for b in BLOCKS)


def test_readme_links_point_at_files_that_exist():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), target


def test_examples_run_the_cli_from_the_venv():
    """Plain `python -m service` fails outside the venv: examples say `.venv/bin/python`."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"^```\w*\n(.*?)^```$", page.read_text(), re.M | re.S):
            for line in block.splitlines():
                bare = re.search(r"(^|[\s$;&|(])python3? -m service\b", line)
                assert not bare, f"{page.name}: {line.strip()}"


@pytest.mark.parametrize(
    "index", range(len(BLOCKS)), ids=[block_id(i, b) for i, b in enumerate(BLOCKS)]
)
def test_readme_block_runs_as_written(session: Session, index: int):
    block = BLOCKS[index]
    if commands(block) == ["make test"]:
        ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
        ci_commands = [line for line in ci if line and not line.startswith("#")]
        assert ci_commands[-1] == "make test", "README's test command is what CI runs"
        return
    for tool in TOOLS:
        if re.search(rf"(^|[\s|(]){re.escape(tool)}\s", block, re.M) and not shutil.which(tool):
            pytest.skip(f"{tool} is missing")
    if is_server(block):
        session.provide(needs_of(block))
        session.start_server(index)
        return
    session.serve_as_before(index)
    session.provide(needs_of(block))
    script = PRELUDE + session.rewrite(block)
    if block.startswith(UNTIL_CTRL_C):
        run_until_ctrl_c(session, block, script)
        return
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=session.clone,
        env=session.block_env(block),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def run_until_ctrl_c(session: Session, block: str, script: str) -> None:
    """Run a block that follows something live; it must be running and printing at Ctrl-C."""
    output = session.logs / "follow.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=session.clone,
            env=session.block_env(block),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: process.poll() is not None or output.stat().st_size > 0, timeout=20)
        assert process.poll() is None, f"it stopped by itself:\n{output.read_text()}"
    finally:
        stop_group(process)

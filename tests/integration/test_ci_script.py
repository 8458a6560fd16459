""".ci/run installs what the tests need and runs them the same without a terminal, with no
standard input, in the background with SIGINT ignored. apt-get, sudo and make are stand-ins here
that record what they were asked; everything else is the real script under real bash."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support import ROOT

BASH = shutil.which("bash") or "/bin/bash"
STAND_IN = """#!{bash}
printf '%s\\n' "$(basename "$0") $*" >> {log}
"""
# make records whether it has a terminal and whether SIGINT reaches it ignored (bit 2 of SigIgn).
MAKE = """#!{bash}
printf 'make %s\\n' "$*" >> {log}
if [ -t 0 ] || [ -t 1 ]; then echo "make: terminal" >> {log}; fi
mask=$(awk '/^SigIgn:/ {{print $2}}' /proc/$$/status)
if (( (16#$mask >> 1) & 1 )); then echo "make: SIGINT ignored" >> {log}; fi
"""


def run_ci(tmp_path: Path, present: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, str]:
    """Run .ci/run with only the given commands on PATH, as CI starts it; return what ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    log.touch()
    for tool in ("bash", "dirname", "id", "basename", "awk", "env"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for tool in ("apt-get", "sudo", *present):
        (bin_dir / tool).write_text(STAND_IN.format(bash=BASH, log=log))
    (bin_dir / "sudo").write_text(STAND_IN.format(bash=BASH, log=log) + 'exec "$@"\n')
    (bin_dir / "make").write_text(MAKE.format(bash=BASH, log=log))
    for stub in bin_dir.iterdir():
        if not stub.is_symlink():
            stub.chmod(0o755)
    result = subprocess.run(
        [BASH, "-c", "(trap '' INT; CI=true bash .ci/run </dev/null) & wait $!"],
        cwd=ROOT,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # no controlling terminal
    )
    return result, log.read_text()


def test_ci_installs_nginx_and_sentinel_when_missing_and_runs_without_a_terminal(tmp_path):
    result, calls = run_ci(tmp_path, present=())
    assert result.returncode == 0, result.stderr
    installed = {
        word
        for line in calls.splitlines()
        if line.startswith("apt-get install ")
        for word in line.split()[2:]
        if not word.startswith("-")
    }
    assert {"redis-server", "redis-sentinel", "chromium", "nginx-light"} <= installed
    if os.geteuid() != 0:
        assert "sudo -n " in calls  # never a password prompt
    assert "make test" in calls.splitlines()
    assert "make: terminal" not in calls
    assert "make: SIGINT ignored" in calls  # started as the brief says, and still it ran


def test_ci_installs_nothing_when_everything_is_there(tmp_path):
    present = ("redis-server", "redis-sentinel", "chromium", "nginx")
    result, calls = run_ci(tmp_path, present=present)
    assert result.returncode == 0, result.stderr
    assert "apt-get" not in calls
    assert "make test" in calls.splitlines()

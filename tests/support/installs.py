"""Checkouts and environments as a person has them, made from this checkout and its .venv
without a package index: a copy of the checkout as a clone has it, and a venv that holds only
some of the installed distributions (what pip would install for a few pins), linked, not copied.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from importlib.metadata import Distribution, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.processes import ROOT

# What a fresh clone lacks: never copied.
NOT_IN_A_CLONE = (".git", ".venv", "var", "__pycache__", "*.pyc", "*_cache", ".hypothesis")
NOT_IN_A_CLONE += ("test-results", "*.egg-info", "build")
# The files the Makefile's install stamps are made from.
MAKE_INPUTS = ("requirements.txt", "requirements-dev.txt", "pyproject.toml")
SCRIPT = "#!{python}\nimport sys\nfrom {module} import {head}\nsys.exit({attr}())\n"


def fresh_clone(target: Path, venv: Path | None = None) -> Path:
    """Copy the checkout as a clone has it into `target`/clone; with `venv`, share that one."""
    clone = target / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE), symlinks=True)
    if venv is not None:
        (clone / ".venv").symlink_to(venv)
        mark_installed(clone)
    return clone


def mark_installed(clone: Path) -> None:
    """Date the clone's install inputs before its venv's newest install stamp.

    The copy's files are newer than the stamps; in a real clone the install came after checkout.
    """
    stamps = [*(clone / ".venv").glob(".installed-*"), *(clone / ".venv").glob(".run-*")]
    if stamps:
        before = max(stamp.stat().st_mtime for stamp in stamps) - 60
        for name in MAKE_INPUTS:
            os.utime(clone / name, (before, before))


def make_dry_run(clone: Path, *arguments: str) -> str:
    """Return what `make -n <arguments>` would run in the clone."""
    return subprocess.run(
        ["make", "-n", *arguments], cwd=clone, capture_output=True, text=True, check=True
    ).stdout


def install_stamps(clone: Path, target: str) -> list[str]:
    """Return the stamp files (relative to the clone) that `make <target>`'s install touches."""
    touched = re.findall(r"^touch (.+)$", make_dry_run(clone, "-B", target), re.M)
    return re.findall(r"\.venv/\.[\w-]+", " ".join(touched))


def person_env(home: Path) -> dict[str, str]:
    """Return the environment of a person at a shell: a PATH, a home, a language, nothing else."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


def pins(requirements: Path) -> list[str]:
    """Return a requirements file's requirement lines (no comments, options or includes)."""
    lines = (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def closure(requirements: Iterable[str]) -> list[Distribution]:
    """Return the installed distributions pip would install for `requirements`: each one and,
    transitively, what it requires (with the extras asked for; markers for this interpreter)."""
    found: dict[str, Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [Requirement(line) for line in requirements]
    while todo:
        wanted = todo.pop()
        name = canonicalize_name(wanted.name)
        installed = found.setdefault(name, distribution(wanted.name))
        assert wanted.specifier.contains(installed.version, prereleases=True), (
            f"{wanted} is pinned but .venv has {installed.version}: reinstall it (make test)"
        )
        for extra in {"", *wanted.extras} - {e for n, e in done if n == name}:
            done.add((name, extra))
            for line in installed.requires or ():
                needed = Requirement(line)
                if needed.marker is None or needed.marker.evaluate({"extra": extra}):
                    todo.append(needed)
    return list(found.values())


def installed_bytes(distributions: Iterable[Distribution]) -> int:
    """Return the size of the files the distributions installed."""
    paths = (Path(d.locate_file(f)) for d in distributions for f in d.files or ())
    return sum(path.stat().st_size for path in paths if path.is_file())


def linked_venv(target: Path, requirements: Iterable[str]) -> Path:
    """Make a venv at `target` holding only `closure(requirements)`, linked from this one.

    Each distribution's files are symlinks to this interpreter's (instant, no index); its
    console scripts are written as pip writes them. Returns `target`.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    base = {"base": str(target), "platbase": str(target)}
    site = Path(sysconfig.get_path("purelib", vars=base))
    python = target / "bin" / "python"
    for installed in closure(requirements):
        for file in installed.files or ():
            source = Path(installed.locate_file(file))
            destination = site / file
            # Scripts (`../../../bin/...`) are written below, for this venv's python.
            if file.parts[0] == ".." or not source.is_file() or destination.exists():
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.symlink_to(source)
        for entry in installed.entry_points.select(group="console_scripts"):
            script = target / "bin" / entry.name
            head = entry.attr.split(".")[0]
            script.write_text(
                SCRIPT.format(python=python, module=entry.module, head=head, attr=entry.attr)
            )
            script.chmod(0o755)
    return target


def stop_group(process: subprocess.Popen) -> None:
    """Send Ctrl-C to a process group; kill it if it does not stop."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

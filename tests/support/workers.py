"""`python -m service worker` processes the tests own: start them, SIGKILL, SIGSTOP and SIGCONT
them, and clean up after (a paused worker is resumed before it is killed).

    workers = Workers({"WORKFLOW_STATE_URL": redis.url, "WORKFLOW_RUN_LEASE": "1.5"})
    first = workers.start()
    ...
    workers.by_pid(pid).kill()
    workers.close()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.processes import ROOT, wait_until

# What RQ logs once a worker waits on the queue.
LISTENING = "*** Listening on"


class Worker:
    """One `python -m service worker` process (with WORKFLOW_RUN_WORKERS > 1, a pool's parent)."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in `wait`
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self.paused = False

    def output(self) -> str:
        """Return what the worker has logged so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """Tell whether the process is still running."""
        return self.process.poll() is None

    def wait_listening(self, count: int = 1, timeout: float = 20) -> Worker:
        """Wait until `count` RQ workers of this process listen on the queue."""

        def listening() -> bool:
            if not self.alive():
                raise RuntimeError(f"worker exited: {self.output()[-3000:]}")
            return self.output().count(LISTENING) >= count

        wait_until(listening, timeout=timeout, interval=0.05)
        return self

    def children(self) -> list[int]:
        """Return the pids of a pool's worker processes."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]

    def signal(self, signum: int) -> None:
        """Send `signum` to the worker process."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL it: a crash, no clean-up of any kind."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def pause(self) -> None:
        """SIGSTOP it (a long GC pause, a frozen VM)."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT it."""
        self.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM it and wait for it to exit; return its exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit code."""
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is not None:
                self._log.close()

    def close(self) -> None:
        """Make sure it is gone: resumed if paused, then killed with its process group."""
        if self.paused:
            self.resume()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()


class Workers:
    """Start and own worker processes, all with the same settings (plus each one's own)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.directory = Path(tempfile.mkdtemp(prefix="wss-workers-"))
        self.started: list[Worker] = []

    def start(self, *args: str, count: int = 1, wait: bool = True, **env: str) -> Worker:
        """Start one worker process (`count` RQ workers in it) and wait until it listens."""
        log_path = self.directory / f"worker-{len(self.started)}.log"
        worker = Worker({**self.env, **env, "WORKFLOW_RUN_WORKERS": str(count)}, log_path, args)
        self.started.append(worker)
        return worker.wait_listening(count) if wait else worker

    def by_pid(self, pid: int) -> Worker:
        """Return the worker with this pid."""
        return next(worker for worker in self.started if worker.pid == pid)

    def output(self) -> str:
        """Return every worker's log, one after the other."""
        return "\n".join(worker.output() for worker in self.started)

    def close(self) -> None:
        """Stop every worker (resuming paused ones first)."""
        for worker in self.started:
            worker.close()

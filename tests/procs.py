"""Helpers for tests that run the real `votechain` command in child processes.

- `run(*args)`: one `python -m votechain ARGS` to completion (stdout, stderr, status).
- `Processes`: long-running children (tracker, peers); `start()` returns once
  the child printed its "listening on HOST:PORT" line, under a deadline, and
  `stop_all()` (call it from a fixture finalizer) SIGTERMs every one of them,
  then SIGKILLs whatever is left after a grace period.

Children run the votechain this test imports (see `votechain.app.demo.child_env`),
with their stderr in a log file whose tail is shown when a start fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from votechain.app.demo import START_TIMEOUT, STOP_GRACE, ChildProcess, child_env, stop_all

__all__ = ["ChildProcess", "Processes", "run"]


def run(
    *args: str, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m votechain ARGS` to the end; fails the test if it takes over `timeout` s."""
    return subprocess.run(
        [sys.executable, "-m", "votechain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class Processes:
    """Children started by one test, all stopped by `stop_all()`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[ChildProcess] = []

    def start(self, name: str, *args: str, timeout: float = START_TIMEOUT) -> ChildProcess:
        """Start `votechain ARGS` and wait for its listening line; `.address` is then set."""
        child = ChildProcess(name, list(args), self.log_dir / f"{name}.log")
        self.children.append(child)
        child.wait_listening(timeout)
        return child

    def stop(self, child: ChildProcess, grace: float = STOP_GRACE) -> int:
        """Stop one child (SIGTERM, SIGKILL after `grace`); its exit status."""
        return child.stop(grace)

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        # Peers before the tracker, so they do not spend their exit retrying it.
        stop_all(reversed(self.children), grace)

"""Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group,
the command and every miner worker it spawned. The command stops cleanly, with
the exit status the CLI documents (0 for a peer, whose stop signal it is; 130
for a command it interrupts), and prints at most one line: no traceback from
any worker, no "worker died" for a worker the parent stopped itself.

Each command runs in a process group of its own (as a shell's job would), so
the signal reaches it and its workers and nothing of this test run. Its stderr
goes to a file; only what it wrote after the signal is judged, since a peer
may warn about its data directory at start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.members import Organizer
from framework.processes import ChildProcess, child_pids, wait_for
from framework.waiting import timeout_factor
from votechain.app.demo import child_env

pytestmark = pytest.mark.slow

WORKERS = 3
# A vote at this difficulty is not mined in the test's lifetime (16**8 = 4.3e9
# hashes: over a minute even for the AVX-512 kernel), so the workers are surely
# busy when the signal comes.
BUSY_DIFFICULTY = 8
STOP_DEADLINE = 30.0


class Job:
    """`python -m votechain ARGS` in its own process group, stderr to a file."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "votechain", *args], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr, env=child_env(), process_group=0,
            )
        self.mark = 0

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def ctrl_c(self) -> tuple[int, str]:
        """SIGINT to the group, as a terminal's Ctrl-C; (exit status, stderr written since)."""
        self.mark = self.stderr_path.stat().st_size
        os.killpg(self.popen.pid, signal.SIGINT)
        try:
            self.popen.communicate(timeout=STOP_DEADLINE * timeout_factor())
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.popen.returncode, self.stderr_path.read_bytes()[self.mark:].decode(
            errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def assert_quiet(code: int, expected: int, after: str, whole: str) -> None:
    lines = after.strip().splitlines()
    assert code == expected, f"exit status {code}, expected {expected}; stderr:\n{whole}"
    assert len(lines) <= 1, f"more than one line after Ctrl-C:\n{after}"
    assert "Traceback" not in whole, whole
    assert "KeyboardInterrupt" not in whole, whole
    assert "died" not in whole, whole


def miner_workers(pid: int) -> list[int]:
    """The MinerPool workers among `pid`'s children (multiprocessing's spawned
    interpreters; not its resource tracker, which sleeps throughout)."""
    workers = []
    for child in child_pids(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    child = ChildProcess("tracker", ["tracker", "--port", "0"], tmp_path / "tracker.log")
    try:
        yield child.wait_listening()
    finally:
        child.stop()


def start_peer(tmp_path: Path, tracker: tuple[str, int], difficulty: int) -> tuple[Job, Path]:
    organizer = Organizer(tmp_path / "organizer", "signals", difficulty)
    data_dir = tmp_path / "peer"
    organizer.admit(data_dir, "peer")
    job = Job(["peer", "--tracker", f"{tracker[0]}:{tracker[1]}", "--network",
               str(organizer.network_path), "--data-dir", str(data_dir),
               "--workers", str(WORKERS), "-q"], tmp_path / "peer.stderr")
    assert job.popen.stdout is not None
    line = job.popen.stdout.readline()
    assert b"listening on" in line, job.stderr_text()
    return job, data_dir


def test_ctrl_c_on_an_idle_peer(tmp_path: Path, tracker: tuple[str, int]) -> None:
    job, _ = start_peer(tmp_path, tracker, difficulty=3)
    try:
        assert len(miner_workers(job.popen.pid)) == WORKERS
        code, after = job.ctrl_c()
    finally:
        job.kill()
    assert_quiet(code, 0, after, job.stderr_text())


def test_ctrl_c_on_a_peer_while_its_workers_mine(tmp_path: Path,
                                                 tracker: tuple[str, int]) -> None:
    job, data_dir = start_peer(tmp_path, tracker, difficulty=BUSY_DIFFICULTY)
    # A vote from another terminal (not in the peer's group): it keeps the workers busy.
    voter = subprocess.Popen(
        [sys.executable, "-m", "votechain", "vote", "--data-dir", str(data_dir),
         "--timeout", "120", "blue"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=child_env(), start_new_session=True)
    try:
        workers = miner_workers(job.popen.pid)
        assert len(workers) == WORKERS

        def mining() -> bool:
            # Every worker on a CPU or ready for one: the job reached them all.
            states = [Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                      for pid in workers]
            return all(state == "R" for state in states)

        wait_for(mining, 20.0, "the workers to be mining the vote")
        code, after = job.ctrl_c()
    finally:
        job.kill()
        voter.kill()
        voter.wait()
    assert_quiet(code, 0, after, job.stderr_text())


def test_ctrl_c_on_bench_while_the_pool_runs(tmp_path: Path) -> None:
    from votechain import mining

    job = Job(["bench", "--backend", mining.DEFAULT_BACKEND, "--workers", str(WORKERS),
               "--seconds", "20", "--json"], tmp_path / "bench.stderr")
    try:
        deadline = time.monotonic() + 20.0 * timeout_factor()
        while len(miner_workers(job.popen.pid)) < WORKERS:  # the pool's workers are up
            assert job.popen.poll() is None, job.stderr_text()
            assert time.monotonic() < deadline, "bench started no pool"
            time.sleep(0.05)
        time.sleep(0.5)  # into the measurement
        code, after = job.ctrl_c()
    finally:
        job.kill()
    assert_quiet(code, 130, after, job.stderr_text())


def test_ctrl_c_on_the_demo_while_it_votes(tmp_path: Path) -> None:
    # The demo, its tracker, its peers and their workers all get the signal.
    job = Job(["demo", "--peers", "2", "--votes", "20", "--difficulty", "6"],
              tmp_path / "demo.stderr")
    try:
        def peers_mining() -> bool:
            peers = [pid for pid in child_pids(job.popen.pid) if miner_workers(pid)]
            return len(peers) == 2

        wait_for(peers_mining, 60.0, "the demo's two peers to start their miners")
        code, after = job.ctrl_c()
    finally:
        job.kill()
    assert_quiet(code, 130, after, job.stderr_text())

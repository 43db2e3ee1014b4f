"""Real `votechain` processes for the end-to-end and fault tests.

- `run(*args)`: one `python -m votechain ARGS` to completion (stdout, stderr, status).
- `Processes`: long-running children (tracker, peers); `start()` returns once
  the child printed its "listening on HOST:PORT" line, under a deadline, and
  `stop_all()` SIGTERMs every one of them, then SIGKILLs whatever is left after
  a grace period.
- `Cluster`: trackers and peers for fault injection, each peer bound to its data
  directory (`Peer`) so it can be SIGKILLed, frozen with SIGSTOP, resumed and
  restarted on the same directory; `stop_all()` resumes whatever is frozen,
  then stops everything, miner workers included. Its `wait_converged` and
  `wait_peers_listed` are the process twins of `framework.network`'s helpers.
  A cluster is one members-only network: its `organizer`
  (`framework.members.Organizer`, created on first use) admits each peer's
  data directory before the peer starts with `--network`, as an organizer
  would with `votechain network admit`; `add_peers(..., observer=True)`
  starts observers instead, admitted to nothing.
- `wait_for`: `wait_until` for conditions read from processes, where a node
  restarting (control socket refused, database locked) means "not yet".

Children run the votechain this test imports (see `votechain.app.demo.child_env`),
with their stderr in a log file whose tail is shown when a start fails. They
inherit VOTECHAIN_PURE_PYTHON, so in the pure run they mine pure too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from framework.members import Organizer
from framework.waiting import wait_until
from votechain.app.demo import START_TIMEOUT, STOP_GRACE, ChildProcess, child_env, stop_all
from votechain.errors import ControlError, TrackerError
from votechain.net.control_client import ControlClient
from votechain.net.tracker_client import fetch_nodes
from votechain.node.membership_files import CERTIFICATE_FILE

__all__ = [
    "NOT_YET",
    "ChildProcess",
    "Cluster",
    "Peer",
    "Processes",
    "child_pids",
    "run",
    "wait_for",
]

Address = tuple[str, int]

# What a condition read from a process may raise while that process is being
# killed or restarted: its control socket refused or reset, its tracker gone, its
# database locked mid-write. Each means "not yet", not a failure.
NOT_YET: tuple[type[Exception], ...] = (ControlError, TrackerError, OSError, sqlite3.Error)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """`wait_until(predicate, timeout, what=what)`, NOT_YET errors counting as false."""
    wait_until(predicate, timeout, what=what, ignoring=NOT_YET)


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


# ================================================================ fault injection


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc), e.g. a peer's miner workers."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    return pids


class Peer:
    """One peer's data directory and the process currently running on it (if any)."""

    def __init__(self, name: str, data_dir: Path, args: list[str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.args = args
        self.child: ChildProcess | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.child is not None, f"{self.name} is not running"
        return self.child.popen.pid

    @property
    def address(self) -> Address:
        assert self.child is not None and self.child.address is not None
        return self.child.address

    @property
    def log_path(self) -> Path:
        assert self.child is not None
        return self.child.log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 10.0) -> ControlClient:
        return ControlClient.from_data_dir(self.data_dir, timeout=timeout)

    def status(self) -> dict[str, object]:
        return self.client().status()

    def tally(self) -> dict[str, int]:
        return self.client().tally()

    def vote(self, category: str, timeout: float = 30.0) -> int:
        """Cast a vote and wait until it is mined here; returns its block id."""
        block_id, _hash = self.client().vote(category, timeout=timeout)
        return block_id


class Cluster:
    """Every tracker and peer one test starts; `stop_all()` undoes it all."""

    def __init__(self, root: Path, difficulty: int = 3, seats: int = 0) -> None:
        self.root = root
        self.difficulty = difficulty
        self.seats = seats  # the network's member count (finality); 0: none named
        self.children: list[ChildProcess] = []
        self.frozen: set[int] = set()
        self.peers: list[Peer] = []
        self._logs = itertools.count()
        self._organizer: Organizer | None = None

    @property
    def organizer(self) -> Organizer:
        """The cluster's network and its authority, made on first use (an RSA key,
        ~0.1 s) in a directory of its own beside the peers' data directories."""
        if self._organizer is None:
            self._organizer = Organizer(self.root / "organizer", "cluster", self.difficulty,
                                        self.seats)
        return self._organizer

    @property
    def network_path(self) -> Path:
        """NAME.network: what every peer of this cluster starts with, and what
        `votechain verify --network` checks a data directory against."""
        return self.organizer.network_path

    def _spawn(self, name: str, args: list[str]) -> ChildProcess:
        log = self.root / f"{name}.{next(self._logs)}.log"
        child = ChildProcess(name, args, log)
        self.children.append(child)
        return child

    def tracker(self, port: int = 0, name: str = "tracker") -> ChildProcess:
        child = self._spawn(name, ["tracker", "--port", str(port)])
        child.wait_listening(START_TIMEOUT)
        return child

    def add_peers(self, names: Iterable[str], tracker: Address, *extra: str,
                  observer: bool = False) -> list[Peer]:
        """Start one peer per name against `tracker`, all at once (startup is a
        miner spawn: seconds each on a loaded machine). Each is admitted to the
        cluster's network first (its key made then), unless it is an observer."""
        peers = []
        for name in names:
            data_dir = self.root / name
            if not observer and not (data_dir / CERTIFICATE_FILE).exists():
                self.organizer.admit(data_dir, name)
            args = ["peer", "--tracker", f"{tracker[0]}:{tracker[1]}",
                    "--network", str(self.network_path), "--data-dir", str(data_dir),
                    "--workers", "1", *(["--observer"] if observer else []), *extra]  # fmt: skip
            peers.append(Peer(name, data_dir, args))
        self.peers += peers
        self._start(peers)
        return peers

    def _start(self, peers: list[Peer]) -> None:
        for peer in peers:
            peer.child = self._spawn(peer.name, peer.args)
            peer.starts += 1
        for peer in peers:
            assert peer.child is not None
            peer.child.wait_listening(START_TIMEOUT)

    def restart(self, *peers: Peer) -> None:
        """Start each (stopped or killed) peer again on its data directory."""
        for peer in peers:
            assert peer.child is None or peer.child.popen.poll() is not None
        self._start(list(peers))

    def kill9(self, peer: Peer) -> None:
        """SIGKILL the peer (no handler runs, no file is cleaned up), then its miner
        workers, which would otherwise notice the closed pipe and exit by themselves
        unless a test froze them."""
        assert peer.child is not None
        workers = child_pids(peer.pid)
        peer.child.popen.send_signal(signal.SIGKILL)
        peer.child.finish(10)
        for pid in workers:
            self.frozen.discard(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill9_tracker(self, tracker: ChildProcess) -> None:
        tracker.popen.send_signal(signal.SIGKILL)
        tracker.finish(10)

    def freeze(self, pid: int) -> None:
        self.frozen.add(pid)
        os.kill(pid, signal.SIGSTOP)

    def thaw(self, pid: int) -> None:
        self.frozen.discard(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def stop_all(self) -> None:
        for pid in list(self.frozen):
            self.thaw(pid)
        # Peers before trackers, so they do not spend their exit retrying them.
        stop_all(reversed(self.children))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    # ------------------------------------------------------------ conditions

    def running(self) -> list[Peer]:
        return [p for p in self.peers if p.child is not None and p.child.popen.poll() is None]

    def tips(self, peers: Iterable[Peer]) -> set[object]:
        return {p.status()["tip"] for p in peers}

    def wait_converged(self, peers: list[Peer], votes: Iterable[str], timeout: float) -> None:
        """Wait until `peers` share one tip and each holds every one of `votes`."""
        wanted = set(votes)

        def done() -> bool:
            if len(self.tips(peers)) != 1:
                return False
            return all(wanted <= set(p.tally()) for p in peers)

        wait_for(done, timeout, f"{', '.join(p.name for p in peers)} to agree on {len(wanted)}"
                                " votes")  # fmt: skip

    def wait_peers_listed(self, tracker: Address, peers: Iterable[Peer], timeout: float) -> None:
        wanted = {p.address[1] for p in peers}
        wait_for(lambda: wanted <= {port for _, port in fetch_nodes(*tracker)}, timeout,
                 f"the tracker at {tracker[0]}:{tracker[1]} to list {len(wanted)} peers")

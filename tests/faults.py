"""Fault injection for tests that run real `votechain` processes.

- `Cluster`: trackers and peers as child processes (tests/procs.py underneath),
  each peer bound to its data directory so it can be SIGKILLed, frozen with
  SIGSTOP, resumed and restarted on the same directory. `stop_all()` (from a
  finalizer) resumes whatever is frozen, then stops everything, miner workers
  included.
- `TcpProxy`: a relay whose target can be switched, cutting every connection it
  carries. The partition tests use it as group 2's tracker (see `test_faults.py`).
- Readers of a data directory that need no running node: the votes in its chain
  (`chain_votes`) and in its pending table (`pending_votes`).

Votes carry unique categories (`unique_category`), so "every accepted vote is in
the chain exactly once" is a check on the tally: each of those categories counts 1.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from procs import ChildProcess, run
from votechain.app.demo import START_TIMEOUT, stop_all
from votechain.errors import ControlError, TrackerError
from votechain.net.control import ControlClient
from votechain.net.tracker import fetch_nodes
from votechain.node.store import DB_FILE, ChainStore

Address = tuple[str, int]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` (which may raise ControlError while a node restarts) until true."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ControlError, TrackerError, OSError, sqlite3.Error):
            if predicate():
                return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


_counter = itertools.count()


def unique_category(prefix: str) -> str:
    """A category no other vote uses, so its tally count says how often it was mined."""
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:12]}"


# ================================================================ reading a data directory


def chain_votes(data_dir: Path) -> list[str]:
    """The vote categories in the stored chain, in block order (works while the node runs)."""
    store = ChainStore.open_readonly(data_dir)
    try:
        return [b.transaction.data.decode() for b in store.blocks()[1:]]
    finally:
        store.close()


def pending_votes(data_dir: Path) -> list[str]:
    """The categories in the node's SQLite pending table (accepted, not yet mined)."""
    uri = f"file:{Path(data_dir) / DB_FILE}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return [bytes(d).decode() for (d,) in db.execute("SELECT data FROM pending")]


def verify(data_dir: Path) -> None:
    """`votechain verify --data-dir` must exit 0."""
    result = run("verify", "--data-dir", str(data_dir))
    assert result.returncode == 0, f"verify {data_dir}: {result.stderr.strip()}"


# ================================================================ processes


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

    def __init__(self, root: Path, difficulty: int = 3) -> None:
        self.root = root
        self.difficulty = difficulty
        self.children: list[ChildProcess] = []
        self.frozen: set[int] = set()
        self.peers: list[Peer] = []
        self._logs = itertools.count()

    def _spawn(self, name: str, args: list[str]) -> ChildProcess:
        log = self.root / f"{name}.{next(self._logs)}.log"
        child = ChildProcess(name, args, log)
        self.children.append(child)
        return child

    def tracker(self, port: int = 0, name: str = "tracker") -> ChildProcess:
        child = self._spawn(name, ["tracker", "--port", str(port)])
        child.wait_listening(START_TIMEOUT)
        return child

    def add_peers(self, names: Iterable[str], tracker: Address, *extra: str) -> list[Peer]:
        """Start one peer per name against `tracker`, all at once (startup is
        RSA key generation and a miner spawn: seconds each on a loaded machine)."""
        peers = []
        for name in names:
            args = ["peer", "--tracker", f"{tracker[0]}:{tracker[1]}",
                    "--data-dir", str(self.root / name), "--difficulty", str(self.difficulty),
                    "--workers", "1", *extra]  # fmt: skip
            peers.append(Peer(name, self.root / name, args))
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


def assert_exactly_once(peer: Peer, votes: Iterable[str]) -> Counter[str]:
    """Each of `votes` counts exactly 1 in the peer's tally, and no category counts more."""
    tally = Counter(peer.tally())
    missing = [v for v in votes if tally[v] != 1]
    assert not missing, f"{peer.name}: votes not exactly once: {[(v, tally[v]) for v in missing]}"
    dupes = {c: n for c, n in tally.items() if n > 1}
    assert not dupes, f"{peer.name}: duplicated votes {dupes}"
    return tally


# ================================================================ a switchable TCP relay


class TcpProxy:
    """Listens on 127.0.0.1 and relays each connection to `target`.

    `retarget(new)` sends later connections to `new` and cuts every connection it
    is carrying, so the clients reconnect and land on the new target; a target of
    None refuses connections (accepts and closes them at once)."""

    def __init__(self, target: Address | None) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: Address = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="tcp-proxy")
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                target = self.target
            if target is None or self._closed:
                client.close()
                continue
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                 name="tcp-proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._cut(src, dst)

    def _cut(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                if sock not in self._open:
                    continue
                self._open.discard(sock)
            sock.close()

    def retarget(self, target: Address | None) -> None:
        with self._lock:
            self.target = target
            carried = list(self._open)
        self._cut(*carried)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.retarget(None)
        self._thread.join(5)

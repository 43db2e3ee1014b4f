"""Fault injection for tests that run real `votechain` processes.

- `Cluster`, `Peer`, `child_pids`, `wait_for`: the processes themselves, in
  `framework.processes` (re-exported here): peers that can be SIGKILLed, frozen
  with SIGSTOP, resumed and restarted on their data directory.
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
import socket
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from framework.processes import NOT_YET, Cluster, Peer, child_pids, run, wait_for
from votechain.node.store import DB_FILE, ChainStore

__all__ = [
    "NOT_YET",
    "Cluster",
    "Peer",
    "TcpProxy",
    "assert_exactly_once",
    "chain_votes",
    "child_pids",
    "pending_votes",
    "unique_category",
    "verify",
    "wait_for",
]

Address = tuple[str, int]


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
        self._pumps: list[threading.Thread] = []  # joined by close()
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
                pump = threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                        name="tcp-proxy-pump")
                pump.start()
                self._pumps.append(pump)

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
        self._thread.join(5)
        # No connection can come in any more: cut the ones carried, and their
        # pumps (which end when their sockets do) with them.
        self.retarget(None)
        for pump in self._pumps:
            pump.join(5)

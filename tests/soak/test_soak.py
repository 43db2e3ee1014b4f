"""Soak: 5 peers on loopback, votes cast continuously on all of them from several
threads, one peer SIGKILLed and restarted every so often (`make soak`).

At the end every peer must hold the same chain, every vote whose call returned
success must be in it exactly once, no vote may be in it twice, and `votechain
verify` must pass on every data directory. The figures are printed (run with -s,
as `make soak` does).

SOAK_SECONDS (default 120) is how long votes are cast; SOAK_KILL_EVERY (default
15) how often a peer is killed. A vote whose call failed (its peer was killed
under it) may or may not have been accepted; it is counted apart and must still
be in the chain at most once.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from faults import unique_category, verify
from framework.processes import Cluster, Peer, wait_for
from votechain.errors import ControlError

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
KILL_EVERY = float(os.environ.get("SOAK_KILL_EVERY", "15"))
PEERS = 5
VOTERS_PER_PEER = 2
DIFFICULTY = 4
VOTE_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 180.0

pytestmark = [pytest.mark.soak, pytest.mark.timeout(SOAK_SECONDS + CONVERGE_TIMEOUT + 300)]


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kills: int = 0
    forks_before_kill: int = 0  # forks_resolved lives in memory: add it up before a kill


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, DIFFICULTY) as c:
        yield c


def forks_resolved(peer: Peer) -> int:
    try:
        return int(str(peer.status().get("forks_resolved", 0)))
    except ControlError:
        return 0


def test_soak(cluster: Cluster) -> None:
    tracker = cluster.tracker()
    assert tracker.address is not None
    peers = cluster.add_peers([f"p{i}" for i in range(PEERS)], tracker.address)
    wait_for(lambda: all(p.status()["peers"] == PEERS - 1 for p in peers), 30, "peer lists")
    ledger = Ledger()
    stop = threading.Event()
    down: set[str] = set()  # names of peers being killed and restarted

    def voter(peer: Peer, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            if peer.name in down:
                stop.wait(0.1)
                continue
            category = unique_category(peer.name)
            try:
                peer.vote(category, VOTE_TIMEOUT)
            except ControlError:
                with ledger.lock:
                    ledger.failed.append(category)
                stop.wait(0.1)  # its peer is (re)starting
                continue
            with ledger.lock:
                ledger.succeeded.append(category)
            stop.wait(rng.uniform(0, 0.05))

    def killer() -> None:
        rng = random.Random(1)
        while not stop.wait(KILL_EVERY):
            victim = rng.choice(peers)
            down.add(victim.name)
            ledger.forks_before_kill += forks_resolved(victim)
            cluster.kill9(victim)
            ledger.kills += 1
            cluster.restart(victim)
            down.discard(victim.name)

    threads = [threading.Thread(target=voter, args=(p, i * 100 + j), daemon=True)
               for i, p in enumerate(peers) for j in range(VOTERS_PER_PEER)]  # fmt: skip
    threads.append(threading.Thread(target=killer, daemon=True))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(SOAK_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(VOTE_TIMEOUT + 30)
        assert not thread.is_alive(), "a voter or the killer hung"
    cast_seconds = time.monotonic() - started

    # Converge: one tip, every successful vote in every tally, nothing pending.
    converge_start = time.monotonic()
    succeeded = set(ledger.succeeded)

    def converged() -> bool:
        statuses = [p.status() for p in peers]
        if len({s["tip"] for s in statuses}) != 1 or any(s["pending"] for s in statuses):
            return False
        return all(succeeded <= set(p.tally()) for p in peers)

    try:
        wait_for(converged, CONVERGE_TIMEOUT, "every peer on one chain with every vote")
    finally:
        converge_seconds = time.monotonic() - converge_start
        statuses = []
        for p in peers:
            try:
                statuses.append(p.status())
            except ControlError as exc:
                statuses.append({"error": str(exc)})
        tally = Counter(peers[0].tally())
        forks = ledger.forks_before_kill + sum(forks_resolved(p) for p in peers)
        failed_committed = sum(1 for v in ledger.failed if tally[v])
        print(
            f"\nsoak: {cast_seconds:.0f} s of voting on {PEERS} peers "
            f"({VOTERS_PER_PEER * PEERS} voter threads), {ledger.kills} kill -9 + restart\n"
            f"  votes cast       {len(ledger.succeeded) + len(ledger.failed)} "
            f"({len(ledger.succeeded)} returned success, {len(ledger.failed)} failed: "
            f"their peer was killed; {failed_committed} of those committed anyway)\n"
            f"  votes committed  {sum(tally.values())} (chain height "
            f"{statuses[0].get('height')})\n"
            f"  forks resolved   {forks}\n"
            f"  time to converge {converge_seconds:.1f} s\n"
            f"  final statuses   "
            + "; ".join(f"{p.name} h={s.get('height')} tip={str(s.get('tip'))[:12]} "
                        f"pending={s.get('pending')}" for p, s in zip(peers, statuses, strict=True))
        )  # fmt: skip

    for peer in peers:
        counts = Counter(peer.tally())
        assert all(counts[v] == 1 for v in succeeded), f"{peer.name}: a successful vote missing"
        dupes = {c: n for c, n in counts.items() if n > 1}
        assert not dupes, f"{peer.name}: duplicated votes {dupes}"
        assert set(counts) <= succeeded | set(ledger.failed), "a vote nobody cast"
    cluster.stop_all()
    for peer in peers:
        verify(peer.data_dir)

"""Faults between real processes: kill -9 at awkward moments, a frozen peer, a dead
tracker, a partition. Each test starts its own tracker(s) and peers (`votechain
tracker` / `votechain peer` children, difficulty 3, one miner worker each) and
stops every one of them in a finalizer, frozen ones included.

What "no vote lost" means here: a vote counts as accepted once its control call
returned, or once it sits in the node's SQLite pending table (the node wrote it
there before the call began waiting for the block). Every accepted vote must end
up exactly once in the chain that all peers converge on. Votes carry unique
categories (`faults.unique_category`), so the tally says how often each was mined.

How the partitions work (between real processes, not `Node.set_network_active`):
peers only ever talk to the peers their tracker lists, so two groups registered
with two different trackers never open a connection to each other. Group 2's
tracker address is a `TcpProxy` that relays to tracker 2; healing retargets the
proxy to tracker 1 and cuts the connections it carries, so group 2's tracker
keepers reconnect (within TRACKER_INTERVAL), through the proxy, to tracker 1.
Tracker 1 records them at 127.0.0.1 and their own listening ports, which is
right because the proxy connects from loopback too. Killing tracker 2 would not
heal anything: a peer keeps the tracker address it was started with.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults import (
    Cluster,
    Peer,
    TcpProxy,
    assert_exactly_once,
    chain_votes,
    child_pids,
    pending_votes,
    unique_category,
    verify,
    wait_for,
)
from votechain.errors import ControlError
from votechain.net.tracker_client import fetch_nodes
from votechain.node.outbound import PEER_TIMEOUT
from votechain.node.runtime import SYNC_INTERVAL

pytestmark = pytest.mark.slow

DIFFICULTY = 3
# Forks resolve within a SYNC_INTERVAL or two once the peers see each other
# (3 to 6 s); 30 s is for a loaded machine. Deadlines: a condition that holds
# returns at once, so they cost nothing when generous.
CONVERGE = 30.0
VOTE_TIMEOUT = 20.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, DIFFICULTY) as c:
        yield c


def start_network(cluster: Cluster, names: str) -> tuple[tuple[str, int], list[Peer]]:
    tracker = cluster.tracker()
    assert tracker.address is not None
    peers = cluster.add_peers(names, tracker.address)
    wait_for(lambda: all(p.status()["peers"] == len(peers) - 1 for p in peers), 15,
             "every peer to see the others")  # fmt: skip
    return tracker.address, peers


def vote_async(peer: Peer, category: str) -> tuple[threading.Thread, list[object]]:
    """Cast a vote in a thread; the list gets the block id or the ControlError."""
    result: list[object] = []

    def cast() -> None:
        try:
            result.append(peer.vote(category, VOTE_TIMEOUT))
        except ControlError as exc:
            result.append(exc)

    thread = threading.Thread(target=cast, daemon=True)
    thread.start()
    return thread, result


def check_final(peers: list[Peer], votes: list[str]) -> None:
    for peer in peers:
        assert_exactly_once(peer, votes)
        verify(peer.data_dir)


# ================================================================ kill -9


@contextlib.contextmanager
def partitioned_trackers(cluster: Cluster) -> Iterator[tuple[tuple[str, int], TcpProxy]]:
    """Tracker 1's address (group 1's), and a TcpProxy that stands for group 2's
    tracker: it relays to tracker 2 until `proxy.retarget(home)` heals the split
    (see the module docstring). The proxy is closed on the way out."""
    tracker1 = cluster.tracker(name="tracker1")
    tracker2 = cluster.tracker(name="tracker2")
    assert tracker1.address is not None and tracker2.address is not None
    proxy = TcpProxy(tracker2.address)
    try:
        yield tracker1.address, proxy
    finally:
        proxy.close()


def test_kill9_while_mining_keeps_the_accepted_vote(cluster: Cluster) -> None:
    _, (a, b) = start_network(cluster, "ab")
    before = unique_category("before")
    assert a.vote(before, VOTE_TIMEOUT) >= 1
    # Freeze a's miner worker, so the vote below is accepted (in the pending table)
    # and stays mid-search until the kill, whatever the machine's speed.
    workers = child_pids(a.pid)
    assert workers, "no miner worker under the peer"
    for pid in workers:
        cluster.freeze(pid)
    vote = unique_category("mining")
    thread, result = vote_async(a, vote)
    wait_for(lambda: vote in pending_votes(a.data_dir), 10, "the vote in the pending table")
    cluster.kill9(a)
    thread.join(10)
    assert result and isinstance(result[0], ControlError)  # the call never returned a block

    verify(a.data_dir)  # the killed node's database opens and verifies as it is
    assert vote in pending_votes(a.data_dir)
    assert vote not in chain_votes(a.data_dir)

    cluster.restart(a)
    cluster.wait_converged([a, b], [before, vote], CONVERGE)
    assert pending_votes(a.data_dir) == []
    check_final([a, b], [before, vote])


def test_kill9_during_a_broadcast(cluster: Cluster) -> None:
    _, (a, b, c) = start_network(cluster, "abc")
    # b frozen: a's broadcast to it cannot complete for PEER_TIMEOUT, so a kill
    # within that time lands in the middle of it. c is awake: once c holds the
    # block, the broadcast has begun (and the block is on a majority of peers).
    cluster.freeze(b.pid)
    vote = unique_category("broadcast")
    started = time.monotonic()
    assert a.vote(vote, VOTE_TIMEOUT) == 1
    wait_for(lambda: vote in c.tally(), PEER_TIMEOUT, "c to receive the block")
    cluster.kill9(a)
    # The premise, not a speed: the kill must land while the broadcast to frozen
    # b still hangs, which it does for PEER_TIMEOUT (3 s). A vote at difficulty
    # 3, c's copy and the kill take a few hundred ms, pure or native.
    assert time.monotonic() - started < PEER_TIMEOUT, "too slow to kill within the broadcast"
    cluster.thaw(b.pid)

    verify(a.data_dir)
    assert chain_votes(a.data_dir) == [vote]
    cluster.restart(a)
    after = unique_category("after")
    assert b.vote(after, VOTE_TIMEOUT) >= 1
    cluster.wait_converged([a, b, c], [vote, after], CONVERGE)
    check_final([a, b, c], [vote, after])


def test_kill9_during_a_chain_switch(cluster: Cluster) -> None:
    with partitioned_trackers(cluster) as (home, proxy):
        a, b = cluster.add_peers("ab", home)
        (c,) = cluster.add_peers("c", proxy.address)
        wait_for(lambda: a.status()["peers"] == 1 and b.status()["peers"] == 1, 15, "a, b paired")
        majority = [unique_category("maj") for _ in range(2)]
        minority = [unique_category("min") for _ in range(4)]
        a.vote(majority[0], VOTE_TIMEOUT)
        b.vote(majority[1], VOTE_TIMEOUT)
        for i, vote in enumerate(minority, start=1):
            assert c.vote(vote, VOTE_TIMEOUT) == i  # a longer chain, but only one holder
        cluster.wait_converged([a, b], majority, CONVERGE)
        switched_before = c.log_text().count("switched to the majority chain")
        registered = c.log_text().count("registered with tracker")

        proxy.retarget(home)  # heal: c is outvoted 2 to 1 and must switch
        # Kill c the moment it re-registers (its resolver starts right then) or, at
        # the latest, the moment it logs the switch (it is then re-mining its votes).
        wait_for(lambda: c.log_text().count("registered with tracker") > registered
                 or c.log_text().count("switched to the majority") > switched_before,
                 15, "c to rejoin")  # fmt: skip
        cluster.kill9(c)
        verify(c.data_dir)
        on_disk = chain_votes(c.data_dir) + pending_votes(c.data_dir)
        assert all(on_disk.count(v) == 1 for v in minority), on_disk  # nothing lost on disk

        cluster.restart(c)
        # One more vote on the majority side after the restart: c's re-queued votes
        # must land on top of a chain that keeps growing, not only on a quiet one.
        nudge = unique_category("nudge")
        a.vote(nudge, VOTE_TIMEOUT)
        votes = [*majority, *minority, nudge]
        cluster.wait_converged([a, b, c], votes, CONVERGE)
        check_final([a, b, c], votes)


# ================================================================ SIGSTOP


# Longer than PEER_TIMEOUT, so requests to the frozen peer do time out meanwhile.
FREEZE_SECONDS = 2 * PEER_TIMEOUT + 1


def test_a_frozen_peer_does_not_stall_the_others_and_catches_up(cluster: Cluster) -> None:
    _, (a, b, f) = start_network(cluster, "abf")
    cluster.freeze(f.pid)
    votes: list[str] = []
    frozen_at = time.monotonic()
    # Vote on a and b in turn for the whole freeze, each vote reaching the other
    # before the next: their sends to f (broadcasts, GetLatest polls) must time out
    # aside without holding up the calls or the traffic between a and b.
    while time.monotonic() - frozen_at < FREEZE_SECONDS:
        voter, other = ((a, b), (b, a))[len(votes) % 2]
        vote = unique_category("frozen")
        t0 = time.monotonic()
        voter.vote(vote, VOTE_TIMEOUT)
        votes.append(vote)
        # The behaviour: a vote held up by frozen f would take PEER_TIMEOUT (3 s) or
        # more; unheld, it takes ~100 ms (difficulty 3), well under a third of that.
        assert time.monotonic() - t0 < PEER_TIMEOUT, f"vote on {voter.name} stalled"
        cluster.wait_converged([voter, other], [vote], 3 * PEER_TIMEOUT)
    cluster.thaw(f.pid)
    cluster.wait_converged([a, b, f], votes, CONVERGE)
    after = unique_category("thawed")
    f.vote(after, VOTE_TIMEOUT)
    cluster.wait_converged([a, b, f], [*votes, after], CONVERGE)
    check_final([a, b, f], [*votes, after])


def test_a_frozen_peer_does_not_hold_up_a_burst_of_votes(cluster: Cluster) -> None:
    _, (a, b, f) = start_network(cluster, "abf")
    cluster.freeze(f.pid)
    votes: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # as fast as the nodes take them
        vote = unique_category("burst")
        (a, b)[len(votes) % 2].vote(vote, VOTE_TIMEOUT)
        votes.append(vote)
    # Two sync intervals and a timeout (9 s): ample for a and b without f, which
    # agree within one SYNC_INTERVAL (3 s) when f holds nothing up.
    cluster.wait_converged([a, b], votes, 2 * SYNC_INTERVAL + PEER_TIMEOUT)


# ================================================================ tracker


def test_tracker_killed_and_restarted_on_its_port(cluster: Cluster) -> None:
    address, (a, b) = start_network(cluster, "ab")
    first = unique_category("first")
    a.vote(first, VOTE_TIMEOUT)
    (tracker,) = [ch for ch in cluster.children if ch.name == "tracker"]
    cluster.kill9_tracker(tracker)
    # Without a tracker, a peer broadcasts to the peers it last heard of.
    down = unique_category("down")
    b.vote(down, VOTE_TIMEOUT)
    cluster.wait_converged([a, b], [first, down], CONVERGE)

    cluster.tracker(port=address[1])
    cluster.wait_peers_listed(address, [a, b], 15)
    assert sorted(fetch_nodes(*address)) == sorted([a.address, b.address])
    after = [unique_category("after") for _ in range(2)]
    a.vote(after[0], VOTE_TIMEOUT)
    b.vote(after[1], VOTE_TIMEOUT)
    cluster.wait_converged([a, b], [first, down, *after], CONVERGE)
    check_final([a, b], [first, down, *after])


# ================================================================ partition


def test_partition_then_heal_converges_with_every_vote_once(cluster: Cluster) -> None:
    with partitioned_trackers(cluster) as (home, proxy):
        group1 = cluster.add_peers(["a", "b"], home)
        group2 = cluster.add_peers(["c", "d"], proxy.address)
        everyone = group1 + group2
        wait_for(lambda: all(p.status()["peers"] == 1 for p in everyone), 15, "two pairs")
        # Both sides vote, from a thread per peer, so each side also forks inside.
        side1 = [unique_category("g1") for _ in range(4)]
        side2 = [unique_category("g2") for _ in range(3)]
        jobs = [vote_async(p, v) for p, v in zip([*group1, *group1], side1, strict=True)]
        jobs += [vote_async(p, v) for p, v in zip([*group2, group2[0]], side2, strict=True)]
        for thread, result in jobs:
            thread.join(VOTE_TIMEOUT + 5)
            assert result and isinstance(result[0], int), result
        cluster.wait_converged(group1, side1, CONVERGE)
        cluster.wait_converged(group2, side2, CONVERGE)
        assert cluster.tips(group1).isdisjoint(cluster.tips(group2))  # really apart

        proxy.retarget(home)  # heal
        cluster.wait_peers_listed(home, everyone, 15)
        cluster.wait_converged(everyone, side1 + side2, CONVERGE)
        check_final(everyone, side1 + side2)
        assert sum(int(str(p.status()["forks_resolved"])) for p in everyone) >= 2


def test_blocks_mined_alone_reach_the_others_after_healing(cluster: Cluster) -> None:
    with partitioned_trackers(cluster) as (home, proxy):
        a, b = cluster.add_peers("ab", home)
        (c,) = cluster.add_peers("c", proxy.address)
        alone = [unique_category("alone") for _ in range(2)]
        for vote in alone:
            c.vote(vote, VOTE_TIMEOUT)
        proxy.retarget(home)
        cluster.wait_peers_listed(home, [a, b, c], 15)
        # No other votes: nothing else will ever carry c's blocks to a and b.
        cluster.wait_converged([a, b, c], alone, 3 * SYNC_INTERVAL)

"""Issue 9's attacks against real `votechain peer` processes started through the
CLI, as a user runs them (tests/framework/processes.py's Cluster: one network,
each peer admitted, `--network` given). The attacker is this test process: an
outsider with a key of its own and the public network file, nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockkit import other_key
from faults import verify
from framework.members import forge_chain, sybils
from framework.processes import Cluster, Peer, run, wait_for
from votechain.net.connection import Connection, LocalIdentity
from votechain.node.runtime import now_ms
from votechain.protocol.peer import PROTOCOL_VERSION, Add, AddResult, Blocks, GetBlocks, Hello

DIFFICULTY = 3
SYBILS = 6
DEADLINE = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, DIFFICULTY) as c:
        yield c


def voted(cluster: Cluster) -> tuple[tuple[str, int], list[Peer]]:
    """Three members, each vote confirmed to its voter, all on one chain."""
    tracker = cluster.tracker()
    assert tracker.address is not None
    peers = cluster.add_peers("abc", tracker.address)
    wait_for(lambda: all(p.status()["peers"] == 2 for p in peers), DEADLINE,
             "every peer to see the others")
    for peer, category in zip(peers, ["red", "blue", "red"], strict=True):
        result = run("vote", "--data-dir", str(peer.data_dir), category)
        assert result.returncode == 0, result.stderr
    cluster.wait_converged(peers, ["red", "blue"], DEADLINE)
    return tracker.address, peers


def cli_tally(peer: Peer) -> dict[str, int]:
    result = run("tally", "--json", "--data-dir", str(peer.data_dir))
    assert result.returncode == 0, result.stderr
    counts: dict[str, int] = json.loads(result.stdout)
    return counts


def test_sybil_outsider_cannot_rewrite_confirmed_votes(cluster: Cluster) -> None:
    """One outsider registers SYBILS peers at the tracker from one address, each
    serving a longer chain with valid proof of work and different votes. Once
    every honest peer has polled every sybil, nothing has changed: tips,
    tallies (CLI), and `votechain verify` on each data directory."""
    tracker, peers = voted(cluster)
    tips = {p.status()["tip"] for p in peers}
    tally = cli_tally(peers[0])
    network = cluster.organizer.network
    outsider = other_key()
    forged = forge_chain(network, [network.genesis], [f"mallory{i}" for i in range(10)],
                         outsider, now_ms())
    with sybils(tracker, SYBILS, network, forged, LocalIdentity(outsider)) as fakes:
        # Each peer polls every listed peer each sync round (3 s): wait until
        # every sybil was asked by all three, twice over.
        wait_for(lambda: all(s.polls >= 2 * len(peers) for s in fakes), DEADLINE,
                 "every honest peer to poll every sybil")
        assert {p.status()["tip"] for p in peers} == tips
        for peer in peers:
            assert cli_tally(peer) == tally
            verify(peer.data_dir)
            assert "switched to the majority chain" not in peer.log_text()


def test_outsider_ballot_stuffing_is_refused_with_a_reason(cluster: Cluster) -> None:
    _, peers = voted(cluster)
    target = peers[0]
    network = cluster.organizer.network
    outsider = other_key()
    hello = Hello(PROTOCOL_VERSION, network.id, network.difficulty)
    tip_before = target.status()["tip"]
    with Connection.open(*target.address) as conn:
        peer = conn.handshake(hello, initiator=True, identity=LocalIdentity(outsider))
        assert peer.member  # it talks to a member; it is none itself
        reply = conn.request(GetBlocks(0))  # it reads the chain, as anyone may
        assert isinstance(reply, Blocks)
        chain = list(reply.blocks)  # and builds on the real tip
        stuffed = forge_chain(network, chain, [f"stuffed{i}" for i in range(20)], outsider,
                              now_ms())[len(chain):]
        for block in stuffed:
            result = conn.request(Add(block))
            assert isinstance(result, AddResult) and result.status == "rejected"
            assert "not a member of network 'cluster'" in result.reason
    assert target.status()["tip"] == tip_before
    assert "stuffed0" not in cli_tally(target)

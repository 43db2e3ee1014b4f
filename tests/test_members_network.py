"""Members-only networks in one process over real sockets: the attacks of issue 9
performed against honest member nodes, and what members and observers may do.

Each attack test states the attack, performs it, and checks the honest nodes'
chains, confirmed votes and tallies did not change. docs/security.md lists
them, attack by attack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockkit import other_key
from framework.members import ForgedPeer, Organizer, forge_chain, sybils
from framework.network import Network, converged
from framework.waiting import wait_until
from votechain.core.keys import NodeKey
from votechain.core.membership import Certificate
from votechain.core.node_state import RECHECK_TAIL
from votechain.errors import IncompatiblePeer, InvalidVote
from votechain.net.connection import Connection, LocalIdentity
from votechain.node.runtime import Node, now_ms
from votechain.protocol.peer import Add, AddResult, Blocks, GetBlocks, GetLatest, Latest

DIFFICULTY = 3
DEADLINE = 30.0
SYBILS = 6


@pytest.fixture
def org(tmp_path: Path) -> Organizer:
    return Organizer(tmp_path / "organizer", difficulty=DIFFICULTY)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path / "nodes", difficulty=DIFFICULTY) as network:
        yield network


def member(net: Network, org: Organizer, name: str, **overrides: Any) -> Node:
    return net.add_node(name, membership=org.admit(net.root / name), **overrides)


def voted_network(net: Network, org: Organizer) -> tuple[list[Node], list[bytes]]:
    """Three members that confirmed four votes and agree on one chain."""
    nodes = [member(net, org, name) for name in "abc"]
    net.wait_connected(nodes)
    confirmed = []
    for node, category in zip([*nodes, nodes[0]], ["red", "blue", "red", "green"],
                              strict=True):
        tx_id = node.submit_vote(category)
        assert node.wait_for_tx(tx_id, DEADLINE) is not None
        confirmed.append(tx_id)
    net.wait_converged(nodes, height=4)
    return nodes, confirmed


def listing(net: Network, peers: list[ForgedPeer], nodes: list[Node]) -> None:
    """Wait until the tracker lists every sybil and every honest node has seen them."""
    wanted = {p.address for p in peers}
    wait_until(lambda: wanted <= set(net.tracker.peers()), DEADLINE, what="sybils registered")
    wait_until(lambda: all(n.status().peers == len(nodes) - 1 + len(peers) for n in nodes),
               DEADLINE, what="the honest nodes to list the sybils")


def assert_unchanged(nodes: list[Node], chain: list[bytes], tally: dict[str, int],
                     confirmed: list[bytes]) -> None:
    for node in nodes:
        assert [b.hash for b in node.blocks()] == chain
        assert node.tally() == tally
        assert node.tally(recount=True) == tally
        for tx_id in confirmed:
            assert node.chain.block_with_tx(tx_id) is not None


# ================================================================ members


def test_members_vote_and_converge(net: Network, org: Organizer) -> None:
    nodes, _ = voted_network(net, org)
    for node in nodes:
        assert node.tally() == {"red": 2, "blue": 1, "green": 1}
    # Every author's certificate was kept beside the chain, for offline audits.
    authors = {b.author for b in nodes[0].blocks()[1:]}
    stored = {Certificate.decode(raw).member for raw in nodes[0].store.certificates()}
    assert authors <= stored


# ================================================================ outsiders


@pytest.mark.parametrize("presents", ["no certificate", "a forged certificate"])
def test_sybil_outsider_serving_a_longer_chain_changes_nothing(
        net: Network, org: Organizer, presents: str) -> None:
    """One outsider registers SYBILS peers at the tracker, each serving a longer
    chain with valid proof of work that rewrites the confirmed votes. No honest
    member switches: the outsider's tips are not members' tips, and its blocks
    are not members' blocks."""
    nodes, confirmed = voted_network(net, org)
    chain = [b.hash for b in nodes[0].blocks()]
    tally = nodes[0].tally()
    outsider = other_key()
    forged = forge_chain(org.network, [org.network.genesis],
                         [f"forged{i}" for i in range(8)], outsider, now_ms())
    certs: tuple[bytes, ...] = ()
    identity = LocalIdentity(outsider)
    if presents == "a forged certificate":
        # Signed by the outsider's own "authority" for this very network id.
        cert = Certificate.issue(NodeKey.generate(), org.network, outsider.public_der, "fake")
        identity, certs = LocalIdentity(outsider, cert.encode()), (cert.encode(),)
    with sybils(net.tracker.address, SYBILS, org.network, forged, identity, certs) as fakes:
        listing(net, fakes, nodes)
        for node in nodes:
            assert node.resolve() is None  # no switch
        if presents == "a forged certificate":
            assert any("certificate refused" in r for s in fakes for r in s.refusals)
        assert_unchanged(nodes, chain, tally, confirmed)


def test_outsider_add_is_refused_with_a_reason(net: Network, org: Organizer) -> None:
    nodes, _ = voted_network(net, org)
    target = nodes[0]
    tip = target.blocks()[-1]
    outsider = other_key()
    block = forge_chain(org.network, target.blocks(), ["stuffed"], outsider, now_ms())[-1]
    for identity, why in ((LocalIdentity(), "observer"),
                          (LocalIdentity(outsider), "not a member")):
        with Connection.open(*target.address) as conn:
            peer = conn.handshake(target.hello, initiator=True, identity=identity,
                                  members=org.members())
            assert peer.member and peer.certificate is not None  # the target is a member
            reply = conn.request(Add(block))
        assert isinstance(reply, AddResult) and reply.status == "rejected"
        assert why in reply.reason, reply.reason
    assert target.blocks()[-1] == tip


def test_member_cannot_relay_an_outsiders_block(net: Network, org: Organizer) -> None:
    """A member's connection offering a block the member did not sign is refused,
    and a block signed by a non-member is invalid whoever relays it."""
    nodes, _ = voted_network(net, org)
    target = nodes[0]
    outsider = other_key()
    block = forge_chain(org.network, target.blocks(), ["stuffed"], outsider, now_ms())[-1]
    decision = target.state.block_received(block, outsider.public_der, now_ms())
    assert decision.status == "rejected"
    assert "not a member" in decision.reason
    assert target.blocks()[-1].id == 4


def test_handshake_with_a_bad_certificate_is_refused_clearly(
        net: Network, org: Organizer, tmp_path: Path) -> None:
    target = member(net, org, "a")
    key = NodeKey.generate()
    elsewhere = Organizer(tmp_path / "elsewhere", name="other", difficulty=DIFFICULTY)
    cases = {
        "not signed by this network's authority":
            Certificate.issue(NodeKey.generate(), org.network, key.public_der, "x").encode(),
        "another network": Certificate.issue(elsewhere.authority, elsewhere.network,
                                              key.public_der, "x").encode(),
        "another key": org.certify(other_key(), "x").encode(),
        "array of 4": b"\x93\x01\x02\x03",
    }
    for why, cert in cases.items():
        with Connection.open(*target.address) as conn, pytest.raises(IncompatiblePeer,
                                                                     match=why):
            conn.handshake(target.hello, initiator=True,
                           identity=LocalIdentity(key, cert), members=org.members())
    assert target.status().height == 0  # and it still serves
    with Connection.open(*target.address) as conn:
        conn.handshake(target.hello, initiator=True)
        assert isinstance(conn.request(GetLatest()), Latest)


@pytest.mark.parametrize("later", [0, RECHECK_TAIL + 4], ids=["at-the-tip", "below-the-tail"])
def test_a_revoked_member_is_refused_and_its_later_blocks_are_invalid(
        net: Network, org: Organizer, later: int) -> None:
    """`later`: votes mined after the revoked member's block, so that with
    RECHECK_TAIL + 4 of them its block lies below the tail a restart checks:
    the new revocation list makes the node check every stored block again."""
    nodes, _ = voted_network(net, org)
    a, c = nodes[0], nodes[2]
    for i in range(later):
        assert a.wait_for_tx(a.submit_vote(f"later{i}"), DEADLINE) is not None
    revoked_key = c.key.public_der
    before = a.blocks()
    # c mined one vote; revoke c from that block's height on.
    cut = next(blk.id for blk in before if blk.author == revoked_key)
    org.revoke(revoked_key, from_height=cut)
    # a restarts with the revocation list beside the network file: from `cut`
    # on its stored chain is invalid and dropped; it may not sync c's block back.
    config = dataclasses.replace(a.config, membership=org.membership(a.data_dir))
    net.stop_node(a)
    a = net.start_node(config)
    a.resolve()
    after = a.blocks()
    assert after[:cut] == before[:cut]  # history below the revocation height stays
    assert all(blk.author != revoked_key for blk in after[cut:])
    # c can no longer handshake as a member with a.
    with Connection.open(*a.address) as conn:
        identity = LocalIdentity(c.key, c.identity.certificate)
        with pytest.raises(IncompatiblePeer, match="revoked"):
            conn.handshake(a.hello, initiator=True, identity=identity, members=org.members())


# ================================================================ one dishonest member


def test_a_dishonest_member_counts_once_however_many_addresses(
        net: Network, org: Organizer) -> None:
    """A member (validly certified) runs SYBILS servers, all presenting its one
    key, each serving a longer chain it signed itself (valid blocks: it is a
    member). It is one vote against the three honest members' tips."""
    nodes, confirmed = voted_network(net, org)
    chain = [b.hash for b in nodes[0].blocks()]
    tally = nodes[0].tally()
    insider = NodeKey.generate()
    cert = org.certify(insider, "insider").encode()
    forged = forge_chain(org.network, [org.network.genesis],
                         [f"insider{i}" for i in range(8)], insider, now_ms())
    with sybils(net.tracker.address, SYBILS, org.network, forged,
                LocalIdentity(insider, cert), (cert,)) as fakes:
        listing(net, fakes, nodes)
        for node in nodes:
            assert node.resolve() is None
        assert_unchanged(nodes, chain, tally, confirmed)


# ================================================================ observers


def test_an_observer_syncs_and_audits_but_cannot_vote_or_count(
        net: Network, org: Organizer) -> None:
    nodes, _ = voted_network(net, org)
    watcher = net.add_node("watcher", membership=org.membership(net.root / "watcher",
                                                                observer=True))
    wait_until(converged([*nodes, watcher], 4), DEADLINE, what="the observer to sync")
    assert watcher.tally(recount=True) == nodes[0].tally()
    with pytest.raises(InvalidVote, match="observer"):
        watcher.submit_vote("sneaky")
    assert watcher.state.pending_count == 0
    # Its tip is nobody's vote: a member's resolution ignores the observer.
    with Connection.open(*watcher.address) as conn:
        peer = conn.handshake(watcher.hello, initiator=True, members=org.members())
        assert not peer.member
        reply = conn.request(GetBlocks(1, 10))
    assert isinstance(reply, Blocks) and len(reply.blocks) == 4
    assert reply.certificates  # the authors' certificates come with the blocks


def test_an_offline_member_comes_back_and_catches_up(net: Network, org: Organizer) -> None:
    nodes, _ = voted_network(net, org)
    a, b, c = nodes
    config = c.config
    net.stop_node(c)
    tx_id = a.submit_vote("late")
    assert a.wait_for_tx(tx_id, DEADLINE) is not None
    c = net.start_node(config)
    wait_until(converged([a, b, c], 5), DEADLINE, what="c to catch up")
    assert c.tally() == a.tally()

"""Finality on a real network (core/finality.py): a vote reported final is never
orphaned, under forks, a partition and a kill -9.

The in-process harness (tests/framework/network.py) for the fork and the
partition: nodes on an open network told they are three seats; real
`votechain peer` processes (tests/framework/processes.py) for the kill -9,
on a members-only network whose file names three seats.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import fixed_key, make_block, other_key, tx_for
from framework.network import DIFFICULTY, Network, Target
from framework.processes import Cluster, Peer, wait_for
from framework.waiting import wait_until
from votechain.core.block import Block, genesis_block
from votechain.core.discipline import INVALID_BLOCK
from votechain.core.keys import NodeKey
from votechain.errors import ControlUnavailable
from votechain.net.connection import PeerIdentity
from votechain.node.runtime import Node
from votechain.node.store import ChainStore
from votechain.protocol.peer import Add, AddResult, Announce, Relay, Relayed

SEATS = 3
LOCAL_SOURCE = ("127.0.0.1", 0)  # a member is scored by its key, whatever its address
DEADLINE = 60.0
# A vote at an isolated node: long enough to be mined many times over, and it
# must still not be reported final (one of three seats is no majority).
ISOLATED_WAIT = 1.5

Confirmed = tuple[int, bytes]  # (block id, block hash) a voter was told is final


def vote_final(node: Node, category: str, timeout: float = DEADLINE) -> Confirmed:
    """Cast a vote at `node` and wait for it to be final, as the control channel does."""
    tx_id = node.submit_vote(category)
    block, final = node.wait_for_vote(tx_id, timeout)
    assert block is not None and final, f"vote {category!r} not final within {timeout} s"
    return block.id, block.hash


def assert_kept(chain: Iterable[Block], confirmed: Iterable[Confirmed]) -> None:
    """Every confirmation names a block of `chain`: none was orphaned."""
    held = {(block.id, block.hash) for block in chain}
    orphaned = [c for c in confirmed if c not in held]
    assert not orphaned, f"final confirmations orphaned: {orphaned}"


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path, difficulty=DIFFICULTY) as net:
        yield net


def test_votes_racing_on_three_nodes_are_never_orphaned_once_final(network: Network) -> None:
    """Three nodes vote at once, back to back, so blocks race and forks are
    settled by majority as they come: every vote a voter was told is final is
    in the chain all three agree on at the end, each once."""
    nodes = network.add_nodes("abc", seats=SEATS)
    network.wait_connected(nodes)
    confirmed: list[Confirmed] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def voter(node: Node, name: str) -> None:
        try:
            for i in range(8):
                result = vote_final(node, f"{name}{i % 3}")
                with lock:
                    confirmed.append(result)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=voter, args=(n, n.config.data_dir.name)) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 2)
    assert not errors, errors
    assert len(confirmed) == 24
    network.wait_converged(nodes)
    chain = nodes[0].blocks()
    assert_kept(chain, confirmed)
    tx_ids = [b.transaction.tx_id for b in chain[1:]]
    assert len(tx_ids) == len(set(tx_ids)) == 24  # each vote once, none lost
    for node in nodes:
        status = node.status()
        assert status.seats == SEATS and status.locked_height <= status.height


def test_an_isolated_node_never_reports_final_and_its_block_is_orphaned(
        network: Network) -> None:
    """c is cut off: its vote is mined into its own chain but never reported
    final (one seat of three); a and b go on and finalise theirs. On healing c
    switches to the majority's chain, dropping its block (so it was right not
    to confirm it), mines the vote again there, and then it is final."""
    a, b, c = network.add_nodes("abc", seats=SEATS)
    network.wait_connected([a, b, c])
    before = vote_final(a, "before")  # all three hold a final block first
    network.wait_converged([a, b, c])
    # c's start-up is over (it reached both others: core/relaying.py), so cut
    # off it mines its vote at once rather than wait for the leader's link.
    wait_until(lambda: len(c.outbound.members_reached()) == 2, DEADLINE,
               what="c to reach the two other members")
    c.set_network_active(False)
    tx_id = c.submit_vote("isolated")
    block, final = c.wait_for_vote(tx_id, ISOLATED_WAIT)
    assert block is not None and not final  # in c's chain, not final
    alone = (block.id, block.hash)
    majority = [vote_final(a, "majority"), vote_final(b, "majority")]
    assert c.status().final_height < alone[0]
    c.set_network_active(True)
    again, final = c.wait_for_vote(tx_id, DEADLINE)
    assert again is not None and final
    network.wait_converged([a, b, c])
    chain = a.blocks()
    assert_kept(chain, [before, *majority, (again.id, again.hash)])
    assert alone not in {(b.id, b.hash) for b in chain}  # c's lone block was orphaned


def author_of(node: Node, confirmed: Confirmed) -> bytes:
    block = node.chain[confirmed[0]]
    assert block.hash == confirmed[1]
    return block.author


def test_members_hand_votes_to_the_tip_author_and_mine_them_when_it_is_gone(
        network: Network) -> None:
    """One member mines for everyone: on the genesis block the smallest key,
    then the author of the tip. The others' votes are mined by it, so no block
    races another. When it stops, the next vote waits RELAY patience for it,
    then its own member mines it, and the two left, two seats of three, make
    it final."""
    nodes = network.add_nodes("abc", seats=SEATS, relay_patience=0.5)
    network.wait_connected(nodes)
    # Each node reaches the two others once its first resolution round polled them.
    wait_until(lambda: all(len(n.outbound.member_keys()) == 2 for n in nodes), DEADLINE,
               what="every node to reach the other members")
    first = vote_final(nodes[0], "first")
    network.wait_converged(nodes)
    leader = min(nodes, key=lambda n: n.key.public_der)
    assert author_of(nodes[0], first) == leader.key.public_der
    for node in nodes:  # (the voter's node holds its final vote's block; a third may lag)
        assert author_of(node, vote_final(node, "relayed")) == leader.key.public_der
    assert sum(n.forks_resolved for n in nodes) == 0
    # All three hold the last block before the leader stops: a member one block
    # behind would mine its vote on the block before, against the third's final
    # one (the tie the next test settles), which is not what this test is about.
    network.wait_converged(nodes)
    network.stop_node(leader)
    other = next(n for n in nodes if n is not leader)
    alone = vote_final(other, "after the leader stopped")
    assert author_of(other, alone) == other.key.public_der


def test_votes_cast_the_moment_members_start_race_for_no_block(network: Network) -> None:
    """A vote cast at every member as soon as all three are listed, before
    they reach each other: each holds its first block until it reaches every
    seat (core/relaying.py), so the smallest key leads from the first block on
    and no block races another. Before, a member that reached nobody yet
    mined its vote at once: the start-up forks of the finality benchmark.
    (The patience is the test's deadline, so no hold can end by timing out.)"""
    nodes = network.add_nodes("abc", seats=SEATS, relay_patience=DEADLINE,
                              relay_max_patience=DEADLINE)
    tx_ids = [node.submit_vote(f"at-start-{i}") for i, node in enumerate(nodes)]
    for node, tx_id in zip(nodes, tx_ids, strict=True):
        block, final = node.wait_for_vote(tx_id, DEADLINE)
        assert block is not None and final
    network.wait_converged(nodes, height=3)
    leader = min(nodes, key=lambda n: n.key.public_der)
    for node in nodes:
        assert [b.author for b in node.blocks()[1:]] == [leader.key.public_der] * 3
    assert sum(n.forks_resolved for n in nodes) == 0


def test_a_member_reaches_a_peer_that_registered_after_it_at_once(network: Network) -> None:
    """a starts first; when the tracker keeper's list names b, a resolves at
    once, and its poll proves its link to b: a's start-up hold
    (core/relaying.py) ends with the last seat listed, not a sync_interval
    later (here never: the periodic round is an hour away, and nothing else
    makes a contact b)."""
    a = network.add_node("a", seats=2, sync_interval=3600.0)
    b = network.add_node("b", seats=2, sync_interval=3600.0)
    wait_until(lambda: b.key.public_der in a.outbound.members_reached(), DEADLINE,
               what="a to reach b, which registered after it")


def test_the_two_members_left_settle_a_tie_between_a_final_block_and_a_lone_one(
        network: Network) -> None:
    """a is cut off while the leader mines block 2, which b and the leader lock
    and b reports final; a mines its own vote as block 2 alone. The leader
    stops and a comes back: a and b, two seats of three, hold one tip each.
    b may never drop its final block; a's has no lock, so the tie goes to
    b's (forkchoice.py): a switches, mines its vote again on b's chain, and
    it is final. (By hash alone, half the time a kept its block and neither
    ever moved: no vote was final again with the leader gone.)"""
    nodes = network.add_nodes("abc", seats=SEATS)
    network.wait_connected(nodes)
    wait_until(lambda: all(len(n.outbound.members_reached()) == 2 for n in nodes), DEADLINE,
               what="every node to reach the two other members")
    vote_final(nodes[0], "first")
    network.wait_converged(nodes)
    leader = min(nodes, key=lambda n: n.key.public_der)
    a, b = (n for n in nodes if n is not leader)
    a.set_network_active(False)
    locked = vote_final(b, "while a is away")  # mined by the leader, final at b
    lone_tx = a.submit_vote("alone")
    # Mined alone within the test's deadline (a loaded machine may be slow),
    # and never final: one seat of three.
    assert a.wait_until(lambda chain: chain.block_with_tx(lone_tx) is not None, DEADLINE)
    lone, final = a.wait_for_vote(lone_tx, 0.0)
    assert lone is not None and not final and lone.id == locked[0]  # the same height
    network.stop_node(leader)
    a.set_network_active(True)
    again, final = a.wait_for_vote(lone_tx, DEADLINE)
    assert again is not None and final, "a's vote not final with b"
    network.wait_converged([a, b])
    assert_kept(b.blocks(), [locked, (again.id, again.hash)])
    assert (lone.id, lone.hash) not in {(blk.id, blk.hash) for blk in b.blocks()}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, DIFFICULTY, seats=SEATS) as c:
        yield c


def stored_chain(peer: Peer) -> list[Block]:
    store = ChainStore.open_readonly(peer.data_dir)
    try:
        return store.blocks()
    finally:
        store.close()


def test_kill9_keeps_every_final_vote_and_the_lock(cluster: Cluster) -> None:
    """Three member processes; c is killed with SIGKILL while a and b take votes.
    a and b are still a majority: their votes become final, c's lock and final
    height come back from its store on restart, and after c catches up every
    confirmation is in every peer's chain."""
    tracker = cluster.tracker()
    assert tracker.address is not None
    a, b, c = cluster.add_peers("abc", tracker.address)
    wait_for(lambda: all(p.status()["peers"] == 2 for p in (a, b, c)), DEADLINE,
             "every peer to see the others")
    confirmed: list[Confirmed] = []
    for peer, category in zip((a, b, c), ("red", "blue", "green"), strict=True):
        block_id, block_hash = peer.client().vote(category, timeout=DEADLINE)
        confirmed.append((block_id, bytes.fromhex(block_hash)))
    wait_for(lambda: int(str(c.status()["locked_height"])) >= max(i for i, _ in confirmed),
             DEADLINE, "c to lock the confirmed blocks")
    locked_before = int(str(c.status()["locked_height"]))
    cluster.kill9(c)
    for peer in (a, b):  # still two seats of three: final without c
        block_id, block_hash = peer.client().vote("after", timeout=DEADLINE)
        confirmed.append((block_id, bytes.fromhex(block_hash)))
    with pytest.raises(ControlUnavailable):
        c.client()  # dead: no vote could be confirmed there
    store = ChainStore.open_readonly(c.data_dir)
    try:
        assert store.finality[0] >= locked_before  # recorded before it was announced
    finally:
        store.close()
    cluster.restart(c)
    assert int(str(c.status()["locked_height"])) >= locked_before  # the lock outlived the kill
    cluster.wait_converged([a, b, c], ["red", "blue", "green", "after"], DEADLINE)
    for peer in (a, b, c):
        assert_kept(stored_chain(peer), confirmed)


def test_finality_counts_distinct_members_and_ignores_observers(network: Network) -> None:
    """Five seats, one node: what it holds is final only once two more distinct
    member keys report holding and locking it. An observer's Announce counts
    for nothing (and its Relay is refused); one key announcing over two
    connections counts once."""
    # Alone, it mines once its start-up hold (core/relaying.py) ends: soon.
    node = network.add_node("a", seats=5, relay_patience=0.1)
    confirmed = node.submit_vote("alone")
    block, final = node.wait_for_vote(confirmed, ISOLATED_WAIT)
    assert block is not None and not final  # one seat of five
    target = Target(node)
    claim = Announce(block.id, block.hash, block.id)

    def announce(key: NodeKey | None) -> None:
        with target.connection(key) as conn:
            assert isinstance(conn.request(claim), Announce)

    announce(None)  # an observer
    with target.connection() as conn:
        reply = conn.request(Relay(tx_for("from an observer")))
        assert isinstance(reply, Relayed) and reply.status == "refused"
    first, second = NodeKey.generate(), NodeKey.generate()
    announce(first)
    announce(first)  # the same member again, on another connection
    status = node.status()
    assert (status.locked_height, status.final_height) == (0, 0)
    announce(second)  # three distinct members hold and locked it
    wait_until(lambda: node.status().final_height == block.id, DEADLINE,
               what="the block to be final")
    assert node.wait_for_vote(confirmed, DEADLINE) == (block, True)


def test_a_run_of_pushed_blocks_is_decided_as_one_and_answered_in_order(
        network: Network) -> None:
    """A member's pipelined pushes (six Adds in one write) are read together
    and decided as one run (PeerRequests.handle_all): one answer each, in order, the
    blocks before a bad one stored, the bad one rejected, the ones after it
    (a gap now) left to the majority. What the run told us counts as if each
    block came alone: the sender holds the last block we hold too (so two
    seats of three agree on it: locked), and its last push is its report."""
    node = network.add_node("a", seats=SEATS)
    key = fixed_key()
    run: list[Block] = []
    for i in range(6):
        run.append(make_block(run[-1] if run else genesis_block(), tx_for(f"run{i}"), key=key,
                              difficulty=DIFFICULTY))
    run[3] = replace(run[3], signature=other_key().sign(run[3].hash))  # not its author's
    with Target(node).connection(key) as conn:
        conn.send(*(Add(block, locked=0) for block in run))
        replies = [conn.recv() for _ in run]
    assert [getattr(r, "status", r) for r in replies] == [
        "added", "added", "added", "rejected", "fork", "fork"]
    assert "signature" in replies[3].reason  # type: ignore[union-attr]
    assert node.blocks()[1:] == run[:3]
    assert node.store.shape() == (4, 3)  # genesis and the three, stored
    sender = PeerIdentity(node.hello, key.public_der, None, member=True)
    assert node.inbound.score(LOCAL_SOURCE, sender) == INVALID_BLOCK.points  # the bad one only
    wait_until(lambda: node.status().locked_height == 3, DEADLINE,
               what="the two members' agreement on block 3 to lock it")
    assert all(r.locked == 3 for r in replies if r.status != "rejected")  # type: ignore[union-attr]


def test_a_member_just_told_our_account_by_a_block_is_not_announced_to_again(
        network: Network) -> None:
    """Under load the leader's Add and the member's AddResult carry both locks;
    an Announce on top doubled the messages between them. A member told our
    account that way within `quiet` is skipped, and `announce` says so, so
    that the announcer tries again once the blocks stop."""
    # A long interval: the announcer thread, idle after its first turn, never
    # calls announce meanwhile, and a told member stays recent for it.
    a, b = network.add_nodes("ab", seats=SEATS, announce_interval=60.0)
    network.wait_connected([a, b])
    link = a.outbound.link(b.address)
    wait_until(lambda: link.peer is not None and link.peer.key is not None, DEADLINE,
               what="a's link to b to know b's key")
    assert link.peer is not None and link.peer.key is not None
    a.outbound.told(link.peer.key)
    marked: list[bool] = []

    def announce_due() -> bool:  # records the call; starts no drain
        marked.append(True)
        return False

    link.announce_due = announce_due  # type: ignore[method-assign]
    assert a.outbound.announce([b.address], quiet=60.0) is True
    assert marked == []
    assert a.outbound.announce([b.address], quiet=0.0) is False
    assert marked == [True]


def test_a_member_behind_fills_the_gap_from_the_sender_without_a_round(
        network: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block whose id leaves a gap after our tip only shows we are behind:
    the blocks between are fetched from its sender and appended, with no
    resolution round (a poll of every peer, then a fetch), which at 20 peers
    under load ran hundreds of times in a few seconds."""
    a, b = network.add_nodes("ab", seats=3, sync_interval=600.0)
    network.wait_connected([a, b])
    a.submit_vote("first")
    wait_until(lambda: b.chain.height == 1, DEADLINE, what="b to receive block 1")
    link = b.outbound.link(a.address)
    wait_until(lambda: link.peer is not None and b.outbound.member_address(
        a.key.public_der) is not None, DEADLINE, what="b's link to a to know a's key")
    b.set_network_active(False)  # b misses the next blocks
    for category in ("second", "third", "fourth"):
        a.submit_vote(category)
    wait_until(lambda: a.chain.height == 4, DEADLINE, what="a to mine blocks 2-4")
    rounds: list[int] = []
    resolve = b.resolver.resolve

    def counted() -> object:
        rounds.append(1)
        return resolve()

    monkeypatch.setattr(b.resolver, "resolve", counted)
    b.network_active = True  # back, without the round set_network_active asks for
    tip = a.blocks()[4]
    assert link.peer is not None
    reply = b.requests.handle(Add(tip, a.state.finality.locked), ("127.0.0.1", 0), link.peer)
    assert isinstance(reply, AddResult) and reply.status == "fork"
    wait_until(lambda: b.chain.holds(tip.id, tip.hash), DEADLINE,
               what="b to fetch blocks 2-4 from a")
    assert rounds == []
    assert b.blocks() == a.blocks()

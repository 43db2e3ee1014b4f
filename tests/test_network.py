"""Peers in one process over real sockets on 127.0.0.1: propagation, majority-vote forks,
late joiners, tracker restarts, dead peers and restarts from disk.

Each node has its own MinerPool (one real worker process); every node, tracker
and process is stopped by the fixtures. Conditions are awaited under deadlines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.fakes_net import SilentPeer
from framework.network import Network, converged
from framework.waiting import wait_until

DIFFICULTY = 3
DEADLINE = 30.0


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path, difficulty=DIFFICULTY) as network:
        yield network


def test_three_peers_converge_on_one_chain(net: Network) -> None:
    a, b, c = (net.add_node(name) for name in "abc")
    wait_until(lambda: all(n.status().peers == 2 for n in (a, b, c)), 10, what="peer lists")
    for node, category in ((a, "red"), (b, "blue"), (c, "red"), (a, "green")):
        tx_id = node.submit_vote(category)
        assert node.wait_for_tx(tx_id, DEADLINE) is not None
    wait_until(converged([a, b, c], 4), DEADLINE, what="three peers on one chain")
    for node in (a, b, c):
        assert node.tally() == {"red": 2, "blue": 1, "green": 1}


def test_create_mines_any_data_and_broadcasts_it(net: Network) -> None:
    """The seed's create(): mine the data into our chain, then send it to every peer."""
    a, b = net.add_node("a"), net.add_node("b")
    wait_until(lambda: a.status().peers == 1, 10, what="a sees b")
    block = a.create(b"\xff\xfe binary", timeout=DEADLINE)
    assert block.id == 1 and block.transaction.data == b"\xff\xfe binary"
    wait_until(converged([a, b], 1), DEADLINE, what="b holds the block")
    assert b.tally() == {}  # data that is not UTF-8 text is no vote


def test_forked_minority_switches_to_majority_and_keeps_its_vote(net: Network) -> None:
    a, b, c = (net.add_node(name) for name in "abc")
    c.set_network_active(False)  # partition c away
    a_vote = a.submit_vote("alpha")
    c_vote = c.submit_vote("gamma")
    assert a.wait_for_tx(a_vote, DEADLINE) is not None
    assert c.wait_for_tx(c_vote, DEADLINE) is not None
    wait_until(converged([a, b], 1), DEADLINE, what="a and b agree")
    assert c.blocks()[1].hash != a.blocks()[1].hash  # two blocks at height 1: a fork

    c.set_network_active(True)  # heal: c is outvoted 2 to 1, switches, mines gamma again
    wait_until(converged([a, b, c], 2), DEADLINE, what="all three on the majority chain")
    assert c.forks_resolved == 1
    for node in (a, b, c):
        assert node.tally() == {"alpha": 1, "gamma": 1}
        tx_ids = [blk.transaction.tx_id for blk in node.blocks()[1:]]
        assert sorted(tx_ids) == sorted([a_vote, c_vote])


def test_longer_minority_branch_gives_way_to_a_shorter_majority(net: Network) -> None:
    a, b, c = (net.add_node(name) for name in "abc")
    c.set_network_active(False)
    c_votes = [c.submit_vote("c1"), c.submit_vote("c2")]
    a_vote = a.submit_vote("a1")
    assert all(c.wait_for_tx(v, DEADLINE) for v in c_votes)
    assert a.wait_for_tx(a_vote, DEADLINE) is not None
    wait_until(converged([a, b], 1), DEADLINE, what="a and b agree")
    assert c.blocks()[-1].id == 2  # c is ahead, on its own branch

    c.set_network_active(True)  # 2 votes for a's tip beat 1 for c's longer one
    wait_until(converged([a, b, c], 3), DEADLINE, what="c's votes mined again on the majority")
    for node in (a, b, c):
        assert node.tally() == {"a1": 1, "c1": 1, "c2": 1}
        assert node.blocks()[1].transaction.tx_id == a_vote


def test_two_way_tie_is_broken_identically_on_both_sides(net: Network) -> None:
    a, b = net.add_node("a"), net.add_node("b")
    a.set_network_active(False)
    b.set_network_active(False)
    a_vote, b_vote = a.submit_vote("x"), b.submit_vote("y")
    assert a.wait_for_tx(a_vote, DEADLINE) and b.wait_for_tx(b_vote, DEADLINE)
    a.set_network_active(True)
    b.set_network_active(True)
    wait_until(converged([a, b], 2), DEADLINE, what="the tie resolved")
    assert a.tally() == b.tally() == {"x": 1, "y": 1}
    assert a.forks_resolved + b.forks_resolved == 1  # exactly one side gave way


def test_late_peer_syncs_the_whole_chain(net: Network) -> None:
    a = net.add_node("a")
    for i in range(5):
        assert a.wait_for_tx(a.submit_vote(f"c{i % 2}"), DEADLINE) is not None
    late = net.add_node("late")
    wait_until(converged([a, late], 5), DEADLINE, what="the late peer caught up")
    assert late.tally() == a.tally() == {"c0": 3, "c1": 2}


def test_restarted_peer_resumes_from_disk(net: Network) -> None:
    a = net.add_node("a")
    assert a.wait_for_tx(a.submit_vote("kept"), DEADLINE) is not None
    tip = a.blocks()[-1]
    net.stop_node(a)
    again = net.add_node("a")
    assert again.blocks()[-1] == tip
    assert again.tally() == {"kept": 1}


def test_tracker_restart_and_every_peer_re_registers(net: Network) -> None:
    a, b = net.add_node("a"), net.add_node("b")
    net.restart_tracker()
    wait_until(lambda: {a.address, b.address} <= set(net.tracker.peers()), 15,
               what="both peers re-registered")
    assert a.wait_for_tx(a.submit_vote("after"), DEADLINE) is not None
    wait_until(converged([a, b], 1), DEADLINE, what="the vote propagated")


def test_dead_peer_does_not_stall_the_others(net: Network) -> None:
    a, b = net.add_node("a"), net.add_node("b")
    # A "peer" that registers, accepts connections and never answers them.
    with SilentPeer(net.tracker.address):
        wait_until(lambda: len(net.tracker.peers()) == 3, 5, what="the silent peer listed")
        for i in range(3):
            assert a.wait_for_tx(a.submit_vote(f"v{i}"), DEADLINE) is not None
        wait_until(converged([a, b], 3), DEADLINE, what="b got every block")


def test_stop_is_not_held_up_by_a_request_to_a_silent_peer(net: Network) -> None:
    """stop() wakes requests in flight instead of waiting out their peer_timeout."""
    # A peer_timeout far above the bound below, so the bound tells the two cases
    # apart with room on both sides: without the wake-up, stop() waits out 30 s or
    # more; with it, it takes milliseconds (3 s once on a loaded 2-core machine).
    a = net.add_node("a", peer_timeout=30.0)
    with SilentPeer(net.tracker.address) as silent:
        wait_until(lambda: a.status().peers == 1, 10, what="a sees the silent peer")
        assert a.wait_for_tx(a.submit_vote("x"), DEADLINE) is not None
        silent.accept()  # a's broadcast is now stuck in its handshake
        started = time.monotonic()
        net.stop_node(a)
        assert time.monotonic() - started < 10.0

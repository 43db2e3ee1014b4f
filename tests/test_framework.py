"""The test framework itself (tests/framework/): `wait_until`'s contract, the
in-memory connection pairs, the in-process network harness and the network fakes.
Other suites lean on these, so a harness bug shows up here by name rather than as
a flaky test elsewhere."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import fixed_key, make_block, tx_for
from framework.fakes_net import SilentPeer, scripted_tracker
from framework.memory import Background, connection_pair, handshake, raw_pair, tcp_pair
from framework.network import Network, Target, converged, tips
from framework.waiting import TIMEOUT_FACTOR_ENV, timeout_factor, wait_until
from votechain.core.block import genesis_block
from votechain.errors import ConnectionClosed, TrackerError
from votechain.net.connection import LocalIdentity
from votechain.net.tracker_client import TrackerClient
from votechain.protocol.peer import PROTOCOL_VERSION, GetLatest, Hello, Latest, encode

HELLO = Hello(version=PROTOCOL_VERSION, genesis=genesis_block().hash, difficulty=4)

# ---------------------------------------------------------------- wait_until


def test_wait_until_returns_once_true() -> None:
    calls = iter(range(100))
    wait_until(lambda: next(calls) == 3, what="the fourth call")


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.01 s waiting for Godot"):
        wait_until(lambda: False, 0.01, what="Godot")


def test_wait_until_ignores_only_what_it_is_told_to() -> None:
    def flaky() -> bool:
        raise ConnectionRefusedError("restarting")

    with pytest.raises(AssertionError, match="last: ConnectionRefusedError: restarting"):
        wait_until(flaky, 0.01, what="a restart", ignoring=(OSError,))
    with pytest.raises(ConnectionRefusedError):
        wait_until(flaky, 0.01, what="a restart")


def test_timeout_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMEOUT_FACTOR_ENV, raising=False)
    assert timeout_factor() == 1.0
    monkeypatch.setenv(TIMEOUT_FACTOR_ENV, "4")
    assert timeout_factor() == 4.0
    with pytest.raises(AssertionError, match=r"timed out after 0\.04 s"):
        wait_until(lambda: False, 0.01)
    monkeypatch.setenv(TIMEOUT_FACTOR_ENV, "0.5")
    with pytest.raises(ValueError, match="at least 1"):
        timeout_factor()


# ---------------------------------------------------------------- connection pairs


def test_connection_pair_carries_messages_both_ways() -> None:
    with connection_pair() as (left, right):
        got_left, got_right = handshake(left, right, HELLO)
        # Each side got the other's Hello, with a fresh challenge of its own,
        # and (no identity given) a keyless observer behind it.
        for got in (got_left, got_right):
            assert replace(got.hello, challenge=HELLO.challenge) == HELLO
            assert (got.key, got.certificate, got.member) == (None, None, False)
        assert len({HELLO.challenge, got_left.hello.challenge, got_right.hello.challenge}) == 3
        left.send(GetLatest())
        assert right.recv() == GetLatest()
        right.send(Latest(genesis_block()))
        assert left.recv() == Latest(genesis_block())
    assert left.closed and right.closed


def test_handshake_helper_proves_the_identity_it_is_given() -> None:
    with connection_pair() as (left, right):
        got_left, got_right = handshake(left, right, HELLO,
                                        left_identity=LocalIdentity(fixed_key()))
        # On an open network (no members given) any proven key is a member.
        assert (got_right.key, got_right.member) == (fixed_key().public_der, True)
        assert (got_left.key, got_left.member) == (None, False)
        left.send(GetLatest())  # and the conversation goes on after it
        assert right.recv() == GetLatest()
def test_raw_pair_reads_what_the_raw_side_writes() -> None:
    with raw_pair() as (raw, conn):
        frame = encode(GetLatest())
        raw.sendall(frame[:3])
        raw.sendall(frame[3:])
        assert conn.recv() == GetLatest()
        raw.close()
        with pytest.raises(ConnectionClosed):
            conn.recv()


def test_tcp_pair() -> None:
    with tcp_pair() as (client, server):
        replying = Background(lambda: server.send(server.recv()))
        assert client.request(GetLatest()) == GetLatest()
        replying.result()


def test_background_reraises() -> None:
    def boom() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        Background(boom).result()


# ---------------------------------------------------------------- the network harness


def test_network_nodes_converge_restart_and_stop(tmp_path: Path) -> None:
    with Network(tmp_path) as net:
        a, b = net.add_nodes("ab")
        net.wait_connected()
        assert a.wait_for_tx(a.submit_vote("red"), 30) is not None
        net.wait_converged(height=1)
        assert converged([a, b], 1)() and len(tips([a, b])) == 1

        again = net.restart_node(b)  # from disk, on a new port
        assert again.blocks() == a.blocks() and net.nodes == [a, again]

        net.restart_tracker()  # on the same port; both nodes register again
        net.wait_registered([a, again])
        nodes = list(net.nodes)
    # Everything stopped on the way out of the `with`: nodes, their threads, the tracker.
    assert net.nodes == []
    assert not [t for node in nodes for t in node._threads if t.is_alive()]
    with pytest.raises(RuntimeError, match="started only once"):
        net.tracker.start()  # stopped for good


def test_target_takes_honest_blocks_and_checks_itself(tmp_path: Path) -> None:
    with Network(tmp_path, difficulty=2, miner="pure") as net:
        target = Target(net.add_node("node"))
        target.extend(make_block(target.tip, tx_for("honest"), difficulty=2))
        with target.raw() as raw:
            assert raw.request(GetLatest()) == Latest(target.tip)
        target.assert_unharmed()


# ---------------------------------------------------------------- fakes


def test_silent_peer_is_listed_and_never_answers(tmp_path: Path) -> None:
    with Network(tmp_path) as net, SilentPeer(net.tracker.address) as silent:
        wait_until(lambda: silent.address[1] in {p for _, p in net.tracker.peers()},
                   what="the silent peer listed")
        with socket.create_connection(silent.address, timeout=5) as probe:
            silent.accept()
            probe.settimeout(0.05)
            with pytest.raises(TimeoutError):
                probe.recv(1)  # silent, not closed


def test_scripted_tracker_plays_its_part() -> None:
    with scripted_tracker(lambda conn: conn.sendall(b"HELLO\n")) as address:
        client = TrackerClient(*address, timeout=5.0)
        client.connect()
        with pytest.raises(TrackerError, match="malformed"):
            client.nodes()
        client.close()

"""Per-address bounds and misbehaviour bans (issue 12, cases 2 and 5, and scoring),
with real sockets: an in-process TrackerServer and in-process nodes (Network).

On loopback every connection would come from 127.0.0.1; Linux routes the whole of
127.0.0.0/8 to lo, so an attacker here binds its sockets to 127.0.0.2 (or .3, ...)
before connecting, and is another address to the tracker and the node.

Each test prints what it measured (run with -s to see it); the bounds asserted are
generous, never tight wall-clock limits. The pure rules of core/discipline.py are
tested directly at the end, with `now` passed in.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import fixed_key, make_block, other_key, tx_for
from framework.members import Organizer
from framework.network import Network
from framework.waiting import wait_until
from hostile import ask, connect_from, is_eof, raw_frame, wait_closed
from votechain.core import discipline
from votechain.core.block import Block
from votechain.core.discipline import (
    BAD_CERTIFICATE,
    INVALID_BLOCK,
    MALFORMED_MESSAGE,
    Discipline,
    Offender,
    address_group,
    block_offence,
    handshake_offence,
)
from votechain.core.keys import NodeKey
from votechain.errors import (
    BadCertificate,
    ConnectionClosed,
    DeadlineExceeded,
    FutureTimestamp,
    IncompatiblePeer,
    MalformedMessage,
    RemoteProtocolError,
)
from votechain.net.connection import Connection, LocalIdentity
from votechain.net.tracker_client import TrackerClient
from votechain.net.tracker_server import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    MAX_REGISTRATIONS_PER_IP,
    TrackerServer,
)
from votechain.node.config import MAX_INBOUND, MAX_INBOUND_PER_IP
from votechain.node.runtime import Node
from votechain.protocol.peer import Add, AddResult, Error, GetLatest, Latest

LOCAL = "127.0.0.1"
ATTACKER = "127.0.0.2"
HONEST = "127.0.0.3"
DIFFICULTY = 3


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path, difficulty=DIFFICULTY) as network:
        yield network


# ====================================================================== the tracker


@contextlib.contextmanager
def tracker_flood(address: tuple[str, int], source_ip: str, count: int,
                  register: int = 0) -> Iterator[list[socket.socket]]:
    """`count` connections from `source_ip`; the first `register` of them REGISTER a
    (closed) port each, the rest send nothing. All held open until the end."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            sock = connect_from(address, source_ip)
            socks.append(sock)
            if i < register:
                ask(sock, f"REGISTER {40_000 + i}\n".encode())
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_one_address_registers_at_most_its_share_and_the_connection_goes_on() -> None:
    with TrackerServer() as tracker:
        socks = [connect_from(tracker.address, ATTACKER)
                 for _ in range(MAX_REGISTRATIONS_PER_IP + 1)]
        try:
            for port, sock in enumerate(socks[:-1], start=5000):
                assert ask(sock, f"REGISTER {port}\n".encode()) == b"OK\n"
            last = socks[-1]
            refusal = ask(last, b"REGISTER 6000\n")
            assert refusal == b"ERROR too many registrations from your address\n"
            reply = ask(last, b"NODES\n", 2)  # the connection is still usable
            assert reply.count(b",") == MAX_REGISTRATIONS_PER_IP and b"6000" not in reply
            # A second REGISTER on a registered connection keeps its place, over the cap too.
            assert ask(socks[0], b"REGISTER 5999\n") == b"OK\n"
            assert tracker.peers()[0] == (ATTACKER, 5999)
            # Another address has its own share.
            with connect_from(tracker.address, HONEST) as other:
                assert ask(other, b"REGISTER 7000\n") == b"OK\n"
                assert (HONEST, 7000) in tracker.peers()
        finally:
            for sock in socks:
                sock.close()


def test_case2_one_address_flooding_the_tracker_does_not_lock_out_a_new_peer(
    net: Network,
) -> None:
    """Issue 12, case 2: one IP opened the tracker's 4096 connections in 3.9 s; a new
    peer then saw no peers and its vote never reached the others. Now one address
    holds at most MAX_CONNECTIONS_PER_IP of them and lists MAX_REGISTRATIONS_PER_IP."""
    a, b = net.add_node("a"), net.add_node("b")
    tracker = net.tracker
    count = MAX_CONNECTIONS + 64
    started = time.monotonic()
    with tracker_flood(tracker.address, ATTACKER, count,
                       register=MAX_REGISTRATIONS_PER_IP) as flood:
        # Each connection over the address's share evicted its oldest unregistered one.
        wait_until(lambda: sum(map(is_eof, flood)) == count - MAX_CONNECTIONS_PER_IP, 30.0,
                   what="the tracker to have taken the whole flood")
        flood_seconds = time.monotonic() - started
        held = tracker.connections(ATTACKER)
        assert held == MAX_CONNECTIONS_PER_IP
        junk = [p for p in tracker.peers() if p[0] == ATTACKER]
        assert len(junk) <= MAX_REGISTRATIONS_PER_IP
        # A new peer (from 127.0.0.1, another address) registers and is listed...
        started = time.monotonic()
        c = net.add_node("c")
        listed = time.monotonic() - started
        # ... sees the honest peers, and its vote reaches them.
        wait_until(lambda: {a.address, b.address} <= set(c.directory.known), 15.0,
                   what="the new peer to see the honest ones")
        started = time.monotonic()
        block = c.create(b"case 2 vote", timeout=30.0)
        wait_until(lambda: all(block in n.blocks() for n in (a, b)), 30.0,
                   what="the new peer's vote to reach the others")
        vote_ms = (time.monotonic() - started) * 1000
        # And a peer from yet another address registers too (a raw client from .3).
        started = time.monotonic()
        with TrackerClient(*tracker.address, timeout=5.0) as probe, \
                connect_from(tracker.address, HONEST) as other:
            assert ask(other, b"REGISTER 7001\n") == b"OK\n"
            assert (HONEST, 7001) in probe.nodes()
        other_listed = time.monotonic() - started
    print(f"\ncase 2: {count} connections from one address, all taken by the tracker within "
          f"{flood_seconds:.2f} s; it held {held} of them (cap {MAX_CONNECTIONS_PER_IP}) and "
          f"listed {len(junk)} (cap {MAX_REGISTRATIONS_PER_IP}); a new node started, registered "
          f"and was listed in {listed:.2f} s, its vote was mined and reached both others in "
          f"{vote_ms:.0f} ms; a client from a third address registered and was listed in "
          f"{other_listed * 1000:.1f} ms")


def test_a_full_tracker_evicts_from_the_address_holding_the_most() -> None:
    """At MAX_CONNECTIONS in all (here 256, filled by four addresses of 64), a newcomer
    from a fifth address is not refused: an unregistered connection of the largest
    group gives way, and every registered peer stays listed."""
    cap = 4 * MAX_CONNECTIONS_PER_IP
    flooders = [f"127.0.0.{10 + i}" for i in range(4)]
    with TrackerServer(max_connections=cap) as tracker, contextlib.ExitStack() as stack:
        for ip in flooders:
            stack.enter_context(tracker_flood(tracker.address, ip, MAX_CONNECTIONS_PER_IP,
                                              register=MAX_REGISTRATIONS_PER_IP))
        wait_until(lambda: tracker.connections() == cap, what="the flood accepted")
        junk = set(tracker.peers())
        assert len(junk) == 4 * MAX_REGISTRATIONS_PER_IP
        started = time.monotonic()
        with connect_from(tracker.address, HONEST) as newcomer:
            assert ask(newcomer, b"REGISTER 7002\n") == b"OK\n"
            listing = ask(newcomer, b"NODES\n", 2)
        elapsed = time.monotonic() - started
        assert f"{HONEST},7002".encode() in listing
        assert junk <= set(tracker.peers()) | {(HONEST, 7002)}  # no registered peer evicted
        assert tracker.connections() <= cap
        print(f"\nfull tracker ({cap} connections from 4 addresses): a newcomer from a 5th "
              f"registered and was listed in {elapsed * 1000:.1f} ms")


def test_a_tracker_full_of_registered_peers_evicts_the_largest_address_newest() -> None:
    with TrackerServer(max_connections=8, max_registrations_per_ip=8) as tracker:
        flood = [connect_from(tracker.address, ATTACKER) for _ in range(8)]
        try:
            for port, sock in enumerate(flood, start=5000):
                assert ask(sock, f"REGISTER {port}\n".encode()) == b"OK\n"
            with connect_from(tracker.address, HONEST) as newcomer:
                # The attacker's newest registration gave way: it is closed and unlisted.
                assert ask(newcomer, b"REGISTER 7003\n") == b"OK\n"
                assert wait_closed(flood[-1]) == b""
                assert (ATTACKER, 5007) not in tracker.peers()
                assert (HONEST, 7003) in tracker.peers()
                # The largest address may not push out another's peer, nor its own.
                with connect_from(tracker.address, ATTACKER) as again:
                    assert ask(again, b"") == b"ERROR too many connections\n"
                assert (HONEST, 7003) in tracker.peers()
        finally:
            for sock in flood:
                sock.close()


# ====================================================================== inbound slots


def connect_peer(address: tuple[str, int], node: Node, source_ip: str,
                 key: NodeKey | None = None, timeout: float = 5.0) -> Connection:
    """A peer connection from `source_ip`, handshake done (proving `key`, or a keyless
    observer)."""
    conn = Connection(connect_from(address, source_ip, timeout), timeout=timeout)
    try:
        conn.handshake(node.hello, initiator=True, identity=LocalIdentity(key))
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def inbound_flood(node: Node, source_ip: str, count: int) -> Iterator[list[Connection]]:
    """Try `count` handshaked connections from `source_ip`; yields those that got in."""
    held: list[Connection] = []
    try:
        for _ in range(count):
            try:
                held.append(connect_peer(node.address, node, source_ip))
            except (ConnectionClosed, OSError, RemoteProtocolError):
                continue  # refused: over its address's share
        yield held
    finally:
        for conn in held:
            conn.close()


def honest_block(node: Node, label: str) -> Block:
    return make_block(node.blocks()[-1], tx_for(label), difficulty=DIFFICULTY)


def add_from(node: Node, source_ip: str, block: Block) -> tuple[AddResult, float]:
    """Offer `block` from `source_ip` over a new connection; the verdict and how long
    connecting, the handshake and the Add took."""
    started = time.monotonic()
    with connect_peer(node.address, node, source_ip, fixed_key()) as conn:
        reply = conn.request(Add(block))
    assert isinstance(reply, AddResult), reply
    return reply, time.monotonic() - started


@pytest.mark.parametrize("per_ip", [MAX_INBOUND_PER_IP, MAX_INBOUND], ids=["capped", "uncapped"])
def test_case5_one_address_cannot_hold_every_inbound_slot(net: Network, per_ip: int) -> None:
    """Issue 12, case 5: 255 handshaked connections from one address held every inbound
    slot, and after the victim restarted the attacker took the freed slot. With the
    per-address cap it holds MAX_INBOUND_PER_IP; with the cap lifted (all 256 slots
    from one address), a newcomer from another address evicts one of its connections.
    Either way an honest peer's block is accepted, before and after a restart."""
    victim = net.add_node("victim", max_inbound_per_ip=per_ip)
    first = _attack_then_add(victim, per_ip, "first start")
    victim = net.restart_node(victim)
    again = _attack_then_add(victim, per_ip, "after a restart")
    print(f"\ncase 5 (per-address cap {per_ip}): {first}; {again}")


def _attack_then_add(victim: Node, per_ip: int, when: str) -> str:
    """Case 5 once: the flood from one address, then the honest peer's block."""
    attempts = MAX_INBOUND - 1 if per_ip < MAX_INBOUND else MAX_INBOUND
    started = time.monotonic()
    with inbound_flood(victim, ATTACKER, attempts) as held:
        flood_seconds = time.monotonic() - started
        # (A connection whose handshake the attacker saw complete may still have been
        # waiting on the node's side when the next came, and been evicted by it.)
        assert len(held) >= min(attempts, per_ip)
        assert victim.inbound.connections_from(ATTACKER) <= per_ip
        reply, took = add_from(victim, HONEST, honest_block(victim, f"case 5 {when}"))
        assert reply == AddResult("added"), reply
        assert victim.inbound.connections <= MAX_INBOUND
        # What the attacker still holds: its share, less the one evicted for the
        # honest peer when every slot was full.
        alive = sum(map(_still_served, held))
        assert alive == victim.inbound.connections_from(ATTACKER) <= per_ip
        assert alive >= min(per_ip, MAX_INBOUND - 1)
    return (f"{when}: the attacker held {alive} handshaked connections after "
            f"{attempts} attempts in {flood_seconds:.2f} s; the honest peer's block was "
            f"added in {took * 1000:.0f} ms")


def _still_served(conn: Connection) -> bool:
    try:
        return isinstance(conn.request(GetLatest()), Latest)
    except (ConnectionClosed, OSError):
        return False


# ====================================================================== scores and bans


def test_a_member_sending_invalid_blocks_is_banned_and_forgiven(net: Network) -> None:
    """A member key sending invalid blocks is dropped once its score crosses the
    threshold, refused right after its next handshake, from any address; an honest
    member is unaffected; the ban ends after ban_seconds."""
    ban_seconds = 2.0
    victim = net.add_node("victim", ban_seconds=ban_seconds)
    good = make_block(victim.blocks()[-1], tx_for("attack"), key=other_key(),
                      difficulty=DIFFICULTY)
    bad = replace(good, nonce=good.nonce + 1)  # "hash does not match its contents"
    needed = -(-discipline.BAN_THRESHOLD // INVALID_BLOCK.points)
    with connect_peer(victim.address, victim, ATTACKER, other_key()) as conn:
        for _ in range(needed):
            reply = conn.request(Add(bad))
            assert isinstance(reply, AddResult) and reply.status == "rejected", reply
        banned_at = time.monotonic()
        with pytest.raises((ConnectionClosed, OSError)):
            conn.request(GetLatest())  # dropped after the reply that tipped it
    (ban,) = victim.inbound.discouraged()
    assert ban.who == Offender.member(other_key().public_der)
    # Its next connection, from another address even, is refused after the handshake.
    with connect_peer(victim.address, victim, HONEST, other_key()) as conn:
        refusal = conn.recv()
        assert isinstance(refusal, Error) and "banned" in refusal.reason, refusal
    # An honest member is unaffected, from the attacker's address too (it is the key
    # that is banned, not the address).
    reply, _ = add_from(victim, ATTACKER, honest_block(victim, "honest during the ban"))
    assert reply == AddResult("added")

    def served() -> bool:
        try:
            with connect_peer(victim.address, victim, ATTACKER, other_key()) as conn:
                return isinstance(conn.request(GetLatest()), Latest)
        except (ConnectionClosed, OSError, RemoteProtocolError):
            return False

    wait_until(served, ban_seconds + 10.0, what="the ban to end")
    lasted = time.monotonic() - banned_at
    assert lasted >= ban_seconds * 0.9
    assert victim.inbound.discouraged() == []
    print(f"\nscoring: a member was banned after {needed} invalid blocks; the ban "
          f"(ban_seconds={ban_seconds}) ended after {lasted:.2f} s")


def send_junk_until_dropped(node: Node, source_ip: str) -> int:
    """As a keyless peer from `source_ip`: send frames of an unknown type, each
    answered with an Error, until the node drops the connection; how many were sent."""
    junk = raw_frame({"type": "ping"})  # well framed, but no message the node knows
    sock = connect_from(node.address, source_ip)
    sent = 0
    with Connection(sock) as conn:
        conn.handshake(node.hello, initiator=True)
        with contextlib.suppress(ConnectionClosed, OSError):
            while True:
                sock.sendall(junk)
                sent += 1
                reply = conn.recv()
                assert isinstance(reply, Error) and "bad request" in reply.reason, reply
    return sent


def test_an_address_sending_malformed_frames_is_refused_at_accept(net: Network) -> None:
    """A keyless peer is scored by its address: once banned, its connections are
    closed at accept, before a byte is read; other addresses are served; the ban
    ends. Loopback is exempt by default (NodeConfig.never_ban), so this node
    lifts that."""
    ban_seconds = 2.0
    victim = net.add_node("victim", ban_seconds=ban_seconds, never_ban=())
    sent = 0
    connections = 0
    banned_at = 0.0
    while not victim.inbound.banned((ATTACKER, 0)):
        assert connections < 10, "never banned"
        connections += 1
        sent += send_junk_until_dropped(victim, ATTACKER)
        banned_at = time.monotonic()
    assert sent == discipline.BAN_THRESHOLD // MALFORMED_MESSAGE.points
    with connect_from(victim.address, ATTACKER) as sock:
        assert wait_closed(sock) == b""  # closed at accept: not even a Hello was read
    # Another address is served meanwhile.
    with connect_peer(victim.address, victim, HONEST) as conn:
        assert isinstance(conn.request(GetLatest()), Latest)

    def served() -> bool:
        try:
            with connect_peer(victim.address, victim, ATTACKER) as conn:
                return isinstance(conn.request(GetLatest()), Latest)
        except (ConnectionClosed, OSError, RemoteProtocolError):
            return False

    wait_until(served, ban_seconds + 10.0, what="the address's ban to end")
    lasted = time.monotonic() - banned_at
    print(f"\nscoring: an address was banned after {sent} malformed frames over "
          f"{connections} connections; refused at accept until the ban ended "
          f"after {lasted:.2f} s")


def test_a_revoked_member_retrying_is_banned_by_address(net: Network, tmp_path: Path) -> None:
    """A certificate refused at the handshake (here: revoked) scores against the
    address it came from, which is refused at accept once banned."""
    org = Organizer(tmp_path / "organizer", difficulty=DIFFICULTY)
    outcast = NodeKey.generate()
    certificate = org.certify(outcast, "outcast").encode()
    org.revoke(outcast.public_der)
    victim = net.add_node("victim", membership=org.admit(net.root / "victim"), never_ban=())
    identity = LocalIdentity(outcast, certificate)
    attempts = 0  # handshakes refused for the certificate
    while not victim.inbound.banned((ATTACKER, 0)):
        assert attempts < 10, "never banned"
        sock = connect_from(victim.address, ATTACKER)
        with Connection(sock) as conn:
            with pytest.raises(IncompatiblePeer, match="certificate refused"):
                conn.handshake(victim.hello, initiator=True, identity=identity)
            attempts += 1
            # The victim scores a refusal before it closes the connection: once
            # closed, the score is in, and the loop's check above sees the ban.
            wait_closed(sock)
    assert attempts == -(-discipline.BAN_THRESHOLD // BAD_CERTIFICATE.points)
    with connect_from(victim.address, ATTACKER) as sock:
        assert wait_closed(sock) == b""  # refused at accept
    print(f"\nscoring: a revoked member's address was banned after {attempts} handshakes")


def test_loopback_is_never_banned_by_address_by_default(net: Network) -> None:
    victim = net.add_node("victim")
    sent = sum(send_junk_until_dropped(victim, ATTACKER) for _ in range(3))
    assert sent * MALFORMED_MESSAGE.points > discipline.BAN_THRESHOLD
    assert not victim.inbound.banned((ATTACKER, 0))
    assert victim.inbound.discouraged() == []
    with connect_peer(victim.address, victim, ATTACKER) as conn:
        assert isinstance(conn.request(GetLatest()), Latest)


# ====================================================================== the pure rules


def test_scores_cross_the_threshold_then_the_ban_ends() -> None:
    rules = Discipline(threshold=100, ban_seconds=60.0, score_window=3600.0, never_ban=())
    who = Offender.address("10.0.0.1")
    for i in range(9):
        assert rules.misbehaved(who, INVALID_BLOCK, now=float(i)) is None
    assert rules.score(who, 9.0) == 90
    # Forgotten after an hour without an offence: nine blocks, a tenth an hour later.
    assert rules.misbehaved(who, INVALID_BLOCK, now=3608.0) is None
    assert rules.score(who, 3608.0) == 10
    for i in range(8):
        assert rules.misbehaved(who, INVALID_BLOCK, now=3609.0 + i * 0.1) is None
    ban = rules.misbehaved(who, INVALID_BLOCK, now=3610.0)
    assert ban is not None and ban.until == 3670.0 and ban.last == "invalid block"
    assert rules.banned_until(who, 3669.9) == 3670.0
    assert rules.misbehaved(who, INVALID_BLOCK, now=3620.0) is None  # banned: not scored
    assert rules.discouraged(3620.0) == [ban]
    assert rules.banned_until(who, 3670.0) is None
    assert rules.score(who, 3670.0) == 0.0  # afresh
    assert rules.discouraged(3670.0) == []


def test_keys_and_addresses_are_scored_apart_and_loopback_is_exempt() -> None:
    rules = Discipline(threshold=20)
    key = Offender.member(fixed_key().public_der)
    assert rules.misbehaved(key, BAD_CERTIFICATE, 0.0) is not None
    assert rules.banned_until(Offender.address("10.0.0.1"), 1.0) is None
    for ip in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.9"):
        loopback = Offender.address(address_group(ip))
        assert rules.exempt(loopback)
        assert rules.misbehaved(loopback, BAD_CERTIFICATE, 0.0) is None
        assert rules.score(loopback, 0.0) == 0.0
    assert not rules.exempt(Offender.address("10.0.0.1"))
    assert Discipline(threshold=20, never_ban=()).misbehaved(
        Offender.address("127.0.0.1"), BAD_CERTIFICATE, 0.0) is not None


def test_memory_is_bounded_the_oldest_entry_forgotten() -> None:
    rules = Discipline(threshold=100, max_scored=3, max_bans=2, never_ban=())
    offenders = [Offender.address(f"10.0.0.{i}") for i in range(5)]
    for i, who in enumerate(offenders):
        rules.misbehaved(who, MALFORMED_MESSAGE, float(i))
    assert [rules.score(w, 5.0) > 0 for w in offenders] == [False, False, True, True, True]
    heavy = replace(INVALID_BLOCK, points=100)
    for i, who in enumerate(offenders[:3]):
        assert rules.misbehaved(who, heavy, 10.0 + i) is not None
    assert [b.who for b in rules.discouraged(12.0)] == offenders[1:3]  # the first forgotten


def test_address_groups() -> None:
    assert address_group("203.0.113.7") == "203.0.113.7"
    assert address_group("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_group("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:2::9") == address_group("2001:db8:1:2:ffff::1")
    assert address_group("::1") == "::1"
    assert address_group("not an address") == "not an address"


def test_which_verdicts_are_misbehaviour() -> None:
    assert block_offence("rejected", "block 3 abcd: bad signature: ...") == INVALID_BLOCK
    assert block_offence("rejected", "transaction already in the chain") == INVALID_BLOCK
    future = f"block 3 abcd: {FutureTimestamp.reason}: 3600 s ahead"
    assert block_offence("rejected", future) is None  # an honest peer's skewed clock
    for status in ("added", "known", "fork"):
        assert block_offence(status, "") is None
    assert handshake_offence(MalformedMessage("expected hello")) == MALFORMED_MESSAGE
    refused = IncompatiblePeer("certificate refused: revoked")
    refused.__cause__ = BadCertificate("revoked")
    assert handshake_offence(refused) == BAD_CERTIFICATE
    assert handshake_offence(IncompatiblePeer("genesis block ... (a different chain)")) is None
    assert handshake_offence(DeadlineExceeded("no handshake within 5 s")) is None

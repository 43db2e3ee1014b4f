"""A real peer (votechain.node.runtime.Node, in process, real sockets on 127.0.0.1) under attack
from anyone who can open a socket: bad frames, slow and idle connections, floods, bad
blocks, another network, and its control channel.

After each attack the node must still answer a normal request, hold the same chain,
and be back to idle CPU (`Target.assert_unharmed`). One node serves the whole module
(no attack may change its chain, and each test checks that it did not); timeouts are
shortened per test by setting the node's NodeConfig fields, which the inbound side
reads at each new connection.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import fixed_key, make_block, other_key, tx_for
from framework.network import Network, Target
from framework.waiting import wait_until
from hostile import (
    RawPeer,
    connect,
    drip,
    frame,
    is_eof,
    open_many,
    raw_frame,
    send_and_hang_up,
    wait_closed,
)
from votechain.core.block import HASH_BYTES, MAX_DATA_BYTES, Block, meets_difficulty
from votechain.core.keys import NodeKey
from votechain.errors import ControlError
from votechain.net.control_client import ControlClient
from votechain.net.control_server import MAX_CONTROL_CONNECTIONS, ControlServer
from votechain.net.sockets import connect_unix
from votechain.node.runtime import now_ms
from votechain.protocol.peer import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Add,
    AddResult,
    Error,
    GetBlocks,
    GetLatest,
    Hello,
    Latest,
    encode,
)

DIFFICULTY = 2  # a few hundred hashes a block: the test mines its attack blocks itself
CHAIN_LENGTH = 3


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("hostile-peer")
    with Network(root, difficulty=DIFFICULTY, miner="pure") as net:
        target = Target(net.add_node("node"))
        for i in range(CHAIN_LENGTH):  # the honest path, which the attacks must not break
            target.extend(make_block(target.tip, tx_for(f"honest-{i}"), difficulty=DIFFICULTY))
        yield target


@pytest.fixture
def peer_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="votechain.peer")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait until `text` is in the log (a node thread may log just after it hangs up)."""
    wait_until(lambda: text in caplog.text, 5.0, what=f"log line containing {text!r}")


# ---------------------------------------------------------------- frames


def test_random_bytes_instead_of_a_hello(
    target: Target, peer_log: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(5)
    for _ in range(20):
        with target.raw(hello=False) as raw:
            # Hang up after: a length prefix may promise more than was sent.
            send_and_hang_up(raw.sock, rng.randbytes(rng.randrange(1, 2000)))
            raw.wait_closed()
    logged(peer_log, "dropping connection from")
    target.assert_unharmed()


def test_random_bytes_after_the_handshake(target: Target) -> None:
    rng = random.Random(6)
    for _ in range(20):
        with target.raw() as raw:
            send_and_hang_up(raw.sock, rng.randbytes(rng.randrange(1, 2000)))
            raw.wait_closed()
    target.assert_unharmed()


def test_bad_length_prefix_closes_at_once(
    target: Target, peer_log: pytest.LogCaptureFixture
) -> None:
    for prefix, words in [
        ((MAX_FRAME_BYTES + 1).to_bytes(4, "big"), "4194305 is over MAX_FRAME_BYTES"),
        (b"\xff\xff\xff\xff", "4294967295 is over MAX_FRAME_BYTES"),
        (b"\x00\x00\x00\x00", "zero-length frame"),
    ]:
        with target.raw() as raw:
            raw.send_bytes(prefix)  # and nothing after it: the node must not wait for a payload
            raw.wait_closed(timeout=2.0)
        logged(peer_log, words)
    target.assert_unharmed()


def test_frame_cut_off_halfway_then_closed(
    target: Target, peer_log: pytest.LogCaptureFixture
) -> None:
    whole = encode(GetBlocks(0, 10))
    with target.raw() as raw:
        raw.send_bytes(whole[: len(whole) // 2])
        raw.sock.shutdown(socket.SHUT_WR)
        raw.wait_closed()
    logged(peer_log, "connection closed mid-frame")
    target.assert_unharmed()


def test_frame_cut_off_halfway_then_silence(
    target: Target, peer_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target.node.config, "inbound_frame_deadline", 0.3)
    whole = encode(GetBlocks(0, 10))
    with target.raw() as raw:
        raw.send_bytes(whole[: len(whole) // 2])
        raw.wait_closed(timeout=3.0)  # INBOUND_IDLE_TIMEOUT is 60 s: only the deadline can do it
    logged(peer_log, "frame not complete within 0.3 s")
    target.assert_unharmed()


def test_unknown_type_gets_an_error_and_the_connection_goes_on(
    target: Target, peer_log: pytest.LogCaptureFixture
) -> None:
    with target.raw() as raw:
        raw.send_obj({"type": "ping", "nonce": 1})
        reply = raw.recv()
        assert isinstance(reply, Error) and "unknown message type 'ping'" in reply.reason
        assert raw.request(GetLatest()) == Latest(target.tip)
    logged(peer_log, "bad request from")
    target.assert_unharmed()


def _block_map(block: Block, **changes: object) -> dict[str, object]:
    wire_map = block.to_wire()
    for key, value in changes.items():
        if value is None:
            del wire_map[key]
        else:
            wire_map[key] = value
    return wire_map


FIELD_CASES: list[tuple[object, str]] = [
        ({"type": "get_blocks", "from_id": 0}, "missing limit"),
        ({"type": "get_blocks", "from_id": "0", "limit": 1}, "must be an integer"),
        ({"type": "get_blocks", "from_id": 0, "limit": 1.0}, "must be an integer"),
        ({"type": "get_blocks", "from_id": -1, "limit": 1}, "out of range"),
        ({"type": "get_blocks", "from_id": 0, "limit": 10_000}, "out of range"),
        ({"type": "get_latest", "extra": True}, "unknown fields"),
        ({"type": 7}, "must be a string"),
        ({"kind": "get_latest"}, "must be a string"),
        ([1, 2, 3], "must be a map"),
        ({"type": "add"}, "missing block"),
        ({"type": "add", "block": "a block", "locked": 0}, "must be a map"),
        ({"type": "add", "block": {"id": 1}, "locked": 0}, "is missing"),
        # Version 1's Add named its sender's key; the key is now the one the
        # handshake proved, and a field claiming another is refused.
        ({"type": "add", "block": {"id": 1}, "locked": 0, "public_key": b"k"},
         "unknown fields public_key"),
]


def test_missing_or_mistyped_fields_get_an_error(target: Target) -> None:
    for obj, words in FIELD_CASES:
        with target.raw() as raw:
            raw.send_obj(obj)
            reply = raw.recv()
            assert isinstance(reply, Error) and words in reply.reason, (obj, reply)
            assert raw.request(GetLatest()) == Latest(target.tip)
    target.assert_unharmed()


def test_mistyped_block_fields_get_an_error(target: Target) -> None:
    block = make_block(target.tip, tx_for("typed"), difficulty=DIFFICULTY)
    cases = [
        (_block_map(block, nonce=None), "missing nonce"),
        (_block_map(block, id="4"), "id must be an integer"),
        (_block_map(block, hash=block.hash.hex()), "hash must be bytes"),
        (_block_map(block, prev_hash=b"\x00" * 31), "must be 32 bytes"),
        (_block_map(block, signature=[1, 2]), "signature must be bytes"),
        (_block_map(block, colour=b"red"), "unknown fields"),
    ]
    with target.raw() as raw:
        for block_map, words in cases:
            raw.send_obj({"type": "add", "block": block_map, "locked": 0})
            reply = raw.recv()
            assert isinstance(reply, Error) and words in reply.reason, (words, reply)
    target.assert_unharmed()


def test_oversized_block_data_is_refused_by_the_decoder(
    target: Target, peer_log: pytest.LogCaptureFixture
) -> None:
    block = make_block(target.tip, tx_for("big"), difficulty=DIFFICULTY)
    transaction = {"timestamp": 1, "data": b"x" * (MAX_DATA_BYTES + 1),
                   "salt": block.transaction.salt}
    with target.raw() as raw:
        raw.send_obj({"type": "add", "block": _block_map(block, transaction=transaction),
                      "locked": 0})
        reply = raw.recv()
        assert isinstance(reply, Error)
        assert "transaction.data is 1025 bytes, over its cap of 1024" in reply.reason
    logged(peer_log, "over its cap of 1024")
    target.assert_unharmed()


def test_trailing_bytes_get_an_error(target: Target) -> None:
    with target.raw() as raw:
        raw.send_bytes(frame(encode(GetLatest())[4:] + b"\xc0"))
        reply = raw.recv()
        assert isinstance(reply, Error) and "trailing bytes" in reply.reason
        assert raw.request(GetLatest()) == Latest(target.tip)
    target.assert_unharmed()


def test_deeply_nested_msgpack_gets_an_error(target: Target) -> None:
    for depth in (500, 5000, 100_000, 1_000_000):
        with target.raw() as raw:
            for nest in (b"\x91", b"\x81\xa1a"):  # arrays, maps
                payload = b"\x82\xa4type\xa5error\xa6reason" + nest * depth + b"\xc0"
                raw.send_bytes(frame(payload))
                reply = raw.recv()
                assert isinstance(reply, Error) and "bad request" in reply.reason
            assert raw.request(GetLatest()) == Latest(target.tip)  # still in step
    target.assert_unharmed()


def test_a_peer_that_keeps_sending_bad_requests_is_dropped(
    target: Target, peer_log: pytest.LogCaptureFixture
) -> None:
    with target.raw() as raw:
        for _ in range(target.node.config.max_bad_requests):
            raw.send_obj({"type": "ping"})
            assert isinstance(raw.recv(), Error)
        raw.send_obj({"type": "ping"})
        raw.wait_closed()
    logged(peer_log, "too many bad requests")
    target.assert_unharmed()


def test_unexpected_messages_get_an_error(target: Target) -> None:
    with target.raw() as raw:
        for msg in (target.node.hello, Latest(target.tip), AddResult("added"), Error("hi")):
            reply = raw.request(msg)
            assert isinstance(reply, Error) and "unexpected" in reply.reason
    target.assert_unharmed()


# ---------------------------------------------------------------- connections


def test_a_connection_that_sends_nothing_is_closed(
    target: Target, peer_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target.node.config, "handshake_timeout", 0.3)
    with connect(target.address) as loris:
        wait_closed(loris, timeout=3.0)
    logged(peer_log, "no handshake within 0.3 s")
    target.assert_unharmed()


def test_a_hello_sent_a_byte_at_a_time_is_cut_off(
    target: Target, peer_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target.node.config, "handshake_timeout", 0.5)
    hello = encode(target.node.hello)
    with connect(target.address) as loris:
        sent, seconds = drip(loris, hello, interval=0.05)
    # Every read saw a byte well within INBOUND_IDLE_TIMEOUT; only the deadline ended it.
    assert sent < len(hello) and seconds < 3.0
    logged(peer_log, "no handshake within 0.5 s")
    target.assert_unharmed()


def test_a_request_sent_a_byte_at_a_time_is_cut_off(
    target: Target, peer_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target.node.config, "inbound_frame_deadline", 0.5)
    endless = (1000).to_bytes(4, "big") + b"\xc0" * 1000  # a frame that takes 50 s at this pace
    with target.raw() as raw:
        assert raw.request(GetLatest()) == Latest(target.tip)  # an honest start
        sent, seconds = drip(raw.sock, endless, interval=0.05)
    assert sent < len(endless) and seconds < 3.0
    logged(peer_log, "frame not complete within 0.5 s")
    target.assert_unharmed()


def test_an_idle_connection_after_the_handshake_is_closed(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(target.node.config, "inbound_idle_timeout", 0.3)
    with target.raw() as raw:
        raw.wait_closed(timeout=3.0)
    target.assert_unharmed()


def test_hundreds_of_connections_at_once_do_not_lock_out_an_honest_peer(target: Target) -> None:
    cap = target.node.config.max_inbound
    count = cap + 50
    with open_many(target.address, count) as flood:
        # Over the cap, each newcomer evicted the oldest connection still without a
        # Hello; the honest peer's is the newest, so it is served at once.
        with target.connection() as conn:
            assert conn.request(GetLatest()) == Latest(target.tip)
        wait_until(lambda: sum(map(is_eof, flood)) >= count - cap + 1, 10.0,
                   what="the oldest flood connections to be evicted")
        # (An evicted connection keeps its slot until its thread has closed it.)
        wait_until(lambda: target.node.inbound.connections <= cap, 5.0,
                   what="no more than MAX_INBOUND connections")
    wait_until(lambda: target.node.inbound.connections == 0, 10.0,
               what="every slot to be given back")
    target.assert_unharmed()


# ---------------------------------------------------------------- blocks


def _mined_without_difficulty(prev: Block, label: str) -> Block:
    """A signed block whose hash is right but misses DIFFICULTY."""
    template = make_block(prev, tx_for(label), difficulty=0)
    nonce = 0
    while meets_difficulty((candidate := template.with_nonce(nonce)).hash, DIFFICULTY):
        nonce += 1
    return replace(candidate, signature=fixed_key().sign(candidate.hash))


def _bad_blocks(tip: Block) -> dict[str, tuple[Block, NodeKey | None, str]]:
    """name -> (block, the key the sender proves in its handshake or None for the
    block's author, words of the reason)."""
    good = make_block(tip, tx_for("attack"), difficulty=DIFFICULTY)
    future = make_block(tip, tx_for("future", timestamp=now_ms() + 3_600_000),
                        difficulty=DIFFICULTY)
    signed_by_other = replace(good, signature=other_key().sign(good.hash))
    replayed_vote = make_block(tip, tx_for("honest-0"), difficulty=DIFFICULTY)
    return {
        "bad signature": (signed_by_other, None, "bad signature"),
        "garbage signature": (replace(good, signature=os.urandom(256)), None, "bad signature"),
        "author not the sender's key": (good, other_key(), "author does not match"),
        "wrong hash": (replace(good, nonce=good.nonce + 1), None, "hash does not match"),
        "difficulty not met": (_mined_without_difficulty(tip, "easy"), None,
                               "does not meet the difficulty"),
        "timestamp far in the future": (future, None, "timestamp too far in the future"),
        "a vote already in the chain": (replayed_vote, None, "transaction already in the chain"),
    }


BAD_BLOCKS = [
    "bad signature", "garbage signature", "author not the sender's key", "wrong hash",
    "difficulty not met", "timestamp far in the future", "a vote already in the chain",
]


@pytest.mark.parametrize("case", BAD_BLOCKS)
def test_bad_block_is_rejected_with_its_reason(
    target: Target, peer_log: pytest.LogCaptureFixture, case: str
) -> None:
    block, key, words = _bad_blocks(target.tip)[case]
    reply = target.add(block, key)
    assert reply.status == "rejected" and words in reply.reason, reply
    logged(peer_log, f"rejected block {block.id} from")
    logged(peer_log, words)
    target.assert_unharmed()


def test_a_keyless_observer_may_read_but_not_add(
    target: Target, peer_log: pytest.LogCaptureFixture
) -> None:
    """Even on an open network, a block must come from the key its sender proved:
    a connection that proved none is refused before the block is looked at."""
    block = make_block(target.tip, tx_for("from an observer"), difficulty=DIFFICULTY)
    with target.connection() as conn:
        assert conn.request(GetLatest()) == Latest(target.tip)
        reply = conn.request(Add(block))
    assert isinstance(reply, AddResult) and reply.status == "rejected", reply
    assert "observer may read the chain but not add blocks" in reply.reason
    logged(peer_log, "refused a block from")
    target.assert_unharmed()


def test_replay_of_an_old_block_is_known(target: Target) -> None:
    for block in target.chain[1:]:
        assert target.add(block) == AddResult("known")
    target.assert_unharmed()


@pytest.mark.parametrize("case", ["wrong prev_hash", "id gap", "same id as ours"])
def test_block_that_does_not_extend_the_tip_is_a_fork_left_to_the_majority(
    target: Target, peer_log: pytest.LogCaptureFixture, case: str
) -> None:
    """Valid on its own but not after our tip: the node cannot tell a bad link from a
    branch it has not seen, so it answers "fork" and asks the majority, which (no
    other peer here) keeps our chain."""
    tip = target.tip
    parent = {
        "wrong prev_hash": replace(tip, hash=os.urandom(HASH_BYTES)),
        "id gap": replace(tip, id=tip.id + 5),
        "same id as ours": target.chain[-2],
    }[case]
    block = make_block(parent, tx_for(f"fork-{case}"), difficulty=DIFFICULTY)
    assert target.add(block) == AddResult("fork")
    words = {"wrong prev_hash": "is not our tip's", "id gap": "leaves a gap",
             "same id as ours": "we hold another block"}[case]
    logged(peer_log, words)
    target.assert_unharmed()


def test_a_stream_of_fork_blocks_does_not_make_the_node_spin(target: Target) -> None:
    stale = make_block(target.chain[-2], tx_for("stale"), difficulty=DIFFICULTY)
    with target.connection(fixed_key()) as conn:
        for _ in range(300):
            assert conn.request(Add(stale)) == AddResult("fork")
    # Resolution runs at most every MIN_RESOLVE_INTERVAL, and stops with the stream.
    target.assert_unharmed()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("genesis", "(a different chain)"),
        ("difficulty", "difficulty 3, expected 2"),
        ("version", f"protocol version {PROTOCOL_VERSION + 1}, expected {PROTOCOL_VERSION}"),
    ],
)
def test_another_network_is_refused_at_hello(
    target: Target, peer_log: pytest.LogCaptureFixture, case: str, words: str
) -> None:
    ours = target.node.hello
    foreign = {
        "genesis": replace(ours, genesis=b"\x01" * HASH_BYTES),
        "difficulty": replace(ours, difficulty=DIFFICULTY + 1),
        "version": replace(ours, version=PROTOCOL_VERSION + 1),
    }[case]
    with RawPeer(target.address) as raw:
        theirs = raw.request(foreign)  # both sides see the mismatch
        assert isinstance(theirs, Hello)
        assert replace(theirs, challenge=ours.challenge) == ours  # the challenge is fresh
        reply = raw.recv()
        assert isinstance(reply, Error) and reply.reason.startswith("incompatible: ")
        assert words in reply.reason
        # A block from that network never gets looked at: the connection is gone.
        raw.wait_closed()
    logged(peer_log, words)
    target.assert_unharmed()


# ---------------------------------------------------------------- control channel


def _control_connect(path: Path) -> socket.socket:
    """A raw connection to the control socket at `path` (a Unix socket in the data directory)."""
    return connect_unix(path, timeout=5.0)


def _control_raw(target: Target) -> socket.socket:
    return _control_connect(target.node.control.path)


def test_control_garbage_before_auth(target: Target) -> None:
    rng = random.Random(7)
    for _ in range(20):
        with _control_raw(target) as sock:
            send_and_hang_up(sock, rng.randbytes(rng.randrange(1, 500)))
            wait_closed(sock)
    assert ControlClient.from_data_dir(target.node.data_dir).status()["height"] == CHAIN_LENGTH
    target.assert_unharmed()


def test_control_guessing_cookies_locks_nobody_out(target: Target) -> None:
    for guess in range(50):
        client = ControlClient(target.node.control.path, f"{guess:064x}")
        with pytest.raises(ControlError, match="bad cookie"):
            client.status()
    tally = ControlClient.from_data_dir(target.node.data_dir).tally()
    assert tally == {f"honest-{i}": 1 for i in range(CHAIN_LENGTH)}
    target.assert_unharmed()


def test_control_oversized_frame_after_auth(target: Target) -> None:
    cookie = (target.node.data_dir / "control.cookie").read_text().strip()
    with _control_raw(target) as sock:
        sock.sendall(raw_frame({"type": "auth", "cookie": cookie}))
        sock.sendall((1 << 31).to_bytes(4, "big"))
        reply = wait_closed(sock)
        assert b"over the cap" in reply
    target.assert_unharmed()


def test_control_auth_sent_a_byte_at_a_time_is_cut_off(
    target: Target, tmp_path: Path
) -> None:
    server = ControlServer(target.node, tmp_path, auth_timeout=0.5)
    server.start()
    try:
        auth = raw_frame({"type": "auth", "cookie": "0" * 64})
        with _control_connect(server.path) as loris:
            sent, seconds = drip(loris, auth, interval=0.05)
        assert sent < len(auth) and seconds < 3.0
        assert ControlClient.from_data_dir(tmp_path).status()["height"] == CHAIN_LENGTH
    finally:
        server.stop()
    target.assert_unharmed()


def test_control_flood_is_capped_and_the_owner_gets_back_in(target: Target) -> None:
    flood = []
    try:
        for _ in range(MAX_CONTROL_CONNECTIONS + 20):
            flood.append(_control_connect(target.node.control.path))
        refused = flood[-1]
        assert b"too many connections" in wait_closed(refused)
    finally:
        for sock in flood:
            sock.close()
    # The flood is gone (the attacker hung up); its threads give their slots back.
    wait_until(lambda: _control_status(target) is not None, 10.0, what="the owner served")
    target.assert_unharmed()


def _control_status(target: Target) -> dict[str, object] | None:
    try:
        return ControlClient.from_data_dir(target.node.data_dir).status()
    except ControlError:
        return None

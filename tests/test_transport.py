"""The socket shell: socketpairs for the conversation, real 127.0.0.1 sockets for TCP details."""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest

from framework import memory
from framework.memory import Background, connection_pair, raw_pair
from framework.waiting import wait_until
from votechain.core.block import (
    HASH_BYTES,
    MAX_AUTHOR_BYTES,
    MAX_DATA_BYTES,
    MAX_SIGNATURE_BYTES,
    SALT_BYTES,
    Block,
    Transaction,
    genesis_block,
)
from votechain.core.codec import pack
from votechain.errors import (
    ConnectionClosed,
    FrameTooLarge,
    IncompatiblePeer,
    LocalProtocolError,
    MalformedMessage,
    UnknownMessageType,
)
from votechain.net.connection import Connection
from votechain.protocol.peer import (
    MAX_BATCH_BLOCKS,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Blocks,
    Error,
    GetBlocks,
    GetLatest,
    Hello,
    Latest,
    encode,
)

HELLO = Hello(version=PROTOCOL_VERSION, genesis=genesis_block().hash, difficulty=4)


@pytest.fixture
def pair() -> Iterator[tuple[Connection, Connection]]:
    with connection_pair(timeout=2.0) as p:
        yield p


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Connection, Connection]]:
    """(client, server) over a real 127.0.0.1 TCP connection."""
    with memory.tcp_pair(timeout=2.0) as p:
        yield p


def big_batch() -> Blocks:
    """A full batch of blocks at every field's cap: about 812 KiB, many recv chunks."""
    return Blocks(
        blocks=tuple(
            Block(
                id=i,
                transaction=Transaction(
                    timestamp=i, data=b"d" * MAX_DATA_BYTES, salt=bytes(SALT_BYTES)
                ),
                nonce=i,
                prev_hash=bytes(HASH_BYTES),
                hash=bytes(HASH_BYTES),
                signature=b"s" * MAX_SIGNATURE_BYTES,
                author=b"a" * MAX_AUTHOR_BYTES,
            )
            for i in range(MAX_BATCH_BLOCKS)
        )
    )


# ---------------------------------------------------------------- messages


def test_send_and_recv(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    left.send(GetLatest())
    left.send(GetBlocks(from_id=3, limit=10))
    assert right.recv() == GetLatest()
    assert right.recv() == GetBlocks(from_id=3, limit=10)
    right.send(Latest(block=genesis_block()))
    assert left.recv() == Latest(block=genesis_block())


def test_several_messages_in_one_write_are_read_one_by_one(
        pair: tuple[Connection, Connection]) -> None:
    """send(*msgs) writes them together (an answerer's held replies, a
    pipelined drain); the reader sees each whole, and knows when the next is
    already read (`message_ready`: the inbound server holds its replies then)."""
    left, right = pair
    assert not right.message_ready
    left.send(GetLatest(), GetBlocks(from_id=3, limit=10), GetLatest())
    assert right.recv() == GetLatest()
    assert right.message_ready  # the other two came in the same read
    assert right.recv() == GetBlocks(from_id=3, limit=10)
    assert right.recv() == GetLatest()
    assert not right.message_ready


def test_big_message_over_tcp(tcp_pair: tuple[Connection, Connection]) -> None:
    client, server = tcp_pair
    batch = big_batch()
    sending = Background(lambda: server.send(batch))
    assert client.recv() == batch
    sending.result()


def test_request_from_many_threads_keeps_replies_with_requests(
    tcp_pair: tuple[Connection, Connection],
) -> None:
    client, server = tcp_pair

    def serve() -> None:
        while True:
            try:
                request = server.recv()
            except ConnectionClosed:
                return
            assert isinstance(request, GetBlocks)
            server.send(Error(reason=f"from {request.from_id}"))

    serving = Background(serve)
    results: dict[int, object] = {}

    def ask(n: int) -> None:
        for k in range(20):
            results[n * 100 + k] = client.request(GetBlocks(from_id=n * 100 + k, limit=1))

    askers = [Background(functools.partial(ask, n)) for n in range(8)]
    for asker in askers:
        asker.result()
    assert results == {i: Error(reason=f"from {i}") for i in results}
    assert len(results) == 160
    client.close()
    serving.result()


def test_tcp_details(tcp_pair: tuple[Connection, Connection]) -> None:
    client, server = tcp_pair
    sock = client._sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert client.peer == ("127.0.0.1", server._sock.getsockname()[1])
    assert server.peer[0] == "127.0.0.1"


def test_local_error_sends_nothing(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    with pytest.raises(LocalProtocolError):
        left.send(GetBlocks(from_id=0, limit=0))
    left.send(GetLatest())
    assert right.recv() == GetLatest()


# ---------------------------------------------------------------- handshake


def test_handshake(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    accepting = Background(lambda: right.handshake(HELLO, initiator=False))
    initiator_saw = left.handshake(HELLO, initiator=True).hello
    acceptor_saw = accepting.result().hello
    # Each side sent HELLO, with a fresh random challenge of its own in place of ours.
    for got in (initiator_saw, acceptor_saw):
        assert replace(got, challenge=HELLO.challenge) == HELLO
    assert len({HELLO.challenge, initiator_saw.challenge, acceptor_saw.challenge}) == 3


def test_handshake_mismatch_fails_both_sides_with_a_reason(
    pair: tuple[Connection, Connection],
) -> None:
    left, right = pair
    theirs = Hello(version=PROTOCOL_VERSION, genesis=HELLO.genesis, difficulty=5)
    accepting = Background(lambda: right.handshake(theirs, initiator=False))
    with pytest.raises(IncompatiblePeer, match="difficulty 5, expected 4"):
        left.handshake(HELLO, initiator=True)
    with pytest.raises(IncompatiblePeer, match="difficulty 4, expected 5"):
        accepting.result()
    # Each side told the other why before giving up.
    assert left.recv() == Error(reason="incompatible: difficulty 4, expected 5")
    assert right.recv() == Error(reason="incompatible: difficulty 5, expected 4")


def test_handshake_refused_by_peer(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    initiating = Background(lambda: left.handshake(HELLO, initiator=True))
    got = right.recv()
    assert isinstance(got, Hello) and replace(got, challenge=HELLO.challenge) == HELLO
    right.send(Error(reason="too many peers"))
    with pytest.raises(IncompatiblePeer, match="peer refused the handshake: too many peers"):
        initiating.result()


def test_handshake_requires_hello_first(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    left.send(GetLatest())
    with pytest.raises(MalformedMessage, match="expected hello in the handshake, got get_latest"):
        right.handshake(HELLO, initiator=False)
    assert left.recv() == Error(reason="expected hello in the handshake, got get_latest")


def test_handshake_requires_auth_after_the_hellos(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    accepting = Background(lambda: right.handshake(HELLO, initiator=False))
    left.send(HELLO)
    assert isinstance(left.recv(), Hello)
    left.send(GetLatest())  # where the initiator's Auth belongs
    with pytest.raises(MalformedMessage, match="expected auth in the handshake, got get_latest"):
        accepting.result()
    assert left.recv() == Error(reason="expected auth in the handshake, got get_latest")


# ---------------------------------------------------------------- endings


def test_peer_closes(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    left.send(GetLatest())
    left.close()
    assert right.recv() == GetLatest()  # what arrived before the close is still read
    with pytest.raises(ConnectionClosed):
        right.recv()
    assert right.closed


def test_peer_closes_mid_frame() -> None:
    with raw_pair(timeout=2.0) as (a, conn):
        a.sendall(encode(GetLatest())[:-2])
        a.close()
        with pytest.raises(MalformedMessage, match="connection closed mid-frame"):
            conn.recv()


def test_peer_resets() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname())
        sock, _ = listener.accept()
    with Connection(sock, timeout=2.0) as conn:
        # SO_LINGER 0: close() sends RST instead of FIN.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()
        with pytest.raises(ConnectionClosed):
            conn.recv()


def test_oversized_frame_refused_without_reading_it() -> None:
    with raw_pair(timeout=2.0) as (a, conn):
        a.sendall((MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"x" * 100)
        with pytest.raises(FrameTooLarge):
            conn.recv()
        assert conn._decoder.buffered == 0
        with pytest.raises(FrameTooLarge):
            conn.recv()  # the stream is lost for good


def test_malformed_frame_then_reading_goes_on() -> None:
    bad = pack({"type": "ping"})
    with raw_pair(timeout=2.0) as (a, conn):
        a.sendall(len(bad).to_bytes(4, "big") + bad + encode(GetLatest()))
        with pytest.raises(UnknownMessageType):
            conn.recv()
        assert conn.recv() == GetLatest()


def test_recv_timeout_keeps_the_connection(pair: tuple[Connection, Connection]) -> None:
    left, right = pair
    right._sock.settimeout(0.05)
    left._sock.sendall(encode(GetLatest())[:3])  # half a frame, then silence
    with pytest.raises(TimeoutError):
        right.recv()
    left._sock.sendall(encode(GetLatest())[3:])
    assert right.recv() == GetLatest()
    assert not right.closed


def test_request_timeout_closes_the_connection(pair: tuple[Connection, Connection]) -> None:
    left, _ = pair
    left._sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        left.request(GetLatest())  # nobody answers
    assert left.closed
    with pytest.raises(ConnectionClosed):
        left.send(GetLatest())


def test_close_wakes_a_blocked_recv(pair: tuple[Connection, Connection]) -> None:
    left, _ = pair
    receiving = Background(left.recv)
    wait_until(lambda: left._recv_lock.locked(), what="recv to block")
    left.close()
    left.close()  # idempotent
    with pytest.raises(ConnectionClosed):
        receiving.result()


def test_open_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        Connection.open("127.0.0.1", port, timeout=1.0)


def test_repr_names_the_peer(tcp_pair: tuple[Connection, Connection]) -> None:
    client, _ = tcp_pair
    assert repr(client).startswith("<Connection 127.0.0.1:")
    client.close()
    assert repr(client).endswith("closed>")

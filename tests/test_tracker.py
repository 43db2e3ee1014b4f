"""The tracker over real sockets on 127.0.0.1, ephemeral ports.

Conditions are awaited under a deadline (``wait_until``), never slept for.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from framework.fakes_net import scripted_tracker
from framework.waiting import wait_until
from hostile import ask, read_lines
from votechain.errors import TrackerError
from votechain.net.tracker_client import TrackerClient, fetch_nodes
from votechain.net.tracker_server import TrackerServer
from votechain.protocol.tracker_lines import MAX_LINE_BYTES

LOCAL = "127.0.0.1"


@pytest.fixture
def tracker() -> Iterator[TrackerServer]:
    with TrackerServer() as server:
        yield server


def raw(server: TrackerServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=2.0)
    return sock


def is_closed_by_peer(sock: socket.socket) -> bool:
    """True once the other end has closed (recv gives EOF or a reset)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: SO_LINGER on, timeout zero."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def registered(server: TrackerServer, *ports: int) -> Callable[[], bool]:
    return lambda: server.peers() == [(LOCAL, port) for port in ports]


# ---------------------------------------------------------------- protocol


def test_register_list_and_unregister_on_close(tracker: TrackerServer) -> None:
    a, b = raw(tracker), raw(tracker)
    assert ask(a, b"REGISTER 5001\n") == b"OK\n"
    assert ask(b, b"REGISTER 5002\n") == b"OK\n"
    assert tracker.peers() == [(LOCAL, 5001), (LOCAL, 5002)]
    assert ask(b, b"NODES\n", 2) == b"NODES\n127.0.0.1,5001 127.0.0.1,5002\n"
    a.close()
    wait_until(registered(tracker, 5002), what="closed peer to be unregistered")
    b.close()
    wait_until(registered(tracker), what="all peers unregistered")


def test_nodes_is_byte_exact_even_when_empty(tracker: TrackerServer) -> None:
    with raw(tracker) as sock:
        assert ask(sock, b"NODES\n", 2) == b"NODES\n\n"
        # Asking does not register: still empty.
        assert ask(sock, b"NODES\n", 2) == b"NODES\n\n"
        assert ask(sock, b"REGISTER 7000\n") == b"OK\n"
        assert ask(sock, b"NODES\n", 2) == b"NODES\n127.0.0.1,7000\n"


def test_pipelined_requests_in_one_send_are_all_answered(tracker: TrackerServer) -> None:
    with raw(tracker) as sock:
        reply = ask(sock, b"REGISTER 80\r\nNODES\nBOGUS\n", 4)
        assert reply == b"OK\nNODES\n127.0.0.1,80\nERROR unknown command 'BOGUS'\n"


def test_second_register_replaces_the_port_and_keeps_the_place(tracker: TrackerServer) -> None:
    a, b = raw(tracker), raw(tracker)
    with a, b:
        ask(a, b"REGISTER 1000\n")
        ask(b, b"REGISTER 2000\n")
        assert ask(a, b"REGISTER 1001\n") == b"OK\n"
        assert tracker.peers() == [(LOCAL, 1001), (LOCAL, 2000)]


@pytest.mark.parametrize(
    "request_line",
    [b"HELLO\n", b"REGISTER 0\n", b"REGISTER 70000\n", b"REGISTER abc\n", b"REGISTER\n", b"\n"],
)
def test_bad_requests_get_error_and_the_connection_stays_usable(
    tracker: TrackerServer, request_line: bytes
) -> None:
    with raw(tracker) as sock:
        assert ask(sock, request_line).startswith(b"ERROR ")
        assert tracker.peers() == []
        assert ask(sock, b"REGISTER 9\n") == b"OK\n"


def test_over_long_line_gets_error_then_close(tracker: TrackerServer) -> None:
    with raw(tracker) as sock:
        ask(sock, b"REGISTER 4242\n")
        sock.sendall(b"N" * (MAX_LINE_BYTES + 1))
        reply = read_lines(sock, 1)
        assert reply.startswith(b"ERROR ") and reply.endswith(b"\n")
        assert is_closed_by_peer(sock)
    wait_until(registered(tracker), what="dropped peer to be unregistered")


def test_garbage_and_resets_do_not_hurt_the_tracker(tracker: TrackerServer) -> None:
    rng = random.Random(1234)
    for _ in range(20):
        sock = raw(tracker)
        sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))))
        if rng.random() < 0.5:
            reset(sock)
        else:
            sock.close()
    # A registered peer that vanishes with a reset is unregistered at once.
    victim = raw(tracker)
    ask(victim, b"REGISTER 6000\n")
    victim.sendall(b"\xff\xfe half a li")
    reset(victim)
    wait_until(registered(tracker), what="reset peer to be unregistered")
    # Every garbage connection has been dropped or is idle; service goes on.
    with TrackerClient(*tracker.address, timeout=2.0) as client:
        client.register(6001)
        assert client.nodes() == [(LOCAL, 6001)]


def test_unregistered_half_line_is_dropped_but_registered_peer_is_kept() -> None:
    with TrackerServer(partial_line_timeout=0.2) as server:
        peer = raw(server)
        ask(peer, b"REGISTER 3000\n")
        peer.sendall(b"NOD")  # a registered peer idling mid-line is still a peer
        loris = raw(server)
        loris.sendall(b"REGISTER 3")
        # The peer's half line is older than the loris's, so if the timeout
        # applied to it, it would be gone by the time the loris is.
        wait_until(lambda: is_closed_by_peer(loris), what="slow loris to be dropped")
        assert server.peers() == [(LOCAL, 3000)]
        assert ask(peer, b"ES\n", 2) == b"NODES\n127.0.0.1,3000\n"
        peer.close()
        loris.close()


def test_connections_beyond_the_cap_are_refused() -> None:
    with TrackerServer(max_connections=2) as server:
        a, b = raw(server), raw(server)
        ask(a, b"REGISTER 1\n")
        ask(b, b"REGISTER 2\n")
        with raw(server) as third:
            assert read_lines(third, 1) == b"ERROR too many connections\n"
            assert is_closed_by_peer(third)
        a.close()
        wait_until(registered(server, 2), what="a slot to free up")
        with raw(server) as fourth:
            assert ask(fourth, b"NODES\n", 2) == b"NODES\n127.0.0.1,2\n"
        b.close()


# ---------------------------------------------------------------- lifecycle


def tracker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tracker-")]


def test_stop_joins_every_thread_and_closes_the_port() -> None:
    server = TrackerServer()
    server.start()
    address = server.address
    socks = [raw(server) for _ in range(5)]
    for i, sock in enumerate(socks):
        ask(sock, f"REGISTER {i + 1}\n".encode())
    socks[0].sendall(b"half")  # one thread mid-line
    assert len(tracker_threads()) == 6
    server.stop()
    assert tracker_threads() == []
    assert server.peers() == []
    for sock in socks:
        assert is_closed_by_peer(sock)
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=1.0)
    server.stop()  # idempotent


def test_serve_forever_returns_after_stop_from_another_thread() -> None:
    server = TrackerServer()
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    wait_until(lambda: server._address is not None, what="tracker to listen")
    assert fetch_nodes(*server.address, timeout=2.0) == []
    server.stop()
    runner.join(timeout=2.0)
    assert not runner.is_alive()


def test_address_before_start_is_our_bug() -> None:
    with pytest.raises(RuntimeError):
        _ = TrackerServer().address


# ---------------------------------------------------------------- client


def test_client_register_nodes_close(tracker: TrackerServer) -> None:
    client = TrackerClient(*tracker.address, timeout=2.0)
    assert not client.connected
    client.connect()
    assert client.connected
    client.register(5555)
    other = TrackerClient(*tracker.address, timeout=2.0)
    other.connect()
    other.register(5556)
    assert client.nodes() == [(LOCAL, 5555), (LOCAL, 5556)]
    assert fetch_nodes(*tracker.address, timeout=2.0) == [(LOCAL, 5555), (LOCAL, 5556)]
    client.close()
    assert not client.connected
    wait_until(registered(tracker, 5556), what="closed client to be unregistered")
    with pytest.raises(TrackerError, match="not connected"):
        client.nodes()
    other.close()


def test_client_is_thread_safe(tracker: TrackerServer) -> None:
    with TrackerClient(*tracker.address, timeout=2.0) as client:
        client.register(1234)
        results: list[list[tuple[str, int]]] = []
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(50):
                    results.append(client.nodes())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert results == [[(LOCAL, 1234)]] * 200


def test_client_error_reply_carries_the_reason() -> None:
    # A tracker that answers REGISTER with ERROR is reachable only through a
    # fake, since our client never sends a bad port.
    with scripted_tracker(lambda conn: conn.sendall(b"ERROR go away\n")) as address:
        client = TrackerClient(*address, timeout=2.0)
        client.connect()
        with pytest.raises(TrackerError, match="ERROR: go away"):
            client.register(1)
        client.close()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        return int(sock.getsockname()[1])


def test_unreachable_tracker_fails_quickly() -> None:
    port = unused_port()
    started = time.monotonic()
    with pytest.raises(TrackerError, match="unreachable"):
        TrackerClient(LOCAL, port, timeout=30.0).connect()
    with pytest.raises(TrackerError, match="unreachable"):
        fetch_nodes(LOCAL, port, timeout=30.0)
    # A refused connection fails in milliseconds; the failure this guards against
    # (waiting out the timeout) takes 30 s. The bound sits far from both.
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (lambda conn: None, "no reply"),
        (lambda conn: conn.shutdown(socket.SHUT_RDWR), "closed the connection"),
        (lambda conn: conn.sendall(b"HELLO\n"), "malformed"),
        (lambda conn: conn.sendall(b"NODES\nnot-an-ip,5\n"), "malformed"),
        (lambda conn: conn.sendall(b"OK\n"), "malformed"),
        (lambda conn: conn.sendall(b"NODES\n" + b"1" * (2 * 1024 * 1024)), "malformed"),
    ],
    ids=["silent", "closes", "garbage", "bad-entry", "wrong-reply", "endless-line"],
)
def test_client_never_hangs_on_a_bad_tracker(
    behaviour: Callable[[socket.socket], None], message: str
) -> None:
    with scripted_tracker(behaviour) as address:
        client = TrackerClient(*address, timeout=0.3)
        client.connect()
        started = time.monotonic()
        with pytest.raises(TrackerError, match=message):
            client.nodes()
        # At most the 0.3 s timeout is expected; a hang lasts until the fake lets
        # go (FAKE_TIMEOUT, 10 s). The bound is 10x the one and far below the other.
        assert time.monotonic() - started < 3.0
        # The stream is out of step, so the client dropped the connection.
        assert not client.connected


def test_client_close_wakes_a_blocked_exchange() -> None:
    with scripted_tracker(lambda conn: None) as address:
        client = TrackerClient(*address, timeout=30.0)
        client.connect()
        caught: list[BaseException] = []

        def ask_nodes() -> None:
            try:
                client.nodes()
            except TrackerError as exc:
                caught.append(exc)

        asker = threading.Thread(target=ask_nodes)
        asker.start()
        # Give the asker time to block; if it has not yet, close() still
        # makes its nodes() fail at once with "not connected".
        wait_until(lambda: asker.is_alive(), what="asker to start")
        started = time.monotonic()
        client.close()
        asker.join(timeout=10.0)
        # close() wakes the asker in milliseconds; without the wake-up it waits until
        # the fake lets go (FAKE_TIMEOUT, 10 s; its own timeout is 30 s). The bound
        # sits far from both.
        assert time.monotonic() - started < 5.0
        assert len(caught) == 1


def test_fd_count_is_stable_after_many_connections(tracker: TrackerServer) -> None:
    """Every connection's socket is closed again: no descriptor leak."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc")
    before = len(os.listdir(fd_dir))
    for _ in range(30):
        with raw(tracker) as sock:
            ask(sock, b"REGISTER 1\n")
    wait_until(registered(tracker), what="all peers unregistered")
    wait_until(lambda: len(os.listdir(fd_dir)) <= before, what="descriptors to be released")

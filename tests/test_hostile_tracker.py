"""The tracker (in process, real sockets on 127.0.0.1) under attack: endless lines,
garbage commands, bad ports, slow and idle clients, floods, and clients that register
and vanish. tests/test_tracker.py has the protocol's basic refusals; these are the rest.

After each attack the tracker must still serve a normal client and be back to idle
CPU (`assert_serves`). Timeouts are shortened through the TrackerServer's arguments.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from framework.waiting import wait_until
from hostile import (
    LOCAL,
    ask,
    connect,
    connect_from,
    drip,
    is_eof,
    open_many,
    send_and_hang_up,
    wait_closed,
    wait_idle,
)
from votechain.net import tracker_server as tracker_module
from votechain.net.tracker_client import TrackerClient
from votechain.net.tracker_server import TrackerServer
from votechain.protocol.tracker_lines import MAX_LINE_BYTES

SHORT = 0.5  # every tracker timeout, in these tests


@pytest.fixture
def tracker() -> Iterator[TrackerServer]:
    server = TrackerServer(
        LOCAL, 0, partial_line_timeout=SHORT, idle_timeout=SHORT, send_timeout=SHORT
    )
    with server:
        yield server


@pytest.fixture
def tracker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="votechain.tracker")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    wait_until(lambda: text in caplog.text, 5.0, what=f"log line containing {text!r}")


def assert_serves(server: TrackerServer, *, also: list[tuple[str, int]] | None = None) -> None:
    """A normal peer registers and lists; the tracker's CPU is back to idle."""
    with TrackerClient(*server.address, timeout=2.0) as client:
        client.register(4999)
        assert client.nodes() == [*(also or []), (LOCAL, 4999)]
    wait_until(lambda: server.peers() == (also or []), what="the test client unregistered")
    wait_idle()


# ---------------------------------------------------------------- lines and commands


def test_an_endless_line_is_cut_at_the_cap(
    tracker: TrackerServer, tracker_log: pytest.LogCaptureFixture
) -> None:
    with connect(tracker.address) as sock:
        send_and_hang_up(sock, b"N" * (1 << 20))  # a megabyte, and never a newline
        reply = wait_closed(sock)
    assert reply.startswith(b"ERROR line longer than 256 bytes")
    logged(tracker_log, f"longer than {MAX_LINE_BYTES} bytes")
    assert_serves(tracker)


def test_thousands_of_garbage_commands_are_each_answered(tracker: TrackerServer) -> None:
    rng = random.Random(11)
    alphabet = bytes(b for b in range(256) if b != ord("\n"))
    lines = [bytes(rng.choices(alphabet, k=rng.randrange(0, MAX_LINE_BYTES))) for _ in range(2000)]
    lines += [b"register 80", b"NODES please", b"REGISTER", b"\r", b"\x00" * 200]
    with connect(tracker.address) as sock:
        reply = ask(sock, b"\n".join(lines) + b"\n", len(lines))
        answers = reply.split(b"\n")[:-1]
        assert len(answers) == len(lines)
        assert all(answer.startswith(b"ERROR ") for answer in answers)
        # A garbage line never comes back whole: at most 32 characters of it are
        # echoed, escaped (each at most 5 bytes: the echo's escapes are escaped again).
        assert max(map(len, answers)) < 200
        assert ask(sock, b"NODES\n", 2) == b"NODES\n\n"  # still in step
    assert tracker.peers() == []
    assert_serves(tracker)


BAD_PORTS = [
    b"-1", b"+80", b" 80", b"80 ", b"80 81", b"65536", b"99999999999999999999", b"0x50",
    b"1e3", b"8_0", "\u0663".encode(), "\u00b2".encode(), b"80\x00", b"9" * 240,
]


def test_register_with_a_bad_port_is_refused(tracker: TrackerServer) -> None:
    for port in BAD_PORTS:
        with connect(tracker.address) as sock:
            reply = ask(sock, b"REGISTER " + port + b"\n")
            assert reply.startswith(b"ERROR ") and len(reply) < 200, (port, reply)
            assert tracker.peers() == []
            assert ask(sock, b"REGISTER 4242\n") == b"OK\n"  # the connection stays usable
            assert tracker.peers() == [(LOCAL, 4242)]
        wait_until(lambda: tracker.peers() == [], what="the test client unregistered")
    assert_serves(tracker)


# ---------------------------------------------------------------- slow, idle, many


def test_a_connection_that_sends_nothing_is_dropped(
    tracker: TrackerServer, tracker_log: pytest.LogCaptureFixture
) -> None:
    with connect(tracker.address) as loris:
        wait_closed(loris, timeout=5.0)
    logged(tracker_log, "silent and not registered")
    assert_serves(tracker)


def test_a_line_sent_a_byte_at_a_time_is_cut_off(
    tracker: TrackerServer, tracker_log: pytest.LogCaptureFixture
) -> None:
    line = b"REGISTER 5000" + b"0" * 200  # never finished at this pace within the deadline
    with connect(tracker.address) as loris:
        sent, seconds = drip(loris, line, interval=0.05)
    # Every read saw a byte well within the timeout; only the line's deadline ended it.
    assert sent < len(line) and seconds < 3.0
    logged(tracker_log, "line not finished in time")
    assert_serves(tracker)


def test_a_registered_peer_may_idle_and_keeps_its_place(tracker: TrackerServer) -> None:
    with connect(tracker.address) as sock:
        assert ask(sock, b"REGISTER 5001\n") == b"OK\n"
        # Longer than every timeout: its open connection is its registration.
        assert not _closes_within(sock, 3 * SHORT)
        assert tracker.peers() == [(LOCAL, 5001)]
        assert_serves(tracker, also=[(LOCAL, 5001)])


def _closes_within(sock: socket.socket, seconds: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(int(seconds * 1000))) and is_eof(sock)


def test_hundreds_of_connections_at_once(tracker: TrackerServer) -> None:
    with open_many(tracker.address, 300) as flood:
        # One address holds at most MAX_CONNECTIONS_PER_IP: each connection over it
        # evicted the oldest unregistered one, and so does the normal client's.
        wait_until(lambda: sum(map(is_eof, flood)) >= 300 - tracker_module.MAX_CONNECTIONS_PER_IP,
                   10.0, what="the flood over one address's share to be evicted")
        assert_serves(tracker)  # while the rest of them are open
        # None of them registered or sent a byte: each is dropped after its idle timeout.
        wait_until(lambda: all(map(is_eof, flood)), 10.0, what="the idle flood to be dropped")
    wait_until(lambda: not tracker._connections, 5.0, what="every connection thread gone")
    assert_serves(tracker)


# ---------------------------------------------------------------- vanishing clients


def test_a_registered_client_killed_with_sigkill_is_unregistered(tracker: TrackerServer) -> None:
    code = (
        "import socket, sys, time\n"
        f"s = socket.create_connection(('{LOCAL}', {tracker.address[1]}))\n"
        "s.sendall(b'REGISTER 6000\\n')\n"
        "assert s.recv(16) == b'OK\\n'\n"
        "print('registered', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"registered\n"
        assert tracker.peers() == [(LOCAL, 6000)]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        # The kernel closes a killed process's sockets (FIN): unregistered at once.
        wait_until(lambda: tracker.peers() == [], 5.0, what="the killed peer unregistered")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert_serves(tracker)


def test_a_registered_client_that_stops_reading_is_dropped(
    tracker: TrackerServer, tracker_log: pytest.LogCaptureFixture
) -> None:
    """What a half-open connection can do to the tracker: keep asking without reading.

    The replies pile up in the socket buffers until the tracker's send blocks; after
    send_timeout it drops the connection, and with it the registration."""
    # Long NODES replies: 100 registered peers, each from its own address (one
    # address may list only MAX_REGISTRATIONS_PER_IP; Linux routes 127/8 to lo).
    others = [connect_from(tracker.address, f"127.0.0.{10 + i}") for i in range(100)]
    try:
        for port, sock in enumerate(others, start=7000):
            assert ask(sock, f"REGISTER {port}\n".encode()) == b"OK\n"
        with connect(tracker.address) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            assert ask(sock, b"REGISTER 6001\n") == b"OK\n"
            sock.setblocking(False)
            requests = b"NODES\n" * 10_000

            def dropped() -> bool:
                if (LOCAL, 6001) not in tracker.peers():
                    return True
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    sock.send(requests)
                select.select([], [sock], [], 0.05)  # the attacker's pace: when it can send
                return False

            # send_timeout is SHORT (0.5 s): 10 s is 20 times that.
            wait_until(dropped, 10.0, what="the tracker to drop a deaf client")
        logged(tracker_log, "ended")
        assert [port for _, port in tracker.peers()] == list(range(7000, 7100))
    finally:
        for sock in others:
            sock.close()
    wait_until(lambda: tracker.peers() == [], what="the helpers unregistered")
    assert_serves(tracker)


def test_registered_peers_get_tcp_keepalive(tracker: TrackerServer) -> None:
    """A peer whose host vanishes without a FIN (power cut) cannot be simulated on
    loopback without root; the tracker relies on TCP keepalive for it, checked here."""
    with connect(tracker.address) as sock:
        assert ask(sock, b"REGISTER 6002\n") == b"OK\n"
        (server_side,) = list(tracker._connections)
        assert server_side.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            options = [
                server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            ]
            assert options == [
                tracker_module.KEEPALIVE_IDLE,
                tracker_module.KEEPALIVE_INTERVAL,
                tracker_module.KEEPALIVE_PROBES,
            ]
    # The tracker sees the close a moment later: until then it still lists 6002.
    wait_until(lambda: tracker.peers() == [], what="the test client unregistered")
    assert_serves(tracker)

"""A persistent control session (ControlClient.session): one authenticated
connection for many requests, against the in-memory node (framework/fakes.py)
behind a real ControlServer, and against scripted fake nodes for the failures
a real server does not commit.

What a session promises: each call answers or raises as the same ControlClient
call would; a refusal or an "unavailable" answer leaves it usable; a failure
of the connection ends it, and every later call says so and why; close() is
idempotent and wakes a request waiting on another thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.fakes import FakeNode
from framework.waiting import wait_until
from hostile import raw_frame
from votechain.errors import (
    ControlRefused,
    ControlReplyError,
    ControlUnavailable,
    NodeNotRunning,
)
from votechain.net.control_client import ControlClient, ControlSession
from votechain.net.control_server import SOCKET_FILE, ControlServer
from votechain.net.sockets import unix_address
from votechain.protocol.control import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    AuthOk,
    Request,
    StatusReply,
    VoteRequest,
)


class CountingServer(ControlServer):
    """A ControlServer that counts the connections it accepted and still serves."""

    def __init__(self, node: FakeNode, data_dir: Path) -> None:
        super().__init__(node, data_dir)
        self.accepted = 0
        self.open = 0
        self._count_lock = threading.Lock()

    def _serve(self, sock: socket.socket) -> None:
        with self._count_lock:
            self.accepted += 1
            self.open += 1
        try:
            super()._serve(sock)
        finally:
            with self._count_lock:
                self.open -= 1


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def server(node: FakeNode, tmp_path: Path) -> Iterator[CountingServer]:
    srv = CountingServer(node, tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def session(server: CountingServer, tmp_path: Path) -> Iterator[ControlSession]:
    with ControlClient.from_data_dir(tmp_path).session() as s:
        yield s


# ---------------------------------------------------------------- one connection, many requests


def test_many_votes_on_one_session_use_one_connection(
    server: CountingServer, node: FakeNode, tmp_path: Path
) -> None:
    client = ControlClient.from_data_dir(tmp_path)  # its probe: one connection, closed
    wait_until(lambda: server.open == 0, what="the probe's connection to end")
    before = server.accepted
    with client.session() as session:
        results = [session.vote_result(f"c{i % 3}", timeout=5) for i in range(50)]
        status = session.node_status()
        assert session.tally() == {"c0": 17, "c1": 17, "c2": 16}
        assert (server.accepted - before, server.open) == (1, 1)
    assert [r.block_id for r in results] == list(range(1, 51))
    for result in results:  # each reply names the vote's own block and tx
        block = node.chain[result.block_id]
        assert (block.hash, block.transaction.tx_id) == (result.hash, result.tx_id)
    assert status.height == 50
    wait_until(lambda: server.open == 0, what="the session's connection to end")
    assert server.accepted - before == 1


def test_vote_returns_what_the_client_vote_returns(
    session: ControlSession, tmp_path: Path, node: FakeNode
) -> None:
    block_id, hash_hex = session.vote("alice", timeout=5)
    assert (block_id, hash_hex) == (1, node.chain[1].hash.hex())
    # ControlClient's one-connection-per-call path still answers the same way.
    assert ControlClient.from_data_dir(tmp_path).vote("bob", timeout=5) == (
        2, node.chain[2].hash.hex())


def test_sessions_on_threads_share_the_node(server: CountingServer, tmp_path: Path,
                                             node: FakeNode) -> None:
    client = ControlClient.from_data_dir(tmp_path)
    before = server.accepted
    counts: list[int] = []

    def voter() -> None:
        with client.session() as session:
            counts.append(sum(1 for _ in range(20) if session.vote("x", timeout=5)))

    threads = [threading.Thread(target=voter) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counts == [20] * 4
    assert server.accepted - before == 4
    assert len(node.chain) == 81


# ---------------------------------------------------------------- answers that keep the session


def test_a_refused_vote_is_raised_and_the_session_goes_on(
    session: ControlSession, server: CountingServer
) -> None:
    session.vote("before", timeout=5)
    with pytest.raises(ControlRefused, match="category"):
        session.vote("  ", timeout=5)
    with pytest.raises(ControlRefused, match="category"):
        session.vote("x" * 65, timeout=5)
    assert not session.closed
    assert session.vote("after", timeout=5)[0] == 2
    assert server.accepted == 2  # from_data_dir's probe, and the session


def test_an_unavailable_answer_is_raised_and_the_session_goes_on(
    session: ControlSession, node: FakeNode
) -> None:
    node.fail_status = True
    with pytest.raises(ControlUnavailable, match="internal error: the node broke"):
        session.node_status()
    node.fail_status = False
    node.auto_mine = False
    with pytest.raises(ControlUnavailable, match=r"not mined within 0\.1 s"):
        session.vote("slow", timeout=0.1)
    node.auto_mine = True
    assert session.vote("quick", timeout=5)[0] == 2  # the slow vote was mined first
    assert session.node_status().height == 2


def test_a_timeout_the_protocol_refuses_is_not_sent(session: ControlSession) -> None:
    with pytest.raises(ControlRefused, match="not sent"):
        session.vote("alice", timeout=7200)
    assert session.vote("alice", timeout=5)[0] == 1


# ---------------------------------------------------------------- failures that end it


def test_a_node_that_stops_mid_session_is_a_clear_error(
    session: ControlSession, server: CountingServer
) -> None:
    assert session.vote("alice", timeout=5)[0] == 1
    server.stop()
    with pytest.raises(ControlUnavailable, match="closed the connection"):
        session.node_status()
    assert session.closed
    with pytest.raises(ControlUnavailable,
                       match=r"session .* is closed: it failed earlier .*closed the connection"):
        session.vote("bob", timeout=5)


def vote_waiting(session: ControlSession, node: FakeNode,
                 timeout: float) -> tuple[threading.Thread, list[Exception]]:
    """A vote on `session` in a thread, left waiting (the node mines nothing):
    the thread, and the ControlUnavailable it ends with, once it ends."""
    node.auto_mine = False
    errors: list[Exception] = []

    def vote() -> None:
        try:
            session.vote("waiting", timeout=timeout)
        except ControlUnavailable as exc:
            errors.append(exc)

    voter = threading.Thread(target=vote)
    voter.start()
    wait_until(lambda: node.queue, what="the vote to reach the node")
    return voter, errors


def test_a_node_that_stops_during_a_vote_ends_the_vote(
    session: ControlSession, server: CountingServer, node: FakeNode
) -> None:
    voter, errors = vote_waiting(session, node, timeout=1.0)
    server.stop()
    voter.join(10)
    assert [str(e) for e in errors] == [f"the node at {server.path.parent} closed the connection"]
    assert session.closed


def test_no_node_no_session(tmp_path: Path) -> None:
    with pytest.raises(NodeNotRunning, match=r"no control\.sock"):
        ControlClient(tmp_path / SOCKET_FILE).session()


def test_a_bad_cookie_is_refused_at_once(server: CountingServer) -> None:
    with pytest.raises(ControlRefused, match="bad cookie"):
        ControlClient(server.path, "00" * 32).session()


# ---------------------------------------------------------------- close


def test_close_is_idempotent(server: CountingServer, tmp_path: Path) -> None:
    session = ControlClient.from_data_dir(tmp_path).session()
    session.vote("alice", timeout=5)
    session.close()
    session.close()
    assert session.closed
    with pytest.raises(ControlUnavailable, match=r"session .* is closed: it was closed"):
        session.node_status()
    session.close()
    wait_until(lambda: server.open == 0, what="the server to see the session end")
    with session:  # the context manager closes once more, quietly
        pass


def test_close_from_another_thread_wakes_a_waiting_vote(
    session: ControlSession, node: FakeNode
) -> None:
    voter, errors = vote_waiting(session, node, timeout=30)
    session.close()
    voter.join(10)
    node.mine_all()  # lets the server's handler go, rather than wait out the vote's 30 s
    assert len(errors) == 1
    assert "closed while waiting for a reply to vote" in str(errors[0])


# ---------------------------------------------------------------- scripted nodes


class ScriptedNode:
    """A fake node on a Unix socket in `data_dir`: accepts one connection,
    answers its auth, then answers request n with `answers[n]` (None: never
    answers, and holds the connection until the test ends)."""

    def __init__(self, data_dir: Path, answers: list[bytes | None]) -> None:
        self.path = data_dir / SOCKET_FILE
        self.answers = answers
        self.requests: list[Request] = []
        self._done = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX)
        with unix_address(self.path) as address:
            self._listener.bind(address)
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            self._read(conn)
            conn.sendall(CONTROL_REPLIES.encode(AuthOk()))
            for answer in self.answers:
                self.requests.append(self._read(conn))
                if answer is None:
                    self._done.wait(10)
                    return
                conn.sendall(answer)
            self._done.wait(10)

    @staticmethod
    def _read(conn: socket.socket) -> Request:
        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                assert chunk, "the client hung up"
                data += chunk
            return data

        size = int.from_bytes(exactly(4), "big")
        return CONTROL_REQUESTS.decode_payload(exactly(size))

    def close(self) -> None:
        self._done.set()
        self._thread.join(10)
        self._listener.close()


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[list[ScriptedNode]]:
    nodes: list[ScriptedNode] = []
    yield nodes
    for node in nodes:
        node.close()


def test_a_reply_of_the_wrong_type_ends_the_session(
    tmp_path: Path, scripted: list[ScriptedNode]
) -> None:
    node = ScriptedNode(tmp_path, [CONTROL_REPLIES.encode(AuthOk())])
    scripted.append(node)
    session = ControlClient(node.path, "00" * 32).session()
    with pytest.raises(ControlReplyError, match="expected vote_result, got auth_ok"):
        session.vote("alice", timeout=5)
    with pytest.raises(ControlUnavailable, match=r"is closed: it failed earlier .*expected vote"):
        session.node_status()
    assert node.requests == [VoteRequest("alice", 5.0)]


def test_a_reply_that_does_not_decode_ends_the_session(
    tmp_path: Path, scripted: list[ScriptedNode]
) -> None:
    node = ScriptedNode(tmp_path, [raw_frame({"type": "status_reply", "height": -1})])
    scripted.append(node)
    session = ControlClient(node.path, "00" * 32).session()
    with pytest.raises(ControlReplyError, match="bad reply"):
        session.node_status()
    assert session.closed
    with pytest.raises(ControlUnavailable, match=r"failed earlier .*bad reply"):
        session.node_status()


def test_a_node_that_does_not_answer_in_time_ends_the_session(
    tmp_path: Path, scripted: list[ScriptedNode]
) -> None:
    status = StatusReply(FakeNode().status())
    node = ScriptedNode(tmp_path, [CONTROL_REPLIES.encode(status), None])
    scripted.append(node)
    # The read waits for the vote's own timeout plus the client's.
    session = ControlClient(node.path, "00" * 32, timeout=0.2).session()
    assert session.node_status() == status.status
    with pytest.raises(ControlUnavailable, match="did not answer in time"):
        session.vote("alice", timeout=0.1)
    # A late reply must never be read as the next request's: the session is over.
    with pytest.raises(ControlUnavailable, match=r"failed earlier .*did not answer in time"):
        session.node_status()

"""The control channel over real Unix sockets, with an in-memory node behind it."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from framework.fakes import FakeNode
from framework.waiting import wait_until
from hostile import raw_frame
from votechain.core.block import HASH_BYTES, TX_ID_BYTES
from votechain.core.codec import pack
from votechain.core.voting import category_of
from votechain.errors import (
    ControlError,
    ControlProtocolError,
    ControlRefused,
    ControlReplyError,
    ControlUnavailable,
    LocalProtocolError,
    MalformedMessage,
    NodeNotRunning,
    UnknownMessageType,
)
from votechain.net.control_client import ControlClient
from votechain.net.control_server import COOKIE_FILE, SOCKET_FILE, ControlServer
from votechain.net.sockets import connect_unix, unix_address
from votechain.protocol.control import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    MAX_CONTROL_REQUEST_BYTES,
    Auth,
    AuthOk,
    ErrorReply,
    NodeStatus,
    Reply,
    StatusReply,
    StatusRequest,
    TallyReply,
    TallyRequest,
    VoteRequest,
    VoteResult,
)

PROTOCOL_DOC = Path(__file__).parent.parent / "docs" / "protocol.md"
STATUS = NodeStatus(height=3, tip="ab" * 32, peers=2, pending=0, backend="native x2",
                    hashrate=1234.5, forks_resolved=1, address="127.0.0.1:9000",
                    network="election", difficulty=4, version="0.1.0",
                    tracker="127.0.0.1:8000", tracker_up=True, uptime=12.5,
                    votes_per_second=0.5, live_hashrate=2345.5, final_height=2,
                    locked_height=3, seats=5)
STATUS_FIELDS = {"height", "tip", "peers", "pending", "backend", "hashrate", "forks_resolved",
                 "address", "network", "difficulty", "version", "tracker", "tracker_up",
                 "uptime", "votes_per_second", "live_hashrate", "final_height",
                 "locked_height", "seats"}


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def server(node: FakeNode, tmp_path: Path) -> Iterator[ControlServer]:
    srv = ControlServer(node, tmp_path)
    srv.start()
    yield srv
    srv.stop()


def connect(server: ControlServer) -> socket.socket:
    """A raw connection to the server's socket (unix_address copes with tmp paths
    over sun_path's 107 bytes)."""
    return connect_unix(server.path, timeout=5.0)


def send(sock: socket.socket, obj: object) -> None:
    """`obj` as a request frame, unchecked: the test may send what the client never would."""
    sock.sendall(raw_frame(obj))


def recv(sock: socket.socket) -> Reply:
    header = recv_exact(sock, 4)
    return CONTROL_REPLIES.decode_payload(recv_exact(sock, int.from_bytes(header, "big")))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "server closed the connection"
        data += chunk
    return data


def is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def authed(server: ControlServer, tmp_path: Path) -> socket.socket:
    sock = connect(server)
    send(sock, {"type": "auth", "cookie": (tmp_path / COOKIE_FILE).read_text().strip()})
    assert recv(sock) == AuthOk()
    return sock


# ---------------------------------------------------------------- messages (pure)


@pytest.mark.parametrize(
    "request_",
    [Auth("ab" * 32), VoteRequest("alice", 2.5), StatusRequest(), TallyRequest(),
     TallyRequest(recount=True)],
)
def test_requests_round_trip(request_: Auth | VoteRequest | StatusRequest | TallyRequest) -> None:
    frame = CONTROL_REQUESTS.encode(request_)
    assert CONTROL_REQUESTS.decode_payload(frame[4:]) == request_


@pytest.mark.parametrize(
    "reply",
    [
        AuthOk(),
        VoteResult(block_id=7, hash=b"h" * HASH_BYTES, tx_id=b"t" * TX_ID_BYTES),
        StatusReply(STATUS),
        TallyReply({"alice": 2, "bob": 1}),
        ErrorReply("bad cookie", "refused"),
        ErrorReply("not mined in time", "unavailable"),
    ],
)
def test_replies_round_trip(reply: Reply) -> None:
    assert CONTROL_REPLIES.decode_payload(CONTROL_REPLIES.encode(reply)[4:]) == reply


def test_status_reply_carries_exactly_the_node_status_fields() -> None:
    fields = set(StatusReply(STATUS).to_wire()) - {"type"}
    assert fields == STATUS_FIELDS


def test_docs_list_the_status_fields_as_node_status_has_them() -> None:
    doc = PROTOCOL_DOC.read_text()
    table = doc[doc.index("`status_reply` carries exactly these fields"):]
    table = table[: table.index("\n\n", table.index("| field |"))]
    listed = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert listed == [field.name for field in dataclasses.fields(NodeStatus)]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "must be a map"),
        ({"type": "mine"}, "unknown request type"),
        ({}, "request type must be a string"),
        ({"type": "vote", "category": "a"}, "missing timeout"),
        ({"type": "vote", "category": 5, "timeout": 1.0}, "category must be a string"),
        ({"type": "vote", "category": "a", "timeout": True}, "timeout must be a number"),
        ({"type": "vote", "category": "a", "timeout": -1}, "timeout must be in"),
        ({"type": "status", "extra": 1}, "unknown fields extra"),
        ({"type": "auth", "cookie": b"raw"}, "cookie must be a string"),
    ],
)
def test_bad_requests_are_rejected(obj: object, reason: str) -> None:
    with pytest.raises(ControlProtocolError, match=reason):
        CONTROL_REQUESTS.from_wire(obj)


@pytest.mark.parametrize(
    ("obj", "error", "reason"),
    [
        ({"type": "ok"}, UnknownMessageType, "unknown reply type 'ok'"),
        ({"type": "error", "reason": "x", "kind": "maybe"}, MalformedMessage, "not one of"),
        ({"type": "vote_result", "block_id": 1, "hash": "ab", "tx_id": b"t" * 16},
         MalformedMessage, "vote_result.hash must be bytes"),
        ({"type": "tally_reply", "counts": {"alice": -1}}, MalformedMessage, "out of range"),
        ({"type": "tally_reply", "counts": {"x" * 65: 1}}, MalformedMessage, "over 64"),
        ({**StatusReply(STATUS).to_wire(), "hashrate": float("nan")}, MalformedMessage,
         "not a rate"),
        ({**StatusReply(STATUS).to_wire(), "live_hashrate": -1.0}, MalformedMessage,
         "live_hashrate=-1.0 is not a rate"),
        ({**StatusReply(STATUS).to_wire(), "tracker_up": 1}, MalformedMessage,
         "tracker_up must be a boolean"),
        ({**StatusReply(STATUS).to_wire(), "network": "n" * 65}, MalformedMessage, "over 64"),
    ],
)
def test_bad_replies_are_rejected(obj: object, error: type[Exception], reason: str) -> None:
    with pytest.raises(error, match=reason):
        CONTROL_REPLIES.decode_payload(pack(obj))


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"type": "tally"}, "recount"),  # a missing field
        ({"type": "tally", "recount": 1}, "recount must be a boolean"),
        ({"type": "tally", "recount": "yes"}, "recount must be a boolean"),
        ({"type": "tally", "recount": False, "extra": 1}, "extra"),
    ],
)
def test_bad_tally_requests_are_rejected(obj: object, reason: str) -> None:
    with pytest.raises(ControlProtocolError, match=reason):
        CONTROL_REQUESTS.decode_payload(pack(obj))


def test_requests_are_capped_before_decoding() -> None:
    big = VoteRequest("x" * 1025, 1.0)
    with pytest.raises(LocalProtocolError, match=r"vote\.category is 1025 characters"):
        CONTROL_REQUESTS.encode(big)
    with pytest.raises(ControlProtocolError, match="malformed msgpack"):
        CONTROL_REQUESTS.decode_payload(pack({"type": "tally", "x": list(range(10))}))


# ---------------------------------------------------------------- files and binding


def test_cookie_and_socket_are_private_in_a_private_directory(
    server: ControlServer, tmp_path: Path
) -> None:
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    cookie = tmp_path / COOKIE_FILE
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o600
    assert len(bytes.fromhex(cookie.read_text().strip())) == 32
    sock = (tmp_path / SOCKET_FILE).lstat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
    assert server.path == tmp_path / SOCKET_FILE
    # No TCP port, and no file naming one.
    assert sorted(p.name for p in tmp_path.iterdir()) == [COOKIE_FILE, SOCKET_FILE]


def test_a_directory_open_to_others_is_refused(node: FakeNode, tmp_path: Path) -> None:
    data_dir = tmp_path / "open"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    srv = ControlServer(node, data_dir)
    with pytest.raises(PermissionError, match=r"open to other users \(mode 0755\).*chmod 700"):
        srv.start()
    assert list(data_dir.iterdir()) == []  # nothing written, nothing left
    srv.stop()


def test_a_fresh_cookie_at_every_start(node: FakeNode, tmp_path: Path) -> None:
    cookies = []
    for _ in range(2):
        srv = ControlServer(node, tmp_path)
        srv.start()
        cookies.append((tmp_path / COOKIE_FILE).read_text())
        srv.stop()
    assert cookies[0] != cookies[1]


def test_files_are_removed_on_stop_and_clients_then_see_no_node(
    node: FakeNode, tmp_path: Path
) -> None:
    srv = ControlServer(node, tmp_path)
    srv.start()
    client = ControlClient.from_data_dir(tmp_path)
    srv.stop()
    assert not (tmp_path / COOKIE_FILE).exists()
    assert not (tmp_path / SOCKET_FILE).exists()
    with pytest.raises(NodeNotRunning, match="no running node"):
        ControlClient.from_data_dir(tmp_path)
    with pytest.raises(NodeNotRunning, match=r"no control\.sock"):
        client.status()
    srv.stop()  # idempotent


def test_stale_files_of_a_killed_node_mean_no_running_node(tmp_path: Path) -> None:
    # What a kill -9 leaves: a socket file no one listens on, and the cookie.
    with socket.socket(socket.AF_UNIX) as dead, unix_address(tmp_path / SOCKET_FILE) as address:
        dead.bind(address)
    (tmp_path / COOKIE_FILE).write_text("00" * 32)
    with pytest.raises(NodeNotRunning, match=f"no running node at {tmp_path}: nothing listens"):
        ControlClient.from_data_dir(tmp_path)


def test_empty_data_dir_means_no_running_node(tmp_path: Path) -> None:
    with pytest.raises(NodeNotRunning, match=rf"no running node at {tmp_path}: no control\.sock"):
        ControlClient.from_data_dir(tmp_path)


# ---------------------------------------------------------------- auth


def test_client_votes_and_reads_status_and_tally(
    server: ControlServer, node: FakeNode, tmp_path: Path
) -> None:
    client = ControlClient.from_data_dir(tmp_path)
    block_id, block_hash = client.vote("alice")
    assert block_id == 1
    assert len(bytes.fromhex(block_hash)) == HASH_BYTES
    client.vote("  bob ")
    client.vote("alice")
    assert client.tally() == {"alice": 2, "bob": 1}
    assert client.tally(recount=True) == {"alice": 2, "bob": 1}
    assert node.recounts == 1  # the flag reached the handler
    status = client.status()
    assert status["height"] == 3
    assert set(status) == STATUS_FIELDS
    assert client.node_status() == NodeStatus(**status)  # type: ignore[arg-type]


def test_wrong_cookie_is_refused_and_closed(
    server: ControlServer, node: FakeNode, tmp_path: Path
) -> None:
    sock = connect(server)
    send(sock, {"type": "auth", "cookie": "00" * 32})
    assert recv(sock) == ErrorReply("bad cookie", "refused")
    assert is_closed(sock)
    sock.close()
    with pytest.raises(ControlRefused, match="bad cookie"):
        ControlClient(server.path, "11" * 32).vote("alice")
    assert node.tally() == {}


def test_requests_before_auth_are_refused(server: ControlServer, node: FakeNode) -> None:
    sock = connect(server)
    send(sock, {"type": "vote", "category": "alice", "timeout": 1.0})
    reply = recv(sock)
    assert reply == ErrorReply("expected auth first", "refused")
    assert is_closed(sock)
    sock.close()
    assert node.tally() == {}


# ---------------------------------------------------------------- misbehaving clients


def test_malformed_requests_get_an_error_and_the_connection_keeps_working(
    server: ControlServer, tmp_path: Path
) -> None:
    sock = authed(server, tmp_path)
    for junk in (b"\xc1", b"\x81\xa1a", msgpack.packb({"type": "x"}) + b"\x00"):
        sock.sendall(len(junk).to_bytes(4, "big") + junk)
        reply = recv(sock)
        assert isinstance(reply, ErrorReply)
        assert reply.kind == "refused"
    send(sock, {"type": "status"})
    reply = recv(sock)
    assert isinstance(reply, StatusReply)
    sock.close()


def test_zero_length_frame_gets_an_error_and_a_close(server: ControlServer, tmp_path: Path) -> None:
    """As in the peer protocol, a zero length is a bad prefix: the stream is lost."""
    sock = authed(server, tmp_path)
    sock.sendall(bytes(4))
    reply = recv(sock)
    assert isinstance(reply, ErrorReply) and "zero-length frame" in reply.reason
    assert is_closed(sock)
    sock.close()


def test_invalid_category_is_an_error_reply(server: ControlServer, tmp_path: Path) -> None:
    client = ControlClient.from_data_dir(tmp_path)
    with pytest.raises(ControlRefused, match="must not be empty"):
        client.vote("   ")
    with pytest.raises(ControlRefused, match="at most 64"):
        client.vote("x" * 65)


def test_oversized_frame_is_refused_before_reading_it(
    server: ControlServer, tmp_path: Path
) -> None:
    sock = connect(server)
    # Only the length prefix is sent: the server must answer without waiting for the body.
    sock.sendall((MAX_CONTROL_REQUEST_BYTES + 1).to_bytes(4, "big"))
    reply = recv(sock)
    assert isinstance(reply, ErrorReply)
    assert "over the cap" in reply.reason
    assert is_closed(sock)
    sock.close()
    assert ControlClient.from_data_dir(tmp_path).tally() == {}


def test_truncated_frame_and_abrupt_close_do_not_hurt(
    server: ControlServer, tmp_path: Path
) -> None:
    for payload in (b"\x00\x00", b"\x00\x00\x00\x10abc", b""):
        with connect(server) as sock:
            sock.sendall(payload)
    assert ControlClient.from_data_dir(tmp_path).status()["height"] == 0


def test_a_handler_bug_is_an_error_reply_not_a_crash(
    server: ControlServer, node: FakeNode, tmp_path: Path
) -> None:
    node.fail_status = True
    client = ControlClient.from_data_dir(tmp_path)
    with pytest.raises(ControlUnavailable, match="internal error: the node broke"):
        client.status()
    node.fail_status = False
    assert client.status()["height"] == 0


def test_vote_timeout_is_an_error_saying_the_vote_stays_queued(
    server: ControlServer, node: FakeNode, tmp_path: Path
) -> None:
    node.auto_mine = False
    client = ControlClient.from_data_dir(tmp_path)
    with pytest.raises(ControlUnavailable, match=r"not mined within 0\.05 s"):
        client.vote("alice", timeout=0.05)
    node.mine_all()
    assert node.tally() == {"alice": 1}


def test_a_vote_waits_for_its_block(server: ControlServer, node: FakeNode, tmp_path: Path) -> None:
    node.auto_mine = False
    client = ControlClient.from_data_dir(tmp_path)
    result: list[tuple[int, str]] = []
    voter = threading.Thread(target=lambda: result.append(client.vote("carol", timeout=10)))
    voter.start()
    # The vote is queued once the node has seen it; then "mine" it.
    wait_until(lambda: bool(node.queue), 5.0, what="the vote to be queued")
    node.mine_all()
    voter.join(10)
    assert result == [(1, node.chain[1].hash.hex())]
    assert category_of(node.chain[1].transaction) == "carol"


def test_stop_closes_open_connections(node: FakeNode, tmp_path: Path) -> None:
    srv = ControlServer(node, tmp_path)
    srv.start()
    sock = authed(srv, tmp_path)
    srv.stop()
    assert is_closed(sock)
    sock.close()


def test_cookie_mode_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    # The umask must not widen the cookie's mode: it is created 0600, not chmod-ed.
    old = os.umask(0)
    try:
        srv = ControlServer(FakeNode(), tmp_path)
        srv.start()
        try:
            assert stat.S_IMODE((tmp_path / COOKIE_FILE).stat().st_mode) == 0o600
        finally:
            srv.stop()
    finally:
        os.umask(old)


# ---------------------------------------------------------------- the client's side


def test_every_client_error_is_a_control_error() -> None:
    for error in (ControlRefused, ControlUnavailable, ControlReplyError, NodeNotRunning):
        assert issubclass(error, ControlError)


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (raw_frame({"type": "auth_ok", "extra": 1}), ControlReplyError, "unknown fields extra"),
        (raw_frame({"ok": True}), ControlReplyError, "reply type must be a string"),
        ((1 << 30).to_bytes(4, "big"), ControlReplyError, "over MAX_CONTROL_REPLY_BYTES"),
        (CONTROL_REPLIES.encode(TallyReply({})), ControlReplyError, "expected auth_ok"),
        (CONTROL_REPLIES.encode(ErrorReply("busy", "unavailable")), ControlUnavailable, "busy"),
        (b"", ControlUnavailable, "closed the connection"),
    ],
)
def test_client_classifies_what_the_node_answers(
    answer: bytes, error: type[ControlError], words: str, tmp_path: Path
) -> None:
    """A fake node that answers the auth with `answer`, then hangs up."""
    path = tmp_path / SOCKET_FILE
    with socket.socket(socket.AF_UNIX) as listener:
        with unix_address(path) as address:
            listener.bind(address)
        listener.listen()

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(answer)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        client = ControlClient(path, "00" * 32, timeout=5.0)
        with pytest.raises(error, match=words):
            client.tally()
        server.join(5)

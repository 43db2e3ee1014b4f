"""The control channel over real loopback sockets, with an in-memory node behind it."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from conftest import wait_until
from votechain.core.block import HASH_BYTES, Block, genesis_block
from votechain.core.voting import category_of, tally, vote_transaction
from votechain.errors import ControlError, ControlProtocolError, NodeNotRunning
from votechain.net.control import (
    COOKIE_FILE,
    MAX_CONTROL_FRAME_BYTES,
    PORT_FILE,
    Auth,
    ControlClient,
    ControlServer,
    StatusRequest,
    TallyRequest,
    VoteRequest,
    encode_frame,
    encode_request,
    parse_request,
)


class FakeNode:
    """A ControlHandler whose 'miner' is the test: `mine_all()` puts queued votes in blocks."""

    def __init__(self) -> None:
        self.chain: list[Block] = [genesis_block()]
        self.queue: list[bytes] = []
        self._txs: dict[bytes, object] = {}
        self._changed = threading.Condition()
        self.auto_mine = True
        self.fail_status = False

    def submit_vote(self, category: str) -> bytes:
        tx = vote_transaction(category, now_ms=1_000)
        with self._changed:
            self._txs[tx.tx_id] = tx
            self.queue.append(tx.tx_id)
        if self.auto_mine:
            self.mine_all()
        return tx.tx_id

    def mine_all(self) -> None:
        with self._changed:
            for tx_id in self.queue:
                tx = self._txs[tx_id]
                prev = self.chain[-1]
                block = Block(
                    id=prev.id + 1,
                    transaction=tx,  # type: ignore[arg-type]
                    nonce=0,
                    prev_hash=prev.hash,
                    hash=bytes([len(self.chain)]) * HASH_BYTES,
                    signature=b"",
                    author=b"",
                )
                self.chain.append(block)
            self.queue.clear()
            self._changed.notify_all()

    def wait_for_tx(self, tx_id: bytes, timeout: float) -> Block | None:
        def find() -> Block | None:
            return next((b for b in self.chain if b.transaction.tx_id == tx_id), None)

        with self._changed:
            self._changed.wait_for(lambda: find() is not None, timeout)
            return find()

    def status(self) -> dict[str, object]:
        if self.fail_status:
            raise RuntimeError("the node broke")
        tip = self.chain[-1]
        return {
            "height": tip.id,
            "tip": tip.hash.hex(),
            "peers": 2,
            "pending": len(self.queue),
            "backend": "pure",
            "hashrate": 1234.5,
        }

    def tally(self) -> dict[str, int]:
        return tally(self.chain)


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
    sock = socket.create_connection(server.address, timeout=5)
    return sock


def send(sock: socket.socket, obj: object) -> None:
    sock.sendall(encode_frame(obj))


def recv(sock: socket.socket) -> object:
    header = recv_exact(sock, 4)
    return msgpack.unpackb(recv_exact(sock, int.from_bytes(header, "big")), raw=False)


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
    assert recv(sock) == {"ok": True}
    return sock


# ---------------------------------------------------------------- messages (pure)


@pytest.mark.parametrize(
    "request_",
    [Auth("ab" * 32), VoteRequest("alice", 2.5), StatusRequest(), TallyRequest()],
)
def test_requests_round_trip(request_: object) -> None:
    assert parse_request(encode_request(request_)) == request_  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "must be a map"),
        ({"type": "mine"}, "unknown request type"),
        ({}, "unknown request type"),
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
        parse_request(obj)


# ---------------------------------------------------------------- files and binding


def test_cookie_file_is_private_and_port_file_names_the_port(
    server: ControlServer, tmp_path: Path
) -> None:
    cookie = tmp_path / COOKIE_FILE
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o600
    assert len(bytes.fromhex(cookie.read_text().strip())) == 32
    assert int((tmp_path / PORT_FILE).read_text()) == server.address[1]


def test_server_listens_on_loopback_only(server: ControlServer) -> None:
    assert server.address[0] == "127.0.0.1"
    # Reach the same port through a non-loopback address of this machine, if it has one.
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        own = {str(info[4][0]) for info in infos}
    except OSError:
        own = set()
    for address in own - {"127.0.0.1"}:
        if address.startswith("127."):
            continue
        with pytest.raises(OSError):
            socket.create_connection((address, server.address[1]), timeout=2).close()


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
    assert not (tmp_path / PORT_FILE).exists()
    with pytest.raises(NodeNotRunning, match="no running node"):
        ControlClient.from_data_dir(tmp_path)
    with pytest.raises(NodeNotRunning, match="refuses connections"):
        client.status()
    srv.stop()  # idempotent


def test_stale_files_of_a_killed_node_mean_no_running_node(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    (tmp_path / PORT_FILE).write_text(f"{port}\n")
    (tmp_path / COOKIE_FILE).write_text("00" * 32)
    with pytest.raises(NodeNotRunning, match=f"no running node at {tmp_path}"):
        ControlClient.from_data_dir(tmp_path)


def test_empty_data_dir_means_no_running_node(tmp_path: Path) -> None:
    with pytest.raises(NodeNotRunning, match=f"no running node at {tmp_path}: no control.port"):
        ControlClient.from_data_dir(tmp_path)


# ---------------------------------------------------------------- auth


def test_client_votes_and_reads_status_and_tally(server: ControlServer, tmp_path: Path) -> None:
    client = ControlClient.from_data_dir(tmp_path)
    block_id, block_hash = client.vote("alice")
    assert block_id == 1
    assert len(bytes.fromhex(block_hash)) == HASH_BYTES
    client.vote("  bob ")
    client.vote("alice")
    assert client.tally() == {"alice": 2, "bob": 1}
    status = client.status()
    assert status["height"] == 3
    assert set(status) == {"height", "tip", "peers", "pending", "backend", "hashrate"}


def test_wrong_cookie_is_refused_and_closed(
    server: ControlServer, node: FakeNode, tmp_path: Path
) -> None:
    sock = connect(server)
    send(sock, {"type": "auth", "cookie": "00" * 32})
    assert recv(sock) == {"ok": False, "error": "bad cookie"}
    assert is_closed(sock)
    sock.close()
    with pytest.raises(ControlError, match="bad cookie"):
        ControlClient(server.address[1], "11" * 32).vote("alice")
    assert node.tally() == {}


def test_requests_before_auth_are_refused(server: ControlServer, node: FakeNode) -> None:
    sock = connect(server)
    send(sock, {"type": "vote", "category": "alice", "timeout": 1.0})
    reply = recv(sock)
    assert reply == {"ok": False, "error": "expected auth first"}
    assert is_closed(sock)
    sock.close()
    assert node.tally() == {}


# ---------------------------------------------------------------- misbehaving clients


def test_malformed_requests_get_an_error_and_the_connection_keeps_working(
    server: ControlServer, tmp_path: Path
) -> None:
    sock = authed(server, tmp_path)
    for junk in (b"", b"\xc1", b"\x81\xa1a", msgpack.packb({"type": "x"}) + b"\x00"):
        sock.sendall(len(junk).to_bytes(4, "big") + junk)
        reply = recv(sock)
        assert isinstance(reply, dict)
        assert reply["ok"] is False
    send(sock, {"type": "status"})
    reply = recv(sock)
    assert isinstance(reply, dict)
    assert reply["ok"] is True
    sock.close()


def test_invalid_category_is_an_error_reply(server: ControlServer, tmp_path: Path) -> None:
    client = ControlClient.from_data_dir(tmp_path)
    with pytest.raises(ControlError, match="must not be empty"):
        client.vote("   ")
    with pytest.raises(ControlError, match="at most 64"):
        client.vote("x" * 65)


def test_oversized_frame_is_refused_before_reading_it(
    server: ControlServer, tmp_path: Path
) -> None:
    sock = connect(server)
    # Only the length prefix is sent: the server must answer without waiting for the body.
    sock.sendall((MAX_CONTROL_FRAME_BYTES + 1).to_bytes(4, "big"))
    reply = recv(sock)
    assert isinstance(reply, dict)
    assert "over the cap" in reply["error"]
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
    with pytest.raises(ControlError, match="internal error: the node broke"):
        client.status()
    node.fail_status = False
    assert client.status()["height"] == 0


def test_vote_timeout_is_an_error_saying_the_vote_stays_queued(
    server: ControlServer, node: FakeNode, tmp_path: Path
) -> None:
    node.auto_mine = False
    client = ControlClient.from_data_dir(tmp_path)
    with pytest.raises(ControlError, match=r"not mined within 0\.05 s"):
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

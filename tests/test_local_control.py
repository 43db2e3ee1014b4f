"""Local control (issue 12, cases 6, 8 and 9): the owner's commands reach the node
through DATA_DIR/control.sock in a private data directory, one node at a time
holds the directory, and the control channel's accept loop outlives running out
of descriptors.

- Case 6, control hijack: there is no TCP control port to take over after a
  `kill -9`; the endpoint is the socket in the 0700 directory, a stale one is
  refused and then replaced by the restarted node, and the client sends nothing
  to a socket it cannot trust. Where the tests run as root they also act as
  another user (`nobody`), which can neither read the cookie, nor put a socket
  in the directory, nor connect to the node's.
- Case 9, two peers on one directory: the second exits 1 with one line naming
  the lock, and the first keeps its files and keeps answering.
- Case 8, EMFILE: a real peer's descriptor limit is cut below what it holds
  while a client waits; the control channel logs one line, backs off, and
  serves that client once the limit is back. The shared accept loop is also
  driven through its injectable accept function, error by error.

Real `votechain` processes through the CLI where the case is about processes;
conditions are awaited under a deadline, never slept on.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from framework.fakes import FakeNode
from framework.processes import Cluster, Peer, run, wait_for
from votechain.errors import ControlUnavailable, NodeNotRunning, StoreError
from votechain.net import sockets
from votechain.net.control_client import ControlClient
from votechain.net.control_server import COOKIE_FILE, SOCKET_FILE, ControlServer
from votechain.net.framed import FramedSocket
from votechain.net.sockets import (
    ACCEPT_BACKOFF,
    ACCEPT_BACKOFF_MAX,
    MAX_UNIX_PATH_BYTES,
    accept_next,
    connect_unix,
    unix_address,
)
from votechain.node.datadir import LOCK_FILE, DataDirLock, make_private
from votechain.protocol.control import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    Auth,
    AuthOk,
    StatusReply,
    StatusRequest,
)

DIFFICULTY = 3
Accept = Callable[[], tuple[socket.socket, object]]
START = 30.0  # a peer's start is a miner spawn: seconds on a loaded machine
NOBODY = 65534
# How long the EMFILE test keeps the peer out of descriptors: long enough for
# the accept loop's back-off to double a few times (0.05, 0.1, 0.2, 0.4 s).
EMFILE_EPISODE = 0.5


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A root that other users may pass through (0711), unlike pytest's tmp_path
    (under a 0700 directory): what another user meets is then the data
    directory's own mode, not its parent's."""
    root = Path(tempfile.mkdtemp(prefix="vc-local-", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(shared_root: Path) -> Iterator[Cluster]:
    with Cluster(shared_root, DIFFICULTY) as c:
        yield c


def start_peer(cluster: Cluster, name: str = "a") -> Peer:
    tracker = cluster.tracker()
    assert tracker.address is not None
    (peer,) = cluster.add_peers([name], tracker.address)
    return peer


def system_python() -> str | None:
    """An interpreter another user may run (ours lives under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & stat.S_IXOTH:
            return candidate
    return None


def as_nobody(code: str, *args: str) -> dict[str, str]:
    """Run `code` as the user nobody; what it prints, as JSON. Skips the test
    where this process cannot switch users (not root) or has no such python."""
    python = system_python()
    if os.geteuid() != 0 or python is None:
        pytest.skip("acting as another user needs root and a system python3")
    result = subprocess.run([python, "-c", code, *args], capture_output=True, text=True,
                            timeout=30, user=NOBODY, group=NOBODY, extra_groups=[], check=False,
                            cwd="/")
    assert result.returncode == 0, result.stderr
    answer: dict[str, str] = json.loads(result.stdout)
    return answer


# What another local user tries against a data directory (argv: the directory,
# then the steps to try, in order): each step's outcome, "ok" or the exception's name.
IMPOSTOR = r"""
import json, os, socket, sys
data_dir = sys.argv[1]
sock_path = os.path.join(data_dir, "control.sock")
out = {}
def attempt(name, action):
    try:
        action()
        out[name] = "ok"
    except OSError as exc:
        out[name] = type(exc).__name__
def read_cookie():
    with open(os.path.join(data_dir, "control.cookie")) as f:
        f.read()
def take_socket():
    os.unlink(sock_path)
def bind_socket():
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock_path)
    s.listen()
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(sock_path)
steps = {"list": lambda: os.listdir(data_dir), "read_cookie": read_cookie,
         "take_socket": take_socket, "bind_socket": bind_socket, "connect": connect}
for name in sys.argv[2:]:
    attempt(name, steps[name])
print(json.dumps(out))
"""
DENIED = "PermissionError"


def tcp_listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (Linux /proc)."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def unix_listening_paths(pid: int) -> set[str]:
    """The named Unix sockets process `pid` listens on (Linux /proc)."""
    inodes = _socket_inodes(pid)
    paths = set()
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        flags, inode = int(fields[3], 16), fields[6]
        if inode in inodes and flags & 0x10000 and len(fields) > 7:  # __SO_ACCEPTCON
            paths.add(fields[7])
    return paths


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    return inodes


def inode(path: Path) -> int:
    return os.lstat(path).st_ino


# ---------------------------------------------------------------- case 6: hijack


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/net/unix").exists(), reason="reads Linux /proc")
def test_the_control_endpoint_is_a_socket_in_the_private_data_dir_and_no_tcp_port(
    cluster: Cluster,
) -> None:
    peer = start_peer(cluster)
    data_dir = peer.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    sock = (data_dir / SOCKET_FILE).lstat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
    assert sock.st_uid == os.geteuid()
    assert not (data_dir / "control.port").exists()
    # The peer listens on its peer port and nothing else over TCP; the control
    # channel is the socket in its directory.
    assert tcp_listening_ports(peer.pid) == {peer.address[1]}
    assert str(data_dir / SOCKET_FILE) in unix_listening_paths(peer.pid)
    status = run("status", "--data-dir", str(data_dir), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["address"] == f"127.0.0.1:{peer.address[1]}"


@pytest.mark.slow
def test_after_kill9_the_stale_socket_is_refused_then_replaced_and_never_hijacked(
    cluster: Cluster,
) -> None:
    peer = start_peer(cluster)
    data_dir = peer.data_dir
    cluster.kill9(peer)
    # What the kill leaves behind: the socket (no one listens) and the cookie.
    stale = inode(data_dir / SOCKET_FILE)
    assert (data_dir / COOKIE_FILE).exists()

    # An impostor on the old design's terms: a TCP listener, and a control.port
    # naming it. The client never looks at either.
    with socket.create_server(("127.0.0.1", 0)) as impostor:
        impostor.setblocking(False)
        (data_dir / "control.port").write_text(f"{impostor.getsockname()[1]}\n")
        vote = run("vote", "--data-dir", str(data_dir), "mallory", timeout=30)
        assert vote.returncode == 1
        line = one_line(vote.stderr)
        assert "no running node" in line and "nothing listens on control.sock" in line, line
        with pytest.raises(BlockingIOError):
            impostor.accept()  # no one ever connected to it
    (data_dir / "control.port").unlink()

    # Another user, while the node is down: cannot read the cookie, cannot take
    # the socket's place, cannot even look (skipped where not root).
    if os.geteuid() == 0 and system_python() is not None:
        down = ("list", "read_cookie", "take_socket", "bind_socket", "connect")
        assert as_nobody(IMPOSTOR, str(data_dir), *down) == dict.fromkeys(down, DENIED)
    assert inode(data_dir / SOCKET_FILE) == stale

    cluster.restart(peer)
    assert inode(data_dir / SOCKET_FILE) != stale  # replaced by the new node's
    assert "removed a stale control.sock" in peer.log_text()
    vote = run("vote", "--data-dir", str(data_dir), "alice", timeout=60)
    assert vote.returncode == 0, vote.stderr
    assert "mined in block" in vote.stdout
    assert peer.tally() == {"alice": 1}

    if os.geteuid() == 0 and system_python() is not None:
        # The running node's socket: the directory keeps other users out...
        steps = ("list", "read_cookie", "connect")
        assert as_nobody(IMPOSTOR, str(data_dir), *steps) == dict.fromkeys(steps, DENIED)
        # ...and so do the socket's and the cookie's own modes, were the directory
        # opened for passing through (0711) while the node runs.
        data_dir.chmod(0o711)
        try:
            tried = as_nobody(IMPOSTOR, str(data_dir), *steps)
        finally:
            data_dir.chmod(0o700)
        assert tried == dict.fromkeys(steps, DENIED)
    assert peer.tally() == {"alice": 1}


def test_the_client_sends_nothing_to_a_socket_it_cannot_trust(tmp_path: Path) -> None:
    """An impostor's socket in a directory others may write to: the client refuses
    before it connects, so the impostor never sees a cookie or a vote."""
    data_dir = tmp_path / "open"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    (data_dir / COOKIE_FILE).write_text("ab" * 32)
    with socket.socket(socket.AF_UNIX) as impostor:
        with unix_address(data_dir / SOCKET_FILE) as address:
            impostor.bind(address)
        impostor.listen()
        impostor.setblocking(False)
        with pytest.raises(ControlUnavailable, match=r"other users may write to the directory "
                                                     r"\(mode 0777\).*chmod 700"):
            ControlClient.from_data_dir(data_dir)
        with pytest.raises(BlockingIOError):
            impostor.accept()  # it was never even connected to
        data_dir.chmod(0o700)
        if os.geteuid() == 0:
            # A socket that is not the directory's owner's (only root can make one here).
            os.chown(data_dir / SOCKET_FILE, NOBODY, NOBODY)
            with pytest.raises(ControlUnavailable, match=f"belongs to uid {NOBODY}"):
                ControlClient.from_data_dir(data_dir)
            with pytest.raises(BlockingIOError):
                impostor.accept()


# A listener bound in the owner's directory but run by another user: root binds,
# then becomes nobody before listen(), which is when the kernel records who listens.
LISTENER_AS_NOBODY = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.setgid(65534)
os.setuid(65534)
s.listen()
print("ready", flush=True)
conn, _ = s.accept()
conn.settimeout(10)
received = b""
while chunk := conn.recv(4096):
    received += chunk
print(len(received), flush=True)
"""


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")
def test_the_client_checks_who_listens_before_it_sends(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can make another user listen in this directory")
    path = tmp_path / SOCKET_FILE
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        pytest.skip("the helper binds by name")
    (tmp_path / COOKIE_FILE).write_text("ab" * 32)
    listener = subprocess.Popen([sys.executable, "-c", LISTENER_AS_NOBODY, str(path)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        with pytest.raises(ControlUnavailable, match=f"runs as uid {NOBODY}"):
            ControlClient.from_data_dir(tmp_path)
        # It was connected to, and hung up on: not one byte of the cookie reached it.
        assert listener.stdout.readline().strip() == "0"
        assert listener.wait(10) == 0
    finally:
        listener.kill()
        listener.wait()


# ---------------------------------------------------------------- case 9: one node per directory


@pytest.mark.slow
def test_a_second_peer_on_the_same_data_dir_refuses_and_the_first_keeps_serving(
    cluster: Cluster,
) -> None:
    first = start_peer(cluster)
    data_dir = first.data_dir
    before = {name: inode(data_dir / name) for name in (SOCKET_FILE, COOKIE_FILE)}
    cookie = (data_dir / COOKIE_FILE).read_text()

    second = run(*first.args, timeout=60)
    assert second.returncode == 1
    line = one_line(second.stderr)
    assert f"is in use by another node (pid {first.pid})" in line, line
    assert str(data_dir / LOCK_FILE) in line, line

    # The first's files are untouched, and it still answers.
    assert {name: inode(data_dir / name) for name in before} == before
    assert (data_dir / COOKIE_FILE).read_text() == cookie
    status = run("status", "--data-dir", str(data_dir))
    assert status.returncode == 0, status.stderr
    assert "height" in status.stdout

    # Once the first stops (removing its own files), the directory is free again.
    assert first.child is not None
    assert first.child.stop() == 0
    assert not (data_dir / SOCKET_FILE).exists() and not (data_dir / COOKIE_FILE).exists()
    assert (data_dir / LOCK_FILE).exists()  # the lock file stays: see node/datadir.py
    cluster.restart(first)
    wait_for(lambda: first.status()["height"] == 0, START, "the restarted peer to answer")


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    held = DataDirLock.acquire(tmp_path / "dir")
    assert (tmp_path / "dir" / LOCK_FILE).read_text().strip() == str(os.getpid())
    with pytest.raises(StoreError, match=rf"in use by another node \(pid {os.getpid()}\): it "
                                         rf"holds the lock .*{LOCK_FILE}"):
        DataDirLock.acquire(tmp_path / "dir")  # another open file: flock refuses it too
    held.release()
    held.release()  # idempotent
    again = DataDirLock.acquire(tmp_path / "dir")
    assert again.held
    again.release()


def test_a_data_dir_open_to_others_is_made_private_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    created = tmp_path / "new" / "dir"
    make_private(created)
    assert stat.S_IMODE(created.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="votechain.node"):
        make_private(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert [r.getMessage() for r in caplog.records] == [
        f"data directory {loose} was open to other users (mode 0755); made it 0700: it holds "
        "the node's key and its control socket"
    ]
    if os.geteuid() == 0:
        os.chown(loose, NOBODY, NOBODY)
        with pytest.raises(StoreError, match=f"belongs to uid {NOBODY}, not to you"):
            make_private(loose)


def test_a_server_removes_only_the_files_it_wrote(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = ControlServer(FakeNode(), tmp_path)
    first.start()
    try:
        files = {name: inode(tmp_path / name) for name in (SOCKET_FILE, COOKIE_FILE)}
        # A second server on the same directory (no node lock here): it finds
        # the socket live, refuses, and leaves the first's files alone.
        second = ControlServer(FakeNode(), tmp_path)
        with pytest.raises(OSError, match="another process serves"):
            second.start()
        second.stop()
        assert {name: inode(tmp_path / name) for name in files} == files
        assert ControlClient.from_data_dir(tmp_path).status()["height"] == 0
        # A cookie someone else wrote over the first's is not the first's to remove.
        (tmp_path / COOKIE_FILE).unlink()
        (tmp_path / COOKIE_FILE).write_text("cd" * 32)
    finally:
        with caplog.at_level(logging.WARNING, logger="votechain.control"):
            first.stop()
    assert (tmp_path / COOKIE_FILE).read_text() == "cd" * 32
    assert not (tmp_path / SOCKET_FILE).exists()
    assert any("not removing" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- socket paths over sun_path


def test_a_data_dir_too_deep_for_sun_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(deep / SOCKET_FILE)) > MAX_UNIX_PATH_BYTES
    server = ControlServer(FakeNode(), deep)
    server.start()
    try:
        client = ControlClient.from_data_dir(deep)
        assert client.vote("alice")[0] == 1
        assert client.tally() == {"alice": 1}
    finally:
        server.stop()


def test_where_a_long_path_cannot_be_bound_start_says_so_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sockets, "_PROC_FD", tmp_path / "no-proc")  # a system without /proc
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = ControlServer(FakeNode(), deep)
    with pytest.raises(OSError, match="use a data directory with a shorter path") as raised:
        server.start()
    assert raised.value.errno == errno.ENAMETOOLONG
    assert list(deep.iterdir()) == []  # the cookie it wrote first is gone again
    server.stop()
    # A client on such a system: one line that says the same, not a traceback.
    monkeypatch.undo()
    with socket.socket(socket.AF_UNIX) as listener:
        with unix_address(deep / SOCKET_FILE) as address:
            listener.bind(address)
        listener.listen()
        monkeypatch.setattr(sockets, "_PROC_FD", tmp_path / "no-proc")
        with pytest.raises(ControlUnavailable, match="shorter path"):
            ControlClient.from_data_dir(deep, timeout=2)


# ---------------------------------------------------------------- case 8: EMFILE


def first_free_descriptor(pid: int) -> int:
    """The lowest descriptor number process `pid` does not hold: with its limit
    set to that, every new descriptor it asks for fails with EMFILE."""
    held = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in itertools.count() if fd not in held)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="prlimit is Linux's")
def test_the_control_channel_survives_running_out_of_descriptors(cluster: Cluster) -> None:
    peer = start_peer(cluster)
    path = peer.data_dir / SOCKET_FILE
    assert peer.status()["height"] == 0
    limits = resource.prlimit(peer.pid, resource.RLIMIT_NOFILE)
    pokes: list[socket.socket] = []

    def log_has(text: str) -> bool:
        return text in peer.log_text()

    def out_of_descriptors() -> bool:
        if log_has("votechain.control WARNING accept failed ("):
            return True
        # Each connection makes the node take a descriptor (an accept() already
        # blocked holds one it reserved; a descriptor freed below the limit
        # serves one more): soon one accept fails.
        pokes.append(connect_unix(path, timeout=30))
        return False

    # From here every new descriptor the peer asks for fails with EMFILE.
    resource.prlimit(peer.pid, resource.RLIMIT_NOFILE, (first_free_descriptor(peer.pid),
                                                        limits[1]))
    try:
        wait_for(out_of_descriptors, 15, "the control channel to meet EMFILE")
        # A client that arrives during the episode: connected (queued) and its
        # cookie sent while the node cannot take a descriptor, for as long as
        # the fault lasts (a duration, not a synchronisation).
        queued = FramedSocket(connect_unix(path, timeout=30), CONTROL_REPLIES, CONTROL_REQUESTS,
                              timeout=30)
        queued.send(Auth((peer.data_dir / COOKIE_FILE).read_text().strip()))
        threading.Event().wait(EMFILE_EPISODE)
    finally:
        resource.prlimit(peer.pid, resource.RLIMIT_NOFILE, limits)
        for poke in pokes:
            poke.close()
    with queued:
        # Served once descriptors are back: the accept loop backed off, it did not end.
        assert queued.recv() == AuthOk()
        reply = queued.request(StatusRequest())
        assert isinstance(reply, StatusReply) and reply.status.height == 0
    # One line when an episode begins and one when it ends, not one per failure
    # (usually one episode of 4 failed accepts over 0.8 s; a descriptor the
    # node frees below the limit meanwhile lets one accept through and splits it).
    log = peer.log_text()
    episodes = log.count("votechain.control WARNING accept failed ([Errno 24] Too many open")
    assert episodes >= 1
    assert log.count("votechain.control WARNING accepting again after ") == episodes
    # And it goes on serving: a vote through the CLI, mined and answered.
    vote = run("vote", "--data-dir", str(peer.data_dir), "after-emfile", timeout=60)
    assert vote.returncode == 0, vote.stderr
    assert peer.tally() == {"after-emfile": 1}


def _failing_accept(errors: list[int], sock: socket.socket) -> Accept:
    """An accept function that raises each of `errors` in turn, then returns `sock`."""

    def accept() -> tuple[socket.socket, object]:
        if errors:
            code = errors.pop(0)
            raise OSError(code, os.strerror(code))
        return sock, ""  # a Unix socket's client has no name

    return accept


def test_the_shared_accept_loop_rides_out_each_transient_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    left, right = socket.socketpair()
    log = logging.getLogger("votechain.test-accept")
    pauses: list[float] = []

    def next_with(errors: list[int], stopping: bool = False) -> object:
        return accept_next(left, lambda: stopping, pauses.append, log,
                           accept=_failing_accept(errors, left))

    try:
        transient = [errno.EMFILE] * 8 + [errno.ECONNABORTED, errno.EPROTO, errno.ENFILE,
                                           errno.ENOBUFS, errno.ENOMEM, errno.EPERM]
        with caplog.at_level(logging.DEBUG, logger=log.name):
            assert next_with(transient) == (left, ("", 0))
        # Resource errors back off, doubling, never past the cap; connection
        # errors are retried at once.
        assert pauses[:8] == [min(ACCEPT_BACKOFF * 2**i, ACCEPT_BACKOFF_MAX) for i in range(8)]
        assert max(pauses) == ACCEPT_BACKOFF_MAX
        assert len(pauses) == 11  # 8 EMFILE, then ENFILE, ENOBUFS, ENOMEM
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, warnings  # one when the episode began, one when it ended
        assert warnings[0].startswith("accept failed ([Errno 24]")
        assert warnings[1].startswith("accepting again after 11 failed accepts")

        # A broken listener (EBADF) ends the loop, loudly; a stop ends it quietly.
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger=log.name):
            assert next_with([errno.EBADF]) is None
            assert next_with([errno.EINVAL], stopping=True) is None
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
    finally:
        left.close()
        right.close()


def test_connect_unix_waits_for_room_in_a_full_queue(tmp_path: Path) -> None:
    path = tmp_path / "q.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        with unix_address(path) as address:
            listener.bind(address)
        listener.listen(1)
        queued = []
        with pytest.raises(TimeoutError, match="listen queue stayed full"):
            while True:  # fill the queue: then a connect fails within its timeout
                queued.append(connect_unix(path, timeout=0.2))
        assert queued  # at least one fitted
        served: list[socket.socket] = []

        def accept_one() -> None:
            served.append(listener.accept()[0])

        acceptor = threading.Thread(target=accept_one)
        acceptor.start()
        late = connect_unix(path, timeout=10)  # room is made while it waits
        acceptor.join(10)
        for sock in (*queued, *served, late):
            sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect_unix(path, timeout=1)  # a socket file no one listens on
    path.unlink()
    with pytest.raises(FileNotFoundError):
        connect_unix(path, timeout=1)
    with pytest.raises(NodeNotRunning, match=r"no control\.sock"):
        ControlClient.from_data_dir(tmp_path)

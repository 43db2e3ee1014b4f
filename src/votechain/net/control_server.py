"""The control channel's server: how the node's owner (the `votechain` command)
talks to a running node. The messages are protocol/control.py's; the framing
and the socket shell are the peer protocol's (net/framed.py).

Only the owner may use it, a remote peer can never cast a vote as this node, and
the owner's command can never be made to talk to anyone else:

- the server listens on a Unix domain socket, DATA_DIR/control.sock, never on a
  TCP port, so it is not reachable off the machine. The data directory must be
  the node's user's and private (mode 0700: node/datadir.py makes it so before
  the node starts, and start() refuses a looser one). Only that user (and root)
  can create a file there, so only they can have put control.sock there;
  the socket file itself is mode 0600, so only they can connect.
- That is what closes the hole the TCP port had: after a `kill -9` the port was
  free for any local user to bind, and the owner's next `votechain vote` sent
  the cookie and the vote to whoever did. A stale control.sock can only be
  connected to (refused: nothing listens) or replaced by the owner's next node
  (start() removes it once a probe finds no one listening). The client
  (net/control_client.py) also checks, before it sends a byte, that the
  directory and the socket are the owner's and that the process listening runs
  as the owner (SO_PEERCRED, Linux), and reads the cookie only once connected.
- The cookie is kept as a second, independent lock: every connection must first
  send the 32 random bytes (hex) that start() wrote to control.cookie, mode
  0600, fresh at every start, compared in constant time (as Bitcoin Core's RPC
  `.cookie`). On Linux the socket's modes alone keep other users out; the
  cookie still does where a system ignores a socket file's mode (some BSDs)
  and the directory was loosened while the node runs, as the cookie file's
  own mode holds everywhere. It no longer has to prove the node to the
  client: the socket's place does, and the client reads it only once connected.
- Where a Unix socket cannot be used: a path over sun_path's 107 bytes is
  reached through /proc/self/fd (net/sockets.py unix_address); where that does
  not exist either, start() fails with a line that says to use a shorter data
  directory. It never falls back to TCP. A TCP fallback would have to reverse
  the old order, the node proving first that it knows the cookie (a
  challenge-response: the client sends a nonce, the node answers
  HMAC(cookie, nonce), and only then does the client send anything of its
  own); that is not built, as every platform votechain runs on has Unix sockets.

Files in the data directory while the server runs (each removed by `stop()`,
and only if it is still what this server wrote: never another node's):
  control.cookie   the cookie, mode 0600, written first
  control.sock     the socket, mode 0600, bound once the cookie is there

A malformed request gets an ErrorReply and the connection stays usable (the
frame boundary is intact); a bad length prefix, a truncated frame or a failed
auth gets an ErrorReply and a closed connection. Nothing a client sends can
crash the node: a handler bug is logged and answered with "internal error".
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from votechain.core.block import Block
from votechain.errors import (
    ConnectionClosed,
    DeadlineExceeded,
    FrameTooLarge,
    InvalidVote,
    LocalProtocolError,
    NodeStopping,
    RemoteProtocolError,
)
from votechain.net.framed import FramedSocket
from votechain.net.sockets import (
    accept_next,
    connect_unix,
    stop_listener,
    unix_address,
    wake,
)
from votechain.protocol.control import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    COOKIE_BYTES,
    Auth,
    AuthOk,
    ErrorReply,
    NodeStatus,
    Reply,
    Request,
    StatusReply,
    StatusRequest,
    TallyReply,
    TallyRequest,
    VoteRequest,
    VoteResult,
)

log = logging.getLogger("votechain.control")

COOKIE_FILE = "control.cookie"
SOCKET_FILE = "control.sock"
# The directory and both files are the owner's alone; any bit for group or
# others is refused (the directory) or never set (the files).
PRIVATE_MASK = 0o077

# Why 64: one owner runs a handful of commands at a time; a cap keeps a local
# flood of connections from exhausting the node's threads and descriptors.
MAX_CONTROL_CONNECTIONS = 64
# Why 5 s: the real client sends its cookie immediately; a connection that has
# not authenticated by then is not the owner, and holds a thread slot. A
# deadline for the whole auth frame, not a read timeout: one byte every few
# seconds would otherwise hold the slot for as long as the sender likes.
AUTH_TIMEOUT = 5.0
# An authenticated client that goes silent this long between requests is gone.
IDLE_TIMEOUT = 300.0
# How long start() gives a control.sock it finds to answer before calling it
# stale; a live server accepts (or queues) a connect at once.
STALE_PROBE_TIMEOUT = 1.0
# How long stop() waits, in all, for connection threads (a vote may be waiting in the handler).
STOP_JOIN_TIMEOUT = 5.0

_TOO_MANY = CONTROL_REPLIES.encode(ErrorReply("too many connections", "unavailable"))

_Channel = FramedSocket[Request, Reply]
# (st_dev, st_ino, st_ctime_ns): which file a path named when this server made
# it. The change time too, as a freed inode number is soon handed out again.
_FileId = tuple[int, int, int]


class ControlHandler(Protocol):
    """What the node offers the control channel."""

    def submit_vote(self, category: str) -> bytes:
        """Validate (raising voting.InvalidVote), queue for mining, return the tx_id."""
        ...

    def wait_for_vote(self, tx_id: bytes, timeout: float) -> tuple[Block | None, bool]:
        """Wait at most `timeout` s for the vote `tx_id` to be final (kept by a
        majority of the members): the block holding it in this node's chain
        (None if none yet) and whether it is final. Raises NodeStopping if the
        node shuts down before the vote is in a block."""
        ...

    def status(self) -> NodeStatus: ...

    def tally(self, recount: bool = False) -> dict[str, int]:
        """Votes per category, most first: kept as the chain changes, or with
        `recount` counted by walking the chain."""
        ...


class ControlServer:
    """Serves `handler` on `data_dir`/control.sock to whoever holds the cookie in `data_dir`."""

    def __init__(
        self, handler: ControlHandler, data_dir: Path, *, auth_timeout: float = AUTH_TIMEOUT
    ) -> None:
        self._handler = handler
        self._data_dir = Path(data_dir)
        self._auth_timeout = auth_timeout
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._cookie = ""
        # What this server wrote, so stop() removes those files and no other.
        self._socket_id: _FileId | None = None
        self._cookie_written = False
        self._stopping = False
        self._stopped = threading.Event()

    @property
    def path(self) -> Path:
        """The socket clients connect to: DATA_DIR/control.sock."""
        return self._data_dir / SOCKET_FILE

    @property
    def cookie_path(self) -> Path:
        return self._data_dir / COOKIE_FILE

    def start(self) -> None:
        """Check the directory is private, replace a stale socket, write the
        cookie, then listen on the socket (in that order: a client that can
        connect finds the cookie of the node it reached)."""
        with self._lock:
            if self._listener is not None or self._stopping:
                raise RuntimeError("a ControlServer can be started only once")
            self._data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_private_dir(self._data_dir)
            self._remove_stale_socket()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._cookie = secrets.token_bytes(COOKIE_BYTES).hex()
                _write_private(self.cookie_path, self._cookie + "\n")
                self._cookie_written = True
                with unix_address(self.path) as address:
                    listener.bind(address)
                # Before listen(): until then a connect() is refused whatever the mode.
                os.chmod(self.path, 0o600)
                self._socket_id = _file_id(self.path)
                # A backlog as deep as the connection cap: a burst of connections
                # queues rather than being refused.
                listener.listen(MAX_CONTROL_CONNECTIONS)
            except OSError:
                listener.close()
                self._remove_files()
                raise
            self._listener = listener
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener,), name="control-accept", daemon=True
            )
            self._accept_thread.start()
        log.info("control channel on %s", self.path)

    def stop(self) -> None:
        """Remove the files, stop accepting, close every connection. Idempotent."""
        with self._lock:
            self._stopping = True
            listener, accept_thread = self._listener, self._accept_thread
        self._stopped.set()  # ends an accept back-off early
        # Files first: from now on a client sees "no running node", not a hang.
        self._remove_files()
        stop_listener(listener, accept_thread)
        with self._lock:
            connections = list(self._connections.items())
            for sock, _thread in connections:
                wake(sock)
        # A thread inside handler.wait_for_tx wakes only when the handler lets
        # it; the threads are daemons, so do not let one hold up the node's exit.
        deadline = time.monotonic() + STOP_JOIN_TIMEOUT
        for _sock, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("control connection thread %s still busy at stop", thread.name)

    def _remove_stale_socket(self) -> None:
        """A control.sock no one listens on is a killed node's: remove it. One
        someone listens on is another server's (node/datadir.py's lock keeps a
        second node off this directory; this is the check for everything else):
        refuse, and touch nothing."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{self.path} is in the way and is not a socket: move it away")
        try:
            connect_unix(self.path, STALE_PROBE_TIMEOUT).close()
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nothing listens: stale
        except TimeoutError as exc:  # a queue that stays full: someone listens
            raise OSError(f"another process serves {self.path}: {exc}") from exc
        except OSError as exc:
            raise OSError(f"cannot tell whether {self.path} is in use: {exc}") from exc
        else:
            raise OSError(
                f"another process serves {self.path}: is a node already running on "
                f"{self._data_dir}?"
            )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        log.info("removed a stale %s (left by a node that did not stop cleanly)", SOCKET_FILE)

    def _remove_files(self) -> None:
        """Unlink the socket, then the cookie, each only if the path still names
        what this server wrote (the socket: the same inode and change time; the
        cookie: the same cookie): never another node's, even by mistake."""
        socket_id, self._socket_id = self._socket_id, None
        if socket_id is not None:
            _unlink_if_ours(self.path, lambda: _file_id(self.path) == socket_id)
        cookie_written, self._cookie_written = self._cookie_written, False
        if cookie_written:
            cookie_path = self.cookie_path
            _unlink_if_ours(cookie_path, lambda: _read_cookie(cookie_path) == self._cookie)

    def _accept_loop(self, listener: socket.socket) -> None:
        while (accepted := accept_next(listener, lambda: self._stopping, self._stopped.wait,
                                       log)) is not None:
            sock, _address = accepted
            with self._lock:
                refuse = self._stopping or len(self._connections) >= MAX_CONTROL_CONNECTIONS
                if not refuse:
                    thread = threading.Thread(
                        target=self._serve, args=(sock,), name="control-conn", daemon=True
                    )
                    self._connections[sock] = thread
                    thread.start()
            if refuse:
                log.warning("control channel: refusing a connection (too many)")
                with contextlib.suppress(OSError):
                    sock.settimeout(0.5)
                    sock.sendall(_TOO_MANY)
                sock.close()

    def _serve(self, sock: socket.socket) -> None:
        conn: _Channel = FramedSocket(
            sock, CONTROL_REQUESTS, CONTROL_REPLIES, timeout=self._auth_timeout
        )
        try:
            if not self._authenticate(conn):
                return
            conn.timeout = IDLE_TIMEOUT
            while True:
                try:
                    request = conn.recv()
                except RemoteProtocolError as exc:
                    self._reply(conn, _refusal(exc))
                    if not conn.framed:
                        return  # the stream cannot be re-synchronised
                    continue
                self._reply(conn, self._dispatch(request))
        except (ConnectionClosed, OSError) as exc:
            log.debug("control connection ended: %s", exc)
        except Exception:
            # Our bug, not the client's: loud in the log, but the node keeps running.
            log.exception("control channel bug while serving a connection")
        finally:
            with self._lock:
                self._connections.pop(sock, None)
                conn.close()

    def _authenticate(self, conn: _Channel) -> bool:
        try:
            request = conn.recv(deadline=time.monotonic() + self._auth_timeout)
        except (TimeoutError, DeadlineExceeded):
            log.info("control channel: dropped a connection that did not authenticate in time")
            return False
        except RemoteProtocolError as exc:
            self._reply(conn, _refusal(exc, "expected auth: "))
            return False
        if not isinstance(request, Auth):
            self._reply(conn, ErrorReply("expected auth first", "refused"))
            return False
        # Constant time, so the reply latency says nothing about how much of a guess matched.
        if not hmac.compare_digest(request.cookie.encode(), self._cookie.encode()):
            log.warning("control channel: refused a connection with a bad cookie")
            self._reply(conn, ErrorReply("bad cookie", "refused"))
            return False
        self._reply(conn, AuthOk())
        return True

    def _dispatch(self, request: Request) -> Reply:
        try:
            match request:
                case VoteRequest(category=category, timeout=timeout):
                    return self._vote(category, timeout)
                case StatusRequest():
                    return StatusReply(self._handler.status())
                case TallyRequest(recount=recount):
                    return TallyReply(self._handler.tally(recount=recount))
                case Auth():
                    return ErrorReply("already authenticated", "refused")
        except InvalidVote as exc:
            return ErrorReply(str(exc), "refused")
        except NodeStopping as exc:
            return ErrorReply(str(exc), "unavailable")
        except Exception as exc:
            log.exception("control channel: handler failed on %r", request)
            return ErrorReply(f"internal error: {exc}", "unavailable")

    def _vote(self, category: str, timeout: float) -> Reply:
        tx_id = self._handler.submit_vote(category)
        block, final = self._handler.wait_for_vote(tx_id, timeout)
        if block is None:
            return ErrorReply(
                f"vote {tx_id.hex()} not mined within {timeout:g} s "
                "(it stays queued; the node will still mine it)",
                "unavailable",
            )
        if not final:
            return ErrorReply(
                f"vote {tx_id.hex()} is included in block {block.id} "
                f"{block.hash.hex()[:16]}, not yet final after {timeout:g} s: a majority of "
                "the network's members has not yet confirmed keeping it (if the majority "
                "settles on another block, the vote is mined again)",
                "unavailable",
            )
        return VoteResult(block_id=block.id, hash=block.hash, tx_id=tx_id)

    def _reply(self, conn: _Channel, reply: Reply) -> None:
        try:
            conn.send(reply)
        except LocalProtocolError as exc:
            # Our bug (the handler gave what the client would have to refuse):
            # loud in the log, and still an answer, so the client is not left waiting.
            log.exception("control channel: cannot send %s", reply.TYPE)
            conn.send(ErrorReply(f"internal error: {exc.reason}", "unavailable"))


def _refusal(exc: RemoteProtocolError, context: str = "") -> ErrorReply:
    """The reply to a request the client got wrong; a frame over the cap was not
    even read, and the reply says so in words the owner will recognise."""
    if isinstance(exc, FrameTooLarge):
        return ErrorReply(f"{context}request over the cap, not read: {exc.reason}", "refused")
    return ErrorReply(f"{context}{exc.reason}", "refused")


def check_private_dir(path: Path) -> None:
    """PermissionError unless `path` is a directory of this process's user that
    no one else may enter (mode 0700 or tighter)."""
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise PermissionError(
            f"{path} belongs to uid {info.st_uid}, not to this node's uid {os.geteuid()}: "
            "run the node as the directory's owner"
        )
    if info.st_mode & PRIVATE_MASK:
        raise PermissionError(
            f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); the control "
            f"socket needs a private directory: chmod 700 {path}"
        )


def _file_id(path: Path) -> _FileId:
    info = os.lstat(path)
    return info.st_dev, info.st_ino, info.st_ctime_ns


def _read_cookie(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def _unlink_if_ours(path: Path, ours: Callable[[], bool]) -> None:
    try:
        if not ours():
            log.warning("not removing %s: it is no longer the file this node wrote", path)
            return
        path.unlink()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("not removing %s: %s", path, exc)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    # O_EXCL | O_NOFOLLOW: never write through a file or symlink someone else planted.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise

"""The control channel's server: how the node's owner (the `votechain` command)
talks to a running node. The messages are protocol/control.py's; the framing
and the socket shell are the peer protocol's (net/framed.py).

Only the owner may use it, and a remote peer can never cast a vote as this node:
- the server binds 127.0.0.1 and nothing else, so it is not reachable off the machine;
- every connection must first prove it can read the node's data directory, by
  sending the cookie the server wrote there with mode 0600 (as Bitcoin Core's
  RPC `.cookie`): 32 random bytes, hex, fresh at every start, compared in
  constant time. Other local users cannot read it; a stale copy stops working
  at the next start.

Files in the data directory while the server runs (both removed by `stop()`):
  control.cookie   the cookie, mode 0600
  control.port     the TCP port on 127.0.0.1, decimal

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
import threading
import time
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
from votechain.net.sockets import accept_next, stop_listener, wake
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
PORT_FILE = "control.port"
HOST = "127.0.0.1"

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
# How long stop() waits, in all, for connection threads (a vote may be waiting in the handler).
STOP_JOIN_TIMEOUT = 5.0

_TOO_MANY = CONTROL_REPLIES.encode(ErrorReply("too many connections", "unavailable"))

_Channel = FramedSocket[Request, Reply]


class ControlHandler(Protocol):
    """What the node offers the control channel."""

    def submit_vote(self, category: str) -> bytes:
        """Validate (raising voting.InvalidVote), queue for mining, return the tx_id."""
        ...

    def wait_for_tx(self, tx_id: bytes, timeout: float) -> Block | None:
        """The block holding `tx_id` once it is in this node's chain; None on timeout.
        Raises NodeStopping if the node shuts down first."""
        ...

    def status(self) -> NodeStatus: ...

    def tally(self, recount: bool = False) -> dict[str, int]:
        """Votes per category, most first: kept as the chain changes, or with
        `recount` counted by walking the chain."""
        ...


class ControlServer:
    """Serves `handler` on 127.0.0.1 (a free port) to whoever holds the cookie in `data_dir`."""

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
        self._address: tuple[str, int] | None = None
        self._cookie = ""
        self._stopping = False
        self._stopped = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("ControlServer.address read before start()")
        return self._address

    @property
    def cookie_path(self) -> Path:
        return self._data_dir / COOKIE_FILE

    @property
    def port_path(self) -> Path:
        return self._data_dir / PORT_FILE

    def start(self) -> None:
        """Listen on 127.0.0.1, then write the cookie and the port (in that order)."""
        with self._lock:
            if self._listener is not None or self._stopping:
                raise RuntimeError("a ControlServer can be started only once")
            self._data_dir.mkdir(parents=True, exist_ok=True)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # Loopback only, by construction: there is no host parameter to get wrong.
                listener.bind((HOST, 0))
                # A backlog as deep as the connection cap: a burst of connections
                # queues rather than having SYNs dropped (1 s retry each).
                listener.listen(MAX_CONTROL_CONNECTIONS)
                self._cookie = secrets.token_bytes(COOKIE_BYTES).hex()
                _write_private(self.cookie_path, self._cookie + "\n")
                # The port file last: a client that finds it also finds the cookie.
                port = listener.getsockname()[1]
                _write_private(self.port_path, f"{port}\n")
            except OSError:
                listener.close()
                self._remove_files()
                raise
            self._listener = listener
            self._address = (HOST, port)
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener,), name="control-accept", daemon=True
            )
            self._accept_thread.start()
        log.info("control channel on %s:%d", HOST, port)

    def stop(self) -> None:
        """Remove the files, stop accepting, close every connection. Idempotent."""
        with self._lock:
            self._stopping = True
            listener, accept_thread = self._listener, self._accept_thread
            started = listener is not None
        self._stopped.set()  # ends an accept back-off early
        if started:
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

    def _remove_files(self) -> None:
        for path in (self.port_path, self.cookie_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

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
        block = self._handler.wait_for_tx(tx_id, timeout)
        if block is None:
            return ErrorReply(
                f"vote {tx_id.hex()} not mined within {timeout:g} s "
                "(it stays queued; the node will still mine it)",
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

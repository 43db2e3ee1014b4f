"""The control channel's client: what the `votechain` command and the demo use to
drive a running node (net/control_server.py serves it).

`ControlClient` makes one connection per call: connect to DATA_DIR/control.sock,
authenticate with the cookie, one request, one reply, close. `ControlClient.session()`
keeps one authenticated connection for many requests (`ControlSession`), for a
caller that votes back to back: a connect, the file checks and the cookie
cost more than a vote's round trip, and the server (net/control_server.py
`_serve`) reads request after request on one connection anyway. Either way,
before it sends anything, the client
makes sure it is talking to the owner's node and no one else's
(net/control_server.py says why that is enough): the data directory and the
socket must belong to the directory's owner (or root) and the directory must
not be writable by anyone else, and the process listening must run as that
owner or root (SO_PEERCRED, where the system has it). The cookie is read only
after the connection is made, so it is the cookie of the node that answered.

Every failure is a ControlError, and says whose fault it is:

- ControlRefused: the node refused the request (a bad category, a bad cookie);
- ControlUnavailable: no answer, or not in time, or a socket this client will
  not trust (NodeNotRunning when nothing listens on the data directory's
  socket, or there is none);
- ControlReplyError: the node answered something this client cannot accept.

A session lives as long as its connection can be trusted to keep each reply
with its request. A refusal or an "unavailable" answer (a bad category, a vote
not final in time) leaves it usable: the node answered, and the frames are
intact. Anything else (no answer in time, a closed connection, a reply that
does not decode or is of the wrong type) closes it: a late or unread reply
would otherwise be taken as the answer to the next request. Every later call
then raises ControlUnavailable naming the failure that closed it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import struct
import threading
from pathlib import Path
from types import TracebackType
from typing import Self, TypeAlias, TypeVar

from votechain.errors import (
    ConnectionClosed,
    ControlError,
    ControlRefused,
    ControlReplyError,
    ControlUnavailable,
    DeadlineExceeded,
    LocalProtocolError,
    NodeNotRunning,
    RemoteProtocolError,
)
from votechain.net.control_server import COOKIE_FILE, SOCKET_FILE
from votechain.net.framed import FramedSocket
from votechain.net.sockets import connect_unix
from votechain.protocol.control import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    DEFAULT_VOTE_TIMEOUT,
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

_R = TypeVar("_R", AuthOk, VoteResult, StatusReply, TallyReply)
# A client's side of the control channel: it sends requests, reads replies.
_Channel: TypeAlias = FramedSocket[Reply, Request]

# Group or others may write to the directory: then anyone could have put the socket there.
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
# struct ucred {pid_t pid; uid_t uid; gid_t gid;}: what SO_PEERCRED returns on Linux.
_UCRED = struct.Struct("iII")
ROOT_UID = 0


class ControlClient:
    """Talks to one node's control channel, at the Unix socket `path`: one connection per call.

    `cookie` is what to authenticate with; None (what `from_data_dir` gives)
    reads the node's control.cookie beside the socket at each call."""

    def __init__(
        self,
        path: Path,
        cookie: str | None = None,
        *,
        timeout: float = 10.0,
        where: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._cookie = cookie
        self.timeout = timeout
        self._where = where or str(self.path.parent)

    @classmethod
    def from_data_dir(cls, data_dir: Path, timeout: float = 10.0) -> ControlClient:
        """A client for the node running on `data_dir`; NodeNotRunning if there is none."""
        data_dir = Path(data_dir)
        client = cls(data_dir / SOCKET_FILE, timeout=timeout, where=str(data_dir))
        # Probe now, so a stale socket (a node that was killed) is reported
        # here as "no running node", not later as an obscure socket error.
        client._call(None)
        return client

    def session(self) -> ControlSession:
        """One authenticated connection for many requests, until `close()` (a
        context manager). Connecting raises as any call here does."""
        return ControlSession(self)

    def vote(self, category: str, timeout: float = DEFAULT_VOTE_TIMEOUT) -> tuple[int, str]:
        """Cast a vote and wait until it is final (kept by a majority of the
        network's members): (block id, hash hex). ControlUnavailable if it is
        not mined, or not final, within `timeout` s."""
        request = VoteRequest(category, float(timeout))
        reply = self._call(request, read_timeout=self._vote_read_timeout(timeout))
        result = self._expect(reply, VoteResult)
        return result.block_id, result.hash.hex()

    def _vote_read_timeout(self, timeout: float) -> float:
        # The node may wait `timeout` before it answers; give the socket more.
        return timeout + self.timeout

    def node_status(self) -> NodeStatus:
        return self._expect(self._call(StatusRequest()), StatusReply).status

    def status(self) -> dict[str, object]:
        """node_status() as a dict, keyed by NodeStatus's field names (what --json prints)."""
        return dataclasses.asdict(self.node_status())

    def tally(self, recount: bool = False) -> dict[str, int]:
        return self._expect(self._call(TallyRequest(recount)), TallyReply).counts

    def _call(self, request: Request | None, read_timeout: float | None = None) -> Reply:
        """Connect, authenticate, then send `request` (None: authenticate only) and
        return its reply; an ErrorReply is raised as ControlRefused or ControlUnavailable."""
        with self._open() as conn:
            if request is None:
                return AuthOk()
            return self._exchange(conn, request, read_timeout)

    def _open(self) -> _Channel:
        """A connection to the owner's node (checked as `_connect` says), authenticated."""
        conn: _Channel = FramedSocket(self._connect(), CONTROL_REPLIES, CONTROL_REQUESTS,
                                      timeout=self.timeout)
        try:
            cookie = self._cookie if self._cookie is not None else self._read_cookie()
            self._expect(self._exchange(conn, Auth(cookie)), AuthOk)
        except BaseException:
            conn.close()
            raise
        return conn

    def _exchange(self, conn: _Channel, request: Request,
                  read_timeout: float | None = None) -> Reply:
        """Send `request` on `conn` and return its reply, the read waiting up to
        `read_timeout` (None: the client's timeout); an ErrorReply is raised as
        ControlRefused or ControlUnavailable, a failure as `_failure` says."""
        try:
            conn.timeout = self.timeout if read_timeout is None else read_timeout
            return self._check(conn.request(request))
        except (LocalProtocolError, RemoteProtocolError, ConnectionClosed, OSError) as exc:
            raise self._failure(exc) from exc

    def _connect(self) -> socket.socket:
        """A connection to the owner's node at `path`, checked before a byte is sent."""
        trusted = self._check_files()
        try:
            sock = connect_unix(self.path, self.timeout)
        except FileNotFoundError as exc:
            raise NodeNotRunning(f"no running node at {self._where}: no {self.path.name}") from exc
        except ConnectionRefusedError as exc:
            raise NodeNotRunning(
                f"no running node at {self._where}: nothing listens on {self.path.name} "
                "(left by a node that did not stop cleanly)"
            ) from exc
        except OSError as exc:
            raise ControlUnavailable(f"cannot reach the node at {self._where}: {exc}") from exc
        try:
            self._check_listener(sock, trusted)
        except BaseException:
            sock.close()
            raise
        return sock

    def _check_files(self) -> frozenset[int]:
        """The uids this client trusts to run the node (the directory's owner and
        root); ControlUnavailable if the directory or the socket could be someone
        else's, NodeNotRunning if there is no socket."""
        directory = self.path.parent
        try:
            info = os.stat(directory)
        except FileNotFoundError as exc:
            raise NodeNotRunning(f"no running node at {self._where}: no such directory") from exc
        except OSError as exc:
            raise ControlUnavailable(f"cannot reach the node at {self._where}: {exc}") from exc
        trusted = frozenset({info.st_uid, ROOT_UID})
        if os.geteuid() not in trusted:
            raise ControlUnavailable(
                f"not talking to the node at {self._where}: the directory belongs to uid "
                f"{info.st_uid}, not to you (uid {os.geteuid()}); run the command as its owner"
            )
        if info.st_mode & _OTHERS_WRITE:
            raise ControlUnavailable(
                f"not talking to the node at {self._where}: other users may write to the "
                f"directory (mode {stat.S_IMODE(info.st_mode):04o}), so its {self.path.name} "
                f"could be anyone's; chmod 700 {directory}"
            )
        try:
            sock_info = os.lstat(self.path)
        except FileNotFoundError as exc:
            raise NodeNotRunning(f"no running node at {self._where}: no {self.path.name}") from exc
        except OSError as exc:
            raise ControlUnavailable(f"cannot reach the node at {self._where}: {exc}") from exc
        if not stat.S_ISSOCK(sock_info.st_mode):
            raise NodeNotRunning(
                f"no running node at {self._where}: {self.path.name} is not a socket")
        if sock_info.st_uid not in trusted:
            raise ControlUnavailable(
                f"not talking to the node at {self._where}: {self.path.name} belongs to uid "
                f"{sock_info.st_uid}, not to the directory's owner (uid {info.st_uid})"
            )
        return trusted

    def _check_listener(self, sock: socket.socket, trusted: frozenset[int]) -> None:
        """The process that listens must run as a trusted uid: the kernel says
        who it is (SO_PEERCRED, Linux; elsewhere the file checks stand alone)."""
        option = getattr(socket, "SO_PEERCRED", None)
        if option is None:
            return
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
        if uid not in trusted:
            raise ControlUnavailable(
                f"not talking to the node at {self._where}: the process listening on "
                f"{self.path.name} runs as uid {uid}, not as the directory's owner"
            )

    def _read_cookie(self) -> str:
        """The node's cookie, read once connected: the node writes it before it
        listens, so this is the cookie of the node we are connected to."""
        path = self.path.parent / COOKIE_FILE
        try:
            return path.read_text(encoding="ascii").strip()
        except FileNotFoundError as exc:
            raise NodeNotRunning(f"no running node at {self._where}: no {COOKIE_FILE}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeNotRunning(f"no running node at {self._where}: {exc}") from exc

    def _failure(self, exc: Exception) -> ControlError:
        """What the caller hears of a call that ended with `exc`, and whose fault it was."""
        node = f"the node at {self._where}"
        if isinstance(exc, LocalProtocolError):
            # The caller's values are out of the protocol's range (a vote
            # timeout over an hour): the node would refuse it, so do we.
            return ControlRefused(f"not sent: {exc.reason}")
        if isinstance(exc, TimeoutError | DeadlineExceeded):
            return ControlUnavailable(f"{node} did not answer in time")
        if isinstance(exc, ConnectionClosed | ConnectionError):
            return ControlUnavailable(f"{node} closed the connection")
        if isinstance(exc, RemoteProtocolError):
            return ControlReplyError(f"bad reply from {node}: {exc.reason}")
        return ControlUnavailable(f"talking to {node}: {exc}")

    @staticmethod
    def _check(reply: Reply) -> Reply:
        if isinstance(reply, ErrorReply):
            error = ControlRefused if reply.kind == "refused" else ControlUnavailable
            raise error(reply.reason)
        return reply

    def _expect(self, reply: Reply, kind: type[_R]) -> _R:
        if not isinstance(reply, kind):
            raise ControlReplyError(
                f"bad reply from the node at {self._where}: expected {kind.TYPE}, got {reply.TYPE}"
            )
        return reply


class ControlSession:
    """One authenticated connection to a node's control channel, kept for many
    requests (`ControlClient.session()`); a context manager, closed on exit.

    Each call raises what the same ControlClient call would. Requests on one
    session take turns (one lock keeps each reply with its request and its read
    timeout): a thread that votes back to back should hold a session of its
    own. A failure of the connection ends the session (the module's docstring
    says which errors do); every later call then raises ControlUnavailable
    naming that failure."""

    def __init__(self, client: ControlClient) -> None:
        self._client = client
        self._lock = threading.Lock()  # one request at a time
        self._ended_lock = threading.Lock()  # close() may come from another thread
        self._ended: str | None = None  # why no more requests may be sent
        self._conn: _Channel = client._open()

    @property
    def closed(self) -> bool:
        """True once `close()` ran or a failure ended the session."""
        return self._ended is not None

    def vote(self, category: str, timeout: float = DEFAULT_VOTE_TIMEOUT) -> tuple[int, str]:
        """As ControlClient.vote: (block id, hash hex) once the vote is final."""
        result = self.vote_result(category, timeout)
        return result.block_id, result.hash.hex()

    def vote_result(self, category: str, timeout: float = DEFAULT_VOTE_TIMEOUT) -> VoteResult:
        """`vote`, with the whole reply: the block's id and hash, and the vote's tx id."""
        request = VoteRequest(category, float(timeout))
        return self._request(request, VoteResult, self._client._vote_read_timeout(timeout))

    def node_status(self) -> NodeStatus:
        return self._request(StatusRequest(), StatusReply).status

    def tally(self, recount: bool = False) -> dict[str, int]:
        return self._request(TallyRequest(recount), TallyReply).counts

    def close(self) -> None:
        """Close the connection. Idempotent, and safe from any thread: a request
        waiting for its reply then fails with ControlUnavailable."""
        self._end("it was closed")
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._ended is None else f"closed ({self._ended})"
        return f"<{type(self).__name__} {self._client.path} {state}>"

    def _request(self, request: Request, kind: type[_R], read_timeout: float | None = None) -> _R:
        client = self._client
        with self._lock:
            if self._ended is not None:
                raise ControlUnavailable(
                    f"the control session with the node at {client._where} is closed: "
                    f"{self._ended}; open a new one")
            try:
                self._conn.timeout = client.timeout if read_timeout is None else read_timeout
                reply = self._conn.request(request)
            except LocalProtocolError as exc:
                # Refused before a byte was sent: the connection is as it was.
                raise client._failure(exc) from exc
            except (RemoteProtocolError, ConnectionClosed, OSError) as exc:
                if self._ended is not None:  # close() from another thread woke the read
                    raise ControlUnavailable(
                        f"the control session with the node at {client._where} was closed "
                        f"while waiting for a reply to {request.TYPE}") from exc
                failure = client._failure(exc)
                self._fail(failure)
                raise failure from exc
            # The node answered (a refusal, or "not now"): the frames are intact.
            client._check(reply)
            try:
                return client._expect(reply, kind)
            except ControlReplyError as exc:
                # An answer to some other request: this connection's replies
                # can no longer be matched to their requests.
                self._fail(exc)
                raise

    def _fail(self, failure: ControlError) -> None:
        self._end(f"it failed earlier ({failure})")
        self._conn.close()

    def _end(self, why: str) -> None:
        """Record why the session ended: the first reason stays."""
        with self._ended_lock:
            if self._ended is None:
                self._ended = why

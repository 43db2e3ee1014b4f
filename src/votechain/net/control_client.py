"""The control channel's client: what the `votechain` command and the demo use to
drive a running node (net/control_server.py serves it).

One connection per call: connect, authenticate with the cookie, one request,
one reply, close. Every failure is a ControlError, and says whose fault it is:

- ControlRefused: the node refused the request (a bad category, a bad cookie);
- ControlUnavailable: no answer, or not in time (NodeNotRunning when nothing
  listens where the data directory says, or its files are missing);
- ControlReplyError: the node answered something this client cannot accept.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import TypeVar

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
from votechain.net.control_server import COOKIE_FILE, HOST, PORT_FILE
from votechain.net.framed import FramedSocket
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


class ControlClient:
    """Talks to one node's control channel: one connection per call."""

    def __init__(
        self, port: int, cookie: str, *, timeout: float = 10.0, where: str | None = None
    ) -> None:
        self.port = port
        self._cookie = cookie
        self.timeout = timeout
        self._where = where or f"{HOST}:{port}"

    @classmethod
    def from_data_dir(cls, data_dir: Path, timeout: float = 10.0) -> ControlClient:
        """A client for the node running on `data_dir`; NodeNotRunning if there is none."""
        data_dir = Path(data_dir)
        try:
            port_text = (data_dir / PORT_FILE).read_text(encoding="ascii").strip()
            cookie = (data_dir / COOKIE_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError as exc:
            missing = Path(str(exc.filename)).name
            raise NodeNotRunning(f"no running node at {data_dir}: no {missing}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeNotRunning(f"no running node at {data_dir}: {exc}") from exc
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise NodeNotRunning(f"no running node at {data_dir}: bad {PORT_FILE} {port_text!r}")
        client = cls(int(port_text), cookie, timeout=timeout, where=str(data_dir))
        # Probe now, so a stale port file (a node that was killed) is reported
        # here as "no running node", not later as an obscure socket error.
        client._call(None)
        return client

    def vote(self, category: str, timeout: float = DEFAULT_VOTE_TIMEOUT) -> tuple[int, str]:
        """Cast a vote and wait until it is mined into the node's chain: (block id, hash hex)."""
        # The node may wait `timeout` before it answers; give the socket more.
        request = VoteRequest(category, float(timeout))
        reply = self._call(request, read_timeout=timeout + self.timeout)
        result = self._expect(reply, VoteResult)
        return result.block_id, result.hash.hex()

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
        try:
            sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        except ConnectionRefusedError as exc:
            raise NodeNotRunning(
                f"no running node at {self._where}: port {self.port} refuses connections"
            ) from exc
        except OSError as exc:
            raise ControlUnavailable(f"cannot reach the node at {self._where}: {exc}") from exc
        with FramedSocket(sock, CONTROL_REPLIES, CONTROL_REQUESTS, timeout=self.timeout) as conn:
            try:
                authenticated = self._expect(self._check(conn.request(Auth(self._cookie))), AuthOk)
                if request is None:
                    return authenticated
                if read_timeout is not None:
                    conn.timeout = read_timeout
                return self._check(conn.request(request))
            except (LocalProtocolError, RemoteProtocolError, ConnectionClosed, OSError) as exc:
                raise self._failure(exc) from exc

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

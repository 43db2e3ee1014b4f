"""A peer connection: a FramedSocket (net/framed.py) speaking the peer protocol
(protocol/peer.py) in both directions, plus the handshake.

A connection is long-lived (unlike tinychain's socket per message): the two
sides exchange Hellos and Auths once (protocol/handshake.py: who signs what),
then any number of request/reply pairs. What ends a connection, and which
error says so, is net/framed.py's docstring; the handshake adds
`IncompatiblePeer` (another network, a refused certificate, a signature that
does not verify), `MalformedMessage` (a first message that is not a Hello,
a second that is not an Auth) and `DeadlineExceeded` (the handshake not done
within its timeout).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from votechain.core.membership import Members
from votechain.errors import (
    ConnectionClosed,
    DeadlineExceeded,
    IncompatiblePeer,
    MalformedMessage,
)
from votechain.net.framed import FRAME_DEADLINE, FramedSocket
from votechain.protocol.handshake import (
    ACCEPTOR,
    INITIATOR,
    LocalIdentity,
    PeerIdentity,
    authenticate,
    make_auth,
)
from votechain.protocol.peer import (
    CHALLENGE_BYTES,
    PEER,
    Auth,
    Error,
    Hello,
    Message,
    check_hello,
)

__all__ = ["FRAME_DEADLINE", "Connection", "LocalIdentity", "PeerIdentity"]

T = TypeVar("T")
M = TypeVar("M", Hello, Auth)

# An observer with no key: what a plain reader (a test, an auditor's tool) presents.
OBSERVER = LocalIdentity()


class Connection(FramedSocket[Message, Message]):
    def __init__(
        self,
        sock: socket.socket,
        timeout: float = 10.0,
        frame_deadline: float | None = FRAME_DEADLINE,
    ) -> None:
        super().__init__(sock, PEER, PEER, timeout=timeout, frame_deadline=frame_deadline)

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        timeout: float = 5.0,
        frame_deadline: float | None = FRAME_DEADLINE,
    ) -> Connection:
        """Connect to `host:port`; `timeout` bounds the connect and every later read."""
        sock = socket.create_connection((host, port), timeout=timeout)
        return cls(sock, timeout=timeout, frame_deadline=frame_deadline)

    def handshake(
        self,
        ours: Hello,
        initiator: bool,
        timeout: float | None = None,
        *,
        identity: LocalIdentity = OBSERVER,
        members: Members | None = None,
    ) -> PeerIdentity:
        """Exchange Hellos (the initiator speaks first), then Auths (the initiator
        first again), and return who the peer is.

        Raises IncompatiblePeer (after telling the peer why, in an Error) if the
        Hellos do not match, the peer's Auth is refused (protocol/handshake.py),
        or the peer refused ours; MalformedMessage if its first message is not a
        Hello or its second not an Auth; and DeadlineExceeded if `timeout` is
        given and the handshake is not done within that many seconds, however
        its bytes trickle in.
        """
        # The challenge is made here, fresh for every connection, so no caller
        # can reuse one (make_auth's signature is worth one connection only).
        ours = dataclasses.replace(ours, challenge=secrets.token_bytes(CHALLENGE_BYTES))
        deadline = None if timeout is None else time.monotonic() + timeout
        if initiator:
            self.send(ours)
            theirs = self._expect(Hello, self._recv_before(deadline, timeout))
        else:
            theirs = self._expect(Hello, self._recv_before(deadline, timeout))
            # Answer with our Hello even if theirs does not match, so the
            # initiator can see the mismatch for itself too.
            self.send(ours)
        self._refuse_on(check_hello, ours, theirs)
        role, their_role = (INITIATOR, ACCEPTOR) if initiator else (ACCEPTOR, INITIATOR)
        if initiator:
            self.send(make_auth(identity, role, ours, theirs))
        auth = self._expect(Auth, self._recv_before(deadline, timeout))
        peer = self._refuse_on(authenticate, auth, their_role, ours, theirs, members)
        if not initiator:
            self.send(make_auth(identity, role, ours, theirs))
        return peer

    def _refuse_on(self, check: Callable[..., T], *args: object) -> T:
        """`check(*args)`; if it raises IncompatiblePeer, tell the peer why first."""
        try:
            return check(*args)
        except IncompatiblePeer as exc:
            self._send_quietly(Error(f"incompatible: {exc.reason}"))
            raise

    def _recv_before(self, deadline: float | None, timeout: float | None) -> Message:
        try:
            return self.recv(deadline)
        except DeadlineExceeded as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"no handshake within {timeout:g} s") from exc
            raise

    def _expect(self, kind: type[M], msg: Message) -> M:
        if isinstance(msg, kind):
            return msg
        if isinstance(msg, Error):
            raise IncompatiblePeer(f"peer refused the handshake: {msg.reason}")
        self._send_quietly(Error(f"expected {kind.TYPE} in the handshake, got {msg.TYPE}"))
        raise MalformedMessage(f"expected {kind.TYPE} in the handshake, got {msg.TYPE}")

    def _send_quietly(self, msg: Message) -> None:
        """Best effort: the peer may already have hung up, and we are failing anyway."""
        with contextlib.suppress(OSError, ConnectionClosed):
            self.send(msg)

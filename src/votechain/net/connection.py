"""A peer connection: a FramedSocket (net/framed.py) speaking the peer protocol
(protocol/peer.py) in both directions, plus the handshake.

A connection is long-lived (unlike tinychain's socket per message): the two
sides exchange Hellos once, then any number of request/reply pairs. What ends
a connection, and which error says so, is net/framed.py's docstring; the
handshake adds `IncompatiblePeer`, `MalformedMessage` (a first message that is
not a Hello) and `DeadlineExceeded` (no whole Hello within its timeout).
"""

from __future__ import annotations

import contextlib
import socket
import time

from votechain.errors import (
    ConnectionClosed,
    DeadlineExceeded,
    IncompatiblePeer,
    MalformedMessage,
)
from votechain.net.framed import FRAME_DEADLINE, FramedSocket
from votechain.protocol.peer import PEER, Error, Hello, Message, check_hello

__all__ = ["FRAME_DEADLINE", "Connection"]


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

    def handshake(self, ours: Hello, initiator: bool, timeout: float | None = None) -> Hello:
        """Exchange Hellos (the initiator speaks first) and return the peer's.

        Raises IncompatiblePeer (after telling the peer why, in an Error) if the
        Hellos do not match, or if the peer refused ours; MalformedMessage if
        its first message is not a Hello; and DeadlineExceeded if `timeout` is
        given and the peer's Hello is not in within that many seconds, however
        its bytes trickle in.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if initiator:
            self.send(ours)
            theirs = self._expect_hello(self._recv_hello(deadline, timeout))
        else:
            theirs = self._expect_hello(self._recv_hello(deadline, timeout))
            # Answer with our Hello even if theirs does not match, so the
            # initiator can see the mismatch for itself too.
            self.send(ours)
        try:
            check_hello(ours, theirs)
        except IncompatiblePeer as exc:
            self._send_quietly(Error(f"incompatible: {exc.reason}"))
            raise
        return theirs

    def _recv_hello(self, deadline: float | None, timeout: float | None) -> Message:
        try:
            return self.recv(deadline)
        except DeadlineExceeded as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"no hello within {timeout:g} s") from exc
            raise

    def _expect_hello(self, msg: Message) -> Hello:
        if isinstance(msg, Hello):
            return msg
        if isinstance(msg, Error):
            raise IncompatiblePeer(f"peer refused the handshake: {msg.reason}")
        self._send_quietly(Error(f"expected hello first, got {msg.TYPE}"))
        raise MalformedMessage(f"expected hello first, got {msg.TYPE}")

    def _send_quietly(self, msg: Message) -> None:
        """Best effort: the peer may already have hung up, and we are failing anyway."""
        with contextlib.suppress(OSError, ConnectionClosed):
            self.send(msg)

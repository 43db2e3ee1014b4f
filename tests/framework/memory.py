"""Connection pairs for protocol tests, as trio.testing's memory stream pairs and h11's
tests that push events between two in-memory connections.

- `connection_pair()`: two `votechain.net.connection.Connection`s joined by
  `socket.socketpair()`: no port, no TCP, no network; what one sends the other
  receives. Both are closed on the way out.
- `raw_pair()`: a plain socket and a `Connection`, for tests that write bytes
  the encoder would refuse (half a frame, a lying length prefix) or hang up.
- `tcp_pair()`: the same over a real 127.0.0.1 TCP connection, for what only
  TCP has (TCP_NODELAY, resets, peer addresses).
- `Background`: run one call in a thread (the other side of a blocking
  exchange) and collect its result or exception.
- `handshake(left, right, hello)`: both sides of the handshake (Hellos, then
  Auths) at once; each side a keyless observer unless given an identity.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, cast

from votechain.net.connection import FRAME_DEADLINE, Connection, LocalIdentity, PeerIdentity
from votechain.protocol.peer import Hello

T = TypeVar("T")

# A reply on a socketpair takes microseconds; a read that waits this long has
# found a bug (a missing reply), and fails instead of hanging the suite.
PAIR_TIMEOUT = 5.0


@contextlib.contextmanager
def connection_pair(
    timeout: float = PAIR_TIMEOUT, frame_deadline: float | None = FRAME_DEADLINE
) -> Iterator[tuple[Connection, Connection]]:
    """(left, right): two connected Connections over a socketpair, closed on exit."""
    a, b = socket.socketpair()
    with (
        Connection(a, timeout=timeout, frame_deadline=frame_deadline) as left,
        Connection(b, timeout=timeout, frame_deadline=frame_deadline) as right,
    ):
        yield left, right


@contextlib.contextmanager
def raw_pair(
    timeout: float = PAIR_TIMEOUT, frame_deadline: float | None = FRAME_DEADLINE
) -> Iterator[tuple[socket.socket, Connection]]:
    """(raw, conn): a bare socket to write anything into, and the Connection reading it."""
    a, b = socket.socketpair()
    with a, Connection(b, timeout=timeout, frame_deadline=frame_deadline) as conn:
        a.settimeout(timeout)
        yield a, conn


@contextlib.contextmanager
def tcp_pair(timeout: float = PAIR_TIMEOUT) -> Iterator[tuple[Connection, Connection]]:
    """(client, server) over a real 127.0.0.1 TCP connection, closed on exit."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = Connection.open("127.0.0.1", port, timeout=timeout)
        try:
            sock, _ = listener.accept()
        except BaseException:
            client.close()
            raise
    with client, Connection(sock, timeout=timeout) as server:
        yield client, server


class Background(Generic[T]):
    """Run `fn` in a thread now; `result()` joins it and returns its value or re-raises.

    The thread is a daemon only so that a test failing elsewhere cannot hang the
    interpreter's exit; `result()` is what waits for it, under a deadline."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True, name="test-background")
        self._thread.start()

    def result(self, timeout: float = PAIR_TIMEOUT) -> T:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"background call still running after {timeout} s"
        if self._error is not None:
            raise self._error
        return cast(T, self._value)  # run() set it: no error was raised


def handshake(
    left: Connection,
    right: Connection,
    hello: Hello,
    right_hello: Hello | None = None,
    *,
    left_identity: LocalIdentity | None = None,
    right_identity: LocalIdentity | None = None,
) -> tuple[PeerIdentity, PeerIdentity]:
    """The whole handshake, `left` initiating, on an open network (any proven key
    is a member): (who left found at the other end, who right found). A side
    with no identity is a keyless observer."""
    accepting = Background(lambda: right.handshake(
        right_hello or hello, initiator=False, identity=right_identity or LocalIdentity()))
    got_left = left.handshake(hello, initiator=True, identity=left_identity or LocalIdentity())
    return got_left, accepting.result()

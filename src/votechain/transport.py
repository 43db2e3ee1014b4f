"""A thin socket shell around the wire codec: one `Connection` per TCP connection.

All protocol knowledge lives in `wire`; this module only moves bytes. A
connection is long-lived (unlike tinychain's socket per message): the two
sides exchange Hellos once, then any number of request/reply pairs.

Use a connection either as a *client* (`request` from any number of threads:
one lock around send-and-receive keeps each reply with its request) or as a
*server loop* (`recv` a request, `send` the reply), not both at once.

What ends a connection:
- the other side closes or resets it: `ConnectionClosed`, unless it closed in
  the middle of a frame, which is a truncated message from the peer:
  `wire.MalformedMessage("connection closed mid-frame")`;
- a `wire.RemoteProtocolError` from `recv`: the peer's fault. After
  `FrameTooLarge` or a zero length the stream is lost and every later `recv`
  raises again; after another `MalformedMessage` the bad frame was consumed,
  so a server may reply `Error` and keep reading;
- `TimeoutError` (socket.timeout) from `recv`: nothing arrived in time. The
  connection stays usable, except after `request`, which closes it: a late
  reply would otherwise be taken as the answer to the next request. A send
  that fails or times out also closes it, since part of a frame may be out.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from .wire import (
    Error,
    FrameDecoder,
    Hello,
    IncompatiblePeer,
    MalformedMessage,
    Message,
    check_hello,
    encode,
)

# Large enough that a 2 MiB Blocks reply takes a few dozen reads, small enough
# that an idle connection's read buffer is no burden.
CHUNK_BYTES = 64 * 1024


class ConnectionClosed(Exception):
    """The other side closed (or reset) the connection, or we closed it."""


class Connection:
    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Messages are small request/reply pairs: Nagle's algorithm would
            # hold each one back waiting for the peer's delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer: tuple[str, int] = _peer_address(sock)
        self._decoder = FrameDecoder()
        self._send_lock = threading.Lock()  # one frame at a time on the socket
        self._recv_lock = threading.Lock()  # one reader of the decoder at a time
        self._request_lock = threading.Lock()  # a request and its reply, unsplit
        self._close_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, host: str, port: int, timeout: float = 5.0) -> Connection:
        """Connect to `host:port`; `timeout` bounds the connect and every later read."""
        sock = socket.create_connection((host, port), timeout=timeout)
        return cls(sock, timeout=timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, msg: Message) -> None:
        """Send one message whole. Encoding errors (our bug) raise wire.LocalProtocolError."""
        frame = encode(msg)  # before taking the lock: a bad message sends nothing
        with self._send_lock:
            if self._closed:
                raise ConnectionClosed(f"connection to {self._name()} is closed")
            try:
                self._sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                raise ConnectionClosed(f"{self._name()} closed the connection") from exc
            except BaseException:
                # Part of the frame may have gone out; the stream is no longer framed.
                self.close()
                raise

    def recv(self) -> Message:
        """The next message; blocks up to the timeout (then TimeoutError)."""
        with self._recv_lock:
            while (msg := self._decoder.next_message()) is None:
                if self._closed:
                    raise ConnectionClosed(f"connection to {self._name()} is closed")
                try:
                    data = self._sock.recv(min(CHUNK_BYTES, self._decoder.room))
                except ConnectionResetError as exc:
                    self.close()
                    raise ConnectionClosed(f"{self._name()} reset the connection") from exc
                except OSError as exc:
                    if self._closed:  # close() from another thread woke us
                        raise ConnectionClosed(f"connection to {self._name()} closed") from exc
                    raise
                if not data:
                    self.close()
                    if self._decoder.buffered:
                        raise MalformedMessage("connection closed mid-frame")
                    raise ConnectionClosed(f"{self._name()} closed the connection")
                self._decoder.feed(data)
            return msg

    def request(self, msg: Message) -> Message:
        """Send `msg` and return the reply; the connection is closed if none comes in time."""
        with self._request_lock:
            self.send(msg)
            try:
                return self.recv()
            except TimeoutError:
                self.close()
                raise

    def handshake(self, ours: Hello, initiator: bool) -> Hello:
        """Exchange Hellos (the initiator speaks first) and return the peer's.

        Raises wire.IncompatiblePeer (after telling the peer why, in an Error)
        if the Hellos do not match, or if the peer refused ours; and
        wire.MalformedMessage if its first message is not a Hello.
        """
        if initiator:
            self.send(ours)
            theirs = self._expect_hello(self.recv())
        else:
            theirs = self._expect_hello(self.recv())
            # Answer with our Hello even if theirs does not match, so the
            # initiator can see the mismatch for itself too.
            self.send(ours)
        try:
            check_hello(ours, theirs)
        except IncompatiblePeer as exc:
            self._send_quietly(Error(f"incompatible: {exc.reason}"))
            raise
        return theirs

    def close(self) -> None:
        """Close the socket; safe to call more than once and from any thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        # shutdown first: it wakes a thread blocked in recv on this socket.
        # OSError: already reset by the peer, or never connected.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Connection {self._name()} {state}>"

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

    def _name(self) -> str:
        host, port = self.peer
        return f"{host}:{port}" if host else "peer"


def _peer_address(sock: socket.socket) -> tuple[str, int]:
    """(host, port) of the other end; ("", 0) for a socketpair (AF_UNIX) in tests."""
    try:
        address = sock.getpeername()
    except OSError:
        return ("", 0)
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return ("", 0)

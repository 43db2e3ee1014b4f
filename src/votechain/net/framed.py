"""A thin socket shell around a message set: one `FramedSocket` per TCP connection.

All protocol knowledge lives in protocol/ (framing, messages, the message
sets); this module only moves bytes, for the peer protocol (net/connection.py)
and the control channel (net/control_server.py, net/control_client.py) alike.
It is generic over what arrives (`incoming`) and what is sent (`outgoing`),
since a control server reads requests and writes replies.

Use a socket either as a *client* (`request` from any number of threads: one
lock around send-and-receive keeps each reply with its request) or as a
*server loop* (`recv` a request, `send` the reply), not both at once.

What ends a connection:
- the other side closes or resets it: `ConnectionClosed`, unless it closed in
  the middle of a frame, which is a truncated message from the other side:
  `MalformedMessage("connection closed mid-frame")`;
- a `RemoteProtocolError` from `recv`: the other side's fault. After
  `FrameTooLarge` or a zero length the stream is lost and every later `recv`
  raises again; after another error the bad frame was consumed (`framed` is
  still true), so a server may reply with an error and keep reading;
- `TimeoutError` (socket.timeout) from `recv`: nothing arrived in time. The
  connection stays usable, except after `request`, which closes it: a late
  reply would otherwise be taken as the answer to the next request. A send
  that fails or times out also closes it, since part of a frame may be out;
- `DeadlineExceeded` from `recv`: bytes kept coming, but too slowly. The read
  timeout only bounds *silence*, so a sender of one byte just before each
  read would time out could hold a connection (and the thread serving it)
  forever; a frame that has started must therefore be whole within
  `frame_deadline`, and a `deadline` bounds a whole message. The connection
  is closed (part of a frame may be in), and the error is a
  `RemoteProtocolError`: the other side's fault.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Generic, NoReturn, Self, TypeVar

from votechain.errors import ConnectionClosed, DeadlineExceeded, MalformedMessage
from votechain.net.sockets import wake
from votechain.protocol.messages import MessageSet, WireMessage

# Large enough that a 2 MiB Blocks reply takes a few dozen reads, small enough
# that an idle connection's read buffer is no burden.
CHUNK_BYTES = 64 * 1024

# Why 10 s: once a frame's first byte is in, the rest must follow within this
# long, however it trickles in; otherwise a sender of one byte every few
# seconds holds the connection forever (each read sees data, so the read
# timeout never fires). Requests are at most a few KiB and an honest batch of
# 256 vote blocks is about 180 KiB (820 KiB at the field caps), so 10 s asks
# no more than 82 KB/s of an honest sender.
FRAME_DEADLINE = 10.0

In = TypeVar("In", bound=WireMessage)
Out = TypeVar("Out", bound=WireMessage)


class FramedSocket(Generic[In, Out]):
    def __init__(
        self,
        sock: socket.socket,
        incoming: MessageSet[In],
        outgoing: MessageSet[Out],
        timeout: float = 10.0,
        frame_deadline: float | None = FRAME_DEADLINE,
    ) -> None:
        self._sock = sock
        self._outgoing = outgoing
        self._timeout = timeout
        self._frame_deadline = frame_deadline
        # When the first byte of the frame now being received arrived (monotonic).
        self._frame_started: float | None = None
        self._sock.settimeout(timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Messages are small request/reply pairs: Nagle's algorithm would
            # hold each one back waiting for the other side's delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer: tuple[str, int] = _peer_address(sock)
        self._decoder = incoming.decoder()
        self._send_lock = threading.Lock()  # one frame at a time on the socket
        self._recv_lock = threading.Lock()  # one reader of the decoder at a time
        self._request_lock = threading.Lock()  # a request and its reply, unsplit
        self._close_lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def framed(self) -> bool:
        """True while frame boundaries are known: after a malformed payload a server
        may reply and read on; after a bad length prefix, a close or a missed
        deadline it cannot."""
        return not self._closed and not self._decoder.failed

    @property
    def timeout(self) -> float:
        """How long one read or send may wait in silence."""
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = seconds
        self._sock.settimeout(seconds)

    @property
    def message_ready(self) -> bool:
        """Whether the next recv() has a whole message already read (no wait)."""
        return self._decoder.frame_ready

    def send(self, *msgs: Out) -> None:
        """Send messages whole, in order, in one write (an answerer holding
        several replies sends them together: one system call, and one wake-up
        for the reader). Encoding errors (our bug) raise LocalProtocolError."""
        # Before taking the lock: a bad message sends nothing.
        frame = b"".join(self._outgoing.encode(msg) for msg in msgs)
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

    def recv(self, deadline: float | None = None) -> In:
        """The next message.

        Each read waits up to the timeout (then TimeoutError); once a frame has
        started it must be whole within `frame_deadline`, and the message must
        be in by `deadline` (a `time.monotonic()` value) if one is given:
        otherwise DeadlineExceeded, and the connection is closed.
        """
        with self._recv_lock:
            while (msg := self._next_message()) is None:
                if self._closed:
                    raise ConnectionClosed(f"connection to {self._name()} is closed")
                try:
                    data = self._read(deadline)
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
                if not self._decoder.buffered:
                    self._frame_started = time.monotonic()
                self._decoder.feed(data)
            return msg

    def request(self, msg: Out) -> In:
        """Send `msg` and return the reply; the connection is closed if none comes in time."""
        with self._request_lock:
            self.send(msg)
            try:
                return self.recv()
            except TimeoutError:
                self.close()
                raise

    def close(self) -> None:
        """Close the socket; safe to call more than once and from any thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        wake(self._sock)
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._name()} {state}>"

    def _next_message(self) -> In | None:
        before = self._decoder.buffered
        try:
            return self._decoder.next_message()
        finally:
            if self._decoder.buffered < before:  # a frame was taken out, good or bad
                # Bytes left over belong to the next frame, which started no later than now.
                self._frame_started = time.monotonic() if self._decoder.buffered else None

    def _read(self, deadline: float | None) -> bytes:
        """One recv, bounded by the timeout and by the nearer of the two deadlines."""
        size = min(CHUNK_BYTES, self._decoder.room)
        late = "message not complete by its deadline"
        if self._frame_started is not None and self._frame_deadline is not None:
            frame_end = self._frame_started + self._frame_deadline
            if deadline is None or frame_end < deadline:
                deadline = frame_end
                late = f"frame not complete within {self._frame_deadline:g} s"
        if deadline is None:
            return self._sock.recv(size)
        remaining = deadline - time.monotonic()
        if remaining >= self._timeout:
            return self._sock.recv(size)  # silence would time out first
        if remaining <= 0:
            self._missed(late)
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv(size)
        except TimeoutError:
            self._missed(late)
        finally:
            if not self._closed:
                with contextlib.suppress(OSError):
                    self._sock.settimeout(self._timeout)

    def _missed(self, late: str) -> NoReturn:
        # Part of a frame may be in: the stream cannot be read on.
        self.close()
        raise DeadlineExceeded(late)

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

"""Attack helpers for the hostile-input tests: what anyone who can open a socket can do.

- `RawPeer`: a plain socket and the peer protocol's FrameDecoder, driven by hand,
  so a test can send any bytes at all (a lying length prefix, half a frame, a
  map that `peer.encode` would refuse) and still read the node's replies;
- `raw_frame`, `frame`: frames built without the encoder's checks;
- `drip`: send bytes one at a time, paced, until the other side hangs up (the
  attacker's own pacing, not a test synchronising on a sleep);
- `wait_closed`: read and discard until the other side closes, under a deadline;
- `open_many`: a flood of connections, all closed on exit;
- `connect_from`, `ask`, `read_lines`: a connection bound to another loopback address
  (Linux routes all of 127.0.0.0/8 to lo), and a tracker request read to its
  last line: one address among many, as the per-address bounds see it;
- `wait_idle` (with `cpu_fraction`, `IDLE_LIMIT`, `IDLE_WINDOW`; their home is
  `framework.waiting`): the process's CPU time over a short window is back near zero;
- `check_payload`: the peer decoder's contract on one payload, shared by the
  hypothesis tests and the atheris target (``python tests/hostile.py --atheris
  [libFuzzer options] [corpus dir]``; only the codec's own functions
  are instrumented).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator

import msgpack

from framework.waiting import IDLE_LIMIT, IDLE_WINDOW, cpu_fraction, wait_idle
from votechain.core import block, codec
from votechain.errors import MAX_REASON_CHARS, RemoteProtocolError
from votechain.protocol import framing, messages, peer
from votechain.protocol.framing import PREFIX_BYTES
from votechain.protocol.handshake import INITIATOR, LocalIdentity, make_auth
from votechain.protocol.peer import PEER, Hello, Message, decode_payload, encode

__all__ = [
    "IDLE_LIMIT",
    "IDLE_WINDOW",
    "LOCAL",
    "RawPeer",
    "ask",
    "check_payload",
    "connect",
    "connect_from",
    "cpu_fraction",
    "drip",
    "frame",
    "fuzz_one_input",
    "is_eof",
    "open_many",
    "raw_frame",
    "read_lines",
    "send_and_hang_up",
    "wait_closed",
    "wait_idle",
]

LOCAL = "127.0.0.1"


def frame(payload: bytes) -> bytes:
    """`payload` behind a 4-byte big-endian length prefix, whatever it holds."""
    return len(payload).to_bytes(4, "big") + payload


def raw_frame(obj: object) -> bytes:
    """A frame carrying `obj` packed as msgpack, with none of `encode`'s checks."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return frame(packed)


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def is_eof(sock: socket.socket) -> bool:
    """True if the other side has closed; never blocks (pending data is left unread)."""
    # poll, not MSG_DONTWAIT: a socket with a timeout waits for readability
    # before recv whatever the flags say. (poll, not select: a flood test has
    # descriptors past select's FD_SETSIZE.)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def wait_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the other side closes the connection; returns what arrived before.

    Fails the test if it is still open after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the connection was still open after {timeout} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue  # the loop's deadline check decides
        except (ConnectionResetError, BrokenPipeError):
            return received
        if not chunk:
            return received
        received += chunk


def drip(
    sock: socket.socket, data: bytes, interval: float, give_up_after: float = 10.0
) -> tuple[int, float]:
    """Send `data` one byte every `interval` s until the other side closes.

    Returns (bytes sent, seconds until the close was seen). Fails the test if
    every byte went out, or `give_up_after` s passed, with the connection open.
    """
    start = time.monotonic()
    sent = 0
    stop = threading.Event()
    for byte in data:
        if is_eof(sock) or time.monotonic() - start > give_up_after:
            break
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
        stop.wait(interval)  # the attacker's own pace
    if not is_eof(sock):
        wait_closed(sock, timeout=max(0.1, give_up_after - (time.monotonic() - start)))
    return sent, time.monotonic() - start


def send_and_hang_up(sock: socket.socket, data: bytes) -> None:
    """Send `data` and shut our sending side; the other side may hang up first (a
    bad length prefix is refused after 4 bytes), which is no failure here."""
    with contextlib.suppress(OSError):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def open_many(address: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """`count` connections opened at once (each sends nothing); all closed on exit."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(connect(address))
        yield socks
    finally:
        for sock in socks:
            sock.close()


class RawPeer:
    """A hand-driven peer connection: send any bytes, read the replies as messages."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = connect(address, timeout)
        self._decoder = PEER.decoder()

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, msg: Message) -> None:
        self.sock.sendall(encode(msg))

    def send_obj(self, obj: object) -> None:
        self.sock.sendall(raw_frame(obj))

    def recv(self) -> Message:
        while (msg := self._decoder.next_message()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the node closed the connection")
            self._decoder.feed(data)
        return msg

    def request(self, msg: Message) -> Message:
        self.send(msg)
        return self.recv()

    def handshake(self, hello: Hello, identity: LocalIdentity | None = None) -> Message:
        """The initiator's side of the handshake: our Hello, then our Auth (as
        `identity`; default a keyless observer). The node's Auth once both went
        through, else the reply that stopped it (the node's Error)."""
        theirs = self.request(hello)
        if not isinstance(theirs, Hello):
            return theirs
        return self.request(make_auth(identity or LocalIdentity(), INITIATOR, hello, theirs))

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        return wait_closed(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------- the decoder's contract


def check_payload(payload: bytes) -> Message | None:
    """Decode `payload` under the contract; the message, or None if refused.

    Refusals are RemoteProtocolError only, with a bounded reason; whatever is
    accepted, our encoder can send back unchanged (a decoder that accepted what
    the encoder refuses would let a peer make us fail loudly)."""
    try:
        msg = decode_payload(payload)
    except RemoteProtocolError as exc:
        assert 0 < len(exc.reason) <= MAX_REASON_CHARS
        return None
    frame = encode(msg)  # a LocalProtocolError here: accepted what we would refuse to send
    assert decode_payload(frame[PREFIX_BYTES:]) == msg
    return msg


def fuzz_one_input(data: bytes) -> None:
    """One fuzz input, as a payload and as a stream fed in 7-byte chunks."""
    check_payload(data)
    decoder = PEER.decoder()
    for i in range(0, len(data), 7):
        decoder.feed(data[i : i + 7][: decoder.room])
        try:
            while decoder.next_message() is not None:
                pass
        except RemoteProtocolError:
            if decoder.failed:
                return


def _atheris_main(argv: list[str]) -> None:
    atheris = importlib.import_module("atheris")  # optional: not a test dependency
    # Coverage feedback from the codec only: instrumenting every loaded module
    # (atheris.instrument_all) takes longer than the whole fuzzing run.
    for module in (peer, messages, framing, codec, block):
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            members = vars(obj).values() if inspect.isclass(obj) else [obj]
            for member in members:
                function = getattr(member, "__func__", member)  # classmethod, staticmethod
                if inspect.isfunction(function):
                    atheris.instrument_func(function)
    atheris.Setup(argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__" and sys.argv[1:2] == ["--atheris"]:
    _atheris_main([sys.argv[0], *sys.argv[2:]])


def connect_from(address: tuple[str, int], source_ip: str, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to `address` from `source_ip` (bound before connecting)."""
    return socket.create_connection(address, timeout=timeout, source_address=(source_ip, 0))


def read_lines(sock: socket.socket, count: int) -> bytes:
    """Read until `count` newlines have arrived (or EOF): a tracker reply."""
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def ask(sock: socket.socket, request: bytes, lines: int = 1) -> bytes:
    """Send a tracker request; the reply up to its `lines`-th newline (or EOF)."""
    sock.sendall(request)
    return read_lines(sock, lines)

"""The tracker's text protocol, with no sockets, threads or clocks.

The tracker keeps the list of peers in the network. A peer keeps one TCP
connection open to it; that open connection *is* the peer's registration.
Every message is a line of ASCII text ending in ``\\n``:

    client -> tracker                 tracker -> client
    REGISTER <port>\\n                 OK\\n
    NODES\\n                           NODES\\n<IP>,<Port> <IP>,<Port>...\\n
    anything else                     ERROR <reason>\\n

``NODES`` lists every registered peer (the asker included) in registration
order; the empty list is ``NODES\\n\\n``, exactly as the seed design writes it (docs/design.md).

Layers, in the style of h11:

* ``LineBuffer`` frames bytes into lines and refuses to hold more than a
  named cap, so a peer that never sends ``\\n`` cannot grow our memory.
* ``parse_request`` / ``encode_request`` turn a request line into a frozen
  dataclass and back; the tracker uses the first, the client the second.
* ``encode_response`` / ``ResponseDecoder`` do the same for replies.

Errors say whose fault they are: ``TrackerProtocolError`` is a *client's*
bad request, seen by the tracker (reply ERROR, keep serving);
``TrackerReplyError`` is the *tracker's* malformed reply, seen by a client.
Our own mistakes (encoding an out-of-range port) are ``ValueError``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from votechain.errors import LineTooLongError, TrackerProtocolError, TrackerReplyError

# Why 256: the longest valid request is "REGISTER 65535" (14 bytes). A quarter
# of a KiB leaves room for "\r\n" and sloppy clients while bounding what one
# connection can make us buffer: at MAX_CONNECTIONS (4096) connections that is
# at most 1 MiB of partial lines for the whole tracker.
MAX_LINE_BYTES = 256

# Why 1 MiB: one entry is at most "<45-char IPv6>,65535 " = 52 bytes, so even
# 4096 peers fit in about 213 KiB. The cap is what a *client* will buffer from
# a tracker it does not control; a hostile or broken tracker that streams an
# endless line gets an error instead of our memory.
MAX_NODES_RESPONSE_BYTES = 1024 * 1024

MIN_PORT = 1
MAX_PORT = 65535

# Unknown commands are echoed back in the ERROR reason; cut them short so a
# garbage line does not turn into a garbage reply.
_MAX_ECHOED_CHARS = 32

# Characters of an IPv6 zone (interface name or number) in "fe80::1%eth0".
_ZONE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# ---------------------------------------------------------------- framing


class LineBuffer:
    """Accumulates received bytes and hands back complete lines, bounded.

    ``feed(data)`` stores bytes; ``next_line()`` returns the next line without
    its ``\\n`` (and without a trailing ``\\r``), or ``None`` when no complete
    line is buffered yet. A line, complete or still partial, longer than
    ``max_line_bytes`` raises ``LineTooLongError``; after that the buffer is
    useless, because we no longer know where the next line starts.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        # Where the search for "\n" resumes: bytes before it are known not to
        # contain one. Without this a large line arriving in many small chunks
        # would be rescanned from the start on every chunk (quadratic).
        self._scanned = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def has_pending_bytes(self) -> bool:
        """True when bytes are held that ``next_line`` has not returned yet.

        Once ``next_line`` has returned ``None`` these are a partial line."""
        return bool(self._buffer)

    def next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            if len(self._buffer) > self.max_line_bytes:
                raise LineTooLongError(
                    f"line longer than {self.max_line_bytes} bytes without a newline"
                )
            self._scanned = len(self._buffer)
            return None
        if end > self.max_line_bytes:
            raise LineTooLongError(f"line of {end} bytes exceeds {self.max_line_bytes}")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line[:-1] if line.endswith(b"\r") else line


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Register:
    """``REGISTER <port>``: the sender listens for peers on ``port``."""

    TAG: ClassVar[str] = "REGISTER"
    port: int


@dataclass(frozen=True)
class Nodes:
    """``NODES``: send me every registered peer."""

    TAG: ClassVar[str] = "NODES"


Request = Register | Nodes


def _parse_port(text: str) -> int:
    # isdigit() alone would accept "²"; isascii() first keeps it to 0-9, and
    # rules out int()'s extras ("+5", " 5", "5_0").
    if not (text.isascii() and text.isdigit()):
        raise TrackerProtocolError(f"port must be a decimal number, got {_echo(text)}")
    # Echoed through _echo like any client text: a 250-digit "port" would
    # otherwise come back whole in the reply.
    port = int(text) if len(text) <= len(str(MAX_PORT)) else MAX_PORT + 1
    if not MIN_PORT <= port <= MAX_PORT:
        raise TrackerProtocolError(f"port must be {MIN_PORT}..{MAX_PORT}, got {_echo(text)}")
    return port


def _parse_register(args: list[str]) -> Request:
    if len(args) != 1:
        raise TrackerProtocolError("usage: REGISTER <port>")
    return Register(_parse_port(args[0]))


def _parse_nodes(args: list[str]) -> Request:
    if args:
        raise TrackerProtocolError("usage: NODES")
    return Nodes()


# The dispatch registry: one parser per command tag.
_REQUEST_PARSERS: dict[str, Callable[[list[str]], Request]] = {
    Register.TAG: _parse_register,
    Nodes.TAG: _parse_nodes,
}


def parse_request(line: bytes) -> Request:
    """Parse one request line (without its ``\\n``) or raise TrackerProtocolError."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise TrackerProtocolError("request is not ASCII text") from None
    if not text:
        raise TrackerProtocolError("empty request")
    command, *args = text.split(" ")
    parser = _REQUEST_PARSERS.get(command)
    if parser is None:
        raise TrackerProtocolError(f"unknown command {_echo(command)}")
    return parser(args)


def encode_request(request: Request) -> bytes:
    match request:
        case Register(port=port):
            _check_port(port)
            return f"{Register.TAG} {port}\n".encode("ascii")
        case Nodes():
            return f"{Nodes.TAG}\n".encode("ascii")


# ---------------------------------------------------------------- responses


@dataclass(frozen=True)
class Ok:
    TAG: ClassVar[str] = "OK"


@dataclass(frozen=True)
class ErrorReply:
    TAG: ClassVar[str] = "ERROR"
    reason: str


@dataclass(frozen=True)
class NodesReply:
    TAG: ClassVar[str] = "NODES"
    peers: tuple[tuple[str, int], ...]


Response = Ok | ErrorReply | NodesReply


def encode_response(response: Response) -> bytes:
    match response:
        case Ok():
            return b"OK\n"
        case ErrorReply(reason=reason):
            # ascii() escapes newlines and non-ASCII, so a reason can never
            # break the framing; strip the quotes it adds.
            return f"ERROR {ascii(reason)[1:-1]}\n".encode("ascii")
        case NodesReply(peers=peers):
            return encode_nodes(peers)


def encode_nodes(peers: Iterable[tuple[str, int]]) -> bytes:
    """The seed design's message (docs/design.md): ``NODES\\n<IP>,<Port> <IP>,<Port>...\\n``."""
    entries = " ".join(f"{ip},{port}" for ip, port in peers)
    return f"NODES\n{entries}\n".encode("ascii")


def parse_nodes_line(line: bytes) -> list[tuple[str, int]]:
    """Parse the second line of a NODES reply (``<IP>,<Port> ...``)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise TrackerReplyError("NODES list is not ASCII text") from None
    if not text:
        return []
    peers: list[tuple[str, int]] = []
    for entry in text.split(" "):
        # rpartition, not split: the port is after the last comma.
        ip, comma, port_text = entry.rpartition(",")
        if not comma:
            raise TrackerReplyError(f"NODES entry {_echo(entry)} is not <IP>,<Port>")
        if not _is_ip_address(ip):
            raise TrackerReplyError(f"NODES entry {_echo(entry)} has a bad IP")
        if not (port_text.isascii() and port_text.isdigit()) or not (
            MIN_PORT <= int(port_text) <= MAX_PORT
        ):
            raise TrackerReplyError(f"NODES entry {_echo(entry)} has a bad port")
        peers.append((ip, int(port_text)))
    return peers


class ResponseDecoder:
    """Turns the bytes a tracker sends into ``Response`` values.

    A NODES reply spans two lines, so the decoder remembers that it has seen
    the ``NODES`` line and is waiting for the list. Lines may be as long as
    ``MAX_NODES_RESPONSE_BYTES``, the most a client will buffer.
    """

    def __init__(self, max_response_bytes: int = MAX_NODES_RESPONSE_BYTES) -> None:
        self._lines = LineBuffer(max_response_bytes)
        self._awaiting_nodes_list = False

    def feed(self, data: bytes) -> None:
        self._lines.feed(data)

    @property
    def idle(self) -> bool:
        """True when nothing of an unfinished reply is buffered."""
        return not self._awaiting_nodes_list and not self._lines.has_pending_bytes

    def next_response(self) -> Response | None:
        try:
            line = self._lines.next_line()
        except LineTooLongError as exc:
            raise TrackerReplyError(exc.reason) from None
        if line is None:
            return None
        if self._awaiting_nodes_list:
            self._awaiting_nodes_list = False
            return NodesReply(tuple(parse_nodes_line(line)))
        if line == b"OK":
            return Ok()
        if line == b"NODES":
            self._awaiting_nodes_list = True
            return self.next_response()
        if line == b"ERROR" or line.startswith(b"ERROR "):
            return ErrorReply(line[6:].decode("ascii", "backslashreplace"))
        raise TrackerReplyError(f"unexpected reply line {_echo(line)}")


def parse_nodes_response(data: bytes) -> list[tuple[str, int]]:
    """Parse one complete NODES reply, rejecting trailing or missing bytes."""
    decoder = ResponseDecoder()
    decoder.feed(data)
    response = decoder.next_response()
    if not isinstance(response, NodesReply):
        raise TrackerReplyError(f"expected a complete NODES reply, got {response!r}")
    if not decoder.idle:
        raise TrackerReplyError("trailing bytes after the NODES reply")
    return list(response.peers)


# ---------------------------------------------------------------- helpers


def _is_ip_address(text: str) -> bool:
    # inet_pton is a pure C parser (no network I/O); ipaddress.ip_address made
    # parsing a 1,000-peer NODES reply over three times slower (3.7 vs 1.1 ms).
    # A link-local IPv6 peer is reported with its zone ("fe80::1%eth0"),
    # which inet_pton does not take, so the zone is checked here.
    address, percent, zone = text.partition("%")
    if percent and not (zone and zone.isascii() and _ZONE_CHARS.issuperset(zone)):
        return False
    for family in (socket.AF_INET6,) if percent else (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, address)
        except (OSError, ValueError):
            continue
        return True
    return False


def _check_port(port: int) -> None:
    if not MIN_PORT <= port <= MAX_PORT:
        raise ValueError(f"port must be {MIN_PORT}..{MAX_PORT}, got {port}")


def _echo(value: str | bytes) -> str:
    """A short, printable rendering of untrusted input for error messages."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "backslashreplace")
    shown = ascii(value[:_MAX_ECHOED_CHARS])
    return shown + ("..." if len(value) > _MAX_ECHOED_CHARS else "")

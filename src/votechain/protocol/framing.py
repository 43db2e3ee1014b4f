"""Length-prefixed frames: the one framing of the peer protocol and the control
channel, with no sockets, threads or clocks.

    frame = length (4 bytes, big-endian, 1..cap) || payload (length bytes)

The cap is passed per use, as a named `FrameCap`, because what one frame may
make us hold differs with who sends it: a peer (protocol/peer.py), a local
client before it has authenticated, the node answering its owner
(protocol/control.py). Every error names the cap it hit.

`encode_frame` puts the prefix on one payload. `FrameDecoder` is fed bytes as
they arrive and hands back whole frames, each passed through the `decode`
function it was built with (a message set's decoder, or `bytes` for raw
payloads); it reads each length prefix as soon as its 4 bytes are in, so an
oversized frame is refused before a byte of its payload is buffered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from votechain.errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
)

PREFIX_BYTES = 4

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FrameCap:
    """The most payload bytes one frame may hold, with the name errors quote."""

    name: str
    size: int

    def __str__(self) -> str:
        return f"{self.name}={self.size}"


def encode_frame(payload: bytes, cap: FrameCap) -> bytes:
    """`payload` behind its length prefix; an empty or oversized payload is our bug."""
    if not payload or len(payload) > cap.size:
        raise LocalProtocolError(f"a payload of {len(payload)} bytes does not fit 1..{cap}")
    return len(payload).to_bytes(PREFIX_BYTES, "big") + payload


class FrameDecoder(Generic[T]):
    """Turns a stream of bytes into decoded frames; never holds more than one frame.

    Usage (what net/framed.py does)::

        while (msg := decoder.next_message()) is None:
            decoder.feed(sock.recv(min(CHUNK, decoder.room)))

    The buffer never holds more than cap + 4 bytes: ``room`` says how much
    ``feed`` accepts now, and feeding more is a LocalProtocolError. When
    ``room`` is 0 the buffer holds a whole frame (or a refused prefix), so
    ``next_message`` always makes progress.

    A bad length prefix (zero or over the cap) is found as soon as its 4 bytes
    are in; the stream cannot be resynchronised after it, so the decoder stays
    failed and every later ``next_message`` raises the same error. A frame
    whose payload `decode` refuses has been consumed whole: the error is raised
    once and the caller may reply and go on reading.
    """

    def __init__(self, cap: FrameCap, decode: Callable[[bytes], T]) -> None:
        self._cap = cap
        self._decode = decode
        self._buffer = bytearray()
        self._failed: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        """True after a bad length prefix: the stream is lost, nothing more can be read."""
        return self._failed is not None

    @property
    def room(self) -> int:
        if self._failed is not None:
            return 0
        return PREFIX_BYTES + self._cap.size - len(self._buffer)

    @property
    def frame_ready(self) -> bool:
        """Whether `next_message` would return (or raise) without more bytes."""
        length = self._head_length()
        if self._failed is not None:
            return True
        return length is not None and len(self._buffer) >= PREFIX_BYTES + length

    def feed(self, data: bytes) -> None:
        if self._failed is not None:
            return  # nothing after a refused prefix can be read; do not hold it
        if len(data) > self.room:
            raise LocalProtocolError(
                f"fed {len(data)} bytes with room for {self.room}: drain next_message() first"
            )
        self._buffer += data
        self._head_length()  # refuse a bad prefix now, before its payload arrives

    def next_message(self) -> T | None:
        """The next whole frame, decoded; None until more bytes are fed."""
        length = self._head_length()
        if self._failed is not None:
            raise self._failed
        if length is None or len(self._buffer) < PREFIX_BYTES + length:
            return None
        end = PREFIX_BYTES + length
        payload = bytes(self._buffer[PREFIX_BYTES:end])
        del self._buffer[:end]
        self._head_length()  # the next frame's prefix may already be here
        return self._decode(payload)

    def _head_length(self) -> int | None:
        """The first buffered frame's payload length, once its prefix is in.

        A bad prefix puts the decoder in the failed state (raised by the next
        next_message call, after any frame already decoded is returned).
        """
        if self._failed is not None or len(self._buffer) < PREFIX_BYTES:
            return None
        length = int.from_bytes(self._buffer[:PREFIX_BYTES], "big")
        if length == 0:
            self._fail(MalformedMessage("zero-length frame"))
            return None
        if length > self._cap.size:
            self._fail(FrameTooLarge(f"frame length {length} is over {self._cap}"))
            return None
        return length

    def _fail(self, error: RemoteProtocolError) -> None:
        self._failed = error
        self._buffer.clear()

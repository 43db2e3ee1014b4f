"""Tagged messages in frames: what the peer protocol and the control channel share.

A message is a frozen dataclass with a class-level ``TYPE`` tag, ``to_wire``
(a msgpack map: ``"type"`` first, then its fields) and ``from_wire`` (checks
every field, raising the set's error). A `MessageSet` is one direction of one
protocol: its message classes by tag (the registry that dispatches), the
strict decoder with the limits that direction needs, and its frame cap.

* ``encode`` turns a message into one whole frame (prefix included), after
  checking it with the receiver's own ``from_wire``: we never send what the
  other side would have to refuse (that is our bug, a LocalProtocolError).
* ``decode_payload`` turns one frame's payload back into a message; unknown
  tags, missing or extra fields, wrong types, values out of range and
  trailing bytes are all refused with the set's error (the sender's fault).
* ``decoder()`` is a FrameDecoder that hands back this set's messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from votechain.core.codec import Codec, pack, quote
from votechain.errors import MAX_REASON_CHARS, BadInput, FrameTooLarge, LocalProtocolError
from votechain.protocol.framing import FrameCap, FrameDecoder, encode_frame


class WireMessage(Protocol):
    """What every message class has: its tag, and both directions of its map."""

    TYPE: ClassVar[str]

    def to_wire(self) -> dict[str, Any]: ...

    @classmethod
    def from_wire(cls, obj: object) -> Self: ...


M = TypeVar("M", bound=WireMessage)


@dataclass(frozen=True)
class MessageSet(Generic[M]):
    """One direction of one protocol: the registry, the decoder, the frame cap."""

    what: str  # "message", "request", "reply": how errors name one of these
    classes: tuple[type[M], ...]
    codec: Codec
    cap: FrameCap
    unknown: type[BadInput]  # raised for an unknown tag (a subclass of codec.error, or it)
    types: dict[str, type[M]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", {cls.TYPE: cls for cls in self.classes})

    def encode(self, msg: M) -> bytes:
        """One whole frame carrying `msg`; anything the receiver would refuse,
        or an oversized frame, is a LocalProtocolError (our bug)."""
        cls = self.types.get(getattr(type(msg), "TYPE", ""))
        if cls is not type(msg):
            raise LocalProtocolError(f"not a wire {self.what}: {type(msg).__name__}")
        obj = msg.to_wire()
        try:
            cls.from_wire(obj)
        except BadInput as exc:
            raise LocalProtocolError(f"refusing to send an invalid {msg.TYPE}: {exc}") from exc
        try:
            payload = pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise LocalProtocolError(f"cannot encode {msg.TYPE}: {exc}") from exc
        if len(payload) > self.cap.size:
            raise LocalProtocolError(
                f"{msg.TYPE} encodes to {len(payload)} bytes, over {self.cap}"
            )
        return encode_frame(payload, self.cap)

    def decode_payload(self, payload: bytes) -> M:
        """The message in one frame's payload (the bytes after the length prefix)."""
        if len(payload) > self.cap.size:
            raise FrameTooLarge(f"frame of {len(payload)} bytes is over {self.cap}")
        if not payload:
            self.codec.fail("empty frame")
        return self.from_wire(self.codec.unpack(payload))

    def from_wire(self, obj: object) -> M:
        """The message a decoded map holds, dispatched on its tag."""
        if not isinstance(obj, dict):
            self.codec.fail(f"a {self.what} must be a map, got {type(obj).__name__}")
        tag = obj.get("type")
        if not isinstance(tag, str):
            self.codec.fail(f"{self.what} type must be a string, got {type(tag).__name__}")
        cls = self.types.get(tag)
        if cls is None:
            raise self.unknown(f"unknown {self.what} type {quote(tag)}")
        return cls.from_wire(obj)

    def decoder(self) -> FrameDecoder[M]:
        """A FrameDecoder under this set's cap that hands back its messages."""
        return FrameDecoder(self.cap, self.decode_payload)


def cut_reason(reason: str) -> str:
    """A reason for a log, cut to MAX_REASON_CHARS when a message is built: it
    usually comes from an exception's text, and a long one should not become a
    LocalProtocolError; the decoder refuses a longer one."""
    if isinstance(reason, str) and len(reason) > MAX_REASON_CHARS:
        return reason[: MAX_REASON_CHARS - 1] + "…"
    return reason

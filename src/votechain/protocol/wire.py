"""The peer-to-peer wire protocol: frames and messages, with no sockets, threads or clocks.

A connection carries *frames* in both directions::

    frame = length (4 bytes, big-endian, 1..MAX_FRAME_BYTES) || payload (length bytes)
    payload = exactly one msgpack map {"type": <tag>, <field>: <value>, ...}

Each message is one frozen dataclass below with a class-level ``TYPE`` tag;
``MESSAGE_TYPES`` maps tags to classes for dispatch. The conversation:

    initiator                              acceptor
    Hello            ------------------>
                     <------------------   Hello        (then both run check_hello)
    GetLatest        ------------------>
                     <------------------   Latest
    Add              ------------------>
                     <------------------   AddResult
    GetBlocks        ------------------>
                     <------------------   Blocks
    (any request)    ------------------>
                     <------------------   Error        (bad request / refused)

Layers, in the style of h11:

* ``encode`` turns a message into one whole frame (prefix included).
* ``decode_payload`` turns one frame's payload back into a message, checking
  every field: unknown tags, missing or extra fields, wrong types, values out
  of range and trailing bytes are all refused.
* ``FrameDecoder`` is fed bytes as they arrive and hands back messages; it
  reads each length prefix as soon as its 4 bytes are in, so an oversized
  frame is refused before a byte of its payload is buffered.

Errors say whose fault they are: ``RemoteProtocolError`` (and its
subclasses) is the *peer's* bad input: log it, reply ``Error`` or drop the
connection, keep serving others. ``LocalProtocolError`` is *our* bug (we
tried to send something the other side would have to refuse): fail loudly.

docs/protocol.md describes all of this byte for byte.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import msgpack

from votechain.core.block import (
    HASH_BYTES,
    MAX_AUTHOR_BYTES,
    MAX_BLOCK_BYTES,
    MAX_NONCE,
    Block,
    pack,
)
from votechain.errors import (
    MAX_REASON_CHARS,
    EncodingError,
    FrameTooLarge,
    IncompatiblePeer,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    UnknownMessageType,
)

PROTOCOL_VERSION = 1

PREFIX_BYTES = 4
# A frame is buffered whole before it is decoded, so this is the most memory
# one connection can make us hold. It must fit a full Blocks batch:
# MAX_BATCH_BLOCKS * MAX_BLOCK_BYTES = 2 MiB of blocks plus a few bytes of
# msgpack headers per block; 4 MiB leaves headroom without letting a hostile
# peer pin more than 4 MiB per connection.
MAX_FRAME_BYTES = 4 * 1024 * 1024

# Why 256: a node catching up on a long chain fetches it in batches; 256 blocks
# (at most 2 MiB) is a few round trips per thousand blocks while keeping one
# reply, and so one frame, well under MAX_FRAME_BYTES.
MAX_BATCH_BLOCKS = 256

ADD_STATUSES = ("added", "known", "fork", "rejected")

# Largest values the fields may hold: msgpack's own integer range (uint64).
MAX_UINT = MAX_NONCE

assert MAX_BATCH_BLOCKS * (MAX_BLOCK_BYTES + 16) + 64 <= MAX_FRAME_BYTES, "a full batch must fit"

# Limits handed to msgpack, so that a declared length is refused before any
# allocation and a frame can never decode to more than our messages need.
# A message map has at most 4 entries and a block map 7; 16 is generous.
_MAX_MAP_LEN = 16
# The only array is Blocks.blocks.
_MAX_ARRAY_LEN = MAX_BATCH_BLOCKS
# Every bin field is capped at 1 KiB by block.py; a whole block is 8 KiB.
_MAX_BIN_LEN = MAX_BLOCK_BYTES
# The longest string is a reason: MAX_REASON_CHARS characters of UTF-8, at
# most 4 bytes each.
_MAX_STR_LEN = 4 * MAX_REASON_CHARS
# Error messages quote a peer's bad tag or key; keep the quote short.
_MAX_QUOTED_CHARS = 40



# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message on every connection, from both sides."""

    TYPE: ClassVar[str] = "hello"
    version: int
    genesis: bytes  # the hash of the sender's block 0
    difficulty: int  # leading zero hex digits every block hash must have

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": self.version,
            "genesis": self.genesis,
            "difficulty": self.difficulty,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Hello:
        fields = _fields(obj, cls.TYPE, ("version", "genesis", "difficulty"))
        return cls(
            version=_uint(fields, cls.TYPE, "version"),
            genesis=_bytes(fields, cls.TYPE, "genesis", HASH_BYTES, exact=True),
            difficulty=_uint(fields, cls.TYPE, "difficulty"),
        )


@dataclass(frozen=True, slots=True)
class GetLatest:
    """Ask for the peer's most recent block (the tip of its chain)."""

    TYPE: ClassVar[str] = "get_latest"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_wire(cls, obj: object) -> GetLatest:
        _fields(obj, cls.TYPE, ())
        return cls()


@dataclass(frozen=True, slots=True)
class Latest:
    """The reply to GetLatest."""

    TYPE: ClassVar[str] = "latest"
    block: Block

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "block": _block_to_wire(self.block, self.TYPE, "block")}

    @classmethod
    def from_wire(cls, obj: object) -> Latest:
        fields = _fields(obj, cls.TYPE, ("block",))
        return cls(block=_block(fields["block"], f"{cls.TYPE}.block"))


@dataclass(frozen=True, slots=True)
class Add:
    """Offer a newly mined block, with the sender's public key (DER)."""

    TYPE: ClassVar[str] = "add"
    block: Block
    public_key: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "block": _block_to_wire(self.block, self.TYPE, "block"),
            "public_key": self.public_key,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Add:
        fields = _fields(obj, cls.TYPE, ("block", "public_key"))
        return cls(
            block=_block(fields["block"], f"{cls.TYPE}.block"),
            public_key=_bytes(fields, cls.TYPE, "public_key", MAX_AUTHOR_BYTES),
        )


@dataclass(frozen=True, slots=True)
class AddResult:
    """The reply to Add. ``reason`` is empty unless the status is "rejected".

    A reason longer than MAX_REASON_CHARS is cut short when the message is
    built (it usually comes from an exception's text, and a long one should
    not turn into a LocalProtocolError); the decoder refuses a longer one.
    """

    TYPE: ClassVar[str] = "add_result"
    status: str
    reason: str = ""

    def __post_init__(self) -> None:
        _truncate_reason(self)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "status": self.status, "reason": self.reason}

    @classmethod
    def from_wire(cls, obj: object) -> AddResult:
        fields = _fields(obj, cls.TYPE, ("status", "reason"))
        status = _str(fields, cls.TYPE, "status", max(map(len, ADD_STATUSES)))
        if status not in ADD_STATUSES:
            raise MalformedMessage(
                f"add_result.status {_quote(status)} is not one of {', '.join(ADD_STATUSES)}"
            )
        reason = _str(fields, cls.TYPE, "reason", MAX_REASON_CHARS)
        if reason and status != "rejected":
            raise MalformedMessage(f"add_result.reason must be empty when status is {status}")
        return cls(status=status, reason=reason)


@dataclass(frozen=True, slots=True)
class GetBlocks:
    """Ask for up to ``limit`` consecutive blocks starting at id ``from_id``."""

    TYPE: ClassVar[str] = "get_blocks"
    from_id: int
    limit: int = MAX_BATCH_BLOCKS

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "from_id": self.from_id, "limit": self.limit}

    @classmethod
    def from_wire(cls, obj: object) -> GetBlocks:
        fields = _fields(obj, cls.TYPE, ("from_id", "limit"))
        limit = _uint(fields, cls.TYPE, "limit")
        if not 1 <= limit <= MAX_BATCH_BLOCKS:
            raise MalformedMessage(
                f"get_blocks.limit={limit} is out of range 1..{MAX_BATCH_BLOCKS}"
            )
        return cls(from_id=_uint(fields, cls.TYPE, "from_id"), limit=limit)


@dataclass(frozen=True, slots=True)
class Blocks:
    """The reply to GetBlocks: consecutive blocks in id order; empty means caught up.

    The decoder checks the count (at most MAX_BATCH_BLOCKS) and that the ids
    are consecutive; whether they start at the asked ``from_id`` and link by
    hash is for the asker to check, since only it knows what it asked.
    """

    TYPE: ClassVar[str] = "blocks"
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        # Accept any sequence (a list from a store query) but hold a tuple, so
        # messages stay hashable and compare equal however they were built.
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))

    def to_wire(self) -> dict[str, Any]:
        if not isinstance(self.blocks, tuple):
            raise LocalProtocolError(
                f"blocks.blocks must be a tuple, got {type(self.blocks).__name__}"
            )
        return {
            "type": self.TYPE,
            "blocks": [_block_to_wire(b, self.TYPE, "blocks[]") for b in self.blocks],
        }

    @classmethod
    def from_wire(cls, obj: object) -> Blocks:
        fields = _fields(obj, cls.TYPE, ("blocks",))
        items = fields["blocks"]
        if not isinstance(items, list):
            raise MalformedMessage(f"blocks.blocks must be an array, got {type(items).__name__}")
        if len(items) > MAX_BATCH_BLOCKS:
            raise MalformedMessage(
                f"blocks.blocks has {len(items)} blocks, over MAX_BATCH_BLOCKS={MAX_BATCH_BLOCKS}"
            )
        blocks = tuple(_block(item, f"blocks.blocks[{i}]") for i, item in enumerate(items))
        for prev, block in itertools.pairwise(blocks):
            if block.id != prev.id + 1:
                raise MalformedMessage(
                    f"blocks.blocks are not consecutive: block {block.id} follows {prev.id}"
                )
        return cls(blocks=blocks)


@dataclass(frozen=True, slots=True)
class Error:
    """A reply meaning "your request was bad" or "I refuse"; the reason is for logs.

    Like AddResult, a reason over MAX_REASON_CHARS is cut short when built.
    """

    TYPE: ClassVar[str] = "error"
    reason: str

    def __post_init__(self) -> None:
        _truncate_reason(self)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "reason": self.reason}

    @classmethod
    def from_wire(cls, obj: object) -> Error:
        fields = _fields(obj, cls.TYPE, ("reason",))
        return cls(reason=_str(fields, cls.TYPE, "reason", MAX_REASON_CHARS))


Message: TypeAlias = Hello | GetLatest | Latest | Add | AddResult | GetBlocks | Blocks | Error

_MESSAGE_CLASSES: tuple[type[Message], ...] = (
    Hello,
    GetLatest,
    Latest,
    Add,
    AddResult,
    GetBlocks,
    Blocks,
    Error,
)
MESSAGE_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in _MESSAGE_CLASSES}


# ---------------------------------------------------------------- encode / decode


def encode(msg: Message) -> bytes:
    """One whole frame (length prefix and payload) carrying `msg`.

    The message is checked with the receiver's own decoder first, so we never
    send what a peer running this code would refuse; failing that, or an
    oversized frame, is a LocalProtocolError (our bug).
    """
    cls = type(msg)
    if MESSAGE_TYPES.get(getattr(cls, "TYPE", "")) is not cls:
        raise LocalProtocolError(f"not a wire message: {cls.__name__}")
    obj = msg.to_wire()
    try:
        cls.from_wire(obj)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"refusing to send an invalid {msg.TYPE}: {exc}") from exc
    try:
        payload = pack(obj)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {msg.TYPE}: {exc}") from exc
    if len(payload) > MAX_FRAME_BYTES:
        raise LocalProtocolError(
            f"{msg.TYPE} encodes to {len(payload)} bytes, over MAX_FRAME_BYTES={MAX_FRAME_BYTES}"
        )
    return len(payload).to_bytes(PREFIX_BYTES, "big") + payload


def decode_payload(payload: bytes) -> Message:
    """The message in one frame's payload (the bytes after the length prefix)."""
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameTooLarge(
            f"frame of {len(payload)} bytes is over MAX_FRAME_BYTES={MAX_FRAME_BYTES}"
        )
    if not payload:
        raise MalformedMessage("empty frame")
    obj = _unpack(payload)
    if not isinstance(obj, dict):
        raise MalformedMessage(f"a message must be a map, got {type(obj).__name__}")
    tag = obj.get("type")
    if not isinstance(tag, str):
        raise MalformedMessage(f"message type must be a string, got {type(tag).__name__}")
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {_quote(tag)}")
    return cls.from_wire(obj)


def check_hello(ours: Hello, theirs: Hello) -> None:
    """Raise IncompatiblePeer unless the two nodes can talk and share one chain.

    Reasons read "<theirs>, expected <ours>", so the same text makes sense in
    our log and in the Error we send back.
    """
    if theirs.version != ours.version:
        raise IncompatiblePeer(f"protocol version {theirs.version}, expected {ours.version}")
    if theirs.genesis != ours.genesis:
        raise IncompatiblePeer(
            f"genesis block {theirs.genesis.hex()[:16]}…, expected {ours.genesis.hex()[:16]}… "
            "(a different chain)"
        )
    if theirs.difficulty != ours.difficulty:
        raise IncompatiblePeer(f"difficulty {theirs.difficulty}, expected {ours.difficulty}")


class FrameDecoder:
    """Turns a stream of bytes into messages; never holds more than one frame.

    Usage (what transport.Connection does)::

        while (msg := decoder.next_message()) is None:
            decoder.feed(sock.recv(min(CHUNK, decoder.room)))

    The buffer never holds more than MAX_FRAME_BYTES + 4 bytes: ``room`` says
    how much ``feed`` accepts now, and feeding more is a LocalProtocolError.
    When ``room`` is 0 the buffer holds a whole frame (or a refused prefix),
    so ``next_message`` always makes progress.

    A bad length prefix (zero or over the cap) is found as soon as its 4 bytes
    are in; the stream cannot be resynchronised after it, so the decoder stays
    failed and every later ``next_message`` raises the same error. A frame
    whose payload is malformed has been consumed whole: the error is raised
    once and the caller may reply Error and go on reading.
    """

    def __init__(self) -> None:
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
        return PREFIX_BYTES + MAX_FRAME_BYTES - len(self._buffer)

    def feed(self, data: bytes) -> None:
        if self._failed is not None:
            return  # nothing after a refused prefix can be read; do not hold it
        if len(data) > self.room:
            raise LocalProtocolError(
                f"fed {len(data)} bytes with room for {self.room}: drain next_message() first"
            )
        self._buffer += data
        self._head_length()  # refuse a bad prefix now, before its payload arrives

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes are fed."""
        length = self._head_length()
        if self._failed is not None:
            raise self._failed
        if length is None or len(self._buffer) < PREFIX_BYTES + length:
            return None
        end = PREFIX_BYTES + length
        payload = bytes(self._buffer[PREFIX_BYTES:end])
        del self._buffer[:end]
        self._head_length()  # the next frame's prefix may already be here
        return decode_payload(payload)

    def _head_length(self) -> int | None:
        """The first buffered frame's payload length, once its prefix is in.

        A bad prefix puts the decoder in the failed state (raised by the next
        next_message call, after any message already decoded is returned).
        """
        if self._failed is not None or len(self._buffer) < PREFIX_BYTES:
            return None
        length = int.from_bytes(self._buffer[:PREFIX_BYTES], "big")
        if length == 0:
            self._fail(MalformedMessage("zero-length frame"))
            return None
        if length > MAX_FRAME_BYTES:
            self._fail(
                FrameTooLarge(f"frame length {length} is over MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
            )
            return None
        return length

    def _fail(self, error: RemoteProtocolError) -> None:
        self._failed = error
        self._buffer.clear()


# ---------------------------------------------------------------- helpers


def _unpack(payload: bytes) -> object:
    """Decode exactly one msgpack object, every failure a MalformedMessage.

    Not block.unpack: its limits are sized for one stored block (arrays of at
    most 16 elements), too small for a Blocks batch, and it allows ext types.
    msgpack's C decoder has a fixed nesting stack of 1024 (StackError, a
    ValueError); the pure-Python fallback may recurse, hence RecursionError.
    """
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_str_len=_MAX_STR_LEN,
            max_bin_len=_MAX_BIN_LEN,
            max_array_len=_MAX_ARRAY_LEN,
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,  # no ext types (not even Timestamp) in this protocol
        )
    except msgpack.ExtraData as exc:
        raise MalformedMessage("trailing bytes after the message map") from exc
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise MalformedMessage(f"malformed msgpack: {type(exc).__name__}: {exc}"[:200]) from exc
    except RecursionError as exc:
        raise MalformedMessage("msgpack nested too deeply") from exc


def _fields(obj: object, tag: str, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{tag} must be a map, got {type(obj).__name__}")
    if obj.get("type") != tag:
        raise MalformedMessage(f"{tag} map has type {_quote(obj.get('type'))}")
    missing = [name for name in names if name not in obj]
    if missing:
        raise MalformedMessage(f"{tag} is missing {', '.join(missing)}")
    extra = [key for key in obj if key != "type" and key not in names]
    if extra:
        raise MalformedMessage(
            f"{tag} has unknown fields {', '.join(_quote(key) for key in extra[:4])}"
        )
    return obj


def _uint(fields: dict[str, Any], tag: str, name: str) -> int:
    value = fields[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedMessage(f"{tag}.{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_UINT:
        raise MalformedMessage(f"{tag}.{name}={value} is out of range 0..{MAX_UINT}")
    return value


def _bytes(
    fields: dict[str, Any], tag: str, name: str, limit: int, *, exact: bool = False
) -> bytes:
    value = fields[name]
    if not isinstance(value, bytes):
        raise MalformedMessage(f"{tag}.{name} must be bytes, got {type(value).__name__}")
    if exact and len(value) != limit:
        raise MalformedMessage(f"{tag}.{name} must be {limit} bytes, got {len(value)}")
    if len(value) > limit:
        raise MalformedMessage(f"{tag}.{name} is {len(value)} bytes, over its cap of {limit}")
    return value


def _str(fields: dict[str, Any], tag: str, name: str, max_chars: int) -> str:
    value = fields[name]
    if not isinstance(value, str):
        raise MalformedMessage(f"{tag}.{name} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise MalformedMessage(f"{tag}.{name} is {len(value)} characters, over {max_chars}")
    return value


def _block(value: object, where: str) -> Block:
    try:
        return Block.from_wire(value)
    except EncodingError as exc:
        raise MalformedMessage(f"{where}: {exc}") from exc


def _block_to_wire(block: object, tag: str, name: str) -> dict[str, Any]:
    if not isinstance(block, Block):
        raise LocalProtocolError(f"{tag}.{name} must be a Block, got {type(block).__name__}")
    return block.to_wire()


def _truncate_reason(msg: AddResult | Error) -> None:
    if isinstance(msg.reason, str) and len(msg.reason) > MAX_REASON_CHARS:
        object.__setattr__(msg, "reason", msg.reason[: MAX_REASON_CHARS - 1] + "…")


def _quote(value: object) -> str:
    """A peer-supplied value for an error message: repr, cut short."""
    text = repr(value)
    if len(text) > _MAX_QUOTED_CHARS:
        text = text[: _MAX_QUOTED_CHARS - 1] + "…"
    return text

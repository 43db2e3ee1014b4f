"""The peer-to-peer protocol's messages, with no sockets, threads or clocks.

Every frame (protocol/framing.py) carries exactly one msgpack map
``{"type": <tag>, <field>: <value>, ...}``. Each message is one frozen
dataclass below with a class-level ``TYPE`` tag; ``PEER`` is their
`MessageSet` (protocol/messages.py): the registry ``MESSAGE_TYPES``, the
strict decoder with ``PEER_LIMITS`` and the frame cap ``MAX_FRAME_BYTES``.
The conversation::

    initiator                              acceptor
    Hello            ------------------>                (with a fresh random challenge)
                     <------------------   Hello        (then both run check_hello)
    Auth             ------------------>                (signs the acceptor's challenge)
                     <------------------   Auth         (signs the initiator's challenge)
    GetLatest        ------------------>
                     <------------------   Latest
    Add              ------------------>
                     <------------------   AddResult
    GetBlocks        ------------------>
                     <------------------   Blocks
    (any request)    ------------------>
                     <------------------   Error        (bad request / refused)

``encode(msg)`` is one whole frame; ``decode_payload(payload)`` one message
back, every field checked; ``PEER.decoder()`` a FrameDecoder of messages.

Errors say whose fault they are: ``RemoteProtocolError`` (and its
subclasses) is the *peer's* bad input: log it, reply ``Error`` or drop the
connection, keep serving others. ``LocalProtocolError`` is *our* bug (we
tried to send something the other side would have to refuse): fail loudly.

docs/protocol.md describes all of this byte for byte.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from votechain.core.block import (
    HASH_BYTES,
    MAX_AUTHOR_BYTES,
    MAX_BLOCK_BYTES,
    MAX_SIGNATURE_BYTES,
    Block,
    Transaction,
)
from votechain.core.codec import Codec, Limits, quote
from votechain.errors import (
    MAX_REASON_CHARS,
    EncodingError,
    IncompatiblePeer,
    LocalProtocolError,
    MalformedMessage,
    UnknownMessageType,
)
from votechain.protocol.framing import FrameCap
from votechain.protocol.messages import MessageSet, cut_reason

# 2: the authenticated handshake (Auth), salted transactions with derived ids,
# certificates in Blocks; 3: finality and relaying (Announce, Relay, Relayed,
# and the locked heights in Add and AddResult) (docs/protocol.md).
PROTOCOL_VERSION = 3
CHALLENGE_BYTES = 32
# A certificate is ~600 bytes with an RSA-2048 member key (membership.py);
# 2 KiB allows larger keys.
MAX_CERTIFICATE_BYTES = 2048

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

assert (MAX_BATCH_BLOCKS * (MAX_BLOCK_BYTES + MAX_CERTIFICATE_BYTES + 32) + 64
        <= MAX_FRAME_BYTES), "a full batch, a certificate per block, must fit"

# The limits handed to msgpack, so that a declared length is refused before
# any allocation and a frame can never decode to more than our messages need.
PEER_LIMITS = Limits(
    # The longest string is a reason: MAX_REASON_CHARS characters of UTF-8, at
    # most 4 bytes each.
    max_str_len=4 * MAX_REASON_CHARS,
    # Every bin field is capped at 1 KiB by block.py; a whole block is 8 KiB.
    max_bin_len=MAX_BLOCK_BYTES,
    # The only arrays are Blocks.blocks and Blocks.certificates.
    max_array_len=MAX_BATCH_BLOCKS,
    # A message map has at most 5 entries and a block map 7; 16 is generous.
    max_map_len=16,
)
_CODEC = Codec(PEER_LIMITS, MalformedMessage)


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message on every connection, from both sides."""

    TYPE: ClassVar[str] = "hello"
    version: int
    genesis: bytes  # the hash of the sender's block 0: the network id
    difficulty: int  # leading zero hex digits every block hash must have
    # Fresh random bytes per connection, which the other side signs in its Auth:
    # a recorded Auth from another connection is worthless.
    challenge: bytes = bytes(CHALLENGE_BYTES)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "version": self.version,
            "genesis": self.genesis,
            "difficulty": self.difficulty,
            "challenge": self.challenge,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Hello:
        fields = _CODEC.fields(obj, cls.TYPE, ("version", "genesis", "difficulty", "challenge"),
                               tagged=True)
        return cls(
            version=_CODEC.uint(fields["version"], "hello.version"),
            genesis=_CODEC.binary(fields["genesis"], "hello.genesis", HASH_BYTES, exact=True),
            difficulty=_CODEC.uint(fields["difficulty"], "hello.difficulty"),
            challenge=_CODEC.binary(fields["challenge"], "hello.challenge", CHALLENGE_BYTES,
                                    exact=True),
        )


@dataclass(frozen=True, slots=True)
class Auth:
    """The second message from both sides: who the sender is, proven.

    `signature` is the sender's signature, under `public_key`, of the handshake
    digest (protocol/handshake.py), which covers the other side's challenge;
    `certificate` its member certificate (membership.Certificate.encode). An
    observer sends all three empty; a key without a certificate is a
    non-member, which may read but not write either."""

    TYPE: ClassVar[str] = "auth"
    public_key: bytes = b""
    certificate: bytes = b""
    signature: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "public_key": self.public_key,
                "certificate": self.certificate, "signature": self.signature}

    @classmethod
    def from_wire(cls, obj: object) -> Auth:
        fields = _CODEC.fields(obj, cls.TYPE, ("public_key", "certificate", "signature"),
                               tagged=True)
        return cls(
            public_key=_CODEC.binary(fields["public_key"], "auth.public_key", MAX_AUTHOR_BYTES),
            certificate=_CODEC.binary(fields["certificate"], "auth.certificate",
                                      MAX_CERTIFICATE_BYTES),
            signature=_CODEC.binary(fields["signature"], "auth.signature", MAX_SIGNATURE_BYTES),
        )


@dataclass(frozen=True, slots=True)
class GetLatest:
    """Ask for the peer's most recent block (the tip of its chain)."""

    TYPE: ClassVar[str] = "get_latest"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_wire(cls, obj: object) -> GetLatest:
        _CODEC.fields(obj, cls.TYPE, (), tagged=True)
        return cls()


@dataclass(frozen=True, slots=True)
class Latest:
    """The reply to GetLatest."""

    TYPE: ClassVar[str] = "latest"
    block: Block

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "block": _block_to_wire(self.block, "latest.block")}

    @classmethod
    def from_wire(cls, obj: object) -> Latest:
        fields = _CODEC.fields(obj, cls.TYPE, ("block",), tagged=True)
        return cls(block=_block(fields["block"], "latest.block"))


@dataclass(frozen=True, slots=True)
class Add:
    """Offer a block the sender mined. Its author must be the key the sender
    proved in the handshake, and a member (an observer's Add is refused)."""

    TYPE: ClassVar[str] = "add"
    block: Block
    # The sender's locked height (finality, core/finality.py) when it queued
    # the block: under load the next block carries the news, not an Announce.
    locked: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "block": _block_to_wire(self.block, "add.block"),
                "locked": self.locked}

    @classmethod
    def from_wire(cls, obj: object) -> Add:
        fields = _CODEC.fields(obj, cls.TYPE, ("block", "locked"), tagged=True)
        return cls(block=_block(fields["block"], "add.block"),
                   locked=_CODEC.uint(fields["locked"], "add.locked"))


@dataclass(frozen=True, slots=True)
class AddResult:
    """The reply to Add. ``reason`` is empty unless the status is "rejected".

    A reason longer than MAX_REASON_CHARS is cut short when the message is
    built (messages.cut_reason); the decoder refuses a longer one.
    """

    TYPE: ClassVar[str] = "add_result"
    status: str
    reason: str = ""
    # The receiver's locked height once it took the block (finality): with
    # "added" or "known", a report that it holds the block and has locked this.
    locked: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", cut_reason(self.reason))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "status": self.status, "reason": self.reason,
                "locked": self.locked}

    @classmethod
    def from_wire(cls, obj: object) -> AddResult:
        status, reason, fields = _status_and_reason(obj, cls.TYPE, ADD_STATUSES, ("locked",))
        if reason and status != "rejected":
            raise MalformedMessage(f"add_result.reason must be empty when status is {status}")
        return cls(status=status, reason=reason,
                   locked=_CODEC.uint(fields["locked"], "add_result.locked"))


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
        fields = _CODEC.fields(obj, cls.TYPE, ("from_id", "limit"), tagged=True)
        limit = _CODEC.uint(fields["limit"], "get_blocks.limit")
        if not 1 <= limit <= MAX_BATCH_BLOCKS:
            raise MalformedMessage(
                f"get_blocks.limit={limit} is out of range 1..{MAX_BATCH_BLOCKS}"
            )
        return cls(from_id=_CODEC.uint(fields["from_id"], "get_blocks.from_id"), limit=limit)


@dataclass(frozen=True, slots=True)
class Blocks:
    """The reply to GetBlocks: consecutive blocks in id order; empty means caught up.

    The decoder checks the count (at most MAX_BATCH_BLOCKS) and that the ids
    are consecutive; whether they start at the asked ``from_id`` and link by
    hash is for the asker to check, since only it knows what it asked.
    ``certificates`` are the member certificates of the batch's authors (each
    once), so the asker can check authorship of blocks by members it never
    met; an open network sends none.
    """

    TYPE: ClassVar[str] = "blocks"
    blocks: tuple[Block, ...]
    certificates: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        # Accept any sequence (a list from a store query) but hold a tuple, so
        # messages stay hashable and compare equal however they were built.
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if isinstance(self.certificates, list):
            object.__setattr__(self, "certificates", tuple(self.certificates))

    def to_wire(self) -> dict[str, Any]:
        if not isinstance(self.blocks, tuple):
            raise LocalProtocolError(
                f"blocks.blocks must be a tuple, got {type(self.blocks).__name__}"
            )
        if len(self.certificates) > MAX_BATCH_BLOCKS:
            raise LocalProtocolError("blocks.certificates: more than one per block")
        return {
            "type": self.TYPE,
            "blocks": [_block_to_wire(b, "blocks.blocks[]") for b in self.blocks],
            "certificates": list(self.certificates),
        }

    @classmethod
    def from_wire(cls, obj: object) -> Blocks:
        fields = _CODEC.fields(obj, cls.TYPE, ("blocks", "certificates"), tagged=True)
        certs = fields["certificates"]
        if not isinstance(certs, list) or len(certs) > MAX_BATCH_BLOCKS:
            raise MalformedMessage(f"blocks.certificates must be an array of at most "
                                   f"{MAX_BATCH_BLOCKS}")
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
        return cls(blocks=blocks, certificates=tuple(
            _CODEC.binary(c, f"blocks.certificates[{i}]", MAX_CERTIFICATE_BYTES)
            for i, c in enumerate(certs)))


@dataclass(frozen=True, slots=True)
class Error:
    """A reply meaning "your request was bad" or "I refuse"; the reason is for logs.

    Like AddResult, a reason over MAX_REASON_CHARS is cut short when built.
    """

    TYPE: ClassVar[str] = "error"
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", cut_reason(self.reason))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "reason": self.reason}

    @classmethod
    def from_wire(cls, obj: object) -> Error:
        fields = _CODEC.fields(obj, cls.TYPE, ("reason",), tagged=True)
        return cls(reason=_CODEC.text(fields["reason"], "error.reason", MAX_REASON_CHARS))


@dataclass(frozen=True, slots=True)
class Announce:
    """A member's account of its chain, for finality (core/finality.py): its tip
    and its locked height (the height a majority of members hold, below which
    it never switches). Sent when either changes; answered with the receiver's
    own Announce, so one round trip informs both sides. Only a member's counts
    (the key its handshake proved); an observer's is answered and ignored."""

    TYPE: ClassVar[str] = "announce"
    tip_id: int
    tip_hash: bytes
    locked: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "tip_id": self.tip_id, "tip_hash": self.tip_hash,
                "locked": self.locked}

    @classmethod
    def from_wire(cls, obj: object) -> Announce:
        fields = _CODEC.fields(obj, cls.TYPE, ("tip_id", "tip_hash", "locked"), tagged=True)
        tip_id = _CODEC.uint(fields["tip_id"], "announce.tip_id")
        locked = _CODEC.uint(fields["locked"], "announce.locked")
        if locked > tip_id:
            raise MalformedMessage(f"announce.locked={locked} is above announce.tip_id={tip_id}")
        return cls(tip_id=tip_id,
                   tip_hash=_CODEC.binary(fields["tip_hash"], "announce.tip_hash", HASH_BYTES,
                                          exact=True),
                   locked=locked)


@dataclass(frozen=True, slots=True)
class Relay:
    """A member hands a vote to the member that mines for everyone now (the
    author of its tip: core/node_state.py, "Relaying"), instead of racing it
    with a block of its own. The sender keeps the vote queued, and mines it
    itself if it is not in the chain within RELAY_PATIENCE."""

    TYPE: ClassVar[str] = "relay"
    transaction: Transaction

    def to_wire(self) -> dict[str, Any]:
        if not isinstance(self.transaction, Transaction):
            raise LocalProtocolError("relay.transaction must be a Transaction")
        return {"type": self.TYPE, "transaction": self.transaction.to_wire()}

    @classmethod
    def from_wire(cls, obj: object) -> Relay:
        fields = _CODEC.fields(obj, cls.TYPE, ("transaction",), tagged=True)
        try:
            return cls(transaction=Transaction.from_wire(fields["transaction"]))
        except EncodingError as exc:
            raise MalformedMessage(f"relay.{exc}") from exc


RELAY_STATUSES = ("queued", "known", "refused")


@dataclass(frozen=True, slots=True)
class Relayed:
    """The reply to Relay: "queued" (it will be mined here), "known" (already
    queued or in the chain here) or "refused" (an observer's, or by one that
    mines nothing: `reason` says)."""

    TYPE: ClassVar[str] = "relayed"
    status: str
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", cut_reason(self.reason))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "status": self.status, "reason": self.reason}

    @classmethod
    def from_wire(cls, obj: object) -> Relayed:
        status, reason, _ = _status_and_reason(obj, cls.TYPE, RELAY_STATUSES)
        return cls(status=status, reason=reason)


Message: TypeAlias = (Hello | Auth | GetLatest | Latest | Add | AddResult | GetBlocks | Blocks
                      | Announce | Relay | Relayed | Error)

PEER: MessageSet[Message] = MessageSet(
    what="message",
    classes=(Hello, Auth, GetLatest, Latest, Add, AddResult, GetBlocks, Blocks, Announce,
             Relay, Relayed, Error),
    codec=_CODEC,
    cap=FrameCap("MAX_FRAME_BYTES", MAX_FRAME_BYTES),
    unknown=UnknownMessageType,
)
MESSAGE_TYPES = PEER.types
# One whole frame carrying a message, and the message in one frame's payload.
encode: Callable[[Message], bytes] = PEER.encode
decode_payload: Callable[[bytes], Message] = PEER.decode_payload


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


def _status_and_reason(obj: object, tag: str, statuses: tuple[str, ...],
                       others: tuple[str, ...] = ()) -> tuple[str, str, dict[str, Any]]:
    """A reply's `status` (one of `statuses`) and `reason`, checked, and its
    fields (exactly those two and `others`) for the caller to check the rest."""
    fields = _CODEC.fields(obj, tag, ("status", "reason", *others), tagged=True)
    status = _CODEC.text(fields["status"], f"{tag}.status", max(map(len, statuses)))
    if status not in statuses:
        raise MalformedMessage(
            f"{tag}.status {quote(status)} is not one of {', '.join(statuses)}")
    return status, _CODEC.text(fields["reason"], f"{tag}.reason", MAX_REASON_CHARS), fields


def _block(value: object, where: str) -> Block:
    try:
        return Block.from_wire(value)
    except EncodingError as exc:
        raise MalformedMessage(f"{where}: {exc}") from exc


def _block_to_wire(block: object, where: str) -> dict[str, Any]:
    if not isinstance(block, Block):
        raise LocalProtocolError(f"{where} must be a Block, got {type(block).__name__}")
    return block.to_wire()

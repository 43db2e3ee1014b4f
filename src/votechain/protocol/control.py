"""The control channel's messages: what the owner's `votechain` command and a
running node say to each other. Pure: no sockets (net/control_server.py and
net/control_client.py carry them).

Frames and maps exactly as the peer protocol's (protocol/framing.py,
protocol/messages.py): ``{"type": <tag>, <field>: <value>, ...}`` behind a
4-byte length. Two message sets, one per direction, each with its own cap and
limits, because a request is a stranger's until its cookie is checked and a
reply comes only from the node listening on the socket in its owner's data
directory (net/control_server.py: DATA_DIR/control.sock, never a TCP port)::

    client -> node      CONTROL_REQUESTS           node -> client   CONTROL_REPLIES
    Auth         "auth"      (always first)   ->   AuthOk       "auth_ok" | ErrorReply
    VoteRequest  "vote"                       ->   VoteResult   "vote_result"
    StatusRequest "status"                    ->   StatusReply  "status_reply"
    TallyRequest "tally"                      ->   TallyReply   "tally_reply"
    (anything refused or failed)              ->   ErrorReply   "error"

An ErrorReply's ``kind`` says whose side it is on: "refused" (the request was
bad: the client's fault, ControlRefused) or "unavailable" (the node could not
do it now: not mined in time, stopping, an internal error; ControlUnavailable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeAlias

from votechain.core.block import HASH_BYTES, TX_ID_BYTES
from votechain.core.codec import Codec, Limits, quote
from votechain.core.membership import MAX_NAME_CHARS
from votechain.core.voting import MAX_CATEGORY_CHARS
from votechain.errors import (
    MAX_REASON_CHARS,
    ControlProtocolError,
    MalformedMessage,
    UnknownMessageType,
)
from votechain.protocol.framing import FrameCap
from votechain.protocol.messages import MessageSet, cut_reason


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """The reply to a status request; docs/protocol.md lists these fields as they are here."""

    height: int  # id of the tip block
    tip: str  # the tip block's hash, hex
    peers: int  # other peers the tracker listed last
    pending: int  # votes queued for mining
    backend: str  # miner backend and worker count, e.g. "native x2"
    hashrate: float  # hashes per second, over finished jobs
    forks_resolved: int  # majority switches that dropped blocks of ours
    address: str  # "HOST:PORT" the node listens on for peers
    network: str  # the network's name ("" on an open network)
    difficulty: int  # leading zero hex digits a block hash needs
    version: str  # votechain's version on the node
    tracker: str  # "HOST:PORT" of the tracker the node uses
    tracker_up: bool  # whether the tracker answered the node's last request
    uptime: float  # seconds since the node started
    votes_per_second: float  # votes committed per second over the last minute
    live_hashrate: float  # hashes per second over the last few seconds, all workers
    final_height: int  # every block up to here is kept by a majority of the members
    locked_height: int  # this node never switches away from a block up to here
    seats: int  # the network's member count (0: finality counts this node alone)


# The cookie a client proves itself with: COOKIE_BYTES random bytes, as hex.
COOKIE_BYTES = 32

# Why 64 KiB: the largest request is a vote, whose category is at most
# MAX_REQUEST_CATEGORY_CHARS characters; whoever reaches the socket can send
# a length prefix before authenticating, so the server must never
# allocate more than a small fixed amount per connection on a stranger's word.
MAX_CONTROL_REQUEST_BYTES = 64 * 1024
# Why 16 MiB for replies: a tally has one entry per distinct category, up to
# ~270 bytes each, and the chain decides how many there are, not the client;
# 64 KiB would cap a tally at ~240 categories. The client only reads replies
# from the node on its owner's data directory's socket, run by that owner, so
# a bigger (still finite) cap is safe there.
MAX_CONTROL_REPLY_BYTES = 16 * 1024 * 1024

# Why 1024: voting.validate_category, on the node, says what is wrong with a
# category (64 characters at most once surrounding whitespace is stripped);
# the wire only bounds it, loosely enough that a padded or overlong category
# still reaches the node and gets that explanation.
MAX_REQUEST_CATEGORY_CHARS = 1024
# A vote may wait at most an hour for its block; a longer wait is a mistake.
MAX_VOTE_TIMEOUT = 3600.0
DEFAULT_VOTE_TIMEOUT = 120.0
# Why 1 << 20: a tally map has one entry per category the node's chain holds,
# so the chain, not the client, decides its size; a million is beyond any real
# ballot, and msgpack refuses a larger declared map before allocating it.
MAX_TALLY_CATEGORIES = 1 << 20
# A backend name and its worker count ("native x2"); 64 says it with room.
MAX_BACKEND_CHARS = 64
# "HOST:PORT": a DNS name is at most 253 characters, an IPv6 literal 45 plus
# brackets, then ":" and five digits; 300 covers both.
MAX_ADDRESS_CHARS = 300
# A version string ("0.1.0", or a development build's longer one).
MAX_VERSION_CHARS = 64

ERROR_KINDS = ("refused", "unavailable")

CONTROL_REQUEST_LIMITS = Limits(
    max_str_len=4 * MAX_REQUEST_CATEGORY_CHARS,  # the longest str: a category, 4 bytes a char
    max_bin_len=0,  # no request carries bytes
    max_array_len=0,  # nor arrays
    max_map_len=4,  # the largest request map, a vote, has 3 entries
)
CONTROL_REPLY_LIMITS = Limits(
    max_str_len=4 * MAX_REASON_CHARS,  # the longest str: an error reason, 4 bytes a char
    max_bin_len=HASH_BYTES,  # the longest bin: a vote's block hash
    max_array_len=0,  # no reply carries arrays
    max_map_len=MAX_TALLY_CATEGORIES,  # the largest map: a tally
)
_REQUEST = Codec(CONTROL_REQUEST_LIMITS, ControlProtocolError)
_REPLY = Codec(CONTROL_REPLY_LIMITS, MalformedMessage)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Auth:
    TYPE: ClassVar[str] = "auth"
    cookie: str  # hex, as read from the node's control.cookie

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "cookie": self.cookie}

    @classmethod
    def from_wire(cls, obj: object) -> Auth:
        wire = _REQUEST.fields(obj, cls.TYPE, ("cookie",), tagged=True)
        return cls(_REQUEST.text(wire["cookie"], "auth.cookie", 2 * COOKIE_BYTES))


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """Cast a vote; the reply comes once it is mined, or after `timeout` seconds."""

    TYPE: ClassVar[str] = "vote"
    category: str
    timeout: float

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "category": self.category, "timeout": self.timeout}

    @classmethod
    def from_wire(cls, obj: object) -> VoteRequest:
        wire = _REQUEST.fields(obj, cls.TYPE, ("category", "timeout"), tagged=True)
        category = _REQUEST.text(wire["category"], "vote.category", MAX_REQUEST_CATEGORY_CHARS)
        timeout = _REQUEST.number(wire["timeout"], "vote.timeout")
        if not 0 < timeout <= MAX_VOTE_TIMEOUT:
            _REQUEST.fail(f"vote.timeout must be in (0, {MAX_VOTE_TIMEOUT:g}] seconds")
        return cls(category, timeout)


@dataclass(frozen=True, slots=True)
class StatusRequest:
    TYPE: ClassVar[str] = "status"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_wire(cls, obj: object) -> StatusRequest:
        _REQUEST.fields(obj, cls.TYPE, (), tagged=True)
        return cls()


@dataclass(frozen=True, slots=True)
class TallyRequest:
    """The votes per category: the node's kept tally, or with `recount` a walk
    over its whole chain (slower; a check that the kept tally is right)."""

    TYPE: ClassVar[str] = "tally"
    recount: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "recount": self.recount}

    @classmethod
    def from_wire(cls, obj: object) -> TallyRequest:
        wire = _REQUEST.fields(obj, cls.TYPE, ("recount",), tagged=True)
        recount = wire["recount"]
        if not isinstance(recount, bool):
            _REQUEST.fail(f"tally.recount must be a boolean, got {type(recount).__name__}")
        return cls(recount)


Request: TypeAlias = Auth | VoteRequest | StatusRequest | TallyRequest

CONTROL_REQUESTS: MessageSet[Request] = MessageSet(
    what="request",
    classes=(Auth, VoteRequest, StatusRequest, TallyRequest),
    codec=_REQUEST,
    cap=FrameCap("MAX_CONTROL_REQUEST_BYTES", MAX_CONTROL_REQUEST_BYTES),
    unknown=ControlProtocolError,
)


# ---------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class AuthOk:
    TYPE: ClassVar[str] = "auth_ok"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_wire(cls, obj: object) -> AuthOk:
        _REPLY.fields(obj, cls.TYPE, (), tagged=True)
        return cls()


@dataclass(frozen=True, slots=True)
class VoteResult:
    """The vote is in the node's chain: in block `block_id`, whose hash is `hash`."""

    TYPE: ClassVar[str] = "vote_result"
    block_id: int
    hash: bytes
    tx_id: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "block_id": self.block_id, "hash": self.hash,
                "tx_id": self.tx_id}

    @classmethod
    def from_wire(cls, obj: object) -> VoteResult:
        wire = _REPLY.fields(obj, cls.TYPE, ("block_id", "hash", "tx_id"), tagged=True)
        return cls(
            block_id=_REPLY.uint(wire["block_id"], "vote_result.block_id"),
            hash=_REPLY.binary(wire["hash"], "vote_result.hash", HASH_BYTES, exact=True),
            tx_id=_REPLY.binary(wire["tx_id"], "vote_result.tx_id", TX_ID_BYTES, exact=True),
        )


# The status reply's fields are NodeStatus's, in its order, on the reply map itself.
NODE_STATUS_FIELDS = tuple(f.name for f in fields(NodeStatus))


@dataclass(frozen=True, slots=True)
class StatusReply:
    TYPE: ClassVar[str] = "status_reply"
    status: NodeStatus

    def to_wire(self) -> dict[str, Any]:
        status = self.status
        return {"type": self.TYPE, **{name: getattr(status, name) for name in NODE_STATUS_FIELDS}}

    @classmethod
    def from_wire(cls, obj: object) -> StatusReply:
        wire = _REPLY.fields(obj, cls.TYPE, NODE_STATUS_FIELDS, tagged=True)

        def rate(name: str) -> float:
            value = _REPLY.number(wire[name], f"status_reply.{name}")
            if not 0 <= value < math.inf:
                _REPLY.fail(f"status_reply.{name}={value} is not a rate")
            return value

        tracker_up = wire["tracker_up"]
        if not isinstance(tracker_up, bool):
            _REPLY.fail(f"status_reply.tracker_up must be a boolean, got "
                        f"{type(tracker_up).__name__}")
        return cls(NodeStatus(
            height=_REPLY.uint(wire["height"], "status_reply.height"),
            tip=_REPLY.text(wire["tip"], "status_reply.tip", 2 * HASH_BYTES),
            peers=_REPLY.uint(wire["peers"], "status_reply.peers"),
            pending=_REPLY.uint(wire["pending"], "status_reply.pending"),
            backend=_REPLY.text(wire["backend"], "status_reply.backend", MAX_BACKEND_CHARS),
            hashrate=rate("hashrate"),
            forks_resolved=_REPLY.uint(wire["forks_resolved"], "status_reply.forks_resolved"),
            address=_REPLY.text(wire["address"], "status_reply.address", MAX_ADDRESS_CHARS),
            network=_REPLY.text(wire["network"], "status_reply.network", MAX_NAME_CHARS),
            difficulty=_REPLY.uint(wire["difficulty"], "status_reply.difficulty"),
            version=_REPLY.text(wire["version"], "status_reply.version", MAX_VERSION_CHARS),
            tracker=_REPLY.text(wire["tracker"], "status_reply.tracker", MAX_ADDRESS_CHARS),
            tracker_up=tracker_up,
            uptime=rate("uptime"),
            votes_per_second=rate("votes_per_second"),
            live_hashrate=rate("live_hashrate"),
            final_height=_REPLY.uint(wire["final_height"], "status_reply.final_height"),
            locked_height=_REPLY.uint(wire["locked_height"], "status_reply.locked_height"),
            seats=_REPLY.uint(wire["seats"], "status_reply.seats"),
        ))


@dataclass(frozen=True, slots=True)
class TallyReply:
    """Votes per category, as voting.tally orders them (most votes first)."""

    TYPE: ClassVar[str] = "tally_reply"
    counts: dict[str, int]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "counts": self.counts}

    @classmethod
    def from_wire(cls, obj: object) -> TallyReply:
        wire = _REPLY.fields(obj, cls.TYPE, ("counts",), tagged=True)
        counts = wire["counts"]
        if not isinstance(counts, dict):
            _REPLY.fail(f"tally_reply.counts must be a map, got {type(counts).__name__}")
        for category, count in counts.items():
            # A tally counts valid categories only (voting.category_of).
            _REPLY.text(category, "tally_reply.counts key", MAX_CATEGORY_CHARS)
            _REPLY.uint(count, f"tally_reply.counts[{quote(category)}]")
        return cls(counts)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The request was refused, or the node could not do it; `reason` says why.

    A reason over MAX_REASON_CHARS is cut short when built, as the peer Error's.
    """

    TYPE: ClassVar[str] = "error"
    reason: str
    kind: str  # one of ERROR_KINDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", cut_reason(self.reason))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "reason": self.reason, "kind": self.kind}

    @classmethod
    def from_wire(cls, obj: object) -> ErrorReply:
        wire = _REPLY.fields(obj, cls.TYPE, ("reason", "kind"), tagged=True)
        kind = _REPLY.text(wire["kind"], "error.kind", max(map(len, ERROR_KINDS)))
        if kind not in ERROR_KINDS:
            _REPLY.fail(f"error.kind {quote(kind)} is not one of {', '.join(ERROR_KINDS)}")
        return cls(_REPLY.text(wire["reason"], "error.reason", MAX_REASON_CHARS), kind)


Reply: TypeAlias = AuthOk | VoteResult | StatusReply | TallyReply | ErrorReply

CONTROL_REPLIES: MessageSet[Reply] = MessageSet(
    what="reply",
    classes=(AuthOk, VoteResult, StatusReply, TallyReply, ErrorReply),
    codec=_REPLY,
    cap=FrameCap("MAX_CONTROL_REPLY_BYTES", MAX_CONTROL_REPLY_BYTES),
    unknown=UnknownMessageType,
)

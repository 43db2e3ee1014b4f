"""Every exception votechain raises, in one hierarchy that says whose fault it is.

    VotechainError
    ├── BadInput       the other side's fault: a peer's frame or block, a control
    │                  client's request, a tracker's reply, a stored file that breaks
    │                  the rules. Refuse it, say why, keep serving everyone else.
    ├── OurBug         our own mistake (we tried to send what a peer must refuse, a
    │                  worker pool misused). Fail loudly: never blame a peer for it.
    ├── Unavailable    nothing wrong was said, but nothing useful came either: a
    │                  timeout, a closed connection, a node or tracker that is not
    │                  running, a kernel this CPU lacks. Retry later or report it.
    └── CliError       what the command line prints as one line before exiting.

Catch sites name exactly what they expect (`except RemoteProtocolError`, not a
base that would also swallow a LocalProtocolError). The classes that were once
`ValueError`s or `RuntimeError`s keep that base too, so `int()`-style callers
and older tests still see them as such.

This module is the bottom layer: it imports nothing from votechain.
"""

from __future__ import annotations

from typing import Protocol

# An Error or AddResult reason is for a human reading a log. Five hundred
# characters say what went wrong; more would let a peer fill our logs.
MAX_REASON_CHARS = 500


class VotechainError(Exception):
    """The root: everything votechain raises on purpose."""


class BadInput(VotechainError):
    """The other side sent something we must refuse (its fault, not ours)."""


class OurBug(VotechainError):
    """A bug in votechain itself: fail loudly."""


class Unavailable(VotechainError):
    """A timeout, a closed connection, or something that is not running or not there."""


class CliError(VotechainError):
    """A failure to report as one line on stderr, with an exit code (1 unless said)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ================================================================ core: blocks and votes


class _BlockLike(Protocol):
    """What an InvalidBlock needs of its block (errors.py imports no block module)."""

    @property
    def id(self) -> int: ...

    @property
    def hash(self) -> bytes: ...


class EncodingError(BadInput, ValueError):
    """Bytes that do not decode to a well-formed block (the sender's fault)."""


class SignatureError(BadInput, ValueError):
    """A signature or public key that does not verify (the sender's fault)."""


class InvalidBlock(BadInput, ValueError):
    """A block that breaks a chain rule (the sender's fault)."""

    reason = "invalid block"

    def __init__(self, block: _BlockLike, detail: str) -> None:
        super().__init__(f"block {block.id} {block.hash.hex()[:16]}: {self.reason}: {detail}")
        self.block = block
        self.detail = detail


class BadLink(InvalidBlock):
    reason = "does not link to its predecessor"


class FutureTimestamp(InvalidBlock):
    reason = "timestamp too far in the future"


class BadHash(InvalidBlock):
    reason = "hash does not match its contents"


class DifficultyNotMet(InvalidBlock):
    reason = "hash does not meet the difficulty"


class BadSignature(InvalidBlock):
    reason = "bad signature"


class Oversized(InvalidBlock):
    reason = "over a size cap"


class BadGenesis(InvalidBlock):
    reason = "not this network's genesis block"


class DuplicateTransaction(InvalidBlock):
    reason = "transaction already in the chain"


class _RowLike(_BlockLike, Protocol):
    @property
    def detail(self) -> str: ...


class DamagedRow(InvalidBlock):
    """Why NodeState.restore cut the stored chain at an unreadable row (a
    core.node_state.UnreadableRow: undecodable, inconsistent, or missing)."""

    reason = "damaged in the store"

    def __init__(self, row: _RowLike) -> None:
        super().__init__(row, row.detail)
        # Not "block N <hash>: ...": the row holds no block to name.
        self.args = (f"stored row {row.id} {row.detail}",)


class NotAMember(InvalidBlock):
    reason = "author is not a member of this network"


class BadCertificate(BadInput, ValueError):
    """A member certificate, network file or revocation list that does not
    check out: malformed, another network's, not signed by the authority,
    revoked (the presenter's fault, or the file's)."""


class NotAdmitted(VotechainError):
    """This node's data directory holds no valid membership of the network it was
    started for; the message says which command to run."""


class InvalidVote(BadInput, ValueError):
    """A category that breaks the rules of `validate_category` (the caller's fault)."""


# ================================================================ protocol: frames and lines


class RemoteProtocolError(BadInput):
    """The peer sent something we must refuse (the peer's fault).

    The reason may quote the peer's input (a block's unknown keys can be 16
    strings of 2000 characters each), and it goes to our log and back to the
    peer: it is cut to MAX_REASON_CHARS, so no peer can make our log lines long.
    """

    def __init__(self, reason: str) -> None:
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        super().__init__(reason)
        self.reason = reason


class FrameTooLarge(RemoteProtocolError):
    """A length prefix over the frame cap; the stream cannot be resynchronised."""


class MalformedMessage(RemoteProtocolError):
    """A frame that is not a well-formed message: bad msgpack, fields, types or values."""


class UnknownMessageType(MalformedMessage):
    """A well-formed map whose ``type`` tag we do not know."""


class IncompatiblePeer(RemoteProtocolError):
    """The peer's Hello shows it is on another protocol version, chain or difficulty."""


class DeadlineExceeded(RemoteProtocolError):
    """A frame, or the handshake, did not arrive whole in time (the peer's fault)."""


class LocalProtocolError(OurBug):
    """We tried to send a message the peer would have to refuse (our bug)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TrackerProtocolError(BadInput):
    """A client sent the tracker a request it cannot accept (the client's fault)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LineTooLongError(TrackerProtocolError):
    """A line exceeded its cap; the stream cannot be resynchronised."""


class TrackerReplyError(BadInput):
    """The tracker sent a client a reply it cannot accept (the tracker's fault)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ControlProtocolError(RemoteProtocolError):
    """A client sent something that is not a valid control request (the client's fault).

    A RemoteProtocolError like the frame errors it arrives beside, so the control
    server catches one class for everything a client can get wrong."""


# ================================================================ net: connections


class ConnectionClosed(Unavailable):
    """The other side closed (or reset) the connection, or we closed it."""


class TrackerError(Unavailable):
    """Talking to the tracker failed; the message says how."""


class ControlError(VotechainError):
    """A control call failed: the node refused the request, or could not be reached.
    The message says which; the subclasses below say whose fault it was."""


class ControlRefused(ControlError, BadInput):
    """The node refused the request (a bad category, a bad cookie)."""


class ControlReplyError(ControlError, BadInput):
    """The node sent a reply the client cannot accept (the node's fault): bad
    framing, unknown type, missing or mistyped fields."""


class ControlUnavailable(ControlError, Unavailable):
    """The node did not answer, or answered that it could not do it in time."""


class NodeNotRunning(ControlUnavailable):
    """No node is serving the control channel for this data directory."""


class NodeStopping(Unavailable):
    """Raised by a handler whose node is shutting down while a request waits."""


# ================================================================ mining, storage, front ends


class BackendUnavailable(Unavailable, RuntimeError):
    """A miner backend this install or CPU does not have."""


class MinerPoolError(OurBug, RuntimeError):
    """The pool itself failed (our fault): a worker would not start or a job was misused."""


class StoreError(Unavailable, RuntimeError):
    """The database is unusable (missing, another network's, or corrupt)."""


class DamagedStore(StoreError):
    """A stored block read back as history (node/store.py) fails the checks it
    passed when it was stored: the file was damaged or edited since."""

    def __init__(self, block_id: int, problem: str) -> None:
        super().__init__(f"stored block {block_id} {problem}: the store was damaged since the "
                         "node checked it (`votechain verify` says where; the node re-checks "
                         "its chain from there at its next start)")
        self.block_id = block_id


class DemoError(VotechainError):
    """The demo could not go on; the message says why."""

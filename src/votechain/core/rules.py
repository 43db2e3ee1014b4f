"""The chain rules: whether a block may follow its predecessor. Pure: the clock is passed in.

A block is valid after `prev` when, checked cheapest first:
1. its id is prev.id + 1 and its prev_hash is prev.hash (it links);
2. its timestamp is at most MAX_FUTURE_MS ahead of the validator's clock;
3. its hash is SHA-256(content || nonce) recomputed from its fields;
4. its hash has `difficulty` leading zero hex digits;
5. its signature of the hash verifies under its author key;
6. on a members-only network (core/membership.py), its author holds a valid,
   unrevoked certificate for the network at the block's height (a dict
   lookup: certificates are verified once per key, when admitted), checked
   right after the sizes, before any hashing.
Sizes were already bounded when the block was decoded (block.MAX_* caps), and
are checked again here for blocks built in memory.

Each failure raises its own subclass of InvalidBlock, whose message names the
block and the reason: the caller logs it and drops the block, never crashes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from votechain.core import keys
from votechain.core.block import (
    HASH_BYTES,
    MAX_AUTHOR_BYTES,
    MAX_DATA_BYTES,
    MAX_SIGNATURE_BYTES,
    SALT_BYTES,
    Block,
    genesis_block,
    meets_difficulty,
)
from votechain.errors import (
    BadGenesis,
    BadHash,
    BadLink,
    BadSignature,
    DifficultyNotMet,
    FutureTimestamp,
    Oversized,
    SignatureError,
)


class Members(Protocol):
    """What rule 6 needs of core/membership.Members (named here, not imported:
    membership imports this module for the difficulty check)."""

    def check_author(self, block: Block) -> None: ...

DEFAULT_DIFFICULTY = 4
MAX_DIFFICULTY = 16
# Clocks on different machines disagree by seconds, not hours: two minutes of
# slack accepts honest skew while refusing blocks stamped far in the future.
MAX_FUTURE_MS = 2 * 60 * 1000


def check_difficulty(difficulty: int) -> int:
    if not isinstance(difficulty, int) or isinstance(difficulty, bool):
        raise TypeError(f"difficulty must be an int, got {type(difficulty).__name__}")
    if not 0 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in 0..{MAX_DIFFICULTY}, got {difficulty}")
    return difficulty


def check_sizes(block: Block) -> None:
    limits = (
        ("transaction.data", len(block.transaction.data), MAX_DATA_BYTES),
        ("author", len(block.author), MAX_AUTHOR_BYTES),
        ("signature", len(block.signature), MAX_SIGNATURE_BYTES),
    )
    for name, size, cap in limits:
        if size > cap:
            raise Oversized(block, f"{name} is {size} bytes, cap {cap}")
    if len(block.hash) != HASH_BYTES or len(block.prev_hash) != HASH_BYTES:
        raise Oversized(block, f"hash and prev_hash must be {HASH_BYTES} bytes")
    if len(block.transaction.salt) != SALT_BYTES:
        raise Oversized(block, f"the transaction's salt must be {SALT_BYTES} bytes")
    # No separate check of the encoded size: the caps above bound it to ~3.2 KiB,
    # under MAX_BLOCK_BYTES, and re-encoding every block would cost the receive path.


def check_link(block: Block, prev: Block) -> None:
    """Rule 1: `block` comes right after `prev`. Cheap, so callers can do it under a lock."""
    if block.id != prev.id + 1:
        raise BadLink(block, f"id {block.id} does not follow {prev.id}")
    if block.prev_hash != prev.hash:
        raise BadLink(
            block, f"prev_hash {block.prev_hash.hex()[:16]} is not {prev.hash.hex()[:16]}"
        )


def check_block_alone(
    block: Block, *, difficulty: int, now_ms: int, signature: bool = True,
    members: Members | None = None,
) -> None:
    """Rules 2 to 5: everything that needs no other block. This is where the time
    goes (a hash and an RSA verification), so a node runs it before taking any lock.

    `signature=False` skips rule 5 only, the RSA verification (~30 us of the
    ~35 us a block costs): for a node restarting from blocks it verified fully
    when they entered its store (NodeState.restore). Every other rule still
    runs, so an edit to any field of a block is caught by its hash.

    `members` None is an open network (every key may write): the in-process
    tests of everything but membership run on one; `votechain peer` always
    runs a members-only network."""
    if block.transaction.timestamp > now_ms + MAX_FUTURE_MS:
        ahead = (block.transaction.timestamp - now_ms) / 1000
        raise FutureTimestamp(block, f"{ahead:.0f} s ahead of this node's clock")
    check_sizes(block)
    if members is not None:
        members.check_author(block)
    computed = block.computed_hash()
    if computed != block.hash:
        raise BadHash(block, f"recomputed {computed.hex()[:16]}")
    if not meets_difficulty(block.hash, difficulty):
        raise DifficultyNotMet(block, f"needs {difficulty} leading zero hex digits")
    if not signature:
        return
    try:
        keys.verify(block.author, block.signature, block.hash)
    except SignatureError as exc:
        raise BadSignature(block, str(exc)) from exc


class SignedBlock(Protocol):
    """What rule 5 reads of a block. A Block is one; so is the four-field record
    `votechain verify` ships to its worker processes instead of whole blocks."""

    @property
    def id(self) -> int: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def author(self) -> bytes: ...
    @property
    def signature(self) -> bytes: ...


def check_signature(block: SignedBlock) -> None:
    """Rule 5 alone: the signature of the hash verifies under the author key.
    `check_block_alone(signature=False)` then `check_signature` is
    `check_block_alone`, split so the RSA part can run elsewhere."""
    try:
        keys.verify(block.author, block.signature, block.hash)
    except SignatureError as exc:
        raise BadSignature(block, str(exc)) from exc


def validate_block(block: Block, prev: Block, *, difficulty: int, now_ms: int,
                   members: Members | None = None) -> None:
    """Raise an InvalidBlock subclass unless `block` may follow `prev`."""
    check_link(block, prev)
    check_block_alone(block, difficulty=difficulty, now_ms=now_ms, members=members)


def validate_chain(blocks: Iterable[Block], *, difficulty: int, now_ms: int,
                   members: Members | None = None, genesis: Block | None = None) -> int:
    """Check a whole chain from `genesis` (default: the open network's); return its
    height. Raises at the first bad block."""
    iterator = iter(blocks)
    genesis = genesis or genesis_block()
    first = next(iterator, None)
    if first != genesis:
        raise BadGenesis(first or genesis, "the chain must start with this network's genesis")
    prev = genesis
    for block in iterator:
        validate_block(block, prev, difficulty=difficulty, now_ms=now_ms, members=members)
        prev = block
    return prev.id

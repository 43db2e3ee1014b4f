"""Building real, signed blocks quickly for the block, rules, chain and store tests.

Blocks are mined at difficulty 1 or 2 with the pure-Python miner (a few dozen
to a few hundred hashes each) and signed with the fixed test key of
tests/vectors/ (loading a PEM is instant; generating RSA-2048 costs up to
200 ms). A second key is generated once per session, for "wrong author" cases.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from votechain.core.block import HASH_BYTES, SALT_BYTES, Block, Transaction, genesis_block
from votechain.core.keys import NodeKey
from votechain.mining import pure

KEY_FILE = Path(__file__).resolve().parent / "vectors" / "block_key.pem"
# A timestamp safely in the past of any clock a test passes in.
T0 = 1_700_000_000_000
NOW = T0 + 10**9
LOW_DIFFICULTY = 1


@functools.cache
def fixed_key() -> NodeKey:
    return NodeKey.from_pem(KEY_FILE.read_bytes())


@functools.cache
def other_key() -> NodeKey:
    return NodeKey.generate()


def key_for(author: bytes) -> NodeKey:
    """The test key whose public key is `author` (fixed_key or other_key): what a
    connection must prove in its handshake to offer that author's blocks."""
    for key in (fixed_key(), other_key()):
        if key.public_der == author:
            return key
    raise KeyError(f"no test key has the public key {author.hex()[:16]}…")


def tx_for(label: str, timestamp: int = T0) -> Transaction:
    """A transaction whose salt is derived from `label`: same label and
    timestamp, same transaction (and so the same tx_id)."""
    salt = hashlib.sha256(label.encode()).digest()[:SALT_BYTES]
    return Transaction(timestamp=timestamp, data=label.encode(), salt=salt)


def make_block(
    prev: Block,
    tx: Transaction,
    *,
    key: NodeKey | None = None,
    difficulty: int = LOW_DIFFICULTY,
) -> Block:
    """A valid block after `prev`: mined (first nonce from 0) and signed, like a node does."""
    key = key or fixed_key()
    mined = mine_block(prev, tx, author=key.public_der, difficulty=difficulty)
    return replace(mined, signature=key.sign(mined.hash))


def mine_block(prev: Block, tx: Transaction, *, author: bytes,
               difficulty: int = LOW_DIFFICULTY) -> Block:
    """The block after `prev` by `author`, mined (first nonce from 0), not yet signed."""
    template = Block(
        id=prev.id + 1,
        transaction=tx,
        nonce=0,
        prev_hash=prev.hash,
        hash=bytes(HASH_BYTES),
        signature=b"",
        author=author,
    )
    nonce = pure.search(template.content(), difficulty, 0, 2**64)
    assert nonce is not None
    return template.with_nonce(nonce)


def resign(block: Block, key: NodeKey | None = None) -> Block:
    """Re-mine and re-sign `block` after a test changed its fields, so that only the
    change under test is wrong."""
    key = key or fixed_key()
    nonce = pure.search(block.content(), LOW_DIFFICULTY, 0, 2**64)
    assert nonce is not None
    mined = block.with_nonce(nonce)
    return replace(mined, signature=key.sign(mined.hash))


def extend(
    prev: Block, labels: Sequence[str], *, key: NodeKey | None = None, timestamp: int = T0
) -> list[Block]:
    """Blocks after `prev`, one per label (not including `prev`)."""
    blocks: list[Block] = []
    for label in labels:
        blocks.append(make_block(blocks[-1] if blocks else prev, tx_for(label, timestamp),
                                 key=key))
    return blocks


def make_chain(count: int, prefix: str = "v") -> list[Block]:
    """Genesis and `count` blocks after it."""
    genesis = genesis_block()
    return [genesis, *extend(genesis, [f"{prefix}{i}" for i in range(count)])]


def cheap_blocks(prev: Block, labels: Sequence[str], author: bytes = b"cheap") -> list[Block]:
    """Linked blocks after `prev` at difficulty 0 (nonce 0 and the hash it gives),
    unsigned: valid only where stand-alone checks are skipped (`prechecked`
    switches, the unchecked Chain constructor), and thousands a second to build."""
    blocks: list[Block] = []
    for label in labels:
        parent = blocks[-1] if blocks else prev
        template = Block(id=parent.id + 1, transaction=tx_for(label, T0), nonce=0,
                         prev_hash=parent.hash, hash=bytes(HASH_BYTES), signature=b"",
                         author=author)
        blocks.append(template.with_nonce(0))
    return blocks

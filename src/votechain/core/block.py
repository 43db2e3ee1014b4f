"""The block and its transaction: frozen values, one canonical byte encoding, the hash layout.

Hash layout (the miner's speed and every node's check depend on it)::

    tx_id   = SHA-256(msgpack [timestamp, data, salt])
    content = SHA-256(msgpack [id, [timestamp, data, salt], prev_hash, author])
    hash    = SHA-256(content || nonce as 8 bytes big-endian)

A vote's id is not a field anyone chooses: it is the hash of the vote's
content, so no chain can carry different content under an existing vote id
(a rewrite is a different vote, and the original counts as dropped). The
random salt keeps two identical votes cast in the same millisecond apart.

The nonce search never re-hashes the block data: the 40-byte preimage fits in
one SHA-256 block whose first 8 message words (the content) stay constant for a
whole search, so a miner precomputes the rounds that depend only on them.

The encodings below are documented byte for byte in docs/protocol.md; any
change to them changes every hash and breaks the test vectors on purpose.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from votechain.core.codec import MAX_UINT, Codec, Limits, pack
from votechain.errors import EncodingError

HASH_BYTES = 32
# A full SHA-256: a 16-byte id would let the author of a vote find two contents
# with one id in ~2^64 hashes and swap them later; 32 bytes puts that at 2^128.
TX_ID_BYTES = 32
SALT_BYTES = 16
NONCE_BYTES = 8
MAX_NONCE = MAX_UINT
# A vote's data is a category of at most 64 characters (256 bytes of UTF-8);
# 1 KiB leaves room for other applications while keeping every block small.
MAX_DATA_BYTES = 1024
# An RSA-2048 SubjectPublicKeyInfo DER is 294 bytes; allow larger keys but not
# megabytes of junk in a field every node stores forever.
MAX_AUTHOR_BYTES = 1024
MAX_SIGNATURE_BYTES = 1024
# The largest block the fields above allow is about 3.2 KiB; 8 KiB bounds the
# decoder before it looks at a single field.
MAX_BLOCK_BYTES = 8 * 1024

GENESIS_DATA = b"votechain genesis"


@dataclass(frozen=True, slots=True)
class Transaction:
    """One entry on the chain: the seed design's {timestamp, data} (docs/design.md),
    plus a random salt, and the id derived from all three.

    `tx_id` makes a transaction identifiable across forks: when a fork switch
    drops a block, its transaction is mined again and still counted once. It is
    computed, never given (see the module docstring), so equal ids mean equal
    content. `timestamp` is Unix time in milliseconds (an integer, so the
    encoding is exact).
    """

    timestamp: int
    data: bytes
    salt: bytes
    tx_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tx_id", transaction_id(self.timestamp, self.data, self.salt))

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map of a transaction, inside a block's or alone (a Relay)."""
        return {"timestamp": self.timestamp, "data": self.data, "salt": self.salt}

    @classmethod
    def from_wire(cls, obj: object) -> Transaction:
        tx = _CODEC.fields(obj, "transaction", _TX_KEYS)
        return cls(
            timestamp=_CODEC.uint(tx["timestamp"], "transaction.timestamp"),
            data=_CODEC.binary(tx["data"], "transaction.data", MAX_DATA_BYTES),
            salt=_CODEC.binary(tx["salt"], "transaction.salt", SALT_BYTES, exact=True),
        )


@dataclass(frozen=True, slots=True)
class Block:
    id: int
    transaction: Transaction
    nonce: int
    prev_hash: bytes
    hash: bytes
    signature: bytes
    # The signer's RSA public key (DER SubjectPublicKeyInfo): a stored chain can be
    # re-verified long after it was received, not only at the moment it arrived.
    author: bytes

    def content(self) -> bytes:
        return content_digest(self.id, self.transaction, self.prev_hash, self.author)

    def content_parts(self) -> tuple[bytes, bytes]:
        """(head, tail): content() is SHA-256(head || prev_hash || tail) whatever
        the prev_hash, so a miner worker can build the next block's content the
        moment it finds this one's parent (mining/pool.py, MinerPool.follow)."""
        return content_parts(self.id, self.transaction, self.author)

    def computed_hash(self) -> bytes:
        return block_hash(self.content(), self.nonce)

    def with_nonce(self, nonce: int) -> Block:
        return replace(self, nonce=nonce, hash=block_hash(self.content(), nonce))

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map that carries a block on the wire and in storage."""
        return {
            "id": self.id,
            "transaction": self.transaction.to_wire(),
            "nonce": self.nonce,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "signature": self.signature,
            "author": self.author,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Block:
        """Build a block from a decoded map, checking every field's type and size."""
        fields = _CODEC.fields(obj, "block", _BLOCK_KEYS)
        return cls(
            id=_CODEC.uint(fields["id"], "id"),
            transaction=Transaction.from_wire(fields["transaction"]),
            nonce=_CODEC.uint(fields["nonce"], "nonce"),
            prev_hash=_CODEC.binary(fields["prev_hash"], "prev_hash", HASH_BYTES, exact=True),
            hash=_CODEC.binary(fields["hash"], "hash", HASH_BYTES, exact=True),
            signature=_CODEC.binary(fields["signature"], "signature", MAX_SIGNATURE_BYTES),
            author=_CODEC.binary(fields["author"], "author", MAX_AUTHOR_BYTES),
        )

    def encode(self) -> bytes:
        return pack(self.to_wire())

    @classmethod
    def decode(cls, raw: bytes) -> Block:
        if len(raw) > MAX_BLOCK_BYTES:
            raise EncodingError(f"block is {len(raw)} bytes, over the cap of {MAX_BLOCK_BYTES}")
        return cls.from_wire(unpack(raw))


_BLOCK_KEYS = ("id", "transaction", "nonce", "prev_hash", "hash", "signature", "author")
_TX_KEYS = ("timestamp", "data", "salt")

# Limits for a stored block, decoded on its own (a peer's frame has its own,
# in protocol/peer.py). A block is two small maps and no arrays, so 16 entries
# is generous; refusing a larger declared length stops a few header bytes from
# reserving a large container. No str or bin can be longer than the whole
# block, which Block.decode caps at MAX_BLOCK_BYTES before decoding.
BLOCK_LIMITS = Limits(
    max_str_len=MAX_BLOCK_BYTES,
    max_bin_len=MAX_BLOCK_BYTES,
    max_array_len=16,
    max_map_len=16,
)
_CODEC = Codec(BLOCK_LIMITS, EncodingError)


def unpack(raw: bytes) -> object:
    """Decode exactly one msgpack object under BLOCK_LIMITS; trailing bytes, str/bin
    confusion and non-string map keys are the sender's error (EncodingError)."""
    return _CODEC.unpack(raw)


def transaction_id(timestamp: int, data: bytes, salt: bytes) -> bytes:
    return hashlib.sha256(pack([timestamp, data, salt])).digest()


def content_digest(block_id: int, tx: Transaction, prev_hash: bytes, author: bytes) -> bytes:
    encoded = pack([block_id, [tx.timestamp, tx.data, tx.salt], prev_hash, author])
    return hashlib.sha256(encoded).digest()


# msgpack of [id, tx, prev_hash, author]: a 4-element fixarray, then its
# elements one after the other; prev_hash is always a 32-byte bin 8.
_ARRAY_OF_FOUR = b"\x94"
_HASH_BIN_HEADER = b"\xc4" + bytes([HASH_BYTES])


def content_parts(block_id: int, tx: Transaction, author: bytes) -> tuple[bytes, bytes]:
    """The bytes content_digest hashes before and after prev_hash (msgpack
    encodes an array as its header then each element, so the pieces concatenate
    to the whole); tests/test_block.py checks it against content_digest."""
    head = _ARRAY_OF_FOUR + pack(block_id) + pack([tx.timestamp, tx.data, tx.salt])
    return head + _HASH_BIN_HEADER, pack(author)


def block_hash(content: bytes, nonce: int) -> bytes:
    return hashlib.sha256(content + nonce.to_bytes(NONCE_BYTES, "big")).digest()


def leading_zero_hex_digits(digest: bytes) -> int:
    hex_digest = digest.hex()
    return len(hex_digest) - len(hex_digest.lstrip("0"))


def meets_difficulty(digest: bytes, difficulty: int) -> bool:
    # Whole zero bytes, then one nibble for an odd difficulty: no hex string needed.
    whole, half = divmod(difficulty, 2)
    if any(digest[:whole]):
        return False
    return not half or digest[whole] >> 4 == 0


def genesis_block(network: bytes = GENESIS_DATA) -> Block:
    """The block every node of one network derives identically: unsigned,
    unmined, id 0. Its data is the network's descriptor (core/membership.py:
    name, difficulty, authority key), so the genesis hash names the network and
    two networks never share a chain. The default is the open network's, used
    by in-process tests of everything but membership (docs/security.md)."""
    tx = Transaction(timestamp=0, data=network, salt=bytes(SALT_BYTES))
    content = content_digest(0, tx, bytes(HASH_BYTES), b"")
    return Block(
        id=0,
        transaction=tx,
        nonce=0,
        prev_hash=bytes(HASH_BYTES),
        hash=block_hash(content, 0),
        signature=b"",
        author=b"",
    )

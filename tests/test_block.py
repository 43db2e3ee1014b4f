"""The block's canonical encoding: exact round trips, and a decoder that refuses
everything else (trailing bytes, missing or unknown fields, wrong types, sizes
over their caps) with EncodingError, the sender's fault."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockkit import make_chain
from votechain.core.block import (
    GENESIS_DATA,
    HASH_BYTES,
    MAX_AUTHOR_BYTES,
    MAX_BLOCK_BYTES,
    MAX_DATA_BYTES,
    MAX_NONCE,
    MAX_SIGNATURE_BYTES,
    SALT_BYTES,
    TX_ID_BYTES,
    Block,
    Transaction,
    block_hash,
    content_digest,
    genesis_block,
    leading_zero_hex_digits,
    meets_difficulty,
    transaction_id,
)
from votechain.errors import EncodingError

CHAIN = make_chain(2)
BLOCK = CHAIN[2]


def packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def wire(**changes: Any) -> dict[str, Any]:
    """BLOCK's wire map with top-level fields replaced."""
    return {**BLOCK.to_wire(), **changes}


def with_tx(**changes: Any) -> dict[str, Any]:
    obj = BLOCK.to_wire()
    obj["transaction"] = {**obj["transaction"], **changes}
    return obj


blocks_strategy = st.builds(
    Block,
    id=st.integers(0, MAX_NONCE),
    transaction=st.builds(
        Transaction,
        timestamp=st.integers(0, MAX_NONCE),
        data=st.binary(max_size=MAX_DATA_BYTES),
        salt=st.binary(min_size=SALT_BYTES, max_size=SALT_BYTES),
    ),
    nonce=st.integers(0, MAX_NONCE),
    prev_hash=st.binary(min_size=HASH_BYTES, max_size=HASH_BYTES),
    hash=st.binary(min_size=HASH_BYTES, max_size=HASH_BYTES),
    signature=st.binary(max_size=MAX_SIGNATURE_BYTES),
    author=st.binary(max_size=MAX_AUTHOR_BYTES),
)


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("block", CHAIN, ids=lambda b: f"block{b.id}")
def test_round_trip_is_bit_exact(block: Block) -> None:
    raw = block.encode()
    decoded = Block.decode(raw)
    assert decoded == block
    assert decoded.encode() == raw
    assert decoded.computed_hash() == block.hash


@settings(max_examples=60, derandomize=True, deadline=None)
@given(blocks_strategy)
def test_round_trip_any_block_within_caps(block: Block) -> None:
    raw = block.encode()
    assert len(raw) <= MAX_BLOCK_BYTES  # the caps alone bound the encoding
    assert Block.decode(raw) == block
    assert Block.decode(raw).encode() == raw
    assert Block.decode(raw).transaction.tx_id == block.transaction.tx_id


def test_largest_block_fits_the_cap() -> None:
    biggest = Block(
        id=MAX_NONCE,
        transaction=Transaction(MAX_NONCE, b"\xff" * MAX_DATA_BYTES, b"\xff" * SALT_BYTES),
        nonce=MAX_NONCE,
        prev_hash=b"\xff" * HASH_BYTES,
        hash=b"\xff" * HASH_BYTES,
        signature=b"\xff" * MAX_SIGNATURE_BYTES,
        author=b"\xff" * MAX_AUTHOR_BYTES,
    )
    assert len(biggest.encode()) <= MAX_BLOCK_BYTES
    assert Block.decode(biggest.encode()) == biggest


def test_hash_layout() -> None:
    """tx_id = SHA-256(msgpack [timestamp, data, salt]);
    content = SHA-256(msgpack [id, [timestamp, data, salt], prev_hash, author]);
    hash = SHA-256(content || nonce as 8 bytes big-endian)."""
    tx = BLOCK.transaction
    assert tx.tx_id == hashlib.sha256(packb([tx.timestamp, tx.data, tx.salt])).digest()
    assert len(tx.tx_id) == TX_ID_BYTES
    body = packb([BLOCK.id, [tx.timestamp, tx.data, tx.salt], BLOCK.prev_hash, BLOCK.author])
    content = hashlib.sha256(body).digest()
    assert BLOCK.content() == content == content_digest(BLOCK.id, tx, BLOCK.prev_hash,
                                                        BLOCK.author)
    assert BLOCK.hash == hashlib.sha256(content + BLOCK.nonce.to_bytes(8, "big")).digest()
    assert block_hash(content, BLOCK.nonce) == BLOCK.hash
    # The nonce, signature and hash are not part of the content: re-mining keeps it.
    assert BLOCK.with_nonce(BLOCK.nonce + 1).content() == content
    assert replace(BLOCK, signature=b"x").content() == content


@settings(max_examples=60, derandomize=True, deadline=None)
@given(blocks_strategy)
def test_content_parts_surround_the_prev_hash(block: Block) -> None:
    """What a miner worker chains a follow-on job with (MinerPool.follow): the
    content is SHA-256(head || prev_hash || tail), for any block's fields."""
    head, tail = block.content_parts()
    assert hashlib.sha256(head + block.prev_hash + tail).digest() == block.content()


def test_transaction_id_is_derived_from_every_field() -> None:
    """No one chooses a tx_id: it is the hash of the content, so two
    transactions with one id and different content cannot be built; changing
    any field (the salt included) changes the id."""
    tx = BLOCK.transaction
    assert tx.tx_id == transaction_id(tx.timestamp, tx.data, tx.salt)
    assert Transaction(tx.timestamp, tx.data, tx.salt).tx_id == tx.tx_id
    variants = [
        replace(tx, timestamp=tx.timestamp + 1),
        replace(tx, data=tx.data + b"!"),
        replace(tx, salt=bytes(b ^ 1 for b in tx.salt)),
    ]
    ids = {tx.tx_id, *(v.tx_id for v in variants)}
    assert len(ids) == 4  # every change is a different vote
    for variant in variants:  # and the id follows the content it was rebuilt with
        assert variant.tx_id == transaction_id(variant.timestamp, variant.data, variant.salt)
    # The id is no field of the transaction's own: not given, not compared, not sent.
    with pytest.raises(TypeError):
        Transaction(tx.timestamp, tx.data, tx.salt, tx.tx_id)  # type: ignore[call-arg]
    assert "tx_id" not in BLOCK.to_wire()["transaction"]


def test_genesis_is_deterministic() -> None:
    genesis = genesis_block()
    assert genesis == genesis_block()
    assert genesis.encode() == genesis_block().encode()
    assert genesis.id == 0 and genesis.nonce == 0
    assert genesis.prev_hash == bytes(HASH_BYTES)
    assert genesis.transaction == Transaction(0, GENESIS_DATA, bytes(SALT_BYTES))
    assert genesis.signature == b"" and genesis.author == b""
    assert genesis.computed_hash() == genesis.hash
    assert Block.decode(genesis.encode()) == genesis


def test_genesis_names_its_network() -> None:
    """The genesis carries the network's descriptor: another descriptor, another
    genesis hash, so two networks never share a chain."""
    other = genesis_block(b"another network")
    assert other == genesis_block(b"another network")
    assert other.transaction.data == b"another network"
    assert other.hash != genesis_block().hash
    assert other.computed_hash() == other.hash


# --- the decoder refuses -----------------------------------------------------------------


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(EncodingError, match="trailing"):
        Block.decode(BLOCK.encode() + b"\x00")
    with pytest.raises(EncodingError, match="trailing"):
        Block.decode(BLOCK.encode() + BLOCK.encode())


@pytest.mark.parametrize("raw", [b"", b"\xc1", BLOCK.encode()[:-1], b"\x87"],
                         ids=["empty", "reserved-byte", "truncated", "map-header-only"])
def test_malformed_msgpack_rejected(raw: bytes) -> None:
    with pytest.raises(EncodingError):
        Block.decode(raw)


def test_over_cap_raw_size_rejected_before_decoding() -> None:
    # A valid msgpack object, just too big: refused on its length alone.
    raw = packb(wire(author=b"a" * MAX_BLOCK_BYTES))
    with pytest.raises(EncodingError, match=str(MAX_BLOCK_BYTES)):
        Block.decode(raw)
    with pytest.raises(EncodingError, match=str(MAX_BLOCK_BYTES)):
        Block.decode(b"\x00" * (MAX_BLOCK_BYTES + 1))


@pytest.mark.parametrize("field", ["id", "transaction", "nonce", "prev_hash", "hash",
                                   "signature", "author"])
def test_missing_field_rejected(field: str) -> None:
    obj = BLOCK.to_wire()
    del obj[field]
    with pytest.raises(EncodingError, match=f"missing {field}"):
        Block.decode(packb(obj))


@pytest.mark.parametrize("field", ["timestamp", "data", "salt"])
def test_missing_tx_field_rejected(field: str) -> None:
    obj = BLOCK.to_wire()
    del obj["transaction"][field]
    with pytest.raises(EncodingError, match=f"transaction is missing {field}"):
        Block.decode(packb(obj))


def test_unknown_fields_rejected() -> None:
    with pytest.raises(EncodingError, match="unknown fields extra"):
        Block.decode(packb(wire(extra=1)))
    with pytest.raises(EncodingError, match="transaction has unknown fields extra"):
        Block.decode(packb(with_tx(extra=1)))
    # A tx_id sent along (as version 1 did) is refused: the id is derived, never taken.
    with pytest.raises(EncodingError, match="transaction has unknown fields tx_id"):
        Block.decode(packb(with_tx(tx_id=BLOCK.transaction.tx_id)))


def test_non_string_keys_rejected() -> None:
    obj: dict[Any, Any] = BLOCK.to_wire()
    obj[1] = 1
    with pytest.raises(EncodingError):
        Block.decode(packb(obj))


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2, 3],
        "block",
        None,
        wire(id="1"),
        wire(id=True),
        wire(id=-1),
        wire(id=1.0),
        wire(nonce=b"\x00"),
        wire(nonce=-1),
        wire(prev_hash="00" * HASH_BYTES),  # str where bin is required
        wire(hash=list(BLOCK.hash)),
        wire(signature=None),
        wire(author="author"),
        wire(transaction=[0, b"", BLOCK.transaction.salt]),
        with_tx(salt="x" * SALT_BYTES),
        with_tx(timestamp="0"),
        with_tx(timestamp=-5),
        with_tx(data="alice"),
    ],
    ids=lambda o: repr(o)[:40],
)
def test_wrong_types_rejected(obj: object) -> None:
    with pytest.raises(EncodingError):
        Block.decode(packb(obj))


@pytest.mark.parametrize(
    "obj",
    [
        wire(prev_hash=bytes(HASH_BYTES - 1)),
        wire(prev_hash=bytes(HASH_BYTES + 1)),
        wire(hash=bytes(HASH_BYTES + 1)),
        wire(signature=bytes(MAX_SIGNATURE_BYTES + 1)),
        wire(author=bytes(MAX_AUTHOR_BYTES + 1)),
        with_tx(salt=bytes(SALT_BYTES + 1)),
        with_tx(salt=bytes(SALT_BYTES - 1)),
        with_tx(data=bytes(MAX_DATA_BYTES + 1)),
    ],
    ids=["prev_hash-short", "prev_hash-long", "hash-long", "signature", "author",
         "salt-long", "salt-short", "data"],
)
def test_oversized_or_wrong_length_fields_rejected(obj: dict[str, Any]) -> None:
    raw = packb(obj)
    assert len(raw) <= MAX_BLOCK_BYTES  # the field cap, not the raw cap, refuses it
    with pytest.raises(EncodingError):
        Block.decode(raw)


def test_integers_over_64_bits_rejected() -> None:
    # msgpack cannot carry 2**64, but the decoder's own range check is the guard.
    with pytest.raises(EncodingError, match="out of range"):
        Block.from_wire(wire(nonce=2**64))
    with pytest.raises(EncodingError, match="out of range"):
        Block.from_wire(with_tx(timestamp=2**64))


def test_deeply_nested_input_is_an_encoding_error() -> None:
    raw = b"\x91" * 5000 + b"\x00"  # [[[[...0...]]]], under the raw cap
    with pytest.raises(EncodingError):
        Block.decode(raw)


# --- difficulty --------------------------------------------------------------------------


@settings(max_examples=300, derandomize=True)
@given(
    zeros=st.integers(0, 64),
    tail=st.binary(min_size=HASH_BYTES, max_size=HASH_BYTES),
    difficulty=st.integers(0, 16),
)
def test_meets_difficulty_agrees_with_leading_zero_hex_digits(
    zeros: int, tail: bytes, difficulty: int
) -> None:
    # Force `zeros` leading zero nibbles so that every difficulty gets hits and misses.
    digest = (int.from_bytes(tail, "big") >> (4 * zeros)).to_bytes(HASH_BYTES, "big")
    assert leading_zero_hex_digits(digest) >= zeros
    assert meets_difficulty(digest, difficulty) == (leading_zero_hex_digits(digest) >= difficulty)


@pytest.mark.parametrize(
    ("digest", "digits"),
    [
        (bytes(HASH_BYTES), 64),
        (b"\x0f" + b"\xff" * 31, 1),
        (b"\x00\x10" + b"\xff" * 30, 2),
        (b"\x00\x01" + b"\xff" * 30, 3),
        (b"\x10" + bytes(31), 0),
    ],
)
def test_leading_zero_hex_digits(digest: bytes, digits: int) -> None:
    assert leading_zero_hex_digits(digest) == digits
    assert meets_difficulty(digest, digits)
    if digits < 64:
        assert not meets_difficulty(digest, digits + 1)

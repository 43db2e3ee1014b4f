"""The chain rules, one broken field at a time: each is refused with its own
InvalidBlock subclass, and only that field is wrong (the block is re-mined and
re-signed after the change, so no earlier rule masks it)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from blockkit import NOW, T0, extend, fixed_key, make_block, make_chain, other_key, resign, tx_for
from votechain.core.block import (
    MAX_AUTHOR_BYTES,
    MAX_DATA_BYTES,
    MAX_SIGNATURE_BYTES,
    SALT_BYTES,
    genesis_block,
)
from votechain.core.rules import (
    MAX_DIFFICULTY,
    MAX_FUTURE_MS,
    check_difficulty,
    validate_block,
    validate_chain,
)
from votechain.errors import (
    BadGenesis,
    BadHash,
    BadLink,
    BadSignature,
    DifficultyNotMet,
    FutureTimestamp,
    InvalidBlock,
    Oversized,
)

GENESIS = genesis_block()
GOOD = make_block(GENESIS, tx_for("good"), difficulty=2)


def validate(block: object, prev: object = GENESIS, difficulty: int = 1,
             now_ms: int = NOW) -> None:
    validate_block(block, prev, difficulty=difficulty, now_ms=now_ms)  # type: ignore[arg-type]


def test_good_block_accepted() -> None:
    validate(GOOD, difficulty=2)
    validate(GOOD, difficulty=0)


def test_bad_id() -> None:
    for block_id in (0, 2, GOOD.id + 10**6):
        with pytest.raises(BadLink, match="does not follow"):
            validate(resign(replace(GOOD, id=block_id)))


def test_bad_prev_hash() -> None:
    with pytest.raises(BadLink, match="prev_hash"):
        validate(resign(replace(GOOD, prev_hash=b"\x01" * 32)))


def test_link_checked_against_the_given_predecessor() -> None:
    other_parent = make_block(GENESIS, tx_for("other"))
    with pytest.raises(BadLink):
        validate(GOOD, prev=other_parent)


def test_future_timestamp() -> None:
    tx = replace(GOOD.transaction, timestamp=NOW + MAX_FUTURE_MS + 1)
    with pytest.raises(FutureTimestamp, match="future"):
        validate(resign(replace(GOOD, transaction=tx)))
    # Exactly at the allowed skew is still fine.
    at_limit = resign(replace(GOOD, transaction=replace(tx, timestamp=NOW + MAX_FUTURE_MS)))
    validate(at_limit)


def test_bad_hash() -> None:
    # A field changed after mining: the stored hash no longer matches the contents.
    changed = replace(GOOD, transaction=replace(GOOD.transaction, data=b"bob"))
    with pytest.raises(BadHash):
        validate(changed)
    with pytest.raises(BadHash):
        validate(replace(GOOD, nonce=GOOD.nonce + 1))
    with pytest.raises(BadHash):
        validate(replace(GOOD, hash=bytes(32)))


def test_difficulty_not_met() -> None:
    # A block mined at 2 leading zero digits: correct hash, but not enough work for 5.
    with pytest.raises(DifficultyNotMet, match="5 leading zero"):
        validate(GOOD, difficulty=5)
    # The same contents at a nonce whose hash has no leading zero.
    nonce = next(n for n in range(1000) if GOOD.with_nonce(n).hash[0] >> 4)
    weak = GOOD.with_nonce(nonce)
    weak = replace(weak, signature=fixed_key().sign(weak.hash))
    with pytest.raises(DifficultyNotMet):
        validate(weak, difficulty=1)


def test_bad_signature() -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        validate(replace(GOOD, signature=bytes(len(GOOD.signature))))
    with pytest.raises(BadSignature):
        validate(replace(GOOD, signature=b""))


def test_signature_by_another_key_than_the_author() -> None:
    # Signed by other_key but claims fixed_key as author (the contents name the author,
    # so the block is re-mined first: only the signature is wrong).
    mined = resign(GOOD)
    with pytest.raises(BadSignature):
        validate(replace(mined, signature=other_key().sign(mined.hash)))


def test_author_swapped_for_another_key() -> None:
    # Claims other_key as author but keeps fixed_key's signature.
    block = resign(replace(GOOD, author=other_key().public_der))
    block = replace(block, signature=fixed_key().sign(block.hash))
    with pytest.raises(BadSignature):
        validate(block)
    # Properly signed by other_key, it is valid: any RSA-2048 key may author a block.
    validate(make_block(GENESIS, tx_for("x"), key=other_key()))


@pytest.mark.parametrize("author", [b"", b"garbage", b"\x30\x82\x01\x22" + bytes(290)],
                         ids=["empty", "garbage", "der-header-then-zeros"])
def test_garbage_author(author: bytes) -> None:
    with pytest.raises(BadSignature, match="not a valid DER public key"):
        validate(resign(replace(GOOD, author=author)))


def test_author_key_not_rsa_or_too_small() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def der(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
        return private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    with pytest.raises(BadSignature, match="not RSA"):
        validate(resign(replace(GOOD, author=der(ec.generate_private_key(ec.SECP256R1())))))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(BadSignature, match="1024 bits"):
        validate(resign(replace(GOOD, author=der(small))))


@pytest.mark.parametrize(
    ("field", "size"),
    [("data", MAX_DATA_BYTES + 1), ("author", MAX_AUTHOR_BYTES + 1),
     ("signature", MAX_SIGNATURE_BYTES + 1), ("salt", SALT_BYTES - 1),
     ("salt", SALT_BYTES + 1), ("prev_hash", 33)],
)
def test_oversized(field: str, size: int) -> None:
    blob = b"\x01" * size
    tx = GOOD.transaction
    block = {
        "data": replace(GOOD, transaction=replace(tx, data=blob)),
        "salt": replace(GOOD, transaction=replace(tx, salt=blob)),
        "author": replace(GOOD, author=blob),
        "signature": replace(GOOD, signature=blob),
        "prev_hash": replace(GOOD, prev_hash=blob),
    }[field]
    if field not in ("signature", "prev_hash"):
        block = resign(block)
    # prev_hash is checked for linking first: hand it a parent whose hash matches.
    prev = replace(GENESIS, hash=blob) if field == "prev_hash" else GENESIS
    with pytest.raises(Oversized, match=r"cap|must be"):
        validate(block, prev=prev)


def test_errors_name_the_block_and_reason() -> None:
    with pytest.raises(InvalidBlock) as info:
        validate(replace(GOOD, hash=bytes(32)))
    assert info.value.block.id == 1
    assert f"block {GOOD.id} " in str(info.value)
    assert BadHash.reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_check_difficulty() -> None:
    for good in (0, 4, MAX_DIFFICULTY):
        assert check_difficulty(good) == good
    for bad in (-1, MAX_DIFFICULTY + 1):
        with pytest.raises(ValueError):
            check_difficulty(bad)
    for wrong in (True, 1.0, "4", None):
        with pytest.raises(TypeError):
            check_difficulty(wrong)  # type: ignore[arg-type]


# --- whole chains ------------------------------------------------------------------------


CHAIN = make_chain(4)


def test_validate_chain_returns_height() -> None:
    assert validate_chain(CHAIN, difficulty=1, now_ms=NOW) == 4
    assert validate_chain(iter(CHAIN), difficulty=1, now_ms=NOW) == 4
    assert validate_chain([GENESIS], difficulty=1, now_ms=NOW) == 0


def test_validate_chain_needs_our_genesis() -> None:
    with pytest.raises(BadGenesis):
        validate_chain([], difficulty=1, now_ms=NOW)
    with pytest.raises(BadGenesis):
        validate_chain(CHAIN[1:], difficulty=1, now_ms=NOW)
    fake = replace(GENESIS, transaction=replace(GENESIS.transaction, data=b"other network"))
    with pytest.raises(BadGenesis):
        validate_chain([fake.with_nonce(0), *CHAIN[1:]], difficulty=1, now_ms=NOW)


def test_validate_chain_stops_at_first_bad_block() -> None:
    broken = [*CHAIN[:3], replace(CHAIN[3], signature=bytes(256)), CHAIN[4]]
    with pytest.raises(BadSignature) as info:
        validate_chain(broken, difficulty=1, now_ms=NOW)
    assert info.value.block.id == 3
    gap = [*CHAIN[:2], *CHAIN[3:]]
    with pytest.raises(BadLink):
        validate_chain(gap, difficulty=1, now_ms=NOW)
    with pytest.raises(DifficultyNotMet):
        validate_chain(CHAIN, difficulty=16, now_ms=NOW)
    with pytest.raises(FutureTimestamp):
        validate_chain(CHAIN, difficulty=1, now_ms=T0 - MAX_FUTURE_MS - 1)


def test_validate_chain_rejects_a_branch_spliced_in() -> None:
    branch = extend(CHAIN[2], ["b0", "b1"])
    assert validate_chain([*CHAIN[:3], *branch], difficulty=1, now_ms=NOW) == 4
    with pytest.raises(BadLink):
        validate_chain([*CHAIN[:4], branch[1]], difficulty=1, now_ms=NOW)

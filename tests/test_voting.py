"""Votes and the tally, pure: transactions and blocks in, counts out."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from votechain.core.block import (
    HASH_BYTES,
    MAX_DATA_BYTES,
    SALT_BYTES,
    TX_ID_BYTES,
    Block,
    Transaction,
    genesis_block,
)
from votechain.core.voting import (
    MAX_CATEGORY_CHARS,
    category_of,
    tally,
    validate_category,
    vote_transaction,
)
from votechain.errors import InvalidVote


def chain_of(*txs: Transaction) -> list[Block]:
    """Blocks carrying `txs` after genesis; the tally reads only ids and transactions."""
    blocks = [genesis_block()]
    for i, tx in enumerate(txs, start=1):
        blocks.append(
            Block(
                id=i,
                transaction=tx,
                nonce=0,
                prev_hash=blocks[-1].hash,
                hash=bytes([i % 256]) * HASH_BYTES,
                signature=b"",
                author=b"",
            )
        )
    return blocks


def vote(category: str, n: int) -> Transaction:
    """Vote number `n`: the same (category, n), the same transaction and tx_id."""
    return vote_transaction(category, now_ms=1_700_000_000_000 + n,
                            salt=n.to_bytes(SALT_BYTES, "big"))


# ---------------------------------------------------------------- categories


@pytest.mark.parametrize(
    ("text", "expected"),
    [("alice", "alice"), ("  Bob\t", "Bob"), ("x" * MAX_CATEGORY_CHARS, "x" * 64), ("é🗳", "é🗳")],
)
def test_valid_categories_are_stripped(text: str, expected: str) -> None:
    assert validate_category(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("x" * (MAX_CATEGORY_CHARS + 1), "at most 64"),
        ("a\nb", "control"),
        ("a\x00b", "control"),
        ("a\u202eb", "control"),  # right-to-left override: hides text in a printed tally
        ("a\ud800b", "control"),  # lone surrogate: not encodable as UTF-8
    ],
)
def test_invalid_categories_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidVote, match=reason):
        validate_category(text)


def test_length_counts_characters_not_bytes() -> None:
    four_byte = "🗳" * MAX_CATEGORY_CHARS
    assert validate_category(four_byte) == four_byte
    assert len(four_byte.encode()) <= MAX_DATA_BYTES


# ---------------------------------------------------------------- transactions


def test_vote_transaction_carries_the_canonical_category() -> None:
    tx = vote_transaction("  alice ", now_ms=123)
    assert tx.data == b"alice"
    assert tx.timestamp == 123
    assert len(tx.tx_id) == TX_ID_BYTES
    assert category_of(tx) == "alice"


def test_tx_ids_are_random() -> None:
    # The same category in the same millisecond: a fresh salt, so another vote.
    txs = [vote_transaction("alice", now_ms=0) for _ in range(100)]
    assert len({tx.salt for tx in txs}) == 100 and len({tx.tx_id for tx in txs}) == 100
    assert all(len(tx.salt) == SALT_BYTES for tx in txs)


def test_a_given_salt_makes_the_vote_reproducible() -> None:
    salt = bytes(range(SALT_BYTES))
    one = vote_transaction(" alice", now_ms=5, salt=salt)
    assert one == vote_transaction("alice ", now_ms=5, salt=salt)
    assert one.tx_id == vote_transaction("alice", now_ms=5, salt=salt).tx_id
    assert one.salt == salt


def test_vote_transaction_rejects_bad_input() -> None:
    with pytest.raises(InvalidVote):
        vote_transaction("", now_ms=0)
    with pytest.raises(ValueError, match="salt must be 16 bytes, got 5"):
        vote_transaction("alice", now_ms=0, salt=b"short")
    with pytest.raises(ValueError, match="salt must be 16 bytes, got 17"):
        vote_transaction("alice", now_ms=0, salt=bytes(SALT_BYTES + 1))
    with pytest.raises(ValueError, match="negative"):
        vote_transaction("alice", now_ms=-1)


@pytest.mark.parametrize(
    "data", [b"", b"\xff\xfe", b" alice", b"a\nb", b"x" * (4 * MAX_CATEGORY_CHARS + 1)]
)
def test_data_that_is_not_a_vote(data: bytes) -> None:
    assert category_of(Transaction(timestamp=1, data=data, salt=bytes(range(16)))) is None


def test_the_genesis_transaction_is_not_a_vote() -> None:
    assert category_of(genesis_block().transaction) is None


@given(st.text(min_size=1, max_size=MAX_CATEGORY_CHARS))
def test_category_round_trip(text: str) -> None:
    try:
        canonical = validate_category(text)
    except InvalidVote:
        return
    assert category_of(vote_transaction(text, now_ms=0)) == canonical


CAFE_NFC = "caf\u00e9"  # e with acute, one code point: how most keyboards type it
CAFE_NFD = "cafe\u0301"  # e, then a combining acute: the same text, decomposed


def test_a_category_is_normalised_to_nfc() -> None:
    assert CAFE_NFC != CAFE_NFD
    assert validate_category(CAFE_NFD) == validate_category(CAFE_NFC) == CAFE_NFC
    assert vote_transaction(CAFE_NFD, now_ms=0).data == CAFE_NFC.encode("utf-8")
    # The cap counts characters after normalisation: 64 decomposed letters fit.
    assert validate_category("e\u0301" * MAX_CATEGORY_CHARS) == "\u00e9" * MAX_CATEGORY_CHARS


@given(st.text(min_size=1, max_size=MAX_CATEGORY_CHARS))
def test_the_canonical_form_is_canonical(text: str) -> None:
    try:
        canonical = validate_category(text)
    except InvalidVote:
        return
    assert validate_category(canonical) == canonical
    assert unicodedata.is_normalized("NFC", canonical)


def test_data_not_in_nfc_is_not_a_vote() -> None:
    nfd = Transaction(timestamp=1, data=CAFE_NFD.encode("utf-8"), salt=bytes(range(16)))
    assert category_of(nfd) is None


def test_both_encodings_cast_one_category_and_only_nfc_data_counts() -> None:
    cast_nfd, cast_nfc = vote(CAFE_NFD, 1), vote(CAFE_NFC, 2)
    # A hand-made block carrying the NFD bytes: not made by vote_transaction.
    raw_nfd = Transaction(timestamp=3, data=CAFE_NFD.encode("utf-8"), salt=bytes(SALT_BYTES))
    assert tally(chain_of(cast_nfd, cast_nfc, raw_nfd)) == {CAFE_NFC: 2}


# ---------------------------------------------------------------- tally


def test_tally_counts_per_category_sorted_by_count_then_name() -> None:
    blocks = chain_of(vote("bob", 1), vote("alice", 2), vote("carol", 3), vote("bob", 4))
    result = tally(blocks)
    assert result == {"bob": 2, "alice": 1, "carol": 1}
    assert list(result) == ["bob", "alice", "carol"]


def test_tally_of_genesis_only_is_empty() -> None:
    assert tally([genesis_block()]) == {}


def test_the_same_vote_mined_twice_counts_once() -> None:
    # After a fork switch the dropped block's vote is mined again: same tx_id.
    again = vote("alice", 1)
    assert tally(chain_of(again, vote("bob", 2), again)) == {"alice": 1, "bob": 1}


def test_tally_skips_transactions_that_are_not_votes() -> None:
    junk = Transaction(timestamp=5, data=b"\x00\x01", salt=bytes(SALT_BYTES))
    assert tally(chain_of(junk, vote("alice", 1))) == {"alice": 1}


def test_tally_reads_any_iterable() -> None:
    assert tally(iter(chain_of(vote("alice", 1)))) == {"alice": 1}


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 20)), max_size=40))
def test_tally_equals_distinct_tx_ids_per_category(entries: list[tuple[str, int]]) -> None:
    # Each tx_id n is always paired with the first category drawn for it.
    first: dict[int, str] = {}
    for category, n in entries:
        first.setdefault(n, category)
    txs = [vote(first[n], n) for _category, n in entries]
    expected: dict[str, int] = {}
    for category in first.values():
        expected[category] = expected.get(category, 0) + 1
    assert tally(chain_of(*txs)) == expected

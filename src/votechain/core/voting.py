"""Votes as transactions, and the tally. Pure: no I/O, no clock (`now_ms` is passed in).

A vote is a transaction whose data is the UTF-8 encoding of a category name,
with 16 random bytes of salt; its `tx_id` is the hash of the three fields
(block.py), so it names this exact content. The tally walks a chain and counts, per
category, every vote whose `tx_id` it has not seen yet: when a fork switch
drops a block, its vote is mined again in another block, and the second copy
carries the same `tx_id`, so it is counted once.

What counts as a category is `validate_category`'s docstring. A transaction
counts as a vote exactly when its data is the UTF-8 of a category in its
canonical form (what `validate_category` returns, so NFC, stripped); any
other data (the genesis block's, another application's, a hand-made one, a
category in NFD or with surrounding spaces) is simply not a vote: the tally
skips it. So the two encodings of "café" (NFC `caf\u00e9`, NFD
`cafe\u0301`) are one category: a vote cast either way is stored as NFC, and
a block carrying the NFD bytes is no vote at all (counting it would give one
category two spellings that print alike).
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Iterable

from votechain.core.block import SALT_BYTES, Block, Transaction, genesis_block
from votechain.errors import InvalidVote

# Long enough for any sensible ballot option, short enough that the worst case
# (64 four-byte UTF-8 characters = 256 bytes) sits far below block.MAX_DATA_BYTES.
MAX_CATEGORY_CHARS = 64

# The genesis transaction's data happens to be valid category text; it must
# still never count as a vote.
_GENESIS_TX = genesis_block().transaction


def validate_category(text: str) -> str:
    """Return the canonical form of a category, or raise InvalidVote saying why not.

    The rules:
    - surrounding whitespace is stripped ("  Alice " is the category "Alice");
    - the text is put in Unicode normalisation form NFC, so text that looks the
      same is the same category: "cafe" + U+0301 (combining acute, NFD) becomes
      "caf" + U+00E9, as most keyboards type it;
    - what remains is 1 to MAX_CATEGORY_CHARS (64) characters (code points, not bytes);
    - it contains no control or other non-printing format characters (Unicode
      categories Cc, Cf, Cs, Co, Cn: newlines, tabs, escapes, bidi overrides,
      lone surrogates, unassigned code points), which could forge extra rows
      or hide text when a tally is printed;
    - categories are case-sensitive and otherwise taken as given: "Alice" and
      "alice" are two categories.
    """
    if not isinstance(text, str):
        raise InvalidVote(f"a category must be text, got {type(text).__name__}")
    category = unicodedata.normalize("NFC", text).strip()
    if not category:
        raise InvalidVote("a category must not be empty")
    if len(category) > MAX_CATEGORY_CHARS:
        raise InvalidVote(
            f"a category must be at most {MAX_CATEGORY_CHARS} characters, got {len(category)}"
        )
    for char in category:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise InvalidVote(f"a category must not contain control characters (U+{ord(char):04X})")
    return category


def vote_transaction(category: str, now_ms: int, salt: bytes | None = None) -> Transaction:
    """The transaction that casts one vote for `category` (validated, canonical form)."""
    canonical = validate_category(category)
    if salt is None:
        # Random: two people voting for the same category at the same
        # millisecond cast two votes (two ids), not one.
        salt = secrets.token_bytes(SALT_BYTES)
    elif len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes, got {len(salt)}")
    if now_ms < 0:
        raise ValueError(f"now_ms must not be negative, got {now_ms}")
    return Transaction(timestamp=now_ms, data=canonical.encode("utf-8"), salt=salt)


def category_of(tx: Transaction) -> str | None:
    """The category `tx` votes for, or None when it is not a valid vote.

    Only the canonical form counts: data with surrounding whitespace, not in
    NFC, or invalid UTF-8 was not made by `vote_transaction`, so it is not a
    vote.
    """
    if tx == _GENESIS_TX:
        return None
    try:
        text = tx.data.decode("utf-8")
        canonical = validate_category(text)
    except (UnicodeDecodeError, InvalidVote):
        return None
    return canonical if canonical == text else None


def count_votes(blocks: Iterable[Block]) -> dict[str, int]:
    """Votes per category in `blocks`, in no particular order: the rules of `tally`
    (block 0 and non-votes skipped, each tx_id counted once) without the sort.

    A store keeping the tally as its chain changes adds `count_votes(added)` and
    subtracts `count_votes(dropped)`; that equals `tally` of the whole chain
    because a valid chain carries each tx_id once (chain.Chain refuses a second
    copy), so no block's vote is shadowed by another's."""
    seen: set[bytes] = set()
    counts: dict[str, int] = {}
    for block in blocks:
        if block.id == 0:
            continue
        tx = block.transaction
        if tx.tx_id in seen:
            continue
        category = category_of(tx)
        if category is None:
            continue
        seen.add(tx.tx_id)
        counts[category] = counts.get(category, 0) + 1
    return counts


def ordered(counts: dict[str, int]) -> dict[str, int]:
    """`counts` without zero entries, highest count first, then by category name."""
    kept = ((category, count) for category, count in counts.items() if count)
    return dict(sorted(kept, key=lambda item: (-item[1], item[0])))


def tally(blocks: Iterable[Block]) -> dict[str, int]:
    """Votes per category in `blocks` (a chain from genesis), each tx_id counted once.

    Block 0 and transactions that are not valid votes are skipped. The result is
    ordered by count, highest first, then by category name.
    """
    return ordered(count_votes(blocks))

"""Fork choice by majority of the voters' tips.

The documented order, the same on every node:
  1. the tip with the most votes wins;
  2. on equal votes, the higher block id;
  3. on equal votes and id, the smaller hash (compared as bytes).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from votechain.core.forkchoice import Tip, Vote, holders, majority


def tip(block_id: int, first_byte: int) -> Tip:
    return Tip(block_id, bytes([first_byte]) + bytes(31))


def votes(*tips: Tip, me: Tip | None = None) -> list[Vote]:
    result = [Vote(t, ("10.0.0.1", 9000 + i)) for i, t in enumerate(tips)]
    if me is not None:
        result.append(Vote(me, None))
    return result


A, B, C = tip(5, 0xA0), tip(5, 0x0B), tip(7, 0xCC)


def test_no_votes() -> None:
    assert majority([]) is None
    assert majority(iter([])) is None


def test_most_votes_wins_even_over_a_longer_chain() -> None:
    assert majority(votes(A, A, C)) == A
    assert majority(votes(C, A, A, B, B, A)) == A


def test_own_vote_counts() -> None:
    assert majority(votes(A, C, me=C)) == C


def test_tie_on_votes_goes_to_the_higher_id() -> None:
    assert majority(votes(A, C)) == C
    assert majority(votes(C, A)) == C
    assert majority(votes(A, A, C, C, B)) == C


def test_tie_on_votes_goes_first_to_the_higher_reported_lock() -> None:
    """A lock breaks a tie (even against a longer tip or a smaller hash), and
    only a tie: two votes still beat one however high its lock."""
    locked_a = Vote(A, ("10.0.0.9", 9000), b"a member", locked=5)
    assert majority([*votes(C), locked_a]) == A  # over the higher id
    assert majority([*votes(B), locked_a]) == A  # over the smaller hash
    assert majority([*votes(B, B), locked_a]) == B  # not over more votes
    # The highest lock among a tip's voters is the tip's.
    low = Vote(B, ("10.0.0.8", 9000), b"another", locked=2)
    assert majority([low, locked_a]) == A
    assert majority([low, replace(locked_a, locked=1)]) == B


def test_tie_on_votes_and_id_goes_to_the_smaller_hash() -> None:
    assert B.hash < A.hash
    assert majority(votes(A, B)) == B
    assert majority(votes(B, A)) == B
    # Byte-wise comparison: a difference in the last byte decides too.
    low, high = Tip(5, bytes(31) + b"\x01"), Tip(5, bytes(31) + b"\x02")
    assert majority(votes(high, low)) == low


def test_result_is_independent_of_vote_order() -> None:
    ballot = votes(A, B, C, A, B, C, tip(7, 0x01), tip(7, 0x01))
    expected = majority(ballot)
    assert expected == tip(7, 0x01)
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(ballot)
        assert majority(ballot) == expected
    for perm in itertools.permutations([A, B, C]):
        assert majority(votes(*perm)) == C


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12))
def test_majority_matches_the_documented_order(pairs: list[tuple[int, int]]) -> None:
    ballot = votes(*(tip(i, h) for i, h in pairs))
    counts: dict[Tip, int] = {}
    for v in ballot:
        counts[v.tip] = counts.get(v.tip, 0) + 1
    best = max(counts.values())
    leaders = [t for t, n in counts.items() if n == best]
    top_id = max(t.id for t in leaders)
    expected = min((t for t in leaders if t.id == top_id), key=lambda t: t.hash)
    assert majority(ballot) == expected


def test_holders_in_answer_order_without_self() -> None:
    ballot = [
        Vote(A, ("10.0.0.3", 1)),
        Vote(C, ("10.0.0.1", 2)),
        Vote(A, None),
        Vote(A, ("10.0.0.2", 3)),
    ]
    assert holders(ballot, A) == [("10.0.0.3", 1), ("10.0.0.2", 3)]
    assert holders(ballot, C) == [("10.0.0.1", 2)]
    assert holders(ballot, B) == []
    assert holders([Vote(A, None)], A) == []

"""Fork choice by majority vote of the peers' latest blocks (the seed design's rule,
docs/design.md). Pure.

Each peer that answers, and this node itself, casts one vote: its tip, as
(id, hash). The tip with the most votes wins. Ties are broken the same way on
every node, so two nodes that see the same votes always pick the same tip:
  1. the higher locked height a voter for it reported (finality.py: a quorum
     once held that voter's chain up to there, and it never switches away
     from a locked block);
  2. the higher block id (the longer chain carries more votes);
  3. then the smaller hash, compared as bytes.
Why the lock first: with one of three members gone, the two left can each
hold a different block at one height, one of them locked (even final) by
the first, the other not. By hash alone, half the time both kept their own
for good: the first may not drop a locked block, and the second saw a tie
it won. A lock breaks a tie only: a member lying about its lock wins no
more than the ties a hash would give it half the time.

The majority settles *forks*; it does not hold back a chain that merely
extends the majority tip. A peer that mined while the others could not hear
it (a partition, a restart) reports a tip longer than the majority's, on the
same branch: outvoted, it would be ignored forever. So a node considers, in
order (`candidates`):
  1. each reported tip longer than the winner, longest first (then smaller
     hash), adopted only if its chain contains the winner;
  2. the winner itself.
It stops at the first candidate it already holds, and otherwise fetches the
candidate's branch from a peer that reported it and switches to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Tip:
    id: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Vote:
    """One voter's tip; `source` is the peer address (None for this node itself),
    `voter` the member key that answered there, proven by the handshake (None:
    an observer, or this node). NodeState.tips_collected keeps one vote per
    voter, so a member counts once however many addresses it answers at."""

    tip: Tip
    source: tuple[str, int] | None
    voter: bytes | None = None
    locked: int = 0  # the voter's locked height, as last reported (finality.py)


def majority(votes: Iterable[Vote]) -> Tip | None:
    counts: Counter[Tip] = Counter()
    locks: dict[Tip, int] = {}
    for vote in votes:
        counts[vote.tip] += 1
        locks[vote.tip] = max(locks.get(vote.tip, 0), vote.locked)
    if not counts:
        return None
    # max over (votes, lock, id, -hash): the hash is negated by sorting on its complement.
    return max(counts, key=lambda t: (counts[t], locks[t], t.id,
                                      bytes(255 - b for b in t.hash)))


def candidates(votes: Sequence[Vote]) -> list[Tip]:
    """The tips worth adopting, best first (see the module docstring); the last
    is the majority tip, the earlier ones must prove they extend it."""
    winner = majority(votes)
    if winner is None:
        return []
    longer = sorted({v.tip for v in votes if v.tip.id > winner.id}, key=lambda t: (-t.id, t.hash))
    return [*longer, winner]


def holders(votes: Sequence[Vote], tip: Tip) -> list[tuple[str, int]]:
    """The peers that reported `tip`, in the order they answered."""
    return [v.source for v in votes if v.tip == tip and v.source is not None]

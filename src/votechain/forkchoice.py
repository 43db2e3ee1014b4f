"""Fork choice by majority vote of the peers' latest blocks (the seed's rule). Pure.

Each peer that answers, and this node itself, casts one vote: its tip, as
(id, hash). The tip with the most votes wins. Ties are broken the same way on
every node, so two nodes that see the same votes always pick the same tip:
  1. the higher block id (the longer chain carries more votes);
  2. then the smaller hash, compared as bytes.

A node whose own chain already contains the winning tip keeps its chain: it is
on the majority branch and merely ahead (its extra blocks reach the others by
broadcast or by their own periodic check). Otherwise it fetches the winner's
branch from a peer that reported it and switches to it.
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
    """One voter's tip; `source` is the peer address (None for this node itself)."""

    tip: Tip
    source: tuple[str, int] | None


def majority(votes: Iterable[Vote]) -> Tip | None:
    counts = Counter(v.tip for v in votes)
    if not counts:
        return None
    # max over (votes, id, -hash): the hash is negated by sorting on its complement.
    return max(counts, key=lambda t: (counts[t], t.id, bytes(255 - b for b in t.hash)))


def holders(votes: Sequence[Vote], tip: Tip) -> list[tuple[str, int]]:
    """The peers that reported `tip`, in the order they answered."""
    return [v.source for v in votes if v.tip == tip and v.source is not None]

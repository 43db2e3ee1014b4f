"""Finality: when a vote counted by one node is counted for good. Pure.

A block in a node's chain is not yet the network's: another member may have
mined a different block at the same height, and the majority vote
(forkchoice.py) may switch this node to it. A voter told "counted" must never
see that vote's block orphaned, so a vote is reported *final* only once a
majority of all members are bound to keep its block. The terms:

- **seats**: how many members the network has, from the network file
  (core/membership.Network.seats), so every node counts the same majority;
  **quorum** = seats // 2 + 1.
- **report**: what a member tells us of its chain: its tip (id, hash) and its
  locked height (below). It comes with every block pushed (Add), every answer
  to a push (AddResult), every poll (Latest) and every Announce, on a
  connection whose handshake proved the member's key; one member, one entry.
- **agreed height** of a member: the highest id of a tip it reported that our
  chain holds: its chain and ours were the same up to there. Lowered to the
  fork point when we switch (above it, the blocks it agreed with are gone).
- **locked height** (ours): the highest height a quorum of members (we
  included, if we are one) agree on. We never switch away from a block at or
  below it (`may_drop`), so once a block is locked by a member it stays in
  that member's chain.
- **final height** (ours): the highest height a quorum of members (we
  included) have *locked* on our chain. A vote in a block at or below it is
  final: reported confirmed to the voter, shown in `status` and the metrics.

Why two levels, not "a quorum holds it": holding is not keeping. A member that
holds block B may still switch away from it (its view of the majority is
seconds old and ties break by hash), so a quorum that once held B proves
nothing about tomorrow; a quorum that *locked* B does, because a locked
member keeps B. Two quorums share at least one member, and a member never
locks two conflicting blocks at one height (it locks only what is in its own
chain, and never drops what it locked), so two conflicting blocks are never
both final anywhere, and a final block is kept by a majority of the members
for good: the majority vote can never leave it behind.

Locks are taken on reports that may be stale (a member agreed at some time,
then switched), so two members can lock conflicting blocks, neither final.
Neither can be final *and* the other one then: `may_drop` lets a node give up
its lock for a branch on which a quorum reports locks above the fork point,
because then its own locked blocks there can never become final. What this
does not cover (docs/design.md, Finality): a member that lies about its lock
is one of the quorum it claims to be in; a minority of liars can make honest
nodes lock what the rest will not, stalling them, but a final block still
needs a quorum of locks, so a liar inside the intersection of two quorums is
the only way to two conflicting finals (the honest-majority assumption).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from votechain.core.block import Block
from votechain.core.forkchoice import Tip


class HeldChain(Protocol):
    """What finality reads of a chain: its height and whether it holds a block."""

    @property
    def height(self) -> int: ...

    def holds(self, block_id: int, block_hash: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Report:
    """A member's account of its chain: its tip and its locked height."""

    tip: Tip
    locked: int


def quorum_of(seats: int) -> int:
    """A majority of `seats` members (a network of one member is its own quorum)."""
    return seats // 2 + 1


class Finality:
    """One node's view of which heights a quorum holds and has locked.

    `seats` 0 (a network file made before seats, or an open network not told
    its size) counts nothing: no lock is ever taken, so forks settle by the
    majority vote alone, as before finality existed, and the final height is
    simply our height (`final_at`): "final" then means only "in this node's chain", and
    the node says so at start-up (node/runtime.py)."""

    def __init__(self, seats: int, *, member: bool = True) -> None:
        self.seats = seats
        self.counting = seats > 0
        self.quorum = quorum_of(seats)
        # An observer's own chain is no member's: it counts others only.
        self.member = member
        self.locked = 0
        self.final = 0
        self._reports: dict[bytes, Report] = {}
        self._agreed: dict[bytes, int] = {}
        self._locks: dict[bytes, int] = {}
        # Per member, the first report since it last agreed with our chain of a
        # tip we do not hold with a lock at or above ours: evidence for
        # `may_drop` that its last report cannot give once it has run far ahead
        # (see there). One entry per member, like the reports.
        self._dissent: dict[bytes, Report] = {}

    def final_at(self, height: int) -> int:
        """The final height on a chain of `height` (all of it when not counting)."""
        return self.final if self.counting else height

    def reported(self, voter: bytes, report: Report, chain: HeldChain) -> bool:
        """Member `voter` told us `report`; whether our locked or final height rose."""
        self._reports[voter] = report
        if self._agree(voter, report, chain):
            self._dissent.pop(voter, None)
        elif report.locked > 0 and report.locked >= self.locked and (
                voter not in self._dissent or self._dissent[voter].locked < self.locked):
            self._dissent[voter] = report  # the first, or the first past our lock since
        return self._advance(chain.height)

    def lock_of(self, voter: bytes) -> int:
        """Member `voter`'s locked height, as it last reported it (0: never)."""
        report = self._reports.get(voter)
        return 0 if report is None else report.locked

    def tip_seen(self, voter: bytes, tip: Tip, locked: int | None, chain: HeldChain) -> bool:
        """`reported`, where `locked` None keeps the member's last word on its lock."""
        if locked is None:
            last = self._reports.get(voter)
            locked = 0 if last is None else min(last.locked, tip.id)
        return self.reported(voter, Report(tip, locked), chain)

    def chain_changed(self, chain: HeldChain, fork_id: int | None = None) -> bool:
        """Our chain grew (`fork_id` None) or switched after block `fork_id`:
        agreements above a fork point are void; reports of tips we did not hold
        yet may now match. Whether our locked or final height rose."""
        if fork_id is not None:
            for voter, height in self._agreed.items():
                if height > fork_id:
                    self._agreed[voter] = fork_id
                    self._locks[voter] = min(self._locks.get(voter, 0), fork_id)
            self.locked = min(self.locked, fork_id)
            self.final = min(self.final, fork_id)  # only ever on a quorum's word: see may_drop
        height = chain.height
        for voter, report in self._reports.items():
            if self._agreed.get(voter, -1) < report.tip.id <= height:
                self._agree(voter, report, chain)
        return self._advance(height)

    def may_drop(self, fork_id: int, branch: Sequence[Block]) -> bool:
        """Whether a switch to `branch` (parting from our chain after block
        `fork_id`) may drop our blocks above `fork_id`: always if none of them
        is locked; otherwise only if a quorum of members report, on a tip the
        branch holds, locks above the fork point (our locked blocks there can
        then never be final: two quorums share a member).

        A member's last report, or its first dissent: the first report, since
        it last agreed with us, of a tip we do not hold with a lock at or
        above ours (so above any fork point that could drop our locked
        blocks). Why: the last report alone left a locked minority member
        stuck for good when the majority ran more than MAX_BRANCH_BLOCKS
        ahead (the branch then comes in chunks, and every member's last tip
        lies beyond the chunk) or simply kept moving under load (the last
        push arrives after the poll that fixed the branch's end). Seen at 3
        peers, 2 benchmark runs in 16: a member locked blocks on an agreement
        their author dropped at start-up, and stayed on them while the other
        two built 2,264 blocks. The first dissent lies just past our locked
        height, inside the first chunk; it is as old as the disagreement, no
        staler than the last report can already be (the caveat in the module
        docstring)."""
        if fork_id >= self.locked:
            return True
        hashes = {block.id: block.hash for block in branch}

        def locked_on_branch(report: Report | None) -> bool:
            return (report is not None and report.locked > fork_id
                    and hashes.get(report.tip.id) == report.tip.hash)

        locked_there = sum(
            1 for voter, report in self._reports.items()
            if locked_on_branch(report) or locked_on_branch(self._dissent.get(voter)))
        return locked_there >= self.quorum

    def _agree(self, voter: bytes, report: Report, chain: HeldChain) -> bool:
        """Count `report` as `voter`'s agreement if our chain holds its tip; whether it does."""
        tip = report.tip
        if not (tip.id <= chain.height and chain.holds(tip.id, tip.hash)):
            return False
        # Kept as maxima: reports from one member may arrive out of order
        # (pushes and polls travel on different connections), and each
        # says truly what its chain held, or locked, at some moment.
        self._agreed[voter] = max(self._agreed.get(voter, 0), tip.id)
        self._locks[voter] = max(self._locks.get(voter, 0), min(report.locked, tip.id))
        return True

    def _advance(self, height: int) -> bool:
        before = (self.locked, self.final)
        if not self.counting:
            return False
        agreed = list(self._agreed.values())
        if self.member:
            agreed.append(height)
        self.locked = max(self.locked, _kth_largest(agreed, self.quorum))
        locks = list(self._locks.values())
        if self.member:
            locks.append(self.locked)
        self.final = max(self.final, _kth_largest(locks, self.quorum))
        # A quorum that locked a height held it: we may lock it too.
        self.locked = max(self.locked, self.final)
        return (self.locked, self.final) != before


def _kth_largest(values: list[int], k: int) -> int:
    """The k-th largest of `values` (0 when there are fewer than k): the height
    at least k of them reach."""
    if len(values) < k:
        return 0
    return sorted(values, reverse=True)[k - 1]

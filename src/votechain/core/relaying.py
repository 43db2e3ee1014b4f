"""Relaying: one member mines for everyone, so members stop racing. Pure.

Why: when every member mines the votes cast through it, each races every other
member at every height, and a block is mined (about a millisecond at
difficulty 4) faster than it propagates. Members then build private branches
that the majority vote reconciles by orphaning most of them: 58% of mined
blocks at 3 peers, 73% at 5 (issue 11's measurements), and a voter's receipt
named an orphaned block most of the time.

The rule (in a network with seats; core/node_state.py applies it): the
author of a member's tip, the member whose block won the last height, is the
*leader* and mines for everyone. The others hand it their votes (Relay,
docs/protocol.md 2.11) and mine nothing while it works. Every member that
holds the same tip names the same leader, with no message exchanged to agree
on it; while they disagree (a fork in flight) two members may mine at once,
and the majority vote settles that as before. The genesis block has no
author: on it the leader is the smallest key among a member and the members
it reaches, the same on every member that reaches all the others (without
it, every member mined its first votes at once: at 10 peers, 40 blocks
racing for the first five heights).

Start-up: a member that has not yet reached every other seat since it
started mines none of its votes unless it leads (its tip is its own block),
for half the patience at most; its votes go to the leader as soon as it reaches
it. Links come up one by one, and a member that reached nobody yet used to
take itself for the genesis leader (or, past the genesis block, found the
tip's author out of reach) and mine at once: the root of most forks at 3
peers in the finality benchmark, and of a member left locked on blocks
their author then dropped (docs/design.md, "Finality"). Once every seat has
been reached, a leader out of reach means a dead or cut-off one, and its
votes are mined here at once, as before. The hold lasts half the patience:
a member that handed us a vote mines it itself when its patience runs out,
and a hold as long as that patience raced it (two seats of three, each
waiting the whole patience, mined the same vote at block 1 at the same
moment). Half leaves the leader's block half a patience to reach it,
which the patience then stretches for (it counts from the chain's growth).

A vote handed over stays queued, and persisted, where it was cast until a
block carries it, so a relay loses nothing. A member that leads (its block
is its tip) mines its whole queue, votes it handed over before it led
included, and a vote relayed back to the member that cast it is mined there
at once: at 20 peers, two votes cast in the first instant went to the
genesis leader, whose successor then relayed them back, and they waited out
the whole patience at the member that was mining everyone else's. If the leader has not put it in
the chain within the patience (RELAY_PATIENCE, node/config.py: the leader
died, is cut off, or censors), its own member mines it after all, which
makes that member the tip's author and so the next leader: leadership moves
to whoever keeps the chain going.

The patience counts from the later of the hand-over and the last time the
chain was seen to grow, up to RELAY_MAX_PATIENCE after the hand-over: a
leader that keeps appending blocks is working through a queue, ours among
them. Counted from the hand-over alone, at 20 peers on two cores (a queue
of ~80 votes at 20-60 votes/s) every member's votes ran out of patience at
once, each mined its own, and leadership flapped from fork to fork: 407
blocks mined for a chain of 151. A dead leader still costs its voters
RELAY_PATIENCE; a leader that censors some votes while mining others, at
most RELAY_MAX_PATIENCE (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from votechain.core.block import Transaction

DEFAULT_PATIENCE_MS = 2000
DEFAULT_MAX_PATIENCE_MS = 10_000
# While a vote is held at start-up (a seat not reached yet), how often the
# miner looks again: no event tells it that a link to a member came up (links
# are proven in other threads), and this happens once in a process's life.
START_RECHECK_MS = 50


class Relays:
    """The votes this member handed to a leader, and when (ms); and when the
    chain was last seen to grow (`observe`)."""

    def __init__(self, patience_ms: int = DEFAULT_PATIENCE_MS,
                 max_patience_ms: int = DEFAULT_MAX_PATIENCE_MS) -> None:
        self.patience_ms = patience_ms
        self.max_patience_ms = max_patience_ms
        self._handed: dict[bytes, int] = {}
        self._height = -1  # the chain's height when last observed (-1: never)
        self._progress_ms: int | None = None  # when it was last seen to change
        # Start-up: until we have reached every other seat once, a vote we would
        # mine without leading is held, for half the patience at most from when
        # the first one was.
        self._started_up = False
        self._held_ms: int | None = None

    @property
    def started_up(self) -> bool:
        """Whether we have reached every other seat once (start-up is over)."""
        return self._started_up

    def reached(self, every_seat: bool) -> None:
        """Whether we reach every other seat now (start-up ends the first time)."""
        if every_seat:
            self._started_up = True

    def holding(self, now_ms: int) -> bool:
        """Whether a vote we would mine here without leading waits (start-up)."""
        if self._started_up:
            return False
        if self._held_ms is None:
            self._held_ms = now_ms
        return now_ms < self._held_ms + self.patience_ms // 2

    def held_wait_ms(self, now_ms: int) -> int | None:
        """How long until the miner looks again at a vote held at start-up
        (None: none is)."""
        if self._started_up or self._held_ms is None:
            return None
        left = self._held_ms + self.patience_ms // 2 - now_ms
        return min(left, START_RECHECK_MS) if left > 0 else None

    def observe(self, height: int, now_ms: int) -> None:
        """The chain's height at `now_ms`: a change is the leader's progress."""
        if height != self._height:
            if self._height >= 0:
                self._progress_ms = now_ms
            self._height = height

    def _deadline(self, handed: int) -> int:
        progress = self._progress_ms
        start = handed if progress is None or progress < handed else progress
        return min(handed + self.max_patience_ms, start + self.patience_ms)

    def waiting(self, tx_id: bytes, now_ms: int) -> bool:
        """Whether vote `tx_id` is with a leader and its patience has not run out."""
        handed = self._handed.get(tx_id) if self._handed else None
        return handed is not None and now_ms < self._deadline(handed)

    def hand_over(self, pending: Sequence[Transaction], now_ms: int) -> tuple[Transaction, ...]:
        """The queued votes not handed over yet, marked handed over at `now_ms`."""
        handed = self._handed
        due = tuple(tx for tx in pending if tx.tx_id not in handed)
        if len(handed) > 2 * len(pending):  # forget the votes that left the queue
            queued = {tx.tx_id for tx in pending}
            self._handed = handed = {k: v for k, v in handed.items() if k in queued}
        for tx in due:
            handed[tx.tx_id] = now_ms
        return due

    def failed(self, tx_ids: Iterable[bytes], now_ms: int) -> None:
        """The leader did not take these votes: their patience ends now."""
        for tx_id in tx_ids:
            if tx_id in self._handed:
                self._handed[tx_id] = now_ms - self.max_patience_ms

    def forget(self, tx_ids: Iterable[bytes]) -> None:
        """These votes are to be handed over afresh (their block was orphaned)."""
        for tx_id in tx_ids:
            self._handed.pop(tx_id, None)

    def wait_ms(self, pending: Sequence[Transaction], now_ms: int) -> int | None:
        """How long until the first queued vote's patience runs out (None: none waits)."""
        if not self._handed:
            return None
        ends = [self._deadline(self._handed[tx.tx_id]) for tx in pending
                if tx.tx_id in self._handed]
        return max(0, min(ends) - now_ms) if ends else None

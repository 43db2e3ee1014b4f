"""What a NodeState (node_state.py) hands back: effects for the runtime to carry
out, and one decision per input saying what happened and why. Frozen values. Pure.

An *effect* is one thing the runtime must do; it never decides anything itself:

- AppendBlocks, ReplaceFrom, QueueVote, DropVotes: persist (the store's one
  transaction each), in the order given, while the node's lock is still held,
  so the store sees changes in the order the chain made them;
- AbortMining: the tip or the queue's head moved; stop the nonce search, the
  miner then asks `NodeState.next_job()` again;
- Wake: the chain or the queue changed; wake whoever waits on them;
- Resolve: a block did not extend our tip; ask the majority soon;
- Broadcast: send this block of ours to every peer (after the lock is released:
  it asks the tracker and queues network work);
- Finalized: our locked or final height rose (core/finality.py): persist both
  (the lock must survive a restart before any peer hears of it), and wake the
  voters whose votes are now final;
- AnnounceTip: our tip or locked height changed: tell every peer (coalesced:
  each peer gets the latest account once its link is free).

A *decision* is the answer to one input: a status (the same words the wire's
AddResult carries, for a block), a reason for a human, and the effects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from votechain.core.block import Block, Transaction
from votechain.core.chain import Switch
from votechain.core.forkchoice import Tip
from votechain.errors import InvalidBlock

# ================================================================ effects


@dataclass(frozen=True, slots=True)
class AppendBlocks:
    """Store `blocks` (consecutive) after the stored tip and drop the votes
    `done` from the stored queue. One block per decision; `coalesce` joins
    a run of them."""

    blocks: tuple[Block, ...]
    done: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReplaceFrom:
    """In one store transaction: drop stored blocks from `first_id` on, store
    `blocks`, put `requeue` back in the stored queue, remove `done` from it."""

    first_id: int
    blocks: tuple[Block, ...]
    requeue: tuple[Transaction, ...]
    done: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class QueueVote:
    """A vote joined the queue: store it in the pending queue (from here on it
    survives a restart) unless not `persist` (a vote another member relayed)."""

    tx: Transaction
    persist: bool = True


@dataclass(frozen=True, slots=True)
class DropVotes:
    """Remove these tx ids from the stored pending queue."""

    tx_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AbortMining:
    """Stop the nonce search in progress: its job is stale."""


@dataclass(frozen=True, slots=True)
class Wake:
    """Wake the threads waiting for the chain or the queue to change."""


# Every received block that is appended yields these two; one instance each
# spares the receive path two allocations (they carry no data, so any instance
# equals any other).
ABORT_MINING = AbortMining()
WAKE = Wake()


@dataclass(frozen=True, slots=True)
class Resolve:
    """Ask the peers for their tips and follow the majority; `why` is for the log.
    `behind`: the pushed block that showed a gap after our tip (None for a real
    fork). Its author pushed it (an Add's block is its sender's own), so it
    holds what we lack, and the runtime asks it for just that first
    (node/resolver.py, `catch_up`), the majority only if that fails."""

    why: str
    behind: Block | None = None


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send `block` (one of ours) to every other peer."""

    block: Block


@dataclass(frozen=True, slots=True)
class Finalized:
    """Our locked and final heights (core/finality.py) rose to these."""

    locked: int
    final: int


@dataclass(frozen=True, slots=True)
class AnnounceTip:
    """Tell the peers our tip and locked height (the runtime reads them when it sends)."""


ANNOUNCE = AnnounceTip()

Effect = (AppendBlocks | ReplaceFrom | QueueVote | DropVotes | AbortMining | Wake | Resolve
          | Broadcast | Finalized | AnnounceTip)



def coalesce(effects: Iterable[Effect]) -> tuple[Effect, ...]:
    """The effects of several decisions taken in a row under one lock (a
    peer's pipelined pushes: PeerRequests.receive_blocks), to be carried out as one.

    Why: under load a member's CPU went to doing, per block, what a run needs
    once: a store transaction, a finality write, a wake-up of every waiter, an
    abort of the miner. The same outcome, cheaper:
    - consecutive AppendBlocks become one (one store transaction);
    - Finalized: only the last counts (the heights only rise, and it is
      persisted after the blocks it names);
    - AbortMining, Wake, AnnounceTip: once each, at the end (none of them
      carries data; each only says "look again");
    - anything else (ReplaceFrom, QueueVote, DropVotes, Resolve, Broadcast)
      keeps its place: the appends before it are flushed first, so the store
      still sees the changes in the order the chain made them; an identical
      Resolve twice is kept once.
    """
    out: list[Effect] = []
    run: list[Block] = []
    done: list[bytes] = []
    finalized: Finalized | None = None
    signals: dict[Effect, None] = {}  # insertion-ordered set

    def flush() -> None:
        if run:
            out.append(AppendBlocks(tuple(run), tuple(done)))
            run.clear()
            done.clear()

    for effect in effects:
        if isinstance(effect, AppendBlocks):
            run.extend(effect.blocks)
            done.extend(effect.done)
        elif isinstance(effect, Finalized):
            finalized = effect
        elif isinstance(effect, (AbortMining, Wake, AnnounceTip)):
            signals[effect] = None
        elif not (isinstance(effect, Resolve) and effect in out):
            flush()
            out.append(effect)
    flush()
    if finalized is not None:
        out.append(finalized)
    out.extend(signals)
    return tuple(out)


# ================================================================ decisions

BlockStatus = Literal["added", "known", "fork", "rejected"]


@dataclass(frozen=True, slots=True)
class BlockDecision:
    """A received block: `status` and `reason` are what the sender is told
    (wire.AddResult); a fork's `Resolve` effect says why it is one."""

    status: BlockStatus
    reason: str = ""
    effects: tuple[Effect, ...] = ()
    # A rejection's class, a bounded label for metrics: the InvalidBlock
    # subclass's name, or "AuthorMismatch" (never the free-text reason).
    kind: str = ""


@dataclass(frozen=True, slots=True)
class VoteDecision:
    """A vote submitted by our owner: queued, or already queued or in the chain."""

    queued: bool
    reason: str = ""
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class MineJob:
    """Mine `template` (nonce, hash and signature still empty): the oldest queued
    vote, on the tip it names as prev_hash."""

    template: Block

    @property
    def tx(self) -> Transaction:
        return self.template.transaction


MinedStatus = Literal["appended", "stale", "dropped"]


@dataclass(frozen=True, slots=True)
class MinedDecision:
    """A nonce found: the block is appended and broadcast; or `stale` (the tip
    moved while we mined: nothing to do, the next job is on the new tip); or
    `dropped` (its vote reached the chain by another path: dequeued)."""

    status: MinedStatus
    reason: str = ""
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchBranch:
    """Ask `holder` for its chain from where it parts from ours up to `target`."""

    target: Tip
    holder: tuple[str, int]


BranchStatus = Literal["switched", "synced", "unchanged", "invalid", "skipped"]


@dataclass(frozen=True, slots=True)
class BranchDecision:
    """A fetched branch: `switched` (blocks of ours dropped; `requeued` are our
    own votes they carried), `synced` (only blocks added), `unchanged`, `invalid`
    (the branch breaks a chain rule: nothing changed), or `skipped` (it does not
    contain the majority tip: try the next candidate)."""

    status: BranchStatus
    switch: Switch | None = None
    requeued: tuple[Transaction, ...] = ()
    reason: str = ""
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class Restored:
    """The state rebuilt at start-up from the store; `bad` is the first stored
    block that failed re-verification (None when all passed), from which on the
    stored chain is dropped (our own votes in it re-queued)."""

    bad: InvalidBlock | None = None
    effects: tuple[Effect, ...] = ()

"""NodeState: every decision a votechain node makes, with no I/O (h11's Connection
is the model). Pure: no sockets, threads, clocks, SQLite or processes; `now_ms`
is passed in. Not thread-safe: the runtime (node/runtime.py) holds one lock
around each call, except `check_alone`, which reads nothing that changes.

What the state holds: the chain, the queue of votes waiting to be mined (oldest
first), the node's identity (its public key, the author of its blocks) and
the network's members (core/membership.py; None: an open network, where every
key may write, used by in-process tests of everything but membership).

Inputs, and what they return (node_effects.py lists the effects):

- `restore(rows, pending, verified_height)`: start-up from the store. The
  stored chain is re-checked row by row: every block's link, hash,
  difficulty, sizes and vote (not already in the chain), which is SHA-256 and
  a few microseconds a block; the RSA signature (~30 us, the expensive part)
  only above `verified_height`, the height up to which the store says its
  blocks were fully verified when they entered it, and for the last
  RECHECK_TAIL blocks. The chain is kept up to the first bad row (a block
  that fails a rule, or an `UnreadableRow`: undecodable, or missing) and
  dropped from that *position* on; if that happens the store vouches for
  nothing, so the rows are checked again with every signature, and the cut
  is at the first block that really fails. Of the dropped blocks, only our
  own that still verify on their own (hash, difficulty, membership and OUR
  signature: `check_block_alone`) have their votes queued again; queued
  votes already in the kept chain leave the queue.

  Why that is enough: a change to any field of a block changes its hash, so
  an edit to the file is caught unless the editor also re-mines the block;
  and since each block's hash covers its parent's, re-mining block k means
  re-mining every block after it up to the tip, whose signature then fails
  unless the editor holds the tip author's private key. A vote is re-queued
  only from a block that carries our signature of its hash, so an edited
  vote (re-mined or not) is never mined again under our key. The limit:
  whoever can read our `node_key.pem` (the same user, on the same disk as
  the database) can sign what it likes, and whoever can write the database
  can also write the `pending` table, whose votes nothing signs; against
  that user no offline check helps (`votechain verify` included), and the
  network's majority replaces a forged chain at the next resolution.
- `resume(history, tail, pending)`: start-up on a long chain without reading
  it all (memory and start-up flat in the chain's height): the chain is
  attached to the store (core/chain.py: only a window of recent blocks in
  memory) and only `tail`, the rows from just below the verified height (and
  RECHECK_TAIL below the tip) to the tip, is checked, with every rule. Any
  failure there returns None and the node falls back to `restore`, which
  finds the first bad row however deep. What the tail check does not see (a
  block edited deep in the file and not re-mined through the tip) is caught
  when it is read: every read of history re-hashes and links what it reads
  (node/store.py), so it is never served, and the node then lowers the
  store's verified height below it, so the next start cuts the chain there.
- A block received from a peer, in three steps so the expensive one runs
  outside the node's lock: `screen_block` (cheap: the author must be the key
  the sender named; a block we hold is "known"), `check_alone` (the
  stand-alone rules: timestamp, sizes, hash, difficulty, RSA signature; a
  failure is "rejected" with the rule's reason), then `block_checked`:
  * a block that extends our tip (next id, our tip's hash as prev_hash) is
    appended, unless its vote is already in our chain ("rejected"). Appending
    persists it, takes its vote out of the queue, aborts the search in
    progress (its tip is stale) and wakes waiters: "added";
  * any other block (the id of one we hold, a gap after our tip, or the right
    id on another parent) cannot be judged alone: a bad link and a branch we
    have not seen look the same. It is answered "fork" and the majority
    decides (`Resolve`). `block_received` runs all three steps at once;
    `blocks_checked` runs step 3 for a run of blocks a peer pushed back to
    back, their effects joined (node_effects.coalesce).
- `vote_submitted(tx)`: queued (and persisted) at the back unless it is
  already queued or in the chain; submitting twice queues it once.
- `next_job(now_ms, after)`: what to mine now: the oldest queued vote on the
  current tip (or on the last of `after`, our blocks mined or being mined and
  not yet appended: the miner searches block N+1 while it signs N, and queues
  N+2 for the workers to start the moment they find N+1), or nothing when the
  queue is empty. After any decision that carries `AbortMining` the miner asks again.
- Relaying (a network with seats, `relaying`; core/relaying.py says why):
  the author of our tip mines for everyone. `relay_due` names it and the
  queued votes to hand it (each once, and only to a member we reach);
  `next_job` skips a vote handed over until its patience runs out
  (`relay_failed` ends it at once), then mines it here. Until `relay_due`
  has once found every other seat in reach (start-up), `next_job` holds
  the votes we would mine without leading, for half the patience at most.
- `nonce_found(job, block)`: if the tip moved while mining, the block is stale
  and dropped (the vote stays queued for the next job). If its vote reached
  the chain by another path, the vote leaves the queue. Otherwise it is
  appended like a received block, then broadcast.
- Fork resolution, by majority of the tips the members report (forkchoice.py):
  `tips_collected(votes)` keeps one vote per member key (a tip from an
  observer, or a second answer by a key already heard, does not count; nor
  does our own key heard from elsewhere), adds our own tip as one vote if we
  are a member, each vote with its voter's last reported lock (ties go to
  the higher: forkchoice.py), and returns a
  `Resolution` plan of candidates, best first (with `AnnounceTip` when a
  member is on a tip we lack: its answer brings its lock). `next_fetch(plan)` names the
  next branch to fetch: the resolution ends at the first candidate we hold,
  if it is the majority tip or our chain holds the majority tip; a candidate
  we hold that is a minority fork is skipped. A candidate is fetched from
  each peer that reported it until one answers. `branch_fetched(plan, ...)`
  then adopts the branch if it is the majority tip's or contains it, and
  otherwise skips to the next candidate (a longer minority branch gives way
  to a shorter majority; a longer branch that extends the majority wins).
  A chunk of a branch (the fetch stopped short of the tip, at the cap on
  blocks held unadopted or at its deadline) is adopted on the same terms if
  it reaches past our height, and the round goes on from there.
- Adopting a branch (`adopt`) switches the chain atomically (an invalid
  branch changes nothing). Only OUR votes from the dropped blocks that the
  new branch does not carry go back in the queue, ahead of the votes already
  waiting and each once: every vote has one author, so it is mined again
  once, not once per peer that saw it drop. Queued votes that the new branch
  carries leave the queue. A switch that dropped blocks counts in
  `forks_resolved`.

Ties between tips are broken by forkchoice.majority, the same on every node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from votechain.core.block import Block, Transaction
from votechain.core.chain import Chain, History
from votechain.core.finality import Finality
from votechain.core.forkchoice import Tip, Vote, candidates, holders
from votechain.core.node_effects import (
    ABORT_MINING,
    ANNOUNCE,
    WAKE,
    AppendBlocks,
    BlockDecision,
    BranchDecision,
    Broadcast,
    DropVotes,
    Effect,
    FetchBranch,
    Finalized,
    MinedDecision,
    MineJob,
    QueueVote,
    ReplaceFrom,
    Resolve,
    Restored,
    VoteDecision,
    coalesce,
)
from votechain.core.relaying import Relays
from votechain.core.rules import check_block_alone, check_difficulty
from votechain.errors import BadGenesis, DamagedRow, InvalidBlock, OurBug

if TYPE_CHECKING:
    from votechain.core.membership import Members

KNOWN = BlockDecision("known")

# Signatures re-checked at every start-up whatever the store says it verified.
# The tip alone would do (see the module docstring: any edit that passes the
# hash and link checks re-mines the tip); 16 costs ~0.5 ms and still holds if
# the store's verified_height were ever recorded too high.
RECHECK_TAIL = 16



@dataclass(frozen=True, slots=True)
class UnreadableRow:
    """A row of the stored chain that holds no usable block (node/store.py's
    `rows`): its body does not decode or disagrees with its id or hash
    column, or it is missing (a gap in the ids). `restore` treats it as a
    block that fails: the chain is kept up to the row before it."""

    id: int  # the row's id, or the first missing one
    hash: bytes  # the row's hash column; b"" for a missing row
    detail: str  # what is wrong: "does not decode (...)", "is missing (...)"


@dataclass
class Resolution:
    """One round of fork resolution: the votes (ours included), the candidate
    tips best first (the majority tip last), and how far the round has got."""

    votes: tuple[Vote, ...]
    candidates: tuple[Tip, ...]
    index: int = 0  # the candidate being tried
    asked: int = 0  # how many of its holders were asked
    done: bool = False
    # What the tips, as members' reports, did to our finality (Finalized, ...).
    effects: tuple[Effect, ...] = ()

    @property
    def winner(self) -> Tip | None:
        return self.candidates[-1] if self.candidates else None

    def next_candidate(self) -> None:
        self.index += 1
        self.asked = 0


class NodeState:
    """A node's chain, queue and identity, and its rules (see the module docstring)."""

    def __init__(self, author: bytes, difficulty: int, members: Members | None = None,
                 *, member: bool = True, seats: int = 0) -> None:
        self.author = author
        self.difficulty = check_difficulty(difficulty)
        self.members = members
        # False for an observer: it reads and audits, mines nothing, and its own
        # tip is no vote.
        self.member = member
        self.chain = Chain(genesis=members.network.genesis if members is not None else None)
        self._pending: list[Transaction] = []
        self.forks_resolved = 0
        # Which heights a majority of the `seats` members keep (core/finality.py).
        self.finality = Finality(seats, member=member)
        # Relaying (core/relaying.py): off unless the runtime turns it on.
        self.relaying = False
        self.relays = Relays()

    @property
    def pending(self) -> tuple[Transaction, ...]:
        """The votes waiting to be mined, oldest (next) first."""
        return tuple(self._pending)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------ start-up

    @classmethod
    def restore(
        cls,
        author: bytes,
        difficulty: int,
        blocks: Sequence[Block | UnreadableRow],
        pending: Iterable[Transaction],
        *,
        now_ms: int,
        verified_height: int = 0,
        members: Members | None = None,
        member: bool = True,
        seats: int = 0,
    ) -> tuple[NodeState, Restored]:
        """The state of a node restarting from the stored rows `blocks` (genesis
        first, one per id; an UnreadableRow for a row that holds no block) and
        `pending` (oldest first). Blocks up to `verified_height` (the default
        0: none but the genesis) were fully verified before; their signatures
        are not checked again (but the last RECHECK_TAIL blocks' are), unless
        a row fails. Membership is checked for every block: a dict lookup, and
        a revocation loaded since the last start applies. See the module
        docstring for what is kept, dropped and queued again."""
        trusted = min(verified_height, len(blocks) - 1 - RECHECK_TAIL)
        state, bad, cut = cls._replay(author, difficulty, members, member, blocks, now_ms,
                                      trusted)
        if bad is not None and trusted > 0:
            # A damaged store vouches for nothing: an edit to block k re-mined up
            # to the first block whose signature was checked passed every check
            # below it. Check every signature, so the cut is at block k.
            state, bad, cut = cls._replay(author, difficulty, members, member, blocks, now_ms,
                                          0)
        queue = list(pending)
        effects: tuple[Effect, ...] = ()
        if bad is not None:
            lost = state._ours_intact(blocks[cut:], now_ms)
            queued = {t.tx_id for t in queue}
            # The store appends re-queued votes behind those already waiting.
            queue += [t for t in lost if t.tx_id not in queued]
            # Dropped by position, not by the failing block's id: after a missing
            # row the block at position k is block k+1.
            keep = () if cut > 0 else (state.chain.genesis,)
            effects = (ReplaceFrom(cut, keep, requeue=lost, done=()),)
        state._pending = [t for t in queue if state.chain.block_with_tx(t.tx_id) is None]
        state.finality = Finality(seats, member=member)
        return state, Restored(bad, effects)

    @classmethod
    def resume(
        cls,
        author: bytes,
        difficulty: int,
        history: History,
        tail: Sequence[Block | UnreadableRow],
        pending: Iterable[Transaction],
        *,
        now_ms: int,
        members: Members | None = None,
        member: bool = True,
        seats: int = 0,
    ) -> NodeState | None:
        """The state of a node restarting on a long stored chain without reading
        it all: its chain attached to `history` (the store), which holds every
        block below `tail`. `tail` is the stored rows from an anchor block (at
        or below the height the store says it verified: trusted, but its own
        hash, difficulty, membership and signature checked) to the tip; every
        row after the anchor is checked with every rule, linked to the anchor.
        None when any of them fails: the caller then `restore`s from every row,
        which cuts the chain at the first bad one (the module docstring says
        why checking the tail is enough to catch an edit)."""
        anchor = tail[0] if tail else None
        if not isinstance(anchor, Block) or anchor.id == 0:
            return None
        state = cls(author, difficulty, members, member=member, seats=seats)
        try:
            check_block_alone(anchor, difficulty=difficulty, now_ms=now_ms, members=members)
            state.chain = Chain.resumed(history, anchor, genesis=state.chain.genesis)
            for row in tail[1:]:
                if not isinstance(row, Block):
                    return None
                state.chain.append(row, difficulty=difficulty, now_ms=now_ms, members=members)
        except InvalidBlock:
            return None
        queued: set[bytes] = set()
        for tx in pending:
            if tx.tx_id not in queued and state.chain.block_with_tx(tx.tx_id) is None:
                queued.add(tx.tx_id)
                state._pending.append(tx)
        return state

    @classmethod
    def _replay(
        cls, author: bytes, difficulty: int, members: Members | None, member: bool,
        blocks: Sequence[Block | UnreadableRow], now_ms: int, trusted: int,
    ) -> tuple[NodeState, InvalidBlock | None, int]:
        """A state holding the longest valid prefix of `blocks` (signatures
        checked above `trusted`), the first failure, and its position."""
        state = cls(author, difficulty, members, member=member)
        genesis = state.chain.genesis
        first = blocks[0] if blocks else None
        if isinstance(first, UnreadableRow):
            return state, DamagedRow(first), 0
        if first != genesis:
            return state, BadGenesis(first or genesis, "stored genesis differs from this "
                                                       "network's"), 0
        for position, row in enumerate(blocks[1:], start=1):
            if isinstance(row, UnreadableRow):
                return state, DamagedRow(row), position
            try:
                state.chain.append(row, difficulty=difficulty, now_ms=now_ms,
                                   signature=row.id > trusted, members=members)
            except InvalidBlock as exc:
                return state, exc, position
        return state, None, len(blocks)

    def _ours_intact(self, rows: Sequence[Block | UnreadableRow],
                     now_ms: int) -> tuple[Transaction, ...]:
        """The votes of our blocks among the dropped `rows` that verify on their
        own (hash, difficulty, membership, our signature), each once and none
        the kept chain carries: those a vote is ours to mine again. A block
        whose vote was edited fails its hash or, re-mined, our signature."""
        lost: dict[bytes, Transaction] = {}
        for row in rows:
            if not isinstance(row, Block) or row.author != self.author:
                continue
            tx = row.transaction
            if tx.tx_id in lost or self.chain.block_with_tx(tx.tx_id) is not None:
                continue
            try:
                check_block_alone(row, difficulty=self.difficulty, now_ms=now_ms,
                                  members=self.members)
            except InvalidBlock:
                continue
            lost[tx.tx_id] = tx
        return tuple(lost.values())

    # ------------------------------------------------------ a received block

    def screen_block(self, block: Block, public_key: bytes) -> BlockDecision | None:
        """Step 1 (cheap): a decision already, or None to go on to `check_alone`."""
        if block.author != public_key:
            return BlockDecision("rejected", "author does not match the public key sent",
                                 kind="AuthorMismatch")
        if self.chain.holds(block.id, block.hash):
            return KNOWN
        return None

    def check_alone(self, block: Block, now_ms: int) -> BlockDecision | None:
        """Step 2 (a hash and an RSA verification: where the time goes): the
        stand-alone rules. Reads only the difficulty and the members (whose
        admissions are single dict writes), so needs no lock."""
        try:
            check_block_alone(block, difficulty=self.difficulty, now_ms=now_ms,
                              members=self.members)
        except InvalidBlock as exc:
            return BlockDecision("rejected", str(exc), kind=type(exc).__name__)
        return None

    def block_checked(self, block: Block) -> BlockDecision:
        """Step 3: `block` passed `check_alone`; append it, or leave it to the majority."""
        if self.chain.holds(block.id, block.hash):  # it may have arrived by another path meanwhile
            return KNOWN
        tip = self.chain.tip
        if block.id == tip.id + 1 and block.prev_hash == tip.hash:
            try:
                self.chain.append_checked(block)
            except InvalidBlock as exc:  # its vote is already in our chain
                return BlockDecision("rejected", str(exc), kind=type(exc).__name__)
            return BlockDecision("added", effects=self._appended(block))
        if block.id > tip.id + 1:
            return BlockDecision("fork", effects=(Resolve(
                f"its id leaves a gap after our tip {tip.id}", block),))
        if block.id == tip.id + 1:
            why = f"its prev_hash {block.prev_hash.hex()[:16]} is not our tip's"
        else:
            why = f"we hold another block {block.id}"
        return BlockDecision("fork", effects=(Resolve(why),))

    def blocks_checked(self, blocks: Sequence[Block]
                       ) -> tuple[list[BlockDecision], tuple[Effect, ...]]:
        """`block_checked` for each of a run of blocks, in order (one peer's
        pipelined pushes, every one past `check_alone`): one decision per block,
        and all their effects `coalesce`d, so that the run costs the runtime one
        store transaction, one finality write and one wake-up."""
        decisions = [self.block_checked(block) for block in blocks]
        return decisions, coalesce(effect for d in decisions for effect in d.effects)

    def block_received(self, block: Block, public_key: bytes, now_ms: int) -> BlockDecision:
        """The three steps in one call (for callers that hold no lock to spare)."""
        return (self.screen_block(block, public_key) or self.check_alone(block, now_ms)
                or self.block_checked(block))

    def _appended(self, block: Block) -> tuple[Effect, ...]:
        """The chain grew by `block`: its vote leaves the queue; persist, restart
        mining, wake, and tell the peers (a block of ours is told by its Broadcast)."""
        tx_id = block.transaction.tx_id
        self._pending = [t for t in self._pending if t.tx_id != tx_id]
        finality = self._finality_effects(self.finality.chain_changed(self.chain))
        if block.author != self.author and not finality and self.finality.counting:
            finality = (ANNOUNCE,)
        return (AppendBlocks((block,), done=(tx_id,)), ABORT_MINING, WAKE, *finality)

    # ------------------------------------------------------------- finality

    def restore_finality(self, locked: int, final: int) -> None:
        """The locked and final heights the store kept (a lock outlives a restart:
        peers counted it). A chain cut below them by damage caps them."""
        height = self.chain.height
        self.finality.locked = min(locked, height)
        self.finality.final = min(final, self.finality.locked)

    def member_reported(self, voter: bytes, tip: Tip, locked: int | None) -> tuple[Effect, ...]:
        """Member `voter` (its key proven by a handshake) holds `tip` and has
        locked `locked` (None: not said; its last word stands). Our own key
        heard from elsewhere counts nothing."""
        if voter == self.author:
            return ()
        return self._finality_effects(self.finality.tip_seen(voter, tip, locked, self.chain))

    def _finality_effects(self, moved: bool) -> tuple[Effect, ...]:
        if not moved:
            return ()
        finality = self.finality
        return (Finalized(finality.locked, finality.final), ANNOUNCE)

    # ------------------------------------------------------- votes and mining

    def vote_submitted(self, tx: Transaction, *, relayed: bool = False) -> VoteDecision:
        """Our owner's vote: queue it (persisted) unless we have it already, or
        we are an observer (its blocks would be invalid: it writes nothing).
        A vote `relayed` to us by another member is queued but not persisted:
        its own member keeps it persisted, and mines it itself if we restart
        and drop it (core/relaying.py); a store write per relayed vote was
        the leader's, the busiest member's, to spare."""
        if not self.member:
            return VoteDecision(False, "this node is an observer, not a member of the "
                                       "network: it cannot mine votes")
        holder = self.chain.block_with_tx(tx.tx_id)
        if holder is not None:
            return VoteDecision(False, f"already in block {holder.id}")
        if any(t.tx_id == tx.tx_id for t in self._pending):
            if relayed:
                # One of ours, handed to a member that now names us leader: it
                # is ours to mine now, not when its patience runs out.
                self.relays.forget((tx.tx_id,))
            return VoteDecision(False, "already queued")
        self._pending.append(tx)
        return VoteDecision(True, effects=(QueueVote(tx, persist=not relayed), WAKE))

    def next_job(self, now_ms: int = 0, after: Sequence[Block] = ()) -> MineJob | None:
        """The oldest queued vote not waiting on a leader (see relaying), on the
        current tip, or on the last of `after`: our blocks mined or being mined
        on the tip, in order, not yet appended (their votes are skipped). The
        last may still be searched for, its hash unknown (b""): the job is then
        a follow-on, chained by the miner workers themselves (MinerPool.follow).
        None when nothing is to be mined here now."""
        base = after[-1] if after else self.chain.tip
        skip = {block.transaction.tx_id for block in after}
        relays = self.relays
        relays.observe(self.chain.height, now_ms)
        # The author of our tip leads: a vote it handed to another member before
        # it led waits for nobody. (At 20 peers, two votes cast in the first
        # instant went to the genesis leader, then waited out the whole
        # RELAY_MAX_PATIENCE at a node that mined everyone else's meanwhile.)
        leading = self.chain.height > 0 and self.chain.tip.author == self.author
        for tx in self._pending:
            if tx.tx_id in skip or (not leading and relays.waiting(tx.tx_id, now_ms)):
                continue
            if not leading and not after and self.relaying and relays.holding(now_ms):
                return None  # start-up: the leader may be a seat we do not reach yet
            return MineJob(Block(id=base.id + 1, transaction=tx, nonce=0, prev_hash=base.hash,
                                 hash=b"", signature=b"", author=self.author))
        return None

    # ------------------------------------------------------------- relaying

    def leader(self, reachable: AbstractSet[bytes]) -> bytes | None:
        """The member that mines for everyone now (core/relaying.py): our tip's
        author, if relaying is on and it is another member we reach; on the
        genesis block, which no member wrote, the smallest key among us and the
        members we reach. None: we mine ourselves."""
        if not self.relaying:
            return None
        author = self.chain.tip.author if self.chain.height > 0 else min(
            {self.author, *reachable})
        if author == self.author or author not in reachable:
            return None
        return author

    @property
    def starting_up(self) -> bool:
        """Whether we relay and have not yet reached every other seat once
        (core/relaying.py, "Start-up")."""
        return self.relaying and not self.relays.started_up

    def relay_due(self, now_ms: int, reachable: AbstractSet[bytes],
                  reached: AbstractSet[bytes] | None = None,
                  ) -> tuple[bytes, tuple[Transaction, ...]] | None:
        """The leader and the queued votes to hand it now (each vote once), or
        None. `reachable`: the members we can hand votes to now; `reached`:
        every member we have reached since we started (None: `reachable`).
        Until those are every other seat, `next_job` holds the votes we would
        mine without leading (core/relaying.py, "Start-up")."""
        if self.starting_up:
            every = reachable if reached is None else reached | reachable
            self.relays.reached(len(every - {self.author}) + 1 >= self.finality.seats)
        leader = self.leader(reachable)
        if leader is None or not self._pending:
            return None
        self.relays.observe(self.chain.height, now_ms)
        due = self.relays.hand_over(self._pending, now_ms)
        return (leader, due) if due else None

    def relay_failed(self, tx_ids: Iterable[bytes], now_ms: int) -> None:
        """The leader did not take these votes: mine them here at once."""
        self.relays.failed(tx_ids, now_ms)

    def relay_wait_ms(self, now_ms: int) -> int | None:
        """How long until a relayed vote's patience runs out, or until a vote
        held at start-up is looked at again (None: none waits)."""
        relays = self.relays
        relays.observe(self.chain.height, now_ms)
        wait = relays.wait_ms(self._pending, now_ms)
        held = relays.held_wait_ms(now_ms) if self._pending else None
        if held is not None:
            wait = held if wait is None else min(wait, held)
        return wait

    def nonce_found(self, job: MineJob, block: Block) -> MinedDecision:
        """Our miner solved `job`; `block` is its template with the nonce, hash and signature."""
        template = job.template
        if (block.id, block.prev_hash, block.transaction, block.author) != (
                template.id, template.prev_hash, template.transaction, template.author):
            raise OurBug(f"mined block {block.id} is not the job's template")
        if self.chain.tip.hash != template.prev_hash:
            return MinedDecision("stale", "the tip moved while we mined")
        try:
            self.chain.append_checked(block)
        except InvalidBlock as exc:  # the vote reached the chain by another path
            tx_id = job.tx.tx_id
            self._pending = [t for t in self._pending if t.tx_id != tx_id]
            return MinedDecision("dropped", str(exc), (DropVotes((tx_id,)),))
        # No AbortMining: the miner thread itself appends, and the search it may
        # already run is on this very block (next_job's `after`).
        effects = tuple(e for e in self._appended(block) if e is not ABORT_MINING)
        return MinedDecision("appended", effects=(*effects, Broadcast(block)))

    # ------------------------------------------------------- fork resolution

    def tips_collected(self, peer_votes: Iterable[Vote]) -> Resolution:
        """The plan of a resolution round, from the tips the peers reported: one
        vote per member key, ours included once (see the module docstring)."""
        tip = self.chain.tip
        heard = {self.author}
        counted: list[Vote] = [Vote(Tip(tip.id, tip.hash), None)] if self.member else []
        for vote in peer_votes:
            if vote.voter is None or vote.voter in heard:
                continue
            heard.add(vote.voter)
            counted.append(vote)
        finality = self.finality
        moved = False
        for vote in counted:
            if vote.voter is not None:
                moved = finality.tip_seen(vote.voter, vote.tip, None, self.chain) or moved
        # Each vote with its voter's lock, ours included: a tie goes to the
        # higher lock (forkchoice.py says why).
        votes = tuple(replace(vote, locked=finality.lock_of(vote.voter))
                      if vote.voter is not None else replace(vote, locked=finality.locked)
                      for vote in counted)
        effects = self._finality_effects(moved)
        if finality.counting and ANNOUNCE not in effects and any(
                vote.voter is not None and not self.chain.holds(vote.tip.id, vote.tip.hash)
                for vote in votes):
            # A member on a tip we lack: a poll does not carry its lock, its
            # answer to our account (Announce) does, for the next round's tie.
            effects = (*effects, ANNOUNCE)
        return Resolution(votes, tuple(candidates(votes)), effects=effects)

    def next_fetch(self, plan: Resolution) -> FetchBranch | None:
        """The next branch to fetch, or None when the round is over."""
        winner = plan.winner
        while winner is not None and not plan.done and plan.index < len(plan.candidates):
            target = plan.candidates[plan.index]
            if self.chain.holds(target.id, target.hash):
                if target == winner or self.chain.holds(winner.id, winner.hash):
                    plan.done = True  # we hold the best candidate that agrees with the majority
                    return None
                plan.next_candidate()  # we hold it, but it is a minority fork: not good enough
                continue
            asked, plan.asked = plan.asked, plan.asked + 1
            sources = holders(plan.votes, target)
            if asked < len(sources):
                return FetchBranch(target, sources[asked])
            plan.next_candidate()  # no holder answered: the next candidate
        plan.done = True
        return None

    def branch_fetched(
        self, plan: Resolution, fetch: FetchBranch, branch: Sequence[Block],
        *, complete: bool = True,
    ) -> BranchDecision:
        """`fetch.holder` answered with `branch` (each block already through the
        stand-alone checks, outside the lock): adopt it, or try the next candidate.

        A branch not `complete` is a chunk: the fetch stopped short of the target
        (at the cap on blocks held unadopted, or at its deadline). It is adopted
        on the same terms, and only if it reaches past our height (short of
        that, switching would shorten our chain); the round then goes on
        (node/resolver.py says why a chunk is safe to adopt)."""
        winner = plan.winner
        if branch and winner is not None and (
                fetch.target == winner or self._contains(branch, winner)):
            if complete:
                plan.done = True
                return self.adopt(branch)
            if branch[-1].id <= self.chain.height:
                return BranchDecision("skipped", reason="the chunk fetched does not reach "
                                                        "past our height")
            decision = self.adopt(branch)
            plan.done = decision.status == "invalid"  # as for a whole branch: the round ends
            return decision
        plan.next_candidate()  # this holder's chain does not extend the majority
        return BranchDecision("skipped", reason="it does not contain the majority tip")

    def _contains(self, branch: Sequence[Block], tip: Tip) -> bool:
        """Whether our chain up to `branch`'s parting point, plus `branch`, holds `tip`."""
        if any(b.hash == tip.hash for b in branch):
            return True
        return tip.id < branch[0].id and self.chain.holds(tip.id, tip.hash)

    def catch_up(self, branch: Sequence[Block]) -> BranchDecision:
        """Append `branch` (prechecked) if it continues our chain from our tip,
        dropping nothing: the blocks a gap showed we lack, fetched from the
        member that pushed the block after them. Anything else is a fork, for
        the majority to settle ("skipped")."""
        if not branch:
            return BranchDecision("skipped", reason="its holder sent no block")
        try:
            fork_id = self.chain.parting(branch)
        except InvalidBlock as exc:
            return BranchDecision("invalid", reason=str(exc))
        if fork_id != self.chain.height:
            return BranchDecision("skipped", reason=f"it parts from our chain at block "
                                                    f"{fork_id}: the majority decides")
        return self.adopt(branch)

    def adopt(self, branch: Sequence[Block]) -> BranchDecision:
        """Switch to `branch` (prechecked: only the link and duplicate rules run here).
        A branch our chain already holds to its end changes nothing: a fetch
        that returns after pushes appended its blocks, and more after them,
        must not cut our chain back to its end (at 20 peers under load that
        dropped the leader's newest block about once a second, each counted
        as a fork and fetched again)."""
        if branch and self.chain.holds(branch[-1].id, branch[-1].hash):
            return BranchDecision("unchanged", reason="our chain holds it already")
        try:
            fork_id = self.chain.parting(branch)
            if fork_id < self.chain.height and not self.finality.may_drop(fork_id, branch):
                return BranchDecision(
                    "skipped", reason=f"it would drop block {fork_id + 1}, and a majority "
                                      f"of the members keep our chain up to block "
                                      f"{self.finality.locked} (locked)")
            # now_ms is unused: `prechecked` skips the only rule that reads the clock.
            switch = self.chain.switch(branch, difficulty=self.difficulty, now_ms=0,
                                       prechecked=True)
        except InvalidBlock as exc:
            return BranchDecision("invalid", reason=str(exc))
        if not switch.added and not switch.dropped:
            return BranchDecision("unchanged", switch)
        requeue = tuple(b.transaction for b in switch.orphaned if b.author == self.author)
        # A vote we mined ourselves after its relay ran out of patience, and
        # whose block the majority just dropped, goes to the leader afresh:
        # mining it here again would race the leader's next block, and lose,
        # as long as the leader never got it (a relay lost with its link).
        self.relays.forget(t.tx_id for t in requeue)
        added_tx = tuple(b.transaction.tx_id for b in switch.added)
        queued = {t.tx_id for t in self._pending}
        carried = set(added_tx)
        self._pending = [t for t in requeue if t.tx_id not in queued] + self._pending
        self._pending = [t for t in self._pending if t.tx_id not in carried]
        # `done`: only the votes that were queued (a sync adopts thousands of
        # blocks, and deleting each of their ids from the stored queue costs).
        done = tuple(tx_id for tx_id in added_tx if tx_id in queued)
        moved = self.finality.chain_changed(
            self.chain, fork_id=switch.fork_id if switch.dropped else None)
        effects = (ReplaceFrom(switch.fork_id + 1, switch.added, requeue=requeue, done=done),
                   ABORT_MINING, WAKE, *self._finality_effects(moved))
        if self.finality.counting and not moved:
            effects += (ANNOUNCE,)
        if switch.dropped:
            self.forks_resolved += 1
            return BranchDecision("switched", switch, requeue, effects=effects)
        return BranchDecision("synced", switch, effects=effects)

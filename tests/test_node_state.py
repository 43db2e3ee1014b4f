"""The node's decisions, driven event by event on a NodeState: no sockets, threads,
clocks or sleeps. Each rule that tests/test_network.py checks through real
peers (fork, tie, longer branch, re-queue, duplicate) is checked here directly.

Blocks are real (mined at difficulty 1, signed: tests/blockkit.py). ME is the
node under test (the fixed key); OTHER is any other peer's author.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import LOW_DIFFICULTY, NOW, extend, fixed_key, make_block, other_key, resign, tx_for
from votechain.core.block import HASH_BYTES, Block, Transaction, genesis_block, meets_difficulty
from votechain.core.chain import Chain
from votechain.core.forkchoice import Tip, Vote
from votechain.core.node_effects import (
    AbortMining,
    AnnounceTip,
    AppendBlocks,
    BlockDecision,
    Broadcast,
    DropVotes,
    FetchBranch,
    Finalized,
    MineJob,
    QueueVote,
    ReplaceFrom,
    Resolve,
    Wake,
    coalesce,
)
from votechain.core.node_state import RECHECK_TAIL, NodeState, Resolution
from votechain.errors import OurBug

GENESIS = genesis_block()
P1, P2, P3 = ("10.0.0.1", 9001), ("10.0.0.2", 9002), ("10.0.0.3", 9003)


def me() -> bytes:
    return fixed_key().public_der


def state_of(blocks: Sequence[Block] = (GENESIS,), pending: Sequence[Transaction] = (),
             author: bytes | None = None) -> NodeState:
    state, restored = NodeState.restore(author or me(), LOW_DIFFICULTY, list(blocks), pending,
                                        now_ms=NOW)
    assert restored.bad is None and restored.effects == ()
    return state


def theirs(prev: Block, label: str) -> Block:
    return make_block(prev, tx_for(label), key=other_key())


def tip(block: Block) -> Tip:
    return Tip(block.id, block.hash)


def voter(source: tuple[str, int]) -> bytes:
    """The member key answering at `source` (a stand-in: the state only compares keys)."""
    return f"member at {source[0]}:{source[1]}".encode()


def vote(block: Block, source: tuple[str, int], key: bytes | None = None) -> Vote:
    """`source`'s vote for `block`'s tip, by the member answering there (or `key`)."""
    return Vote(tip(block), source, key or voter(source))


def mine(state: NodeState) -> tuple[MineJob, Block]:
    """The next job, solved and signed by ME, as the runtime's miner does."""
    job = state.next_job()
    assert job is not None
    return job, resign(job.template, fixed_key())


def run_round(state: NodeState, plan: Resolution,
              branches: dict[Tip, list[Block]]) -> list[tuple[FetchBranch, str]]:
    """Drive `plan` to its end, answering each fetch from `branches`."""
    steps: list[tuple[FetchBranch, str]] = []
    while (fetch := state.next_fetch(plan)) is not None:
        decision = state.branch_fetched(plan, fetch, branches[fetch.target])
        steps.append((fetch, decision.status))
    assert plan.done
    return steps


# ================================================================ a received block


def test_the_next_block_is_appended_persisted_and_restarts_mining() -> None:
    state = state_of()
    block = theirs(GENESIS, "a")
    decision = state.block_received(block, block.author, NOW)
    assert decision == BlockDecision(
        "added", effects=(AppendBlocks((block,), done=(block.transaction.tx_id,)), AbortMining(),
                          Wake()))
    assert state.chain.tip == block


def test_a_block_we_hold_is_known_and_changes_nothing() -> None:
    block = theirs(GENESIS, "a")
    state = state_of([GENESIS, block])
    for held in (block, GENESIS):
        assert state.block_received(held, held.author, NOW) == BlockDecision("known")
    assert state.chain.blocks() == [GENESIS, block]


def _missing_difficulty(prev: Block, difficulty: int) -> Block:
    """A signed block whose hash is right but misses `difficulty`."""
    template = make_block(prev, tx_for("easy"), difficulty=0)
    nonce = 0
    while meets_difficulty((candidate := template.with_nonce(nonce)).hash, difficulty):
        nonce += 1
    return replace(candidate, signature=fixed_key().sign(candidate.hash))


def _bad_blocks(prev: Block) -> dict[str, tuple[Block, bytes | None, str]]:
    """name -> (block, public key sent or None for its author, words of the reason)."""
    good = theirs(prev, "attack")
    future = make_block(prev, tx_for("future", timestamp=NOW + 3_600_000))
    return {
        "bad signature": (replace(good, signature=fixed_key().sign(good.hash)), None,
                          "bad signature"),
        "garbage signature": (replace(good, signature=os.urandom(256)), None, "bad signature"),
        "author not the key sent": (good, me(), "author does not match the public key sent"),
        "wrong hash": (replace(good, nonce=good.nonce + 1), None, "hash does not match"),
        "difficulty not met": (_missing_difficulty(prev, 2), None,
                               "does not meet the difficulty"),
        "timestamp far in the future": (future, None, "timestamp too far in the future"),
        "a vote already in the chain": (theirs(prev, "v0"), None,
                                        "transaction already in the chain"),
    }


@pytest.mark.parametrize("case", [
    "bad signature", "garbage signature", "author not the key sent", "wrong hash",
    "difficulty not met", "timestamp far in the future", "a vote already in the chain",
])
def test_a_bad_block_is_rejected_with_its_reason(case: str) -> None:
    chain, difficulty = [GENESIS, *extend(GENESIS, ["v0", "v1"])], LOW_DIFFICULTY
    if case == "difficulty not met":  # a node that asks for more than these blocks have
        chain, difficulty = [GENESIS], 2
    state, _ = NodeState.restore(me(), difficulty, chain, [], now_ms=NOW)
    block, key, words = _bad_blocks(chain[-1])[case]
    decision = state.block_received(block, key or block.author, NOW)
    assert decision.status == "rejected" and words in decision.reason, decision
    assert decision.effects == ()
    assert state.chain.blocks() == chain


@pytest.mark.parametrize(("case", "words"), [
    ("wrong prev_hash", "is not our tip's"),
    ("id gap", "leaves a gap after our tip 2"),
    ("same id as ours", "we hold another block 2"),
])
def test_a_block_that_does_not_extend_the_tip_is_a_fork_left_to_the_majority(
        case: str, words: str) -> None:
    chain = [GENESIS, *extend(GENESIS, ["v0", "v1"])]
    state = state_of(chain)
    parent = {
        "wrong prev_hash": replace(chain[-1], hash=os.urandom(HASH_BYTES)),
        "id gap": replace(chain[-1], id=chain[-1].id + 5),
        "same id as ours": chain[-2],
    }[case]
    block = theirs(parent, f"fork-{case}")
    decision = state.block_received(block, block.author, NOW)
    assert decision.status == "fork" and decision.reason == ""
    (effect,) = decision.effects
    assert isinstance(effect, Resolve) and words in effect.why
    # Only a gap names the block: its author holds what we lack (catch_up).
    assert effect.behind == (block if case == "id gap" else None)
    assert state.chain.blocks() == chain


def test_catching_up_appends_a_continuation_and_leaves_a_fork_to_the_majority() -> None:
    """NodeState.catch_up: the blocks a gap showed we lack, fetched from the
    member that pushed the next one, are appended when they continue our tip;
    a branch that would drop any block of ours is "skipped" (the runtime then
    runs a round: dropping is the majority's call)."""
    chain = [GENESIS, *extend(GENESIS, ["v0", "v1"])]
    fork = [theirs(chain[1], "x2")]
    fork.append(theirs(fork[0], "x3"))
    state = state_of(chain)
    decision = state.catch_up(fork)
    assert decision.status == "skipped" and "parts from our chain at block 1" in decision.reason
    assert state.chain.blocks() == chain
    more = [theirs(chain[-1], "v2")]
    more.append(theirs(more[0], "v3"))
    assert state.catch_up(more).status == "synced"
    assert state.chain.blocks() == [*chain, *more]
    assert state.catch_up(more).status == "unchanged"  # they came meanwhile
    assert state.catch_up([]).status == "skipped"


def test_a_run_of_blocks_is_decided_one_by_one_and_persisted_as_one() -> None:
    """NodeState.blocks_checked (a member's pipelined pushes, node/inbound.py):
    the same decisions as one block at a time, and their effects joined so
    that the runtime writes the run in one store transaction and wakes once.
    A block that breaks the run (here a vote already in the chain) is
    rejected, and the rest, no longer on our tip, go to the majority."""
    state = state_of()
    run = [theirs(GENESIS, "a")]
    run.append(theirs(run[-1], "b"))
    run.append(theirs(run[-1], "c"))
    twice = theirs(run[-1], "a")  # "a" again: its vote is in the chain
    after = theirs(twice, "d")
    decisions, effects = state.blocks_checked([*run, twice, after])
    assert [d.status for d in decisions] == ["added", "added", "added", "rejected", "fork"]
    (resolve,) = decisions[-1].effects  # a gap after our tip: its author is asked
    assert effects == (
        AppendBlocks(tuple(run), done=tuple(b.transaction.tx_id for b in run)),
        resolve, AbortMining(), Wake())
    assert state.chain.blocks() == [GENESIS, *run]
    assert state.pending_count == 0


def test_coalesced_effects_keep_the_order_the_store_must_see() -> None:
    """node_effects.coalesce: consecutive appends join, and join nothing
    across an effect that writes (a ReplaceFrom between two runs stays
    between them); of several Finalized only the last counts, after the
    writes; the signals come once, at the end; an identical Resolve once."""
    a, b, c = extend(GENESIS, ["a", "b", "c"])
    done = [block.transaction.tx_id for block in (a, b, c)]
    replaced = ReplaceFrom(2, (b,), requeue=(), done=())
    resolve = Resolve("a gap")
    effects = coalesce([
        AppendBlocks((a,), (done[0],)), AbortMining(), Wake(), Finalized(1, 0), AnnounceTip(),
        replaced, resolve, AppendBlocks((b,), (done[1],)), Wake(), resolve,
        AppendBlocks((c,), (done[2],)), Finalized(2, 1), AbortMining()])
    assert effects == (
        AppendBlocks((a,), (done[0],)), replaced, resolve,
        AppendBlocks((b, c), (done[1], done[2])), Finalized(2, 1),
        AbortMining(), Wake(), AnnounceTip())
    assert coalesce([]) == ()


def test_the_staged_receive_path_decides_as_block_received_does() -> None:
    """screen (lock) -> check_alone (no lock: it reads nothing that changes) -> decide (lock)."""
    state = state_of()
    block = theirs(GENESIS, "a")
    assert state.screen_block(block, block.author) is None
    assert state.check_alone(block, NOW) is None
    assert state.chain.height == 0  # the checks changed nothing
    assert state.block_checked(block).status == "added"
    # The same block arriving meanwhile on another connection: known at the last step.
    assert state.block_checked(block) == BlockDecision("known")
    assert state.screen_block(block, block.author) == BlockDecision("known")


def test_a_received_block_takes_its_vote_out_of_our_queue() -> None:
    state = state_of()
    mine_vote = tx_for("mine")
    state.vote_submitted(mine_vote)
    block = make_block(GENESIS, mine_vote, key=other_key())  # another peer mined it first
    assert state.block_received(block, block.author, NOW).status == "added"
    assert state.pending == () and state.next_job() is None


# ================================================================ votes and mining


def test_a_vote_is_queued_once() -> None:
    state = state_of()
    tx = tx_for("red")
    first = state.vote_submitted(tx)
    assert first.queued and first.effects == (QueueVote(tx), Wake())
    again = state.vote_submitted(tx)
    assert not again.queued and again.reason == "already queued" and again.effects == ()
    assert state.pending == (tx,)


def test_a_vote_already_in_the_chain_is_not_queued() -> None:
    block = theirs(GENESIS, "red")
    state = state_of([GENESIS, block])
    decision = state.vote_submitted(block.transaction)
    assert not decision.queued and decision.reason == "already in block 1"
    assert state.pending == ()


def test_what_to_mine_next_after_each_change() -> None:
    state = state_of()
    assert state.next_job() is None  # nothing queued
    a, b = tx_for("a"), tx_for("b")
    state.vote_submitted(a)
    state.vote_submitted(b)
    job = state.next_job()
    assert job is not None and job.tx == a  # the oldest vote first
    assert (job.template.id, job.template.prev_hash, job.template.author) == (
        1, GENESIS.hash, me())
    other = theirs(GENESIS, "x")
    assert AbortMining() in state.block_received(other, other.author, NOW).effects
    moved = state.next_job()
    assert moved is not None and (moved.tx, moved.template.prev_hash) == (a, other.hash)
    job, block = mine(state)
    assert state.nonce_found(job, block).status == "appended"
    after = state.next_job()
    assert after is not None and (after.tx, after.template.prev_hash) == (b, block.hash)
    job, block = mine(state)
    state.nonce_found(job, block)
    assert state.next_job() is None and state.chain.height == 3


def test_a_nonce_found_appends_and_broadcasts() -> None:
    state = state_of()
    state.vote_submitted(tx_for("a"))
    job, block = mine(state)
    decision = state.nonce_found(job, block)
    assert decision.status == "appended"
    # No AbortMining: the miner appends it itself, and may already search the next block.
    assert decision.effects == (AppendBlocks((block,), done=(block.transaction.tx_id,)),
                                Wake(), Broadcast(block))
    assert state.chain.tip == block and state.pending == ()


def test_a_nonce_found_on_a_stale_tip_is_dropped_and_the_vote_mined_again() -> None:
    state = state_of()
    tx = tx_for("a")
    state.vote_submitted(tx)
    job, block = mine(state)
    other = theirs(GENESIS, "x")
    state.block_received(other, other.author, NOW)  # the tip moved while we mined
    decision = state.nonce_found(job, block)
    assert decision.status == "stale" and decision.effects == ()
    assert state.chain.tip == other and state.pending == (tx,)
    again = state.next_job()
    assert again is not None and again.template.prev_hash == other.hash


def test_a_nonce_found_whose_vote_reached_the_chain_by_another_path() -> None:
    state = state_of()
    tx = tx_for("a")
    state.vote_submitted(tx)
    job, block = mine(state)
    carried = make_block(GENESIS, tx, key=other_key())
    state.block_received(carried, carried.author, NOW)
    assert state.nonce_found(job, block).status == "stale"
    assert state.pending == () and state.next_job() is None
    assert state.chain.blocks() == [GENESIS, carried]


def test_a_nonce_found_for_a_vote_already_on_our_tip_drops_the_vote() -> None:
    """The same tip, but the vote is in the chain already: dequeued, not appended."""
    first = theirs(GENESIS, "a")
    state = state_of([GENESIS, first])
    job = MineJob(Block(2, first.transaction, 0, first.hash, b"", b"", me()))
    block = resign(job.template)
    decision = state.nonce_found(job, block)
    assert decision.status == "dropped" and "transaction already in the chain" in decision.reason
    assert decision.effects == (DropVotes((first.transaction.tx_id,)),)
    assert state.chain.tip == first


def test_a_mined_block_that_is_not_the_jobs_is_our_bug() -> None:
    state = state_of()
    state.vote_submitted(tx_for("a"))
    job, _ = mine(state)
    with pytest.raises(OurBug):
        state.nonce_found(job, make_block(GENESIS, tx_for("b")))


# ================================================================ fork resolution


def test_holding_the_majority_tip_needs_no_fetch() -> None:
    chain = [GENESIS, *extend(GENESIS, ["v0"])]
    state = state_of(chain)
    plan = state.tips_collected([vote(chain[-1], P1), vote(chain[-1], P2)])
    assert plan.winner == tip(chain[-1]) and plan.votes[0] == Vote(tip(chain[-1]), None)
    assert state.next_fetch(plan) is None and plan.done


def test_one_vote_per_member_key_ours_included_once() -> None:
    """A member answering at several addresses counts once (its first answer); an
    observer's tip, and our own key heard from elsewhere, count for nothing."""
    chain = [GENESIS, *extend(GENESIS, ["v0"])]
    a1 = theirs(GENESIS, "a1")
    state = state_of(chain)
    sybil = voter(P1)
    plan = state.tips_collected([
        vote(a1, P1), vote(a1, P2, key=sybil), vote(a1, P3, key=sybil),  # one key, 3 places
        Vote(tip(a1), P2, None),  # an observer
        vote(a1, P3, key=me()),  # someone answering with our own key
    ])
    assert plan.votes == (Vote(tip(chain[-1]), None), vote(a1, P1))
    # Two distinct members outvote us; one key's copies above did not add up.
    plan = state.tips_collected([vote(a1, P1), vote(a1, P2), vote(a1, P3, key=sybil)])
    assert plan.votes == (Vote(tip(chain[-1]), None), vote(a1, P1), vote(a1, P2))
    assert plan.winner == tip(a1)


def test_an_observers_own_tip_is_no_vote() -> None:
    chain = [GENESIS, *extend(GENESIS, ["v0"])]
    state, _ = NodeState.restore(me(), LOW_DIFFICULTY, chain, [], now_ms=NOW, member=False)
    a1 = theirs(GENESIS, "a1")
    plan = state.tips_collected([vote(a1, P1)])
    assert plan.votes == (vote(a1, P1),) and plan.winner == tip(a1)
    assert state.tips_collected([]).votes == ()


def test_an_observer_queues_no_vote() -> None:
    state, _ = NodeState.restore(me(), LOW_DIFFICULTY, [GENESIS], [], now_ms=NOW, member=False)
    decision = state.vote_submitted(tx_for("a"))
    assert not decision.queued and "observer" in decision.reason
    assert decision.effects == () and state.pending == () and state.next_job() is None


def test_a_synced_branch_takes_the_queued_votes_it_carries_out_of_the_queue() -> None:
    """Only queued votes are named `done` (deleted from the stored queue): a sync
    adopts thousands of blocks, whose other votes were never queued here."""
    queued, waiting = tx_for("queued"), tx_for("waiting")
    state = state_of([GENESIS], [queued, waiting])
    b1 = theirs(GENESIS, "b1")
    b2 = make_block(b1, queued, key=other_key())  # another node mined our queued vote
    decision = state.adopt([b1, b2])
    assert decision.status == "synced"
    assert decision.effects[0] == ReplaceFrom(1, (b1, b2), requeue=(), done=(queued.tx_id,))
    assert state.pending == (waiting,)


def test_majority_switch_requeues_only_our_orphaned_votes_ahead_of_the_queue() -> None:
    b1 = theirs(GENESIS, "b1")
    mine1 = make_block(b1, tx_for("mine1"))
    mine2 = make_block(mine1, tx_for("mine2"))
    others = theirs(mine2, "others")  # another author's vote on our branch
    queued = tx_for("queued")
    state = state_of([GENESIS, b1, mine1, mine2, others], [queued])
    m2 = theirs(b1, "m2")
    m3 = make_block(m2, tx_for("mine2"), key=other_key())  # the majority carries mine2
    m4 = theirs(m3, "m4")
    plan = state.tips_collected([vote(m4, P1), vote(m4, P2)])
    assert plan.candidates == (tip(m4),)
    fetch = state.next_fetch(plan)
    assert fetch == FetchBranch(tip(m4), P1)
    decision = state.branch_fetched(plan, fetch, [m2, m3, m4])
    assert decision.status == "switched" and plan.done
    assert decision.requeued == (mine1.transaction,)  # not mine2 (carried), not others'
    assert decision.effects == (
        # done: the branch's votes that were queued (none here: mine2 was in a block).
        ReplaceFrom(2, (m2, m3, m4), requeue=(mine1.transaction,), done=()),
        AbortMining(), Wake())
    assert state.pending == (mine1.transaction, queued)  # ahead of the queue
    assert state.chain.blocks() == [GENESIS, b1, m2, m3, m4] and state.forks_resolved == 1
    job = state.next_job()
    assert job is not None and (job.tx, job.template.prev_hash) == (mine1.transaction, m4.hash)
    # Adopting the same branch again changes nothing and re-queues nothing twice.
    assert state.adopt([m2, m3, m4]).status == "unchanged"
    assert state.pending == (mine1.transaction, queued) and state.forks_resolved == 1


def test_a_branch_our_chain_already_holds_and_extends_changes_nothing() -> None:
    """The majority tip's branch comes back from a fetch after pushes appended
    it, and a block after it: adopting it must not cut our chain back to it."""
    b1 = theirs(GENESIS, "b1")
    b2 = theirs(b1, "b2")
    b3 = theirs(b2, "b3")
    state = state_of([GENESIS, b1])
    plan = state.tips_collected([vote(b2, P1), vote(b2, P2)])
    fetch = state.next_fetch(plan)
    assert fetch == FetchBranch(tip(b2), P1)
    for block in (b2, b3):  # pushed while the fetch was in flight
        assert state.block_received(block, block.author, NOW).status == "added"
    decision = state.branch_fetched(plan, fetch, [b2])
    assert decision.status == "unchanged" and plan.done
    assert state.chain.blocks() == [GENESIS, b1, b2, b3] and state.forks_resolved == 0


def test_queued_votes_carried_by_the_new_branch_leave_the_queue() -> None:
    ours = make_block(GENESIS, tx_for("ours"))
    waiting = tx_for("waiting")
    state = state_of([GENESIS, ours], [waiting])
    m1 = theirs(GENESIS, "m1")
    m2 = make_block(m1, waiting, key=other_key())
    decision = state.adopt([m1, m2])
    assert decision.status == "switched"
    assert state.pending == (ours.transaction,)
    replaced = decision.effects[0]
    assert isinstance(replaced, ReplaceFrom) and waiting.tx_id in replaced.done


def test_a_resolution_reads_only_the_forked_part_of_a_long_chain(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that switches the last blocks of a long chain neither lists the
    chain nor reads it below the fork point (issue "Long chains": a switch
    costs the fork's depth, not the chain's height)."""
    blocks = [GENESIS, *extend(GENESIS, [f"long{i}" for i in range(40)])]
    state = state_of(blocks)
    parent = blocks[-3]
    branch = [theirs(parent, "f0")]
    branch.append(theirs(branch[0], "f1"))
    branch.append(theirs(branch[1], "f2"))
    read: list[int] = []
    original = Chain.__getitem__

    def recorded(chain: Chain, block_id: int) -> Block:
        read.append(block_id)
        return original(chain, block_id)

    def listed() -> list[Block]:
        raise AssertionError("the resolution listed the whole chain")

    monkeypatch.setattr(Chain, "__getitem__", recorded)
    monkeypatch.setattr(state.chain, "blocks", listed)
    plan = state.tips_collected([vote(branch[-1], P1), vote(branch[-1], P2)])
    assert run_round(state, plan, {tip(branch[-1]): branch}) == [
        (FetchBranch(tip(branch[-1]), P1), "switched")]
    assert all(block_id >= parent.id for block_id in read), read
    monkeypatch.undo()
    assert state.chain.blocks() == [*blocks[:-2], *branch]


def test_a_tie_is_broken_identically_on_both_sides() -> None:
    a1 = make_block(GENESIS, tx_for("x"))
    b1 = theirs(GENESIS, "y")
    a = state_of([GENESIS, a1], author=me())
    b = state_of([GENESIS, b1], author=other_key().public_der)
    plan_a = a.tips_collected([vote(b1, P2)])
    plan_b = b.tips_collected([vote(a1, P1)])
    assert plan_a.winner == plan_b.winner  # the same votes, the same winner
    branches = {tip(a1): [a1], tip(b1): [b1]}
    steps = run_round(a, plan_a, branches) + run_round(b, plan_b, branches)
    assert [status for _, status in steps] == ["switched"]  # exactly one side gave way
    assert a.chain.tip == b.chain.tip
    assert a.forks_resolved + b.forks_resolved == 1
    loser = a if a.forks_resolved else b
    assert len(loser.pending) == 1  # its vote goes back in its own queue, to be mined again


def test_a_longer_branch_that_extends_the_majority_is_adopted() -> None:
    chain = [GENESIS, *extend(GENESIS, ["v0"])]
    state = state_of(chain)
    b2 = theirs(chain[-1], "b2")
    b3 = theirs(b2, "b3")
    plan = state.tips_collected([vote(chain[-1], P1), vote(chain[-1], P2), vote(b3, P3)])
    assert plan.candidates == (tip(b3), tip(chain[-1]))
    steps = run_round(state, plan, {tip(b3): [b2, b3]})
    assert steps == [(FetchBranch(tip(b3), P3), "synced")]
    assert state.chain.blocks() == [*chain, b2, b3] and state.forks_resolved == 0


def test_a_longer_minority_branch_gives_way_to_a_shorter_majority() -> None:
    c1 = make_block(GENESIS, tx_for("c1"))
    c2 = make_block(c1, tx_for("c2"))
    state = state_of([GENESIS, c1, c2])
    a1 = theirs(GENESIS, "a1")
    plan = state.tips_collected([vote(a1, P1), vote(a1, P2)])
    assert plan.candidates == (tip(c2), tip(a1))  # ours is longer, but outvoted
    steps = run_round(state, plan, {tip(a1): [a1]})
    assert steps == [(FetchBranch(tip(a1), P1), "switched")]
    assert state.chain.blocks() == [GENESIS, a1]
    assert state.pending == (c1.transaction, c2.transaction)  # mined again, in order


def test_a_longer_branch_without_the_majority_tip_is_skipped() -> None:
    w1 = theirs(GENESIS, "w1")
    state = state_of([GENESIS, w1])
    x1 = theirs(GENESIS, "x1")
    x2 = theirs(x1, "x2")
    plan = state.tips_collected([vote(w1, P1), vote(w1, P2), vote(x2, P3)])
    fetch = state.next_fetch(plan)
    assert fetch == FetchBranch(tip(x2), P3)
    decision = state.branch_fetched(plan, fetch, [x1, x2])
    assert decision.status == "skipped" and decision.effects == ()
    assert state.next_fetch(plan) is None and plan.done  # we hold the majority tip
    assert state.chain.blocks() == [GENESIS, w1]


def test_an_unanswered_fetch_asks_the_next_holder_then_the_next_candidate() -> None:
    state = state_of()
    m1 = theirs(GENESIS, "m1")
    plan = state.tips_collected([vote(m1, P1), vote(m1, P2)])
    assert state.next_fetch(plan) == FetchBranch(tip(m1), P1)
    assert state.next_fetch(plan) == FetchBranch(tip(m1), P2)  # P1 did not answer
    assert state.next_fetch(plan) is None and plan.done
    assert state.chain.height == 0


def test_an_invalid_branch_changes_nothing_and_ends_the_round() -> None:
    chain = [GENESIS, *extend(GENESIS, ["v0"])]
    state = state_of(chain)
    x1 = theirs(GENESIS, "x1")
    x2 = theirs(x1, "x2")
    plan = state.tips_collected([vote(x2, P1), vote(x2, P2)])
    fetch = state.next_fetch(plan)
    assert fetch is not None
    decision = state.branch_fetched(plan, fetch, [x2])  # hangs off a block we lack
    assert decision.status == "invalid" and "builds on a block" in decision.reason
    assert decision.effects == () and plan.done and state.chain.blocks() == chain


# ================================================================ restart


def test_restart_from_stored_blocks_and_pending_votes() -> None:
    chain = [GENESIS, *extend(GENESIS, ["v0", "v1"])]
    waiting, mined = tx_for("waiting"), chain[1].transaction
    state = state_of(chain, [mined, waiting])
    assert state.chain.blocks() == chain
    assert state.pending == (waiting,)  # a stored vote already in the chain leaves the queue


def test_restart_from_a_damaged_store_keeps_the_valid_prefix_and_our_votes() -> None:
    b1 = theirs(GENESIS, "b1")
    lost1 = make_block(b1, tx_for("lost1"))
    damaged = replace(lost1, signature=other_key().sign(lost1.hash))
    lost2 = make_block(damaged, tx_for("lost2"))
    others = theirs(lost2, "others")
    waiting = tx_for("waiting")
    state, restored = NodeState.restore(
        me(), LOW_DIFFICULTY, [GENESIS, b1, damaged, lost2, others],
        [waiting, lost2.transaction], now_ms=NOW)
    assert restored.bad is not None and restored.bad.block == damaged
    # lost1 carries our key as author but not our signature: anyone with the
    # file could have written it, so its vote is not ours to mine again.
    # lost2 still verifies (our signature of its hash): re-queued.
    assert restored.effects == (ReplaceFrom(2, (), requeue=(lost2.transaction,), done=()),)
    assert state.chain.blocks() == [GENESIS, b1]
    # Behind those already waiting, as the store appends them, and none twice.
    assert state.pending == (waiting, lost2.transaction)


def test_an_edited_vote_of_ours_is_dropped_and_not_mined_again() -> None:
    chain = [GENESIS, *extend(GENESIS, ["mine0", "mine1", "mine2"])]
    old = chain[2]
    edited = replace(old, transaction=replace(old.transaction, data=b"mallory"))  # old hash
    state, restored = NodeState.restore(me(), LOW_DIFFICULTY, [*chain[:2], edited, chain[3]],
                                        [], now_ms=NOW, verified_height=3)
    assert restored.bad is not None and restored.bad.block == edited
    assert "hash" in str(restored.bad)
    assert restored.effects == (ReplaceFrom(2, (), requeue=(chain[3].transaction,), done=()),)
    assert state.pending == (chain[3].transaction,)


def _long_chain(count: int) -> list[Block]:
    """Genesis and `count` blocks of OTHER's, so no drop re-queues anything."""
    chain = [GENESIS]
    for i in range(count):
        chain.append(theirs(chain[-1], f"long{i}"))
    return chain


LONG = RECHECK_TAIL + 8  # blocks 1..8 lie below the re-checked tail


def _forged_signature(block: Block) -> Block:
    """`block` with a signature that does not verify (it is OTHER's over another hash)."""
    return replace(block, signature=other_key().sign(bytes(HASH_BYTES)))


def test_restart_skips_signatures_at_or_below_the_verified_height() -> None:
    chain = _long_chain(LONG)
    forged = [*chain[:3], _forged_signature(chain[3]), *chain[4:]]
    # Block 3 was verified when it was stored: its signature is not checked again.
    state, restored = NodeState.restore(me(), LOW_DIFFICULTY, forged, [], now_ms=NOW,
                                        verified_height=3)
    assert restored.bad is None and state.chain.height == LONG
    # Not verified before (the default: only the genesis): caught.
    _, restored = NodeState.restore(me(), LOW_DIFFICULTY, forged, [], now_ms=NOW)
    assert restored.bad is not None and restored.bad.block.id == 3
    assert "signature" in str(restored.bad)


def test_restart_catches_a_bad_signature_above_the_verified_height() -> None:
    chain = _long_chain(LONG)
    forged = [*chain[:6], _forged_signature(chain[6]), *chain[7:]]
    state, restored = NodeState.restore(me(), LOW_DIFFICULTY, forged, [], now_ms=NOW,
                                        verified_height=5)
    assert restored.bad is not None and restored.bad.block.id == 6
    assert restored.effects == (ReplaceFrom(6, (), requeue=(), done=()),)
    assert state.chain.height == 5


def test_restart_rechecks_the_last_signatures_whatever_the_store_says() -> None:
    chain = _long_chain(LONG)
    tip = _forged_signature(chain[-1])  # an edited tip, re-mined but not re-signed
    state, restored = NodeState.restore(me(), LOW_DIFFICULTY, [*chain[:-1], tip], [],
                                        now_ms=NOW, verified_height=LONG)
    assert restored.bad is not None and restored.bad.block == tip
    assert state.chain.height == LONG - 1


@pytest.mark.parametrize("case", ["data", "link", "duplicate vote", "difficulty"])
def test_restart_checks_links_and_hashes_even_at_or_below_the_verified_height(
        case: str) -> None:
    chain = _long_chain(LONG)
    old = chain[4]
    if case == "data":  # an edited vote, the old hash kept: the hash check fails
        bad = replace(old, transaction=replace(old.transaction, data=b"edited"))
    elif case == "link":  # re-mined on another parent: the link fails
        bad = resign(replace(old, prev_hash=bytes(HASH_BYTES)), other_key())
    elif case == "duplicate vote":  # block 2's vote again, re-mined and signed
        bad = resign(replace(old, transaction=chain[2].transaction), other_key())
    else:  # a hash that does not meet the difficulty, re-signed
        nonce = next(n for n in range(10**6)
                     if not meets_difficulty(replace(old, nonce=n).computed_hash(),
                                             LOW_DIFFICULTY))
        unmined = replace(old, nonce=nonce, hash=replace(old, nonce=nonce).computed_hash())
        bad = replace(unmined, signature=other_key().sign(unmined.hash))
    stored = [*chain[:4], bad, *chain[5:]]
    state, restored = NodeState.restore(me(), LOW_DIFFICULTY, stored, [], now_ms=NOW,
                                        verified_height=LONG)
    assert restored.bad is not None and restored.bad.block == bad, case
    assert restored.effects == (ReplaceFrom(4, (), requeue=(), done=()),)
    assert state.chain.blocks() == chain[:4]


# ================================================================ purity

FORBIDDEN = {"socket", "threading", "time", "sqlite3", "multiprocessing", "subprocess",
             "asyncio", "select", "selectors"}
PURE_MODULES = ["votechain.core.node_state", "votechain.core.node_effects"]


def _imports(module: str) -> set[str]:
    """The modules `module`'s source imports (`from x import y` counts as x, and
    as x.y too when y is a module)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if node.module.startswith("votechain") and _is_module(name):
                    found.add(name)
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_the_state_machine_does_no_io() -> None:
    """node_state and node_effects, and every votechain module they import in
    turn, import nothing that does networking, threads, clocks or processes,
    and nothing above the core layer."""
    seen: set[str] = set()
    todo = list(PURE_MODULES)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imports(module):
            assert name.split(".")[0] not in FORBIDDEN, f"{module} imports {name}"
            if name.startswith("votechain"):
                assert name.startswith(("votechain.core", "votechain.errors")), (
                    f"{module} imports {name}, above the core layer")
                todo.append(name)
    assert "votechain.core.chain" in seen and "votechain.core.rules" in seen

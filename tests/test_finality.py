"""Finality (core/finality.py), driven event by event with no sockets: which
heights a quorum of the seats hold and have locked, and the rule that keeps a
locked block in the chain; then the same through NodeState, whose decisions
the runtime carries out."""

from __future__ import annotations

from collections.abc import Sequence

from blockkit import LOW_DIFFICULTY, NOW, fixed_key, make_block, other_key, resign, tx_for
from votechain.core.block import Block, genesis_block
from votechain.core.chain import Chain
from votechain.core.finality import Finality, Report, quorum_of
from votechain.core.forkchoice import Tip, Vote
from votechain.core.node_effects import AnnounceTip, Finalized, QueueVote
from votechain.core.node_state import NodeState
from votechain.core.relaying import START_RECHECK_MS, Relays

GENESIS = genesis_block()
A, B, C, D = (f"member {name}".encode() for name in "ABCD")
P1, P2 = ("10.0.0.1", 9001), ("10.0.0.2", 9002)


def chain_of(labels: Sequence[str], prev: Block = GENESIS) -> list[Block]:
    blocks = []
    for label in labels:
        prev = make_block(prev, tx_for(label), key=other_key())
        blocks.append(prev)
    return blocks


def held(blocks: Sequence[Block]) -> Chain:
    chain = Chain()
    for block in blocks:
        chain.append(block, difficulty=LOW_DIFFICULTY, now_ms=NOW)
    return chain


def tip(block: Block) -> Tip:
    return Tip(block.id, block.hash)


def test_a_quorum_is_a_majority_of_the_seats() -> None:
    assert [quorum_of(n) for n in (1, 2, 3, 4, 5, 10, 20)] == [1, 2, 2, 3, 3, 6, 11]


def test_a_network_of_one_seat_is_final_at_once() -> None:
    blocks = chain_of("ab")
    chain = held(blocks)
    finality = Finality(1)
    assert finality.chain_changed(chain)
    assert (finality.locked, finality.final) == (2, 2)


def test_holding_locks_and_only_a_quorum_of_locks_is_final() -> None:
    blocks = chain_of("abc")
    chain = held(blocks)
    finality = Finality(5)  # quorum 3: us and two more
    finality.chain_changed(chain)
    assert (finality.locked, finality.final) == (0, 0)
    finality.reported(A, Report(tip(blocks[2]), 0), chain)
    assert (finality.locked, finality.final) == (0, 0)  # two hold it: not a quorum
    finality.reported(B, Report(tip(blocks[1]), 0), chain)
    # Three agree up to block 2: locked there; nobody else has locked: not final.
    assert (finality.locked, finality.final) == (2, 0)
    finality.reported(A, Report(tip(blocks[2]), 2), chain)
    assert finality.final == 0  # two locks (A's and ours) of the three needed
    finality.reported(B, Report(tip(blocks[2]), 1), chain)
    assert finality.final == 1  # three locks up to block 1


def test_a_report_of_a_tip_we_lack_counts_once_our_chain_holds_it() -> None:
    blocks = chain_of("abc")
    chain = held(blocks[:1])
    finality = Finality(3)
    finality.reported(A, Report(tip(blocks[2]), 2), chain)
    assert finality.locked == 0  # A is ahead of us: we cannot tell it is our chain
    chain.append(blocks[1], difficulty=LOW_DIFFICULTY, now_ms=NOW)
    chain.append(blocks[2], difficulty=LOW_DIFFICULTY, now_ms=NOW)
    assert finality.chain_changed(chain)
    # Two hold block 3: locked there; A had locked only up to block 2: final there.
    assert (finality.locked, finality.final) == (3, 2)


def test_a_member_on_another_branch_agrees_only_below_the_parting_point() -> None:
    blocks = chain_of("ab")
    other = chain_of("x", prev=blocks[0])
    chain = held(blocks)
    finality = Finality(3)
    finality.reported(A, Report(tip(other[0]), 0), chain)
    assert finality.locked == 0  # A's tip is not in our chain: no agreement at all yet
    finality.reported(A, Report(tip(blocks[0]), 0), chain)
    assert finality.locked == 1


def test_reports_out_of_order_never_lower_what_was_counted() -> None:
    blocks = chain_of("abc")
    chain = held(blocks)
    finality = Finality(3)
    finality.reported(A, Report(tip(blocks[2]), 3), chain)
    assert (finality.locked, finality.final) == (3, 3)
    finality.reported(A, Report(tip(blocks[0]), 0), chain)  # an older push, arriving late
    assert (finality.locked, finality.final) == (3, 3)


def test_a_locked_block_is_not_dropped_for_a_branch_without_a_quorum_of_locks() -> None:
    blocks = chain_of("ab")
    rival = chain_of("xyz", prev=blocks[0])
    chain = held(blocks)
    finality = Finality(3)
    finality.reported(A, Report(tip(blocks[1]), 0), chain)
    assert finality.locked == 2
    assert not finality.may_drop(1, rival)  # would drop block 2, locked
    assert finality.may_drop(2, [])  # nothing locked above block 2
    # The rest of the network locked the rival branch above the parting point:
    # our block 2 can never be final, so the lock gives way.
    finality.reported(B, Report(tip(rival[2]), 3), chain)
    assert not finality.may_drop(1, rival)  # one lock of the two needed
    finality.reported(C, Report(tip(rival[1]), 2), chain)
    assert finality.may_drop(1, rival)


def test_a_locked_minority_gives_way_to_a_majority_far_ahead_of_it() -> None:
    """Seen at 3 peers: a member locked blocks whose author then dropped them,
    and the other two went on for thousands of blocks. Their last reports
    name tips far past the first chunk of their branch (MAX_BRANCH_BLOCKS),
    so on those alone the lock never gave way; their first reports of a tip
    we do not hold, with a lock at or past ours, lie inside it."""
    ours = chain_of("ab")
    rival = chain_of([f"r{i}" for i in range(8)])
    chain = held(ours)
    finality = Finality(3)
    finality.reported(A, Report(tip(ours[1]), 0), chain)  # the agreement we locked on
    assert finality.locked == 2
    finality.reported(B, Report(tip(rival[0]), 0), chain)  # no lock yet: no evidence
    finality.reported(B, Report(tip(rival[2]), 2), chain)  # B's first dissent
    finality.reported(C, Report(tip(rival[3]), 3), chain)  # C's
    for step in range(4, 8):  # both run on, beyond what the first chunk holds
        finality.reported(B, Report(tip(rival[step]), step), chain)
        finality.reported(C, Report(tip(rival[step]), step), chain)
    chunk = rival[:5]
    assert finality.may_drop(0, chunk)
    # A member that agrees with us again takes its dissent back: one lock of two.
    finality.reported(C, Report(tip(ours[1]), 2), chain)
    assert not finality.may_drop(0, chunk)
    assert not finality.may_drop(0, rival)


def test_a_switch_voids_agreement_above_the_parting_point() -> None:
    blocks = chain_of("ab")
    rival = chain_of("xy", prev=blocks[0])
    chain = held(blocks)
    finality = Finality(5)
    finality.reported(A, Report(tip(blocks[1]), 0), chain)
    assert finality.locked == 0  # two of the three needed
    chain.switch(rival, difficulty=LOW_DIFFICULTY, now_ms=NOW)
    finality.chain_changed(chain, fork_id=1)
    finality.reported(B, Report(tip(rival[1]), 0), chain)
    # A agreed on our old block 2, which is gone: only block 1 is agreed by three.
    assert finality.locked == 1


def test_without_seats_nothing_is_counted_and_final_is_the_height() -> None:
    blocks = chain_of("ab")
    chain = held(blocks)
    finality = Finality(0)
    assert not finality.reported(A, Report(tip(blocks[1]), 2), chain)
    assert finality.locked == 0 and finality.final_at(chain.height) == 2
    assert finality.may_drop(0, [])


# ================================================================ through NodeState


def seated(seats: int, blocks: Sequence[Block] = (GENESIS,)) -> NodeState:
    state, _ = NodeState.restore(fixed_key().public_der, LOW_DIFFICULTY, list(blocks), (),
                                 now_ms=NOW, seats=seats)
    return state


def test_a_locked_minority_adopts_the_first_chunk_of_a_majority_far_ahead() -> None:
    """The resolver's side of the case above: the majority's branch is longer
    than one fetch (the chunk stops short of its tip, complete=False), and
    the chunk is adopted over our locked blocks on the members' first
    dissent, where their last reports alone left it "skipped" for good."""
    ours = chain_of("ab")
    rival = chain_of([f"r{i}" for i in range(8)])
    state = seated(3, [GENESIS, *ours])
    state.member_reported(A, tip(ours[1]), 0)
    assert state.finality.locked == 2
    for voter, first in ((B, 2), (C, 3)):
        for step in range(first, 8):
            state.member_reported(voter, tip(rival[step]), step)
    plan = state.tips_collected([Vote(tip(rival[-1]), P1, B), Vote(tip(rival[-1]), P2, C)])
    fetch = state.next_fetch(plan)
    assert fetch is not None and fetch.target == tip(rival[-1])
    decision = state.branch_fetched(plan, fetch, rival[:5], complete=False)
    assert decision.status == "switched", decision.reason
    assert state.chain.blocks() == [GENESIS, *rival[:5]]


def test_a_received_block_and_its_authors_report_lock_it_in_a_network_of_three() -> None:
    state = seated(3)
    block = make_block(GENESIS, tx_for("a"), key=other_key())
    decision = state.block_received(block, block.author, NOW)
    assert decision.status == "added"
    assert AnnounceTip() in decision.effects  # our tip changed: the others must hear
    effects = state.member_reported(block.author, tip(block), None)
    assert Finalized(locked=1, final=0) in effects  # its author and we hold it: 2 of 3
    effects = state.member_reported(block.author, tip(block), 1)
    assert Finalized(locked=1, final=1) in effects  # and both locked it: final


def test_our_own_key_heard_from_elsewhere_counts_nothing() -> None:
    state = seated(3)
    block = make_block(GENESIS, tx_for("a"), key=other_key())
    state.block_received(block, block.author, NOW)
    assert state.member_reported(fixed_key().public_der, tip(block), 1) == ()
    assert state.finality.locked == 0


def test_the_majority_vote_cannot_drop_a_locked_block() -> None:
    base = chain_of("a")
    ours = chain_of("b", prev=base[0])
    rival = chain_of("xy", prev=base[0])
    state = seated(3, [GENESIS, *base, *ours])
    state.member_reported(A, tip(ours[0]), None)
    assert state.finality.locked == 2
    # Two other members report the rival tip: the majority vote picks it...
    plan = state.tips_collected([Vote(tip(rival[1]), P1, B), Vote(tip(rival[1]), P2, C)])
    assert plan.winner == tip(rival[1])
    fetch = state.next_fetch(plan)
    assert fetch is not None
    decision = state.branch_fetched(plan, fetch, rival)
    # ... but block 2 is locked: kept, and nothing switched.
    assert decision.status == "skipped" and "locked" in decision.reason
    assert state.chain.tip == ours[0]


def test_two_members_left_on_a_tie_follow_the_one_that_locked() -> None:
    """One member of three is gone; the two left hold different blocks at
    height 2: the gone leader's, which the other member locked (two of three
    held it), and one we mined on block 1 before the leader's reached us.
    One vote each: by hash alone we kept ours whenever its hash was the
    smaller, for good, since the other may not drop its locked block. The tie
    goes to the lock: we fetch its branch and switch."""
    # Every block from the fixed key and fixed transactions, so the hashes, and
    # which of the two blocks 2 has the smaller, are the same in every run.
    base = [make_block(GENESIS, tx_for("a"))]
    theirs = [make_block(base[0], tx_for("b"))]
    # Our block 2, with the smaller hash: the one a hash-only tie-break keeps.
    ours = next(block for block in (make_block(base[0], tx_for(f"ours{i}"))
                                    for i in range(64)) if block.hash < theirs[0].hash)
    state = seated(3, [GENESIS, *base, ours])
    state.member_reported(B, tip(theirs[0]), 2)
    assert state.finality.locked < 2  # ours is not locked: it may go
    plan = state.tips_collected([Vote(tip(theirs[0]), P1, B)])
    assert plan.winner == tip(theirs[0])
    fetch = state.next_fetch(plan)
    assert fetch is not None and fetch.target == tip(theirs[0])
    decision = state.branch_fetched(plan, fetch, theirs)
    assert decision.status == "switched", decision.reason
    assert state.chain.tip == theirs[0]
    assert state.pending == (ours.transaction,)  # our vote goes back in the queue


def test_a_round_that_finds_a_member_on_a_tip_we_lack_announces_our_account() -> None:
    """A poll's answer carries no lock; the answer to our Announce does, so
    the next round can break a tie on it."""
    base = chain_of("a")
    state = seated(3, [GENESIS, *base])
    state.member_reported(B, tip(base[0]), 1)  # B holds our tip: nothing to ask
    plan = state.tips_collected([Vote(tip(base[0]), P1, B)])
    assert AnnounceTip() not in plan.effects
    rival = chain_of("b")
    plan = state.tips_collected([Vote(tip(rival[0]), P1, B)])
    assert AnnounceTip() in plan.effects


def test_a_lock_survives_a_restart_capped_by_the_chain() -> None:
    blocks = chain_of("ab")
    state = seated(3, [GENESIS, *blocks])
    state.restore_finality(5, 4)  # recorded before the chain was cut at block 2
    assert (state.finality.locked, state.finality.final) == (2, 2)


# ================================================================ relaying


def relaying(blocks: Sequence[Block] = (GENESIS,), *, started_up: bool = True) -> NodeState:
    """A member of three seats that relays; `started_up`: it has reached every
    other seat once (core/relaying.py, "Start-up"), as after a member's first
    moments."""
    state = seated(3, blocks)
    state.relaying = True
    state.relays.reached(started_up)
    return state


def test_votes_go_to_the_author_of_our_tip_and_are_not_mined_here_meanwhile() -> None:
    theirs = chain_of("a")
    state = relaying([GENESIS, *theirs])
    leader = theirs[0].author
    state.vote_submitted(tx_for("mine"))
    assert state.relay_due(NOW, reachable={leader}) == (leader, (tx_for("mine"),))
    assert state.relay_due(NOW, reachable={leader}) is None  # each vote once
    assert state.next_job(NOW + 1999) is None  # the leader has it, and time yet
    assert state.relay_wait_ms(NOW + 1500) == 500
    job = state.next_job(NOW + 2000)  # patience ran out: mined here after all
    assert job is not None and job.tx == tx_for("mine")


def test_no_leader_when_it_is_out_of_reach_or_we_authored_the_tip() -> None:
    theirs = chain_of("a")
    state = relaying([GENESIS, *theirs])
    state.vote_submitted(tx_for("mine"))
    assert state.relay_due(NOW, reachable=set()) is None  # unreachable: mine it
    assert state.next_job(NOW) is not None
    ours = relaying()
    ours.vote_submitted(tx_for("x"))
    job = ours.next_job(NOW)
    assert job is not None
    ours.nonce_found(job, resign_for(job.template))
    assert ours.leader(reachable={fixed_key().public_der}) is None  # we lead


def test_a_failed_relay_is_mined_here_at_once() -> None:
    theirs = chain_of("a")
    state = relaying([GENESIS, *theirs])
    state.vote_submitted(tx_for("mine"))
    assert state.relay_due(NOW, reachable={theirs[0].author}) is not None
    state.relay_failed([tx_for("mine").tx_id], NOW)
    assert state.next_job(NOW) is not None


def test_the_next_block_is_mined_on_ours_before_it_is_signed() -> None:
    state = seated(3)
    state.vote_submitted(tx_for("one"))
    state.vote_submitted(tx_for("two"))
    job = state.next_job(NOW)
    assert job is not None and job.tx == tx_for("one")
    mined = job.template.with_nonce(0)
    chained = state.next_job(NOW, after=(mined,))
    assert chained is not None and chained.tx == tx_for("two")
    assert (chained.template.id, chained.template.prev_hash) == (mined.id + 1, mined.hash)


def test_a_follow_on_job_skips_every_vote_mined_or_being_mined() -> None:
    """The miner keeps one job queued behind the one searched for (its parent's
    hash not yet known): both blocks' votes are skipped, and the follow-on
    names the searched block's id + 1 and its unknown hash."""
    state = seated(3)
    for category in ("one", "two", "three"):
        state.vote_submitted(tx_for(category))
    first = state.next_job(NOW)
    assert first is not None
    mined = first.template.with_nonce(0)
    second = state.next_job(NOW, after=(mined,))
    assert second is not None and second.tx == tx_for("two")
    follow = state.next_job(NOW, after=(mined, second.template))
    assert follow is not None and follow.tx == tx_for("three")
    assert (follow.template.id, follow.template.prev_hash) == (mined.id + 2, b"")
    assert state.next_job(NOW, after=(mined, second.template, follow.template)) is None


def resign_for(template: Block) -> Block:
    return resign(template, fixed_key())


def test_on_the_genesis_block_the_smallest_key_leads() -> None:
    state = relaying()
    me_key = fixed_key().public_der
    smaller, larger = b"\x00" + me_key, b"\xff" + me_key
    assert state.leader(reachable={larger}) is None  # we are the smallest: we mine
    assert state.leader(reachable={smaller, larger}) == smaller


def test_at_start_up_a_vote_waits_until_every_seat_is_reached_or_half_the_patience() -> None:
    """On the genesis block a member that finds itself the smallest key it
    reaches may not be the smallest of all while a seat is out of reach: it
    holds the vote until it reaches every seat, or for half the patience (a
    member that handed it a vote mines that itself after the whole patience:
    the holder must be first, core/relaying.py)."""
    me_key = fixed_key().public_der
    larger, largest = b"\xfe" + me_key, b"\xff" + me_key
    state = relaying(started_up=False)  # three seats
    state.vote_submitted(tx_for("first"))
    assert state.relay_due(NOW, reachable={larger}) is None  # we would lead: nobody to hand it
    assert state.next_job(NOW) is None  # but the third seat may hold a smaller key
    assert state.relay_wait_ms(NOW) == START_RECHECK_MS  # looked at again soon
    assert state.next_job(NOW + 999) is None
    job = state.next_job(NOW + 1000)  # half the patience ran out: mined after all
    assert job is not None and job.tx == tx_for("first")

    reached = relaying(started_up=False)
    reached.vote_submitted(tx_for("first"))
    reached.relay_due(NOW, reachable={larger})
    assert reached.next_job(NOW) is None
    assert reached.relay_due(NOW + 10, reachable={larger, largest}) is None  # all reached
    assert reached.next_job(NOW + 10) is not None  # we are the smallest of all: at once
    assert reached.relay_wait_ms(NOW + 10) is None


def test_at_start_up_a_tip_author_out_of_reach_is_waited_for_after_that_not() -> None:
    """Past the genesis block, a member that does not reach the tip's author
    yet holds its vote at start-up (the link may not be up yet), but once it
    has reached every seat, a leader out of reach is a dead one: mined at once."""
    theirs = chain_of("a")
    state = relaying([GENESIS, *theirs], started_up=False)
    state.vote_submitted(tx_for("mine"))
    assert state.relay_due(NOW, reachable=set()) is None
    assert state.next_job(NOW) is None  # start-up: the leader's link may come up
    assert state.relay_due(NOW + 10, reachable={theirs[0].author, b"a third seat"}) \
        == (theirs[0].author, (tx_for("mine"),))  # it did: handed over
    assert state.next_job(NOW + 10) is None  # the leader has it
    state.vote_submitted(tx_for("later"))
    assert state.relay_due(NOW + 20, reachable=set()) is None  # the leader's link is gone
    job = state.next_job(NOW + 20)  # not start-up any more: mined here at once
    assert job is not None and job.tx == tx_for("later")


def test_a_member_whose_tip_is_its_own_block_leads_even_at_start_up() -> None:
    state = relaying(started_up=False)
    state.vote_submitted(tx_for("first"))
    state.relay_due(NOW, reachable=set())  # alone, and held for the whole hold
    assert state.next_job(NOW) is None
    job = state.next_job(NOW + 2000)
    assert job is not None
    assert state.nonce_found(job, resign_for(job.template)).status == "appended"
    state.vote_submitted(tx_for("second"))
    assert state.relay_due(NOW + 2001, reachable=set()) is None
    assert state.next_job(NOW + 2001) is not None  # our tip: we lead, at once
    assert state.relay_wait_ms(NOW + 2001) is None


def test_a_relayed_vote_is_queued_but_left_to_its_own_member_to_persist() -> None:
    state = seated(3)
    decision = state.vote_submitted(tx_for("theirs"), relayed=True)
    assert decision.queued and QueueVote(tx_for("theirs"), persist=False) in decision.effects
    assert state.pending == (tx_for("theirs"),)


def test_an_orphaned_vote_mined_here_after_its_relay_ran_out_is_relayed_again() -> None:
    """The leader never got the vote (its relay was lost): we mine it after the
    patience, the majority's chain drops our block, and the vote is handed to
    the leader afresh instead of racing its next block again."""
    base = chain_of("a")
    leader = base[0].author
    state = relaying([GENESIS, *base])
    vote = tx_for("mine")
    state.vote_submitted(vote)
    assert state.relay_due(NOW, reachable={leader}) == (leader, (vote,))
    job = state.next_job(NOW + 2000)  # patience ran out
    assert job is not None and job.tx == vote
    assert state.nonce_found(job, resign_for(job.template)).status == "appended"
    rival = chain_of("x", prev=base[0])  # the leader's block at the same height wins
    decision = state.adopt(rival)
    assert decision.status == "switched" and decision.requeued == (vote,)
    assert state.relay_due(NOW + 2001, reachable={leader}) == (leader, (vote,))


def test_a_vote_handed_over_before_we_led_is_mined_once_we_lead() -> None:
    """Seen at 20 peers: a member handed its first votes to the genesis leader,
    then became the leader itself, and mined everyone's votes but those two
    until RELAY_MAX_PATIENCE ran out (the chain grew all along). Once our
    block is the tip we lead, and a vote handed over earlier waits for
    nobody; nor does one the member we handed it to relays back to us."""
    base = chain_of("a")
    leader = base[0].author
    state = relaying([GENESIS, *base])
    early, back = tx_for("early"), tx_for("back")
    state.vote_submitted(early)
    assert state.relay_due(NOW, reachable={leader}) == (leader, (early,))
    assert state.next_job(NOW + 1) is None  # the leader has it
    state.vote_submitted(back)
    assert state.relay_due(NOW + 1, reachable={leader}) == (leader, (back,))
    decision = state.vote_submitted(back, relayed=True)  # the leader names us now
    assert not decision.queued
    job = state.next_job(NOW + 2)
    assert job is not None and job.tx == back
    # Our block becomes the tip: we lead, and the other one is ours too.
    assert state.nonce_found(job, resign_for(job.template)).status == "appended"
    follow = state.next_job(NOW + 3)
    assert follow is not None and follow.tx == early


def test_relay_patience_stretches_while_the_chain_grows_up_to_its_cap() -> None:
    """A leader that keeps appending blocks is working through a queue: a vote
    handed to it waits RELAY_PATIENCE from the last growth seen, not from the
    hand-over, but never past RELAY_MAX_PATIENCE; a dead leader (no growth)
    still costs the patience alone, and a failed relay nothing."""
    relays = Relays(patience_ms=2000, max_patience_ms=10_000)
    vote, other = tx_for("waits"), tx_for("failed")
    relays.observe(5, NOW)
    assert relays.hand_over([vote, other], NOW) == (vote, other)
    relays.observe(5, NOW + 1500)  # no growth: no progress
    assert relays.waiting(vote.tx_id, NOW + 1999)
    assert not relays.waiting(vote.tx_id, NOW + 2000)  # a dead leader: 2 s
    relays.observe(6, NOW + 1500)  # a block appended: the leader works
    assert relays.waiting(vote.tx_id, NOW + 3499)
    assert not relays.waiting(vote.tx_id, NOW + 3500)
    assert relays.wait_ms([vote], NOW + 3000) == 500
    for step in range(1, 12):  # the chain grows every second, for ever
        relays.observe(6 + step, NOW + 1500 + step * 1000)
    assert relays.waiting(vote.tx_id, NOW + 9999)
    assert not relays.waiting(vote.tx_id, NOW + 10_000)  # the cap: a censor's most
    relays.failed([other.tx_id], NOW + 100)
    assert not relays.waiting(other.tx_id, NOW + 100)

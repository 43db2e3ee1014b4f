"""The kept tally (node/store.py's `tally` table, changed in the same transaction
as every append and switch) against the recount (voting.tally over the chain):
they agree after appends, fork switches and restarts, on the state machine with
its effects carried into a real store, through real nodes, and through the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from blockkit import LOW_DIFFICULTY, NOW, T0, fixed_key, make_block, other_key
from framework.network import Network, converged
from framework.processes import run
from framework.waiting import wait_until
from votechain.core.block import Block, genesis_block
from votechain.core.forkchoice import Tip, Vote
from votechain.core.node_effects import AppendBlocks, DropVotes, Effect, QueueVote, ReplaceFrom
from votechain.core.node_state import NodeState
from votechain.core.voting import tally, vote_transaction
from votechain.node.store import ChainStore

DEADLINE = 30.0
PEER, OTHER_PEER = ("10.0.0.9", 9009), ("10.0.0.8", 9008)


def carry_out(store: ChainStore, effects: Iterable[Effect]) -> None:
    """The store writes of node/runtime.py's `_carry_out`, the rest ignored."""
    for effect in effects:
        match effect:
            case AppendBlocks(blocks=blocks, done=done):
                store.append(*blocks, done=done)
            case ReplaceFrom(first_id=first_id, blocks=blocks, requeue=requeue, done=done):
                store.replace_from(first_id, blocks, requeue=requeue, done=done)
            case QueueVote(tx=tx):
                store.add_pending(tx)
            case DropVotes(tx_ids=tx_ids):
                store.drop_pending(tx_ids)


def theirs(prev: Block, category: str) -> Block:
    return make_block(prev, vote_transaction(category, T0), key=other_key())


def assert_agree(store: ChainStore, state: NodeState) -> None:
    assert store.blocks() == state.chain.blocks()
    assert store.tally() == tally(store.blocks()) == tally(state.chain.blocks())


def test_kept_tally_equals_the_recount_after_appends_switches_and_restarts(
        tmp_path: Path) -> None:
    store = ChainStore.open(tmp_path, LOW_DIFFICULTY)
    me = fixed_key().public_der
    state, _ = NodeState.restore(me, LOW_DIFFICULTY, store.blocks(), store.pending(), now_ms=NOW)
    genesis = genesis_block()
    # Appends: received blocks, and votes of ours mined.
    tip = genesis
    for label in ("red", "blue", "red"):
        tip = theirs(tip, label)
        carry_out(store, state.block_received(tip, other_key().public_der, NOW).effects)
        assert_agree(store, state)
    for label in ("green", "blue"):
        carry_out(store, state.vote_submitted(vote_transaction(label + "-mine", T0)).effects)
        job = state.next_job()
        assert job is not None
        block = make_block(state.chain.tip, job.tx)
        carry_out(store, state.nonce_found(job, block).effects)
        assert_agree(store, state)
    assert store.tally() == {"blue": 1, "blue-mine": 1, "green-mine": 1, "red": 2}
    # A fork switch: the majority's branch parts after block 2 and is longer.
    branch = [theirs(state.chain[2], "violet")]
    for label in ("violet", "red", "white"):
        branch.append(theirs(branch[-1], label))
    majority = Tip(branch[-1].id, branch[-1].hash)
    plan = state.tips_collected([Vote(majority, PEER, b"member one"),
                                 Vote(majority, OTHER_PEER, b"member two")])
    fetch = state.next_fetch(plan)
    assert fetch is not None
    decision = state.branch_fetched(plan, fetch, branch)
    assert decision.status == "switched"
    carry_out(store, decision.effects)
    assert_agree(store, state)
    # Our orphaned votes are mined again on the new branch: counted once each.
    while (job := state.next_job()) is not None:
        carry_out(store, state.nonce_found(job, make_block(state.chain.tip, job.tx)).effects)
    assert_agree(store, state)
    assert store.tally() == {"violet": 2, "red": 2, "blue": 1, "blue-mine": 1,
                             "green-mine": 1, "white": 1}
    # A restart reads the kept tally back as it was.
    expected = store.tally()
    store.close()
    again = ChainStore.open(tmp_path, LOW_DIFFICULTY)
    restarted, restored = NodeState.restore(me, LOW_DIFFICULTY, again.blocks(), again.pending(),
                                            now_ms=NOW, verified_height=again.verified_height)
    assert restored.bad is None
    assert again.tally() == expected
    assert_agree(again, restarted)
    again.close()


# ------------------------------------------------------------------ real nodes


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path) as network:
        yield network


def test_every_node_keeps_the_recounted_tally_through_a_fork_and_a_restart(
        net: Network) -> None:
    a, b = net.add_node("a"), net.add_node("b")
    assert a.wait_for_tx(a.submit_vote("shared"), DEADLINE) is not None
    wait_until(converged([a, b], 1), DEADLINE, what="both on the first vote")
    # Partitioned, both vote: two branches, one of which gives way when healed.
    a.set_network_active(False)
    b.set_network_active(False)
    a_votes = [a.submit_vote(c) for c in ("alpha", "beta", "alpha")]
    b_votes = [b.submit_vote(c) for c in ("gamma", "beta")]
    for tx_id in a_votes:
        assert a.wait_for_tx(tx_id, DEADLINE) is not None
    for tx_id in b_votes:
        assert b.wait_for_tx(tx_id, DEADLINE) is not None
    assert a.tally() == a.tally(recount=True) == {"alpha": 2, "beta": 1, "shared": 1}
    assert b.tally() == b.tally(recount=True) == {"beta": 1, "gamma": 1, "shared": 1}
    a.set_network_active(True)
    b.set_network_active(True)
    everything = {"alpha": 2, "beta": 2, "gamma": 1, "shared": 1}
    wait_until(lambda: converged([a, b])() and a.tally(recount=True) == everything,
               2 * DEADLINE, what="the fork resolved and the dropped votes mined again")
    assert a.forks_resolved + b.forks_resolved >= 1
    for node in (a, b):
        assert node.tally() == node.tally(recount=True) == everything

    # The CLI, through the control channel: both ways print the same table.
    for flags in ([], ["--json"]):
        kept = run("tally", "--data-dir", str(a.data_dir), *flags)
        recounted = run("tally", "--data-dir", str(a.data_dir), "--recount", *flags)
        assert kept.returncode == recounted.returncode == 0, recounted.stderr
        assert kept.stdout == recounted.stdout
    assert '"alpha": 2' in kept.stdout

    # A restart reads the kept tally back and still agrees.
    restarted = net.restart_node(b)
    assert restarted.tally() == restarted.tally(recount=True) == everything

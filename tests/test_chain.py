"""Chain: appending, fork switches (what is dropped, added and orphaned), atomicity
on an invalid branch, and the one-transaction-once rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockkit import NOW, cheap_blocks, extend, make_block, make_chain, other_key, tx_for
from votechain.core.block import Block, genesis_block
from votechain.core.chain import Chain, Switch
from votechain.errors import (
    BadGenesis,
    BadHash,
    BadLink,
    BadSignature,
    DuplicateTransaction,
    InvalidBlock,
)

D = 1
BASE = make_chain(4)  # genesis, v0..v3


def chain_of(blocks: list) -> Chain:  # type: ignore[type-arg]
    chain = Chain()
    for block in blocks[1:]:
        chain.append(block, difficulty=D, now_ms=NOW)
    return chain


def snapshot(chain: Chain) -> tuple[object, ...]:
    return (chain.blocks(), chain.height, chain.tip,
            [chain.holds(b.id, b.hash) for b in BASE],
            [chain.block_with_tx(b.transaction.tx_id) for b in BASE])


def test_new_chain_is_genesis() -> None:
    chain = Chain()
    assert chain.height == 0 and len(chain) == 1
    assert chain.tip == chain.genesis == genesis_block()
    assert chain.holds(genesis_block().id, genesis_block().hash)


def test_append_and_lookups() -> None:
    chain = chain_of(BASE)
    assert chain.height == 4 and len(chain) == 5
    assert chain.blocks() == BASE
    assert chain.tip == BASE[4] and chain[2] == BASE[2]
    assert chain.blocks_from(2, 2) == BASE[2:4]
    assert chain.blocks_from(-3, 1) == BASE[:1]
    assert chain.blocks_from(3, 100) == BASE[3:]
    assert chain.blocks_from(9, 5) == [] and chain.blocks_from(1, -1) == []
    assert all(chain.holds(b.id, b.hash) for b in BASE)
    assert chain.block_with_tx(BASE[3].transaction.tx_id) == BASE[3]
    assert chain.block_with_tx(b"\x00" * 15 + b"\x01") is None
    # blocks() is a copy: changing it does not change the chain.
    chain.blocks().clear()
    assert chain.height == 4


def test_append_rejects_without_changing_anything() -> None:
    chain = chain_of(BASE)
    before = snapshot(chain)
    with pytest.raises(BadLink):
        chain.append(BASE[2], difficulty=D, now_ms=NOW)
    with pytest.raises(BadSignature):
        bad = make_block(BASE[4], tx_for("w"))
        chain.append(replace(bad, signature=bytes(256)), difficulty=D, now_ms=NOW)
    assert snapshot(chain) == before


def test_duplicate_transaction_refused() -> None:
    chain = chain_of(BASE)
    replay = make_block(BASE[4], BASE[2].transaction)  # same tx, mined again on the tip
    with pytest.raises(DuplicateTransaction, match=BASE[2].transaction.tx_id.hex()):
        chain.append(replay, difficulty=D, now_ms=NOW)
    with pytest.raises(DuplicateTransaction):
        chain.append_checked(replay)
    assert chain.height == 4


def test_constructor_and_verified() -> None:
    assert Chain(BASE).blocks() == BASE
    assert Chain(BASE[1:]).blocks() == BASE  # genesis is implied
    assert Chain.verified(BASE, difficulty=D, now_ms=NOW).blocks() == BASE
    assert Chain.verified(BASE[1:], difficulty=D, now_ms=NOW).blocks() == BASE
    with pytest.raises(BadHash):
        Chain.verified([*BASE[:3], replace(BASE[3], nonce=BASE[3].nonce + 1)],
                       difficulty=D, now_ms=NOW)
    fake_genesis = replace(BASE[0], signature=b"x")
    with pytest.raises(BadGenesis):
        Chain([fake_genesis, *BASE[1:]])
    with pytest.raises(BadGenesis):
        Chain.verified([fake_genesis, *BASE[1:]], difficulty=D, now_ms=NOW)


def test_switch_drops_and_adds() -> None:
    chain = chain_of(BASE)
    branch = extend(BASE[2], ["b0", "b1", "b2"])  # forks after v1, one block longer
    result = chain.switch(branch, difficulty=D, now_ms=NOW)
    assert result == Switch(fork_id=2, added=tuple(branch), dropped=tuple(BASE[3:]),
                            orphaned=tuple(BASE[3:]))
    assert chain.blocks() == [*BASE[:3], *branch]
    assert chain.height == 5
    for gone in BASE[3:]:
        assert not chain.holds(gone.id, gone.hash)
        assert chain.block_with_tx(gone.transaction.tx_id) is None
    for new in branch:
        assert chain.holds(new.id, new.hash)
        assert chain.block_with_tx(new.transaction.tx_id) == new
    # The orphaned transactions can be mined again on the new tip.
    again = make_block(chain.tip, BASE[3].transaction)
    chain.append(again, difficulty=D, now_ms=NOW)


def test_switch_keeps_transactions_the_branch_carries() -> None:
    chain = chain_of(BASE)
    # Another node mined v2 (BASE[3]'s vote) as well, plus a new one.
    first = make_block(BASE[2], BASE[3].transaction, key=other_key())
    branch = [first, *extend(first, ["b1"])]
    assert branch[0].transaction == BASE[3].transaction and branch[0] != BASE[3]
    result = chain.switch(branch, difficulty=D, now_ms=NOW)
    assert result.dropped == (BASE[3], BASE[4])
    assert result.orphaned == (BASE[4],)
    assert chain.block_with_tx(BASE[3].transaction.tx_id) == branch[0]


def test_switch_skips_blocks_it_repeats() -> None:
    chain = chain_of(BASE)
    branch = [BASE[2], BASE[3], *extend(BASE[3], ["c0", "c1"])]
    result = chain.switch(branch, difficulty=D, now_ms=NOW)
    assert result.fork_id == 3
    assert result.added == tuple(branch[2:])
    assert result.dropped == (BASE[4],) and result.orphaned == (BASE[4],)
    assert chain.blocks() == [*BASE[:4], *branch[2:]]


def test_switch_extending_the_tip_drops_nothing() -> None:
    chain = chain_of(BASE)
    branch = extend(BASE[4], ["e0"])
    result = chain.switch(branch, difficulty=D, now_ms=NOW)
    assert result == Switch(fork_id=4, added=tuple(branch), dropped=(), orphaned=())
    assert chain.tip == branch[0]


def test_switch_from_genesis() -> None:
    chain = chain_of(BASE)
    branch = extend(BASE[0], ["g0"])
    result = chain.switch(branch, difficulty=D, now_ms=NOW)
    assert result.fork_id == 0 and result.dropped == tuple(BASE[1:])
    assert chain.blocks() == [BASE[0], *branch]


@pytest.mark.parametrize("where", [0, 1, 2])
def test_switch_is_atomic_on_an_invalid_block(where: int) -> None:
    chain = chain_of(BASE)
    before = snapshot(chain)
    branch = extend(BASE[2], ["b0", "b1", "b2"])
    branch[where] = replace(branch[where], signature=bytes(256))
    with pytest.raises(BadSignature):
        chain.switch(branch, difficulty=D, now_ms=NOW)
    assert snapshot(chain) == before


def test_switch_is_atomic_on_a_duplicate_transaction() -> None:
    chain = chain_of(BASE)
    before = snapshot(chain)
    # b1 carries v0's vote, which the kept prefix (BASE[1]) already has.
    branch = extend(BASE[2], ["b0", "v0"])
    with pytest.raises(DuplicateTransaction):
        chain.switch(branch, difficulty=D, now_ms=NOW)
    # ... and a branch repeating one of its own transactions.
    branch = extend(BASE[2], ["b0", "b0"])
    with pytest.raises(DuplicateTransaction):
        chain.switch(branch, difficulty=D, now_ms=NOW)
    assert snapshot(chain) == before


def test_switch_refuses_a_branch_we_cannot_attach() -> None:
    chain = chain_of(BASE)
    before = snapshot(chain)
    elsewhere = extend(make_block(BASE[1], tx_for("x")), ["y"])  # parent unknown to us
    with pytest.raises(BadLink, match="does not hold"):
        chain.switch(elsewhere, difficulty=D, now_ms=NOW)
    beyond = extend(BASE[4], ["t0", "t1"])[1:]  # parent is beyond our tip
    with pytest.raises(BadLink):
        chain.switch(beyond, difficulty=D, now_ms=NOW)
    gap = [*extend(BASE[2], ["a"]), *extend(BASE[3], ["b"])]  # second block does not link
    with pytest.raises(BadLink):
        chain.switch(gap, difficulty=D, now_ms=NOW)
    assert snapshot(chain) == before


def test_switch_prechecked_still_checks_links_and_duplicates() -> None:
    chain = chain_of(BASE)
    before = snapshot(chain)
    with pytest.raises(DuplicateTransaction):
        chain.switch(extend(BASE[2], ["v1"]), difficulty=D, now_ms=NOW, prechecked=True)
    assert snapshot(chain) == before
    result = chain.switch(extend(BASE[2], ["p0", "p1"]), difficulty=D, now_ms=NOW,
                          prechecked=True)
    assert result.fork_id == 2 and chain.height == 4


# ------------------------------------------------ switches in place (issue "Long chains")
#
# A switch validates the branch against the kept prefix without copying it and
# only then edits the chain and its two indexes in place. What can go wrong is
# an index left stale, so these tests compare against a chain rebuilt from its
# blocks, whose indexes are right by construction.


def assert_indexes_rebuilt(chain: Chain, universe: Sequence[Block]) -> None:
    """`chain` answers every lookup as a chain built from scratch from its blocks does."""
    rebuilt = Chain(chain.blocks())
    assert chain.height == rebuilt.height and chain.tip == rebuilt.tip
    for block in universe:
        assert chain.holds(block.id, block.hash) == rebuilt.holds(block.id, block.hash)
        tx_id = block.transaction.tx_id
        assert chain.block_with_tx(tx_id) == rebuilt.block_with_tx(tx_id)


@pytest.mark.parametrize("prechecked", [False, True])
@pytest.mark.parametrize("kept", [1, 2])  # deep in the prefix, and the fork point itself
def test_switch_refuses_a_vote_kept_below_the_fork_point(kept: int, prechecked: bool) -> None:
    chain = chain_of(BASE)
    before = snapshot(chain)
    label = BASE[kept].transaction.data.decode()
    branch = extend(BASE[2], ["d0", label, "d2"])  # forks after v1 (fork_id 2)
    with pytest.raises(DuplicateTransaction, match=rf"is in block {kept}$"):
        chain.switch(branch, difficulty=D, now_ms=NOW, prechecked=prechecked)
    assert snapshot(chain) == before
    assert_indexes_rebuilt(chain, [*BASE, *branch])


def test_switch_may_carry_again_the_votes_it_drops() -> None:
    chain = chain_of(BASE)
    # The branch carries v3 and v2 (the dropped BASE[4] and BASE[3]), in the other order.
    branch = extend(BASE[2], ["v3", "v2", "n0"])
    result = chain.switch(branch, difficulty=D, now_ms=NOW)
    assert result == Switch(fork_id=2, added=tuple(branch), dropped=tuple(BASE[3:]),
                            orphaned=())
    assert chain.block_with_tx(BASE[3].transaction.tx_id) == branch[1]
    assert chain.block_with_tx(BASE[4].transaction.tx_id) == branch[0]
    assert not any(chain.holds(b.id, b.hash) for b in BASE[3:5])
    assert_indexes_rebuilt(chain, [*BASE, *branch])


def test_switch_repeating_our_blocks_then_diverging() -> None:
    chain = chain_of(BASE)
    fork = extend(BASE[3], ["r0", "r1"])
    result = chain.switch([BASE[1], BASE[2], BASE[3], *fork], difficulty=D, now_ms=NOW)
    assert result == Switch(fork_id=3, added=tuple(fork), dropped=(BASE[4],),
                            orphaned=(BASE[4],))
    assert chain.blocks() == [*BASE[:4], *fork]
    assert_indexes_rebuilt(chain, [*BASE, *fork])
    # The repeated blocks are kept, so their votes are below the fork point:
    # a branch repeating them and then carrying one of them again is refused.
    before = snapshot(chain)
    again = extend(BASE[3], ["v0"])
    with pytest.raises(DuplicateTransaction, match=r"is in block 1$"):
        chain.switch([BASE[2], BASE[3], *again], difficulty=D, now_ms=NOW)
    assert snapshot(chain) == before


def test_deep_switch_then_appends_then_another_switch() -> None:
    base = make_chain(8, prefix="deep")
    chain = chain_of(base)
    first = extend(base[1], ["x0", "x1", "x2", "deep3"])  # drops 7 blocks, re-carries deep3
    chain.switch(first, difficulty=D, now_ms=NOW)
    more = extend(first[-1], ["deep5", "x3"])
    for block in more:
        chain.append(block, difficulty=D, now_ms=NOW)
    # Forks after x1; carries a vote dropped by the first switch and two it drops itself.
    second = extend(first[1], ["deep6", "x2", "deep3", "y0", "y1", "y2"])
    result = chain.switch(second, difficulty=D, now_ms=NOW)
    assert result.fork_id == 3
    assert result.dropped == (*first[2:], *more)
    assert [b.transaction.data for b in result.orphaned] == [b"deep5", b"x3"]
    assert chain.blocks() == [*base[:2], *first[:2], *second]
    assert_indexes_rebuilt(chain, [*base, *first, *more, *second])


# The property: any sequence of appends and switches, valid or not, leaves the
# chain as the copying algorithm it replaced would (same result or the same
# error, nothing changed on an error) and its indexes as a rebuilt chain's.
# Blocks are unsigned at difficulty 0 and switched `prechecked`, so hypothesis
# can build hundreds of them; tx labels come from a small set, so duplicates
# (kept below the fork, dropped, or twice in the branch) happen often.

def copying_switch(blocks: list[Block], branch: Sequence[Block]) -> Switch:
    """The switch as it was: the kept prefix copied into a new chain, the branch appended."""
    parent_id = Chain(blocks).fork_point(branch)
    skip = 0
    while (skip < len(branch) and parent_id + 1 + skip < len(blocks)
           and blocks[parent_id + 1 + skip].hash == branch[skip].hash):
        skip += 1
    fork_id = parent_id + skip
    candidate = Chain(blocks[1 : fork_id + 1])
    for block in branch[skip:]:
        candidate.append_checked(block)
    dropped = tuple(blocks[fork_id + 1 :])
    carried = {b.transaction.tx_id for b in branch[skip:]}
    return Switch(fork_id, tuple(branch[skip:]), dropped,
                  tuple(b for b in dropped if b.transaction.tx_id not in carried))


LABELS = st.lists(st.sampled_from([f"t{i}" for i in range(12)]), max_size=5)
STEPS = st.lists(st.tuples(st.booleans(), st.integers(0, 10), LABELS), min_size=1, max_size=12)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(STEPS)
def test_switch_in_place_matches_a_rebuilt_chain(
    steps: list[tuple[bool, int, list[str]]]
) -> None:
    chain = Chain()
    universe: list[Block] = [chain.genesis]
    for is_switch, back, labels in steps:
        before = chain.blocks()
        if is_switch:
            # A branch from `back` blocks below the tip, led by blocks we hold
            # when `back` is large enough for the labels to allow it.
            parent = chain[max(chain.height - back, 0)]
            repeat = list(before[parent.id + 1 : parent.id + 1 + back // 3])
            branch = [*repeat, *cheap_blocks(repeat[-1] if repeat else parent, labels, b"prop")]
            if not branch:
                continue
            universe += branch
            try:
                expected: Switch | type[InvalidBlock] = copying_switch(before, branch)
            except InvalidBlock as exc:
                expected = type(exc)
            try:
                got: Switch | type[InvalidBlock] = chain.switch(
                    branch, difficulty=0, now_ms=0, prechecked=True)
            except InvalidBlock as exc:
                got = type(exc)
            assert got == expected
            if not isinstance(got, Switch):
                assert chain.blocks() == before
        else:
            for block in cheap_blocks(chain.tip, labels, b"prop"):
                universe.append(block)
                try:
                    chain.append_checked(block)
                except DuplicateTransaction:
                    assert chain.blocks() == before
                    break
                before = chain.blocks()
        assert_indexes_rebuilt(chain, universe)

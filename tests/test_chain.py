"""Chain: appending, fork switches (what is dropped, added and orphaned), atomicity
on an invalid branch, and the one-transaction-once rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from blockkit import NOW, extend, make_block, make_chain, other_key, tx_for
from votechain.core.block import genesis_block
from votechain.core.chain import Chain, Switch
from votechain.errors import BadGenesis, BadHash, BadLink, BadSignature, DuplicateTransaction

D = 1
BASE = make_chain(4)  # genesis, v0..v3


def chain_of(blocks: list) -> Chain:  # type: ignore[type-arg]
    chain = Chain()
    for block in blocks[1:]:
        chain.append(block, difficulty=D, now_ms=NOW)
    return chain


def snapshot(chain: Chain) -> tuple[object, ...]:
    return (chain.blocks(), chain.height, chain.tip,
            [chain.has_hash(b.hash) for b in BASE],
            [chain.block_with_tx(b.transaction.tx_id) for b in BASE])


def test_new_chain_is_genesis() -> None:
    chain = Chain()
    assert chain.height == 0 and len(chain) == 1
    assert chain.tip == chain.genesis == genesis_block()
    assert chain.has_hash(genesis_block().hash)


def test_append_and_lookups() -> None:
    chain = chain_of(BASE)
    assert chain.height == 4 and len(chain) == 5
    assert chain.blocks() == BASE
    assert chain.tip == BASE[4] and chain[2] == BASE[2]
    assert chain.blocks_from(2, 2) == BASE[2:4]
    assert chain.blocks_from(-3, 1) == BASE[:1]
    assert chain.blocks_from(3, 100) == BASE[3:]
    assert chain.blocks_from(9, 5) == [] and chain.blocks_from(1, -1) == []
    assert all(chain.has_hash(b.hash) for b in BASE)
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
        assert not chain.has_hash(gone.hash)
        assert chain.block_with_tx(gone.transaction.tx_id) is None
    for new in branch:
        assert chain.has_hash(new.hash)
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

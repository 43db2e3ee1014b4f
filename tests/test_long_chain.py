"""A node on a chain longer than its in-memory window (issue 10).

The chain is built with the project's API straight into a data directory's
store (signed by a fixed key: an open network, where any key may write), then
a real Node starts on it (tests/framework Network: real sockets). What must
hold however long the chain:

- start-up reads and checks only the tail (NodeState.resume), and the node
  keeps at most 2 * WINDOW blocks in memory, serving the rest from SQLite;
- the duplicate-vote rule still sees the whole chain (the store's tx_id index);
- a fork switch deeper than the window, and a restart after it, leave the
  chain equal to the winner's and the kept tally equal to a recount;
- a block edited in the file below the re-checked tail is never served: the
  read that meets it refuses, and the next start re-checks from there and cuts.

Sizes: WINDOW is 1024, so ~2,600 blocks put most of a chain out of memory and
make a switch deeper than the window; building them signs each (~0.3 ms).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import LOW_DIFFICULTY, extend, other_key
from framework.network import Network
from framework.waiting import wait_until
from votechain.core.block import Block, genesis_block
from votechain.core.chain import WINDOW
from votechain.core.node_state import RECHECK_TAIL
from votechain.errors import DamagedStore
from votechain.net.connection import PeerIdentity
from votechain.node.store import DB_FILE, ChainStore
from votechain.protocol.peer import Blocks, Error, GetBlocks

DEADLINE = 60.0
LONG = 2 * WINDOW + 500  # more than a trimmed window holds
READER = ("127.0.0.1", 1)  # where the requests below claim to come from
GENESIS = genesis_block()


@pytest.fixture(scope="module")
def long_chain() -> list[Block]:
    """Genesis and LONG blocks by the fixed key, votes "c0", "c1", ... (built once)."""
    return [GENESIS, *extend(GENESIS, [f"c{i % 7}-{i}" for i in range(LONG)])]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path, difficulty=LOW_DIFFICULTY) as network:
        yield network


def store_chain(data_dir: Path, blocks: list[Block]) -> None:
    """Write `blocks` (genesis first) into `data_dir`'s store, as a node would have."""
    store = ChainStore.open(data_dir, LOW_DIFFICULTY)
    try:
        store.replace_from(1, blocks[1:], requeue=())
    finally:
        store.close()


def served(node: object, from_id: int = 0) -> list[Block] | Error:
    """Every block `node` serves from `from_id` on, as a keyless reader asks for them."""
    from votechain.node.runtime import Node
    assert isinstance(node, Node)
    reader = PeerIdentity(node.hello, key=None, certificate=None, member=False)
    blocks: list[Block] = []
    while True:
        reply = node.requests.handle(GetBlocks(from_id + len(blocks)), READER, reader)
        if isinstance(reply, Error):
            return reply
        assert isinstance(reply, Blocks)
        if not reply.blocks:
            return blocks
        blocks += reply.blocks


def test_a_long_chain_starts_from_its_tail_and_keeps_a_window(
        net: Network, long_chain: list[Block], caplog: pytest.LogCaptureFixture) -> None:
    store_chain(net.root / "a", long_chain)
    with caplog.at_level(logging.INFO, logger="votechain.peer"):
        node = net.add_node("a")
    assert any(f"the last {RECHECK_TAIL + 1} blocks" in r.getMessage() for r in caplog.records)
    assert node.chain.height == LONG and node.chain.in_memory == RECHECK_TAIL + 1
    assert served(node) == long_chain  # the history read back from SQLite, every block
    # The duplicate-vote rule sees the whole chain: a vote in block 1 is refused.
    first = long_chain[1].transaction
    node.submit(first)
    assert node.status().pending == 0
    assert node.chain.block_with_tx(first.tx_id) == long_chain[1]
    # New votes: the window grows to at most 2 * WINDOW and is trimmed back.
    for i in range(3):
        assert node.wait_for_tx(node.submit_vote(f"new{i}"), DEADLINE) is not None
    assert node.chain.in_memory <= 2 * WINDOW
    assert node.tally() == node.tally(recount=True)
    assert sum(node.tally().values()) == LONG + 3


def test_a_fork_deeper_than_the_window_is_switched_and_survives_a_restart(
        net: Network, long_chain: list[Block]) -> None:
    """Two members on one long prefix; b's branch is longer and parts from a's
    chain deeper than a's window. a switches to it (the tie rule: the longer
    branch), and after a restart still holds b's chain and an exact tally."""
    fork = LONG - WINDOW - 300  # a's window after start-up holds RECHECK_TAIL + 1 blocks
    ours = long_chain
    theirs = long_chain[: fork + 1] + extend(long_chain[fork], [f"b{i}" for i in range(
        LONG - fork + 5)], key=other_key())
    store_chain(net.root / "a", ours)
    store_chain(net.root / "b", theirs)
    a = net.add_node("a", sync_interval=0.2)
    b = net.add_node("b", sync_interval=0.2)
    wait_until(lambda: a.chain.tip == theirs[-1], DEADLINE, what="a to switch to b's branch")
    assert a.forks_resolved == 1
    assert served(a) == served(b) == theirs
    assert a.tally() == a.tally(recount=True) == b.tally(recount=True)
    assert a.chain.in_memory <= 2 * WINDOW
    again = net.restart_node(a)
    assert again.chain.tip == theirs[-1]
    assert again.tally() == again.tally(recount=True)
    assert served(again) == theirs
    del b


def test_an_edit_below_the_tail_is_never_served_and_cut_at_the_next_start(
        net: Network, long_chain: list[Block], caplog: pytest.LogCaptureFixture) -> None:
    """An edit below the re-checked tail passes the cheap start (by design: it
    reads only the tail), but every read of history re-hashes and links what
    it reads: serving refuses it, and the next start checks every block from
    below the edit and cuts the chain there."""
    edited_id = 100
    chain = long_chain[: 4 * RECHECK_TAIL + edited_id]
    store_chain(net.root / "a", chain)
    conn = sqlite3.connect(net.root / "a" / DB_FILE)
    with conn:
        old = chain[edited_id]
        edited = replace(old, transaction=replace(old.transaction, data=b"mallory"))
        conn.execute("UPDATE blocks SET body = ? WHERE id = ?", (edited.encode(), edited_id))
    conn.close()

    node = net.add_node("a", register=False)
    assert node.chain.height == chain[-1].id  # the tail checks out: started at once
    with caplog.at_level(logging.ERROR, logger="votechain.peer"):
        reply = served(node)
    assert isinstance(reply, Error) and f"block {edited_id}" in reply.reason
    assert any(f"stored block {edited_id} " in r.getMessage() for r in caplog.records)
    with pytest.raises(DamagedStore):
        node.tally(recount=True)
    assert node.store.verified_height == edited_id - 1

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="votechain.peer"):
        again = net.restart_node(node)
    assert any(f"invalid from block {edited_id}" in r.getMessage() for r in caplog.records)
    assert again.chain.height == edited_id - 1
    assert served(again) == chain[:edited_id]
    assert again.tally() == again.tally(recount=True)


def test_a_switch_through_the_store_drops_what_the_window_no_longer_holds(
        tmp_path: Path, long_chain: list[Block]) -> None:
    """The pure chain attached to a real store: a switch deeper than the window
    returns the dropped blocks (read from SQLite) and leaves the window holding
    only the fork point and the branch."""
    from votechain.core.chain import Chain
    store = ChainStore.open(tmp_path, LOW_DIFFICULTY)
    try:
        store.replace_from(1, long_chain[1:], requeue=())
        chain = Chain(long_chain[1:])
        chain.attach(store)
        assert chain.in_memory == WINDOW
        fork = LONG - WINDOW - 10
        branch = extend(long_chain[fork], ["x", "y"], key=other_key())
        switch = chain.switch(branch, difficulty=LOW_DIFFICULTY, now_ms=branch[-1].transaction
                              .timestamp + 1)
        assert switch.dropped == tuple(long_chain[fork + 1:])
        assert chain.in_memory == 3 and chain.tip == branch[-1]
        assert chain.blocks() == long_chain[: fork + 1] + branch
        # A vote of the dropped part may be carried again; one of the kept part may not.
        assert chain.block_with_tx(long_chain[fork + 1].transaction.tx_id) is None
        assert chain.block_with_tx(long_chain[5].transaction.tx_id) == long_chain[5]
    finally:
        store.close()


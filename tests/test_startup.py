"""Start-up from a store edited behind the node's back: through a real Node (the
tests/framework Network harness), the file edited by hand with sqlite3 between a
stop and a start. The node must drop the chain from the edited block, say so in
its log, and never serve the edited block."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from framework.network import Network
from framework.waiting import wait_until
from votechain.core.block import Block
from votechain.core.node_state import RECHECK_TAIL
from votechain.mining import pure
from votechain.net.connection import PeerIdentity
from votechain.node.store import DB_FILE
from votechain.protocol.peer import Blocks, GetBlocks, GetLatest, Latest

DEADLINE = 30.0
VOTES = ["v0", "v1", "v2", "v3", "v4"]
EDITED = 3  # the block whose vote is edited: VOTES[2]
READER = ("127.0.0.1", 1)  # where the requests below claim to come from


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path) as network:
        yield network


def edit_vote_keeping_the_hash(db: Path, block_id: int, data: bytes) -> Block:
    """Re-encode stored block `block_id` with other vote data, its old hash kept:
    what a careless hand edit (or a flipped bit in the data) leaves behind."""
    conn = sqlite3.connect(db)
    with conn:
        (body,) = conn.execute("SELECT body FROM blocks WHERE id = ?", (block_id,)).fetchone()
        old = Block.decode(bytes(body))
        edited = replace(old, transaction=replace(old.transaction, data=data))
        conn.execute("UPDATE blocks SET body = ? WHERE id = ?", (edited.encode(), block_id))
    conn.close()
    return edited


def test_an_edited_block_is_dropped_logged_and_never_served(
        net: Network, caplog: pytest.LogCaptureFixture) -> None:
    node = net.add_node("a")
    for category in VOTES:
        assert node.wait_for_tx(node.submit_vote(category), DEADLINE) is not None
    honest = node.blocks()
    net.stop_node(node)
    edited = edit_vote_keeping_the_hash(node.data_dir / DB_FILE, EDITED, b"mallory")
    assert edited.hash == honest[EDITED].hash

    with caplog.at_level(logging.INFO, logger="votechain.peer"):
        again = net.add_node("a")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"invalid from block {EDITED}" in e and "hash" in e for e in errors), errors

    # Whoever asks may read: a keyless observer, as its handshake would prove it.
    observer = PeerIdentity(again.hello, key=None, certificate=None, member=False)

    def served() -> list[Block]:
        reply = again.requests.handle(GetBlocks(0), READER, observer)
        assert isinstance(reply, Blocks)
        return list(reply.blocks)

    # The votes of the blocks after the edited one (ours, intact) are mined again;
    # the edited vote is not (its content is not what we mined).
    wait_until(lambda: again.tally(recount=True) == {"v0": 1, "v1": 1, "v3": 1, "v4": 1},
               DEADLINE, what="the intact dropped votes mined again")
    chain = served()
    assert chain[:EDITED] == honest[:EDITED]
    assert all(b.transaction.data != b"mallory" and b != edited for b in chain)
    latest = again.requests.handle(GetLatest(), READER, observer)
    assert isinstance(latest, Latest) and latest.block != edited
    assert again.tally() == again.tally(recount=True)  # the kept tally was recounted
    assert again.store.verified_height == again.chain.height


def test_an_edit_re_mined_below_the_verified_height_is_cut_where_it_is(
        net: Network, caplog: pytest.LogCaptureFixture) -> None:
    """More blocks than the re-checked tail, all recorded as verified: an edit to
    block 2 re-mined up to the tip passes every check below the tail. The node
    checks every signature again, cuts at block 2, and never counts or mines
    the edited vote."""
    votes = [f"w{i}" for i in range(RECHECK_TAIL + 4)]
    node = net.add_node("a")
    for category in votes:
        assert node.wait_for_tx(node.submit_vote(category), DEADLINE) is not None
    net.stop_node(node)
    db = node.data_dir / DB_FILE
    conn = sqlite3.connect(db)
    blocks = [Block.decode(bytes(body)) for (body,) in
              conn.execute("SELECT body FROM blocks ORDER BY id").fetchall()]
    prev = blocks[1]
    with conn:
        for index, block in enumerate(blocks[2:]):
            if index == 0:
                block = replace(block, transaction=replace(block.transaction, data=b"mallory"))
            moved = replace(block, prev_hash=prev.hash)
            nonce = pure.search(moved.content(), net.difficulty, 0, 2**64)
            assert nonce is not None
            prev = moved.with_nonce(nonce)  # the signature is left as it was: now wrong
            conn.execute("UPDATE blocks SET hash = ?, body = ? WHERE id = ?",
                         (prev.hash, prev.encode(), prev.id))
    conn.close()

    with caplog.at_level(logging.INFO, logger="votechain.peer"):
        again = net.add_node("a")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "invalid from block 2 " in errors[0], errors
    assert "bad signature" in errors[0]
    # Every block from 2 on was re-mined, so none carries our signature of its
    # hash: none of their votes is ours to mine again, and the edited one is gone.
    assert "mallory" not in again.tally()
    assert again.tally() == again.tally(recount=True) == {"w0": 1}
    assert again.status().pending == 0

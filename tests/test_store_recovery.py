"""A damaged chain database costs only the blocks from the damage on (issue 12, case 7).

Three kinds of damage, each made with sqlite3 on a closed store, as a bad disk,
a careless hand or an attacker with the file would leave it:

- an undecodable row (junk in a block's body);
- a missing row (one block deleted): the rows after it are still there;
- an edited vote, re-mined so that its hash and every later link check out
  again, but not re-signed (the editor lacks the author's private key).

The store reads every row without raising (`ChainStore.rows`), NodeState.restore
keeps the chain up to the first bad row, drops the rest by position, and
queues again only the votes of our own dropped blocks that verify on their own
(our signature of their hash): an edited vote is never mined again under our
key. The kept tally is recounted. `votechain verify` names the first bad row.

The first part drives the store and the pure state directly, carrying out the
restore's effects the way Node.start does; the last test runs real processes
(framework.processes.Cluster): the damaged peer starts on its valid prefix,
logs one line, and re-syncs to the others' tip.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import (
    LOW_DIFFICULTY,
    NOW,
    T0,
    extend,
    fixed_key,
    make_block,
    other_key,
    resign,
    tx_for,
)
from framework.processes import Cluster, wait_for
from votechain.app.verify import verify_store
from votechain.core import voting
from votechain.core.block import Block, Transaction, genesis_block
from votechain.core.node_effects import ReplaceFrom
from votechain.core.node_state import RECHECK_TAIL, NodeState, UnreadableRow
from votechain.errors import BadHash, BadSignature, CliError, DamagedRow, InvalidBlock
from votechain.mining import pure
from votechain.node.store import DB_FILE, ChainStore

GENESIS = genesis_block()
D = LOW_DIFFICULTY


def me() -> bytes:
    return fixed_key().public_der


# ================================================================ damage, by hand


def sql(data_dir: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(data_dir / DB_FILE)
    with conn:
        conn.execute(statement, args)
    conn.close()


def stored_block(data_dir: Path, block_id: int) -> Block:
    conn = sqlite3.connect(data_dir / DB_FILE)
    (body,) = conn.execute("SELECT body FROM blocks WHERE id = ?", (block_id,)).fetchone()
    conn.close()
    return Block.decode(bytes(body))


def break_row(data_dir: Path, block_id: int) -> None:
    """Junk in a block's body: a msgpack map that is no block."""
    sql(data_dir, "UPDATE blocks SET body = ? WHERE id = ?", b"\x81\xa1x\x01", block_id)


def delete_row(data_dir: Path, block_id: int) -> None:
    sql(data_dir, "DELETE FROM blocks WHERE id = ?", block_id)


def remine(block: Block, prev_hash: bytes, difficulty: int) -> Block:
    """`block` on `prev_hash`, mined again, its (now wrong) signature kept."""
    moved = replace(block, prev_hash=prev_hash)
    nonce = pure.search(moved.content(), difficulty, 0, 2**64)
    assert nonce is not None
    return moved.with_nonce(nonce)


def edit_and_remine(data_dir: Path, block_id: int, data: bytes, difficulty: int) -> list[Block]:
    """What an editor with the file but not the keys can do: change the vote of
    `block_id`, and re-mine it and every block after it so that each hash
    matches its content and each link holds. Only the signatures fail."""
    conn = sqlite3.connect(data_dir / DB_FILE)
    rows = conn.execute("SELECT id, body FROM blocks WHERE id >= ? ORDER BY id",
                        (block_id - 1,)).fetchall()
    blocks = [Block.decode(bytes(body)) for _, body in rows]
    prev, edited = blocks[0], []
    for index, block in enumerate(blocks[1:]):
        if index == 0:
            block = replace(block, transaction=replace(block.transaction, data=data))
        prev = remine(block, prev.hash, difficulty)
        edited.append(prev)
    with conn:
        conn.executemany("UPDATE blocks SET hash = ?, tx_id = ?, body = ? WHERE id = ?",
                         [(b.hash, b.transaction.tx_id, b.encode(), b.id) for b in edited])
    conn.close()
    return edited


# ================================================================ a restart, as Node.start does it


def store_with(data_dir: Path, blocks: Sequence[Block],
               pending: Sequence[Transaction] = ()) -> None:
    store = ChainStore.open(data_dir, D)
    for block in blocks[1:]:
        store.append(block)
    for tx in pending:
        store.add_pending(tx)
    store.close()


def restart(data_dir: Path) -> tuple[NodeState, InvalidBlock | None]:
    """Open the store and restore from it, carrying out the effects as Node.start
    does (the tally marked stale, the rows dropped, the tally recounted); then
    check that the store and the state agree."""
    store = ChainStore.open(data_dir, D)
    try:
        state, restored = NodeState.restore(me(), D, store.rows(), store.pending(), now_ms=NOW,
                                            verified_height=store.verified_height)
        if restored.bad is not None:
            store.forget_tally()
        for effect in restored.effects:
            assert isinstance(effect, ReplaceFrom)
            store.replace_from(effect.first_id, effect.blocks, requeue=effect.requeue,
                               done=effect.done)
        if restored.bad is not None:
            store.rebuild_tally()
        assert store.rows() == state.chain.blocks()
        assert store.tally() == voting.tally(state.chain.blocks())
        assert store.pending() == list(state.pending)
        assert store.verified_height == state.chain.height
    finally:
        store.close()
    # A second start finds nothing wrong.
    again = ChainStore.open(data_dir, D)
    try:
        _, second = NodeState.restore(me(), D, again.rows(), again.pending(), now_ms=NOW,
                                      verified_height=again.verified_height)
        assert second.bad is None and second.effects == ()
    finally:
        again.close()
    return state, restored.bad


@pytest.fixture
def ours(tmp_path: Path) -> tuple[Path, list[Block]]:
    """A store of six blocks of ours (votes v1..v6) and one queued vote."""
    chain = [GENESIS, *extend(GENESIS, [f"v{i}" for i in range(1, 7)])]
    store_with(tmp_path, chain, [tx_for("queued")])
    return tmp_path, chain


def votes(state: NodeState) -> list[str]:
    return [t.data.decode() for t in state.pending]


# ================================================================ the store reads every row


def test_the_rows_of_an_intact_store_are_its_blocks(ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    store = ChainStore.open(data_dir, D)
    assert store.rows() == store.blocks() == chain
    store.close()


def test_an_undecodable_row_is_one_unreadable_row_and_the_rest_still_read(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    break_row(data_dir, 3)
    store = ChainStore.open(data_dir, D)  # opens: quick_check sees a well-formed file
    rows = store.rows()
    store.close()
    assert rows[:3] == chain[:3] and rows[4:] == chain[4:]
    damaged = rows[3]
    assert isinstance(damaged, UnreadableRow)
    assert (damaged.id, damaged.hash) == (3, chain[3].hash)
    assert damaged.detail.startswith("does not decode (")
    assert str(DamagedRow(damaged)).startswith("stored row 3 does not decode (")


def test_a_deleted_row_is_one_gap_marker(ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    delete_row(data_dir, 3)
    store = ChainStore.open(data_dir, D)
    rows = store.rows()
    store.close()
    assert rows == [*chain[:3], UnreadableRow(3, b"", "is missing (the stored ids jump from "
                                                      "2 to 4)"), *chain[4:]]


@pytest.mark.parametrize(("body", "detail"), [
    (12345678901234, "does not decode (its body is int, not a blob)"),  # never bytes(n)
    ("text", "does not decode (its body is str, not a blob)"),
])
def test_a_row_that_holds_no_blob(ours: tuple[Path, list[Block]], body: object,
                                  detail: str) -> None:
    data_dir, chain = ours
    sql(data_dir, "UPDATE blocks SET body = ? WHERE id = 2", body)
    store = ChainStore.open(data_dir, D)
    assert store.rows()[2] == UnreadableRow(2, chain[2].hash, detail)
    store.close()


def test_a_row_whose_block_is_not_the_rows(ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    sql(data_dir, "UPDATE blocks SET body = ? WHERE id = 2", chain[5].encode())
    sql(data_dir, "UPDATE blocks SET hash = ? WHERE id = 4", bytes(32))
    store = ChainStore.open(data_dir, D)
    rows = store.rows()
    store.close()
    assert rows[2] == UnreadableRow(2, chain[2].hash, "holds block 5, not 2")
    assert rows[4] == UnreadableRow(4, bytes(32), "holds a block whose hash is not the row's")


def test_pending_and_certificate_rows_of_the_wrong_type_are_skipped(tmp_path: Path) -> None:
    store_with(tmp_path, [GENESIS], [tx_for("good")])
    sql(tmp_path, "INSERT INTO pending (tx_id, timestamp, data, salt) VALUES (?, ?, ?, ?)",
        b"x", "soon", b"data", bytes(16))
    sql(tmp_path, "INSERT INTO pending (tx_id, timestamp, data, salt) VALUES (?, ?, ?, ?)",
        b"y", 1, b"data", b"short")
    sql(tmp_path, "INSERT INTO certificates VALUES (?, ?)", b"k", 10**12)
    store = ChainStore.open(tmp_path, D)
    assert store.pending() == [tx_for("good")]
    assert store.certificates() == []
    store.close()


def test_replace_from_drops_undecodable_rows_and_recounts_the_tally(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    break_row(data_dir, 4)
    store = ChainStore.open(data_dir, D)
    store.replace_from(3, [], requeue=())
    assert store.rows() == chain[:3]
    assert store.tally() == {"v1": 1, "v2": 1}
    store.close()


def test_a_missing_genesis_row_is_damage_not_another_network(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, _ = ours
    delete_row(data_dir, 0)
    state, bad = restart(data_dir)
    assert isinstance(bad, DamagedRow) and bad.block.id == 0
    assert state.chain.blocks() == [GENESIS]
    # Every vote of ours dropped is intact: each queued again, behind the waiting one.
    assert votes(state) == ["queued", "v1", "v2", "v3", "v4", "v5", "v6"]


# ================================================================ restore: the valid prefix


def test_an_undecodable_row_costs_the_blocks_from_it_on(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    break_row(data_dir, 3)
    state, bad = restart(data_dir)
    assert isinstance(bad, DamagedRow) and bad.block.id == 3
    assert state.chain.blocks() == chain[:3]
    # v3's row holds no block; v4..v6 are ours and intact: queued again.
    assert votes(state) == ["queued", "v4", "v5", "v6"]


def test_a_deleted_row_costs_the_blocks_from_it_on_and_no_later_vote(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    delete_row(data_dir, 3)
    state, bad = restart(data_dir)
    assert isinstance(bad, DamagedRow) and str(bad) == (
        "stored row 3 is missing (the stored ids jump from 2 to 4)")
    assert state.chain.blocks() == chain[:3]
    # Before: the drop sliced the rows by the failing block's id (4), not its
    # position (3), and lost v4 too.
    assert votes(state) == ["queued", "v4", "v5", "v6"]


def test_an_edited_vote_re_mined_is_dropped_and_never_queued(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, chain = ours
    edited = edit_and_remine(data_dir, 3, b"mallory", D)
    assert [b.computed_hash() == b.hash for b in edited] == [True] * 4
    state, bad = restart(data_dir)
    assert isinstance(bad, BadSignature) and bad.block.id == 3
    assert state.chain.blocks() == chain[:3]
    # Blocks 3..6 were re-mined: none carries our signature of its hash any
    # more, so none is queued (v4..v6 are safe on the peers that got them).
    assert votes(state) == ["queued"]


def test_an_edit_below_the_verified_height_is_found_where_it_is(tmp_path: Path) -> None:
    """The store says every block was verified; signatures are checked only in the
    last RECHECK_TAIL. An edit to block 2, re-mined up to the tip, passes every
    check up to the first re-checked signature: the restore checks again, every
    signature, and cuts at block 2, so the edited vote is neither kept nor counted."""
    count = RECHECK_TAIL + 6
    chain = [GENESIS, *extend(GENESIS, [f"v{i}" for i in range(1, count + 1)])]
    store_with(tmp_path, chain)
    edit_and_remine(tmp_path, 2, b"mallory", D)
    state, bad = restart(tmp_path)
    assert isinstance(bad, BadSignature) and bad.block.id == 2
    assert state.chain.blocks() == chain[:2]
    assert "mallory" not in voting.tally(state.chain.blocks())


def test_an_edit_that_is_not_re_mined_keeps_the_later_votes_of_ours(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, _ = ours
    old = stored_block(data_dir, 3)
    edited = replace(old, transaction=replace(old.transaction, data=b"mallory"))
    sql(data_dir, "UPDATE blocks SET body = ? WHERE id = 3", edited.encode())
    state, bad = restart(data_dir)
    assert isinstance(bad, BadHash) and bad.block.id == 3
    assert votes(state) == ["queued", "v4", "v5", "v6"]


def test_only_our_own_intact_blocks_give_their_votes_back(tmp_path: Path) -> None:
    b1 = make_block(GENESIS, tx_for("b1"))
    b2 = make_block(b1, tx_for("b2"))  # never stored: row 2 is junk
    theirs = make_block(b2, tx_for("theirs"), key=other_key())
    # Says it is ours, hashes right, but the signature is another key's.
    forged = resign(replace(make_block(theirs, tx_for("forged")), author=me()), key=other_key())
    mine = make_block(forged, tx_for("mine"))
    again = make_block(mine, tx_for("b1"))  # ours and intact, but v1 is in the kept chain
    store_with(tmp_path, [GENESIS, b1])
    sql(tmp_path, "INSERT INTO blocks VALUES (2, ?, ?, ?)", b2.hash, b"", b"junk")
    for block in (theirs, forged, mine, again):
        sql(tmp_path, "INSERT INTO blocks VALUES (?, ?, ?, ?)", block.id, block.hash,
            block.transaction.tx_id, block.encode())
    state, bad = restart(tmp_path)
    assert isinstance(bad, DamagedRow) and bad.block.id == 2
    assert state.chain.blocks() == [GENESIS, b1]
    assert votes(state) == ["mine"]


def test_the_kept_tally_is_recounted_from_the_kept_prefix(tmp_path: Path) -> None:
    categories = ["alice", "bob", "alice", "carol", "bob"]
    chain = [GENESIS]
    for i, category in enumerate(categories):
        chain.append(make_block(chain[-1], Transaction(T0 + i, category.encode(),
                                                       bytes([i]) * 16)))
    store_with(tmp_path, chain)
    edit_and_remine(tmp_path, 3, b"mallory", D)
    state, _ = restart(tmp_path)
    store = ChainStore.open(tmp_path, D)
    assert store.tally() == voting.tally(chain[:3]) == {"alice": 1, "bob": 1}
    store.close()
    assert state.chain.height == 2


# ================================================================ votechain verify


@pytest.mark.parametrize(("damage", "said"), [
    (break_row, "bad chain: stored row 3 does not decode ("),
    (delete_row, "bad chain: stored row 3 is missing (the stored ids jump from 2 to 4)"),
])
def test_verify_names_the_first_bad_row(ours: tuple[Path, list[Block]],
                                        damage: Callable[[Path, int], None], said: str) -> None:
    data_dir, _ = ours
    damage(data_dir, 3)
    with pytest.raises(CliError, match=re.escape(said)):
        verify_store(data_dir, workers=1, now_ms=NOW)


def test_verify_names_a_lower_bad_block_before_a_damaged_row(
        ours: tuple[Path, list[Block]]) -> None:
    data_dir, _ = ours
    old = stored_block(data_dir, 2)
    sql(data_dir, "UPDATE blocks SET body = ? WHERE id = 2",
        replace(old, transaction=replace(old.transaction, data=b"edited")).encode())
    break_row(data_dir, 4)
    with pytest.raises(CliError, match=r"bad chain: block 2 .*hash does not match"):
        verify_store(data_dir, workers=1, now_ms=NOW)


# ================================================================ real processes

PEERS = ("a", "b", "c")
CAST = [f"p{i}" for i in range(1, 7)]  # cast on b: blocks 1..6 are b's
DAMAGED_ROW = 3
PROCESS_DIFFICULTY = 3
# Generous: a peer starts (a miner spawn) in a second or two, re-syncs within
# one SYNC_INTERVAL (3 s) of seeing its peers; loaded 2-core machines are slow.
RESYNC_DEADLINE = 60.0
INVALID_LINE = "stored chain is invalid from block"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, difficulty=PROCESS_DIFFICULTY) as c:
        yield c


def edit_row(data_dir: Path, block_id: int) -> None:
    edit_and_remine(data_dir, block_id, b"mallory", PROCESS_DIFFICULTY)


@pytest.mark.parametrize(("damage", "requeued"), [
    (break_row, 3),  # p4..p6: b's, intact
    (delete_row, 3),  # the same: the row after the gap is not lost
    (edit_row, 0),  # blocks 3..6 re-mined: none carries b's signature any more
], ids=["undecodable", "deleted", "edited"])
def test_a_damaged_peer_starts_on_its_prefix_and_re_syncs(
        cluster: Cluster, damage: Callable[[Path, int], None], requeued: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    tracker = cluster.tracker().address
    assert tracker is not None
    a, b, c = cluster.add_peers(PEERS, tracker)
    cluster.wait_peers_listed(tracker, [a, b, c], 30)
    for category in CAST:
        b.vote(category)
    cluster.wait_converged([a, b, c], CAST, RESYNC_DEADLINE)
    honest = b.tally()

    assert b.child is not None
    b.child.stop(10)
    damage(b.data_dir, DAMAGED_ROW)
    started = time.monotonic()
    cluster.restart(b)
    listening = time.monotonic() - started
    lines = [line for line in b.log_text().splitlines() if INVALID_LINE in line]
    assert len(lines) == 1 and f"{INVALID_LINE} {DAMAGED_ROW} " in lines[0], lines
    # It started on the valid prefix, blocks 0..2.
    assert f"stored chain re-checked to height {DAMAGED_ROW - 1} " in b.log_text()
    assert "Traceback" not in b.log_text()

    cluster.wait_converged([a, b, c], CAST, RESYNC_DEADLINE)
    synced = time.monotonic() - started
    wait_for(lambda: b.status()["pending"] == 0, RESYNC_DEADLINE, "b's queue to empty")
    for peer in (a, b, c):
        assert peer.tally() == honest  # every vote once; "mallory" nowhere
    # Only its intact votes were queued: it mined at most those again (none, if
    # the re-sync came first), and nothing at all after the edit.
    mined = re.findall(r"INFO mined block \d+", b.log_text())
    assert len(mined) <= requeued, mined
    assert b.status()["height"] == len(CAST)
    with capsys.disabled():
        print(f"\n  [{getattr(damage, '__name__', damage)}] listening after {listening:.1f} s, "
              f"re-synced to the others' tip after {synced:.1f} s: {lines[0].strip()}")

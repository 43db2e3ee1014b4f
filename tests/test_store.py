"""ChainStore: appends, atomic suffix replacement, the pending queue, persistence,
read-only access, and durability under `kill -9` in the middle of writes."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

import votechain
from blockkit import NOW, T0, extend, make_block, make_chain, tx_for
from votechain.core.block import SALT_BYTES, TX_ID_BYTES, Block, Transaction, genesis_block
from votechain.core.rules import validate_chain
from votechain.core.voting import tally
from votechain.errors import StoreError
from votechain.node.store import DB_FILE, SCHEMA_VERSION, ChainStore

D = 1
BASE = make_chain(4)


@pytest.fixture
def store(tmp_path: Path) -> ChainStore:
    s = ChainStore.open(tmp_path, D)
    for block in BASE:
        s.append(block)
    return s


def test_new_store(tmp_path: Path) -> None:
    s = ChainStore.open(tmp_path / "nested" / "dir", 3)
    assert s.difficulty == 3
    assert s.blocks() == [genesis_block()]  # stored at creation: the table is a whole chain
    assert s.pending() == []
    assert (tmp_path / "nested" / "dir" / DB_FILE).exists()
    s.close()


def test_append_and_read_back(store: ChainStore) -> None:
    assert store.blocks() == BASE
    assert [b.encode() for b in store.blocks()] == [b.encode() for b in BASE]


def test_checkpoint_copies_the_wal_into_the_database_file(tmp_path: Path) -> None:
    """The node's checkpointer thread calls it (store.py, CHECKPOINT_INTERVAL):
    the commits themselves leave the WAL alone until its safety threshold,
    and a reader of the file alone, without the WAL, sees every block."""
    store = ChainStore.open(tmp_path, D)
    for block in BASE[1:]:
        store.append(block)
    wal_free = tmp_path / "copy.sqlite3"
    try:
        in_log, copied = store.checkpoint()
        assert in_log > 0 and copied == in_log  # nothing else writes: all of it copied
        assert store.checkpoint() == (in_log, in_log)  # nothing new since
        # The database file alone, while the store is open (closing checkpoints too).
        wal_free.write_bytes((tmp_path / DB_FILE).read_bytes())
    finally:
        store.close()
    conn = sqlite3.connect(wal_free)
    try:
        assert conn.execute("SELECT MAX(id) FROM blocks").fetchone() == (len(BASE) - 1,)
    finally:
        conn.close()


def test_append_drops_done_pending(store: ChainStore) -> None:
    a, b, c = tx_for("a"), tx_for("b"), tx_for("c")
    for tx in (a, b, c):
        store.add_pending(tx)
    block = make_block(BASE[-1], b)
    store.append(block, done=[b.tx_id, c.tx_id])
    assert store.pending() == [a]
    assert store.blocks()[-1] == block


def test_pending_queue(store: ChainStore) -> None:
    txs = [tx_for(f"p{i}", 10 - i) for i in range(4)]  # timestamps descending on purpose
    for tx in txs:
        store.add_pending(tx)
    store.add_pending(txs[1])  # already queued: ignored, keeps its place
    assert store.pending() == txs  # oldest first = insertion order
    # The same content but for the salt: another vote (its id is derived from
    # all three fields), queued after the others; each reads back whole, salt
    # and derived id included.
    twin = replace(txs[0], salt=bytes(SALT_BYTES))
    assert twin.tx_id != txs[0].tx_id
    store.add_pending(twin)
    assert store.pending() == [*txs, twin]
    assert [(t.salt, t.tx_id) for t in store.pending()] == [(t.salt, t.tx_id)
                                                             for t in [*txs, twin]]
    store.drop_pending([txs[1].tx_id, txs[3].tx_id, twin.tx_id, b"\x00" * TX_ID_BYTES])
    assert store.pending() == [txs[0], txs[2]]
    store.drop_pending([])
    assert store.pending() == [txs[0], txs[2]]


def test_replace_from(store: ChainStore) -> None:
    branch = extend(BASE[2], ["b0", "b1", "b2"])
    queued = tx_for("q")
    store.add_pending(queued)
    store.add_pending(branch[0].transaction)
    dropped = [b.transaction for b in BASE[3:]]
    store.replace_from(3, branch, requeue=dropped, done=[branch[0].transaction.tx_id])
    assert store.blocks() == [*BASE[:3], *branch]
    assert store.pending() == [queued, *dropped]
    # Requeueing what is already pending changes nothing.
    store.replace_from(5, [], requeue=dropped)
    assert store.blocks() == [*BASE[:3], *branch[:2]]
    assert store.pending() == [queued, *dropped]


def test_replace_from_is_atomic(store: ChainStore) -> None:
    store.add_pending(tx_for("keep"))
    before = (store.blocks(), store.pending())
    branch = extend(BASE[2], ["x0", "x1"])
    # Two rows with the same id: the INSERT fails after the DELETE ran; all is rolled back.
    with pytest.raises(sqlite3.IntegrityError):
        store.replace_from(3, [branch[0], branch[0]], requeue=[tx_for("r")],
                           done=[tx_for("keep").tx_id])
    assert (store.blocks(), store.pending()) == before
    store.replace_from(3, branch, requeue=())  # the store still works
    assert store.blocks() == [*BASE[:3], *branch]


def test_persists_across_reopen(tmp_path: Path) -> None:
    s = ChainStore.open(tmp_path, D)
    for block in BASE[1:]:
        s.append(block)
    s.add_pending(tx_for("later"))
    s.close()
    again = ChainStore.open(tmp_path, D)
    assert again.blocks() == BASE
    assert again.pending() == [tx_for("later")]
    assert again.difficulty == D
    again.close()


def test_refuses_another_difficulty(tmp_path: Path) -> None:
    ChainStore.open(tmp_path, 4).close()
    with pytest.raises(StoreError, match="difficulty 4, not 5"):
        ChainStore.open(tmp_path, 5)
    ChainStore.open(tmp_path, 4).close()  # the refusal left the store intact


def test_refuses_another_networks_chain(tmp_path: Path) -> None:
    other = genesis_block(b"another network")
    s = ChainStore.open(tmp_path, D, other)
    assert s.blocks() == [other]  # a new store starts with the network's own genesis
    s.close()
    with pytest.raises(StoreError, match="another network's chain"):
        ChainStore.open(tmp_path, D)  # the open network's genesis
    again = ChainStore.open(tmp_path, D, other)  # the refusal left the store intact
    assert again.blocks() == [other]
    again.close()


def test_refuses_a_database_of_an_older_schema(store: ChainStore, tmp_path: Path) -> None:
    store.close()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:  # as a store made before schema 2 (unsalted transactions) was
        conn.execute("DELETE FROM meta WHERE key = 'schema'")
    conn.close()
    with pytest.raises(StoreError,
                       match=rf"older votechain \(schema 1, this one reads {SCHEMA_VERSION}\)"):
        ChainStore.open(tmp_path, D)


def test_open_readonly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ChainStore.open_readonly(tmp_path)
    s = ChainStore.open(tmp_path, D)
    for block in BASE:
        s.append(block)
    s.add_pending(tx_for("p"))
    reader = ChainStore.open_readonly(tmp_path)
    assert reader.blocks() == BASE
    assert reader.pending() == [tx_for("p")]
    assert reader.difficulty == D
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.add_pending(tx_for("q"))
    # A reader sees the writer's later commits.
    more = extend(BASE[-1], ["m"])
    s.append(more[0])
    assert reader.blocks() == [*BASE, *more]
    reader.close()
    s.close()
    # ... and reads the store after the writer has gone (what `votechain verify` does).
    after = ChainStore.open_readonly(tmp_path)
    assert after.blocks() == [*BASE, *more]
    after.close()


def test_corrupt_row_is_an_encoding_error(store: ChainStore, tmp_path: Path) -> None:
    from votechain.errors import EncodingError

    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:
        conn.execute("UPDATE blocks SET body = ? WHERE id = 2", (b"\x81\xa1x\x01",))
    conn.close()
    with pytest.raises(EncodingError):
        store.blocks()


# --- kill -9 -----------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from blockkit import make_block, tx_for
    from votechain.core.block import genesis_block
    from votechain.node.store import ChainStore

    store = ChainStore.open(Path(sys.argv[1]), 1)
    tip = genesis_block()
    assert store.blocks() == [tip]
    print(0, flush=True)
    i = 0
    while True:
        i += 1
        tx = tx_for(f"k{i}")
        store.add_pending(tx)
        store.add_pending(tx_for(f"k{i + 1}"))
        if i % 5 == 0 and tip.id > 0:
            # A fork switch: the tip is replaced by another block at the same height,
            # its vote requeued, the new block's vote marked done, in one commit.
            alt = make_block(store.blocks()[-2], tx)
            store.replace_from(tip.id, [alt], requeue=[tip.transaction], done=[tx.tx_id])
            tip = alt
        else:
            tip = make_block(tip, tx)
            store.append(tip, done=[tx.tx_id])
        print(tip.id, flush=True)
    """
)


def test_kill_9_leaves_a_consistent_store(tmp_path: Path) -> None:
    src = Path(votechain.__file__).resolve().parent.parent
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(tests)])}
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    assert child.stdout is not None
    reported = -1
    try:
        for line in child.stdout:  # the child prints each committed height
            reported = int(line)
            if reported >= 40:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert reported >= 40, "the writer stopped before writing 40 blocks"

    store = ChainStore.open(tmp_path, 1)
    blocks = store.blocks()  # every row decodes
    assert blocks[-1].id >= reported  # nothing the writer saw committed is lost
    assert [b.id for b in blocks] == list(range(len(blocks)))
    assert validate_chain(blocks, difficulty=1, now_ms=NOW) == blocks[-1].id
    in_chain = {b.transaction.tx_id for b in blocks}
    assert not in_chain & {tx.tx_id for tx in store.pending()}
    store.close()


def test_store_holds_any_chain_shape(tmp_path: Path) -> None:
    """Blocks are stored by their encoding, so the store never alters one."""
    s = ChainStore.open(tmp_path, D)
    odd: list[Block] = [BASE[0], make_block(BASE[0], Transaction(0, b"", bytes(SALT_BYTES)))]
    for block in odd:
        s.append(block)
    assert s.blocks() == odd
    s.close()


# --- verified once: verified_height and the file check -----------------------------------


def test_verified_height_follows_every_write_in_the_same_transaction(tmp_path: Path) -> None:
    s = ChainStore.open(tmp_path, D)
    assert s.verified_height == 0  # the genesis
    for block in BASE[1:]:
        s.append(block)
        assert s.verified_height == block.id
    branch = extend(BASE[2], ["vb0", "vb1", "vb2"])
    s.replace_from(3, branch, requeue=())
    assert s.verified_height == branch[-1].id
    s.replace_from(4, [], requeue=())  # a drop: the tip moved down
    assert s.verified_height == 3
    # A failed write rolls the record back with the blocks.
    with pytest.raises(sqlite3.IntegrityError):
        s.replace_from(4, [branch[1], branch[1]], requeue=())
    assert s.verified_height == 3 and s.blocks()[-1] == branch[0]
    s.mark_verified(2)
    s.close()
    again = ChainStore.open(tmp_path, D)
    assert again.verified_height == 2
    again.close()


def test_a_database_without_the_record_counts_as_verified_to_the_genesis_only(
        store: ChainStore, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'verified_height'")
    conn.close()
    assert store.verified_height == 0


def test_a_damaged_file_is_refused_at_open(tmp_path: Path) -> None:
    s = ChainStore.open(tmp_path, D)
    for i in range(60):  # enough rows for the blocks table to span several pages
        s.add_pending(tx_for(f"fill{i}"))
    for block in make_chain(40)[1:]:
        s.append(block)
    s.close()
    db = tmp_path / DB_FILE
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'blocks'").fetchone()[0]
    conn.close()
    raw = bytearray(db.read_bytes())
    start = (root - 1) * page_size  # the blocks table's root page: scribble over it
    raw[start:start + 64] = b"\xff" * 64
    db.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="damaged"):
        ChainStore.open(tmp_path, D)


def test_a_file_that_is_not_a_database_is_refused_at_open(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="damaged"):
        ChainStore.open(tmp_path, D)


# --- the kept tally ----------------------------------------------------------------------


def vote_chain(prev: Block, categories: list[str], tag: str) -> list[Block]:
    blocks: list[Block] = []
    for i, category in enumerate(categories):
        tx = Transaction(T0 + i, category.encode(),
                         hashlib.sha256(f"{tag}{i}".encode()).digest()[:SALT_BYTES])
        blocks.append(make_block(blocks[-1] if blocks else prev, tx))
    return blocks


def test_the_tally_is_kept_through_appends_and_switches(tmp_path: Path) -> None:
    s = ChainStore.open(tmp_path, D)
    assert s.tally() == {}
    main = vote_chain(genesis_block(), ["alice", "bob", "alice", "carol", " not a vote "], "m")
    for block in main:
        s.append(block)
        assert s.tally() == tally(s.blocks())
    assert s.tally() == {"alice": 2, "bob": 1, "carol": 1}
    # A switch that drops blocks 3..5 (alice, carol, a non-vote) for two others.
    branch = vote_chain(main[1], ["dave", "dave"], "b")
    s.replace_from(3, branch, requeue=[b.transaction for b in main[2:]])
    assert s.tally() == tally(s.blocks()) == {"dave": 2, "alice": 1, "bob": 1}
    s.replace_from(2, [], requeue=())  # every vote but the first dropped: zeros leave
    assert s.tally() == tally(s.blocks()) == {"alice": 1}
    s.close()
    again = ChainStore.open(tmp_path, D)
    assert again.tally() == {"alice": 1}
    again.close()


def test_an_old_database_gets_its_tally_rebuilt_at_open(tmp_path: Path) -> None:
    s = ChainStore.open(tmp_path, D)
    for block in vote_chain(genesis_block(), ["x", "y", "x"], "o"):
        s.append(block)
    s.close()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:  # as a database made before the tally table was
        conn.execute("DROP TABLE tally")
        conn.execute("DELETE FROM meta WHERE key = 'tally'")
    conn.close()
    again = ChainStore.open(tmp_path, D)
    assert again.tally() == {"x": 2, "y": 1}
    again.forget_tally()  # stale (a crash mid-repair): rebuilt at the next open
    again.close()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:
        conn.execute("UPDATE tally SET count = 99")
    conn.close()
    third = ChainStore.open(tmp_path, D)
    assert third.tally() == {"x": 2, "y": 1}
    third.close()

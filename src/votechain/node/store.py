"""ChainStore: a node's chain, pending votes and tally in SQLite (standard library, WAL).

Every change is one transaction, so a `kill -9` at any instant leaves either
the old state or the new one: an append is one row, a fork switch deletes the
abandoned branch, inserts the new one and re-queues the dropped votes in one
commit.

Verified once. Every block the node hands the store has passed every chain
rule (core/node_state.py), so each write records, in the same transaction,
`verified_height`: the height up to which the stored blocks were fully
verified. At start the node re-checks every block's link, hash, difficulty,
sizes and duplicate votes (SHA-256: microseconds a block) but RSA signatures
only above that height and for the last few blocks (NodeState.restore says why
that still catches an edit), and `open` runs SQLite's `PRAGMA quick_check`
(the file's structure: pages, b-trees, record formats; not the index
contents) so a damaged file is refused with a clear StoreError instead of
read. `votechain verify` still re-checks everything, signatures included.

The store is also the chain's history (core/chain.py's History): a node keeps
only a window of recent blocks in memory and reads older ones here, by id
(the primary key) or by vote (the tx_id index). Every such read re-hashes and
links the blocks it returns (`blocks_between`), so a row edited or damaged
after the node checked it is refused (DamagedStore), never served; the node
then lowers `verified_height` below it, so its next start re-checks the chain
from there (node/runtime.py). `walk` reads the whole chain from one snapshot
for a recount without holding the node's lock.

A damaged row costs only the chain from its position on. `rows()` never
raises for a bad row: a row whose body does not decode (or disagrees with its
id or hash column) and a gap in the ids (a deleted row) each come back as an
`UnreadableRow`, and NodeState.restore keeps the chain up to it; the node then
drops the rest (`replace_from`, which tolerates undecodable rows among those
it drops) and re-syncs from its peers. Rows of the pending queue or of the
certificates table that hold no valid value are skipped the same way.

The tally (category -> count) is kept in the same transactions: each write
adds the votes of the blocks it stores and subtracts those of the blocks it
drops (voting.count_votes), so `tally()` answers at once at any height. A
database made before the table existed (no `tally` key in meta) has it rebuilt
from its blocks when opened; `Node.tally(recount=True)` walks the chain instead.

Blocks are stored as their canonical encoding (`Block.encode()`), the same
bytes that travel on the wire; `votechain verify` reads them back offline.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from votechain.core import voting
from votechain.core.block import MAX_DATA_BYTES, SALT_BYTES, Block, Transaction, genesis_block
from votechain.core.codec import MAX_UINT
from votechain.core.node_state import UnreadableRow
from votechain.errors import DamagedStore, StoreError

DB_FILE = "chain.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    tx_id BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_tx_id ON blocks (tx_id);
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id BLOB NOT NULL UNIQUE,
    timestamp INTEGER NOT NULL,
    data BLOB NOT NULL,
    salt BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    member BLOB PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tally (
    category TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""

# The layout of the tables and of the stored blocks. 2: transactions carry a
# salt and their id is derived (block.py), certificates are stored.
SCHEMA_VERSION = 2

# meta keys: the schema version; the difficulty; the height up to which the stored blocks were fully
# verified; and "1" once the tally table is kept (absent: rebuild it).
_VERIFIED = "verified_height"
_TALLY_KEPT = "tally"
# The serial of the revocation list every stored block was last checked against.
_REVOCATIONS = "revocations_serial"
# "LOCKED FINAL": the heights a node never switches below, and reports final
# (core/finality.py); the lock must outlive a restart, as peers counted it.
_FINALITY = "finality"
# Tx ids per `IN (...)` query: SQLite allows 32,766 parameters since 3.32.
_IN_QUERY_IDS = 1000
# How many of quick_check's complaints a StoreError quotes.
_QUICK_CHECK_SHOWN = 3
# WAL checkpoints (copying the log's pages into the database file, then an
# fsync) run off the write path: `checkpoint`, from the node's checkpointer
# thread each CHECKPOINT_INTERVAL, on a connection of its own, so they never
# run under the node's lock. SQLite's own runs inside the commit that crosses
# its threshold (1000 pages by default): at 1 peer under load that was a
# checkpoint every ~75 blocks, stalling the miner thread for up to ~20 ms each
# (a PASSIVE checkpoint lets writers go on). This threshold stays as a safety
# net, for a WAL that grows while the checkpointer cannot keep up or does not
# run (a CLI command writing): ~40 MB of 4 KiB pages.
CHECKPOINT_INTERVAL = 0.25
WAL_AUTOCHECKPOINT_PAGES = 10_000


class ChainStore:
    """Thread-safe: one connection, one lock; SQLite does the durability."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._path = path  # the database file, for `walk`'s and `checkpoint`'s own connections
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()  # guards `_checkpointer`

    @classmethod
    def open(cls, data_dir: Path, difficulty: int, genesis: Block | None = None) -> ChainStore:
        """Open or create the store for the network whose genesis is `genesis`
        (default: the open network's); refuse one made for another network, a
        difficulty or a schema, or a damaged file (StoreError)."""
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        db = path / DB_FILE
        conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only a power cut
            # may lose the last commits, which the network then gives back by sync.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            _quick_check(conn, db)
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", ...
            conn.close()
            raise StoreError(f"{db} is damaged ({exc}); move it away and the node "
                             "re-syncs its chain from its peers") from exc
        except BaseException:
            conn.close()
            raise
        store = cls(conn, db)
        genesis = genesis or genesis_block()
        if conn.execute("SELECT 1 FROM blocks LIMIT 1").fetchone() is None:
            # The genesis is stored too, so the table alone is a complete chain
            # that `votechain verify` can check from its first row.
            store._set_meta("schema", str(SCHEMA_VERSION))
            store.append(genesis)
        schema = store._meta("schema")
        if schema != str(SCHEMA_VERSION):
            conn.close()
            raise StoreError(f"{db} was made by an older votechain (schema {schema or 1}, this "
                             f"one reads {SCHEMA_VERSION}); move it away and the node re-syncs")
        row = conn.execute("SELECT hash FROM blocks WHERE id = 0").fetchone()
        # A missing row 0 is damage, for NodeState.restore to repair (`rows`);
        # a row 0 of another hash is another network's chain.
        if row is not None and row[0] != genesis.hash:
            conn.close()
            raise StoreError(f"{db} holds another network's chain (its genesis is not "
                             f"{genesis.hash.hex()[:16]}…)")
        stored = store._meta("difficulty")
        if stored is None:
            store._set_meta("difficulty", str(difficulty))
        elif stored != str(difficulty):
            conn.close()
            raise StoreError(f"{db} holds a chain of difficulty {stored}, not {difficulty}")
        if store._meta(_TALLY_KEPT) is None:
            store.rebuild_tally()  # a database from before the tally table
        return store

    @classmethod
    def open_readonly(cls, data_dir: Path) -> ChainStore:
        path = Path(data_dir) / DB_FILE
        if not path.exists():
            raise FileNotFoundError(f"no chain database at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        return cls(conn, path)

    @property
    def difficulty(self) -> int:
        value = self._meta("difficulty")
        if value is None or not value.isdecimal():
            raise StoreError(f"the store records no difficulty (found {value!r})")
        return int(value)

    @property
    def verified_height(self) -> int:
        """The height up to which the stored blocks were fully verified when they
        were stored (0, the genesis only, for a database older than the record)."""
        value = self._meta(_VERIFIED)
        # A value that is no number (a hand edit) vouches for nothing: 0.
        return int(value) if value is not None and value.isdecimal() else 0

    @property
    def finality(self) -> tuple[int, int]:
        """The locked and final heights last recorded (core/finality.py); (0, 0) before any."""
        value = self._meta(_FINALITY)
        if value is None:
            return 0, 0
        locked, final = value.split()
        return int(locked), int(final)

    def mark_finality(self, locked: int, final: int) -> None:
        self._set_meta(_FINALITY, f"{locked} {final}")

    def mark_verified(self, height: int) -> None:
        """Record that the node has just fully verified the stored blocks up to `height`."""
        self._set_meta(_VERIFIED, str(height))

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def blocks(self) -> list[Block]:
        """Every stored block, genesis first. Raises EncodingError on a corrupt row
        (`rows` reads a damaged store without raising)."""
        with self._lock:
            rows = self._conn.execute("SELECT body FROM blocks ORDER BY id").fetchall()
        return [Block.decode(bytes(body)) for (body,) in rows]

    def tip(self) -> Block:
        """The stored block of the highest id (raises EncodingError on a corrupt row)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT body FROM blocks ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise StoreError("the store holds no block, not even the genesis")
        return Block.decode(bytes(row[0]))

    def rows(self, from_id: int = 0) -> list[Block | UnreadableRow]:
        """Every stored row from id `from_id` on, in id order, one per id: the
        block it holds, or an UnreadableRow saying why it holds none (its body
        does not decode, or names another id or hash than the row's columns),
        and one UnreadableRow for the first id of each gap (a deleted row).
        Never raises for a bad row: NodeState.restore keeps the chain up to
        the first one."""
        with self._lock:
            # Negative ids (only a hand edit makes them) are no position of a
            # chain; rows below 0 are never read, so never served.
            raw = self._conn.execute(
                "SELECT id, hash, body FROM blocks WHERE id >= ? ORDER BY id",
                (max(from_id, 0),)).fetchall()
        rows: list[Block | UnreadableRow] = []
        expected = max(from_id, 0)
        for row_id, column_hash, body in raw:
            if row_id > expected:
                after = f"from {expected - 1} to" if expected else "to"
                rows.append(UnreadableRow(expected, b"", f"is missing (the stored ids jump "
                                                         f"{after} {row_id})"))
            rows.append(read_row(row_id, column_hash, body))
            expected = row_id + 1
        return rows

    def shape(self) -> tuple[int, int]:
        """(rows, highest id) of the blocks table: a chain without gaps has
        rows == highest id + 1 (an index count, not a read of the blocks)."""
        with self._lock:
            count, top = self._conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(id), -1) FROM blocks").fetchone()
        return int(count), int(top)

    # ---------------------------------------------- core.chain.History: reads

    def block_at(self, block_id: int) -> Block:
        """The stored block `block_id`, its hash recomputed (StoreError if the row
        holds no block, or one edited behind the node's back)."""
        return self.blocks_between(block_id, block_id + 1)[0]

    def blocks_between(self, first_id: int, end_id: int) -> list[Block]:
        """The stored blocks of ids first_id .. end_id - 1, each hash recomputed and
        each linked to the one before (StoreError at a gap, an unreadable row or
        a block that fails those checks: a store damaged since the node checked
        it is never served as valid; the SHA-256 costs microseconds a block)."""
        with self._lock:
            raw = self._conn.execute(
                "SELECT id, hash, body FROM blocks WHERE id >= ? AND id < ? ORDER BY id",
                (first_id, end_id)).fetchall()
        blocks = list(_checked(raw, first_id))
        if len(blocks) < end_id - first_id:
            raise DamagedStore(first_id + len(blocks), "is missing")
        return blocks

    def walk(self) -> Iterator[Block]:
        """Every stored block, genesis first, checked as `blocks_between` checks
        them, read from one snapshot of the file through a read-only connection
        of its own (one SELECT is one WAL snapshot): a walk of a long chain
        holds neither this store's lock nor the whole chain in memory."""
        if self._path is None:
            raise StoreError("this store has no file to walk")
        conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True)
        try:
            cursor = conn.execute("SELECT id, hash, body FROM blocks WHERE id >= 0 ORDER BY id")
            yield from _checked(cursor, 0)  # the cursor steps a row at a time
        finally:
            conn.close()

    def id_of_tx(self, tx_id: bytes) -> int | None:
        """The id of the stored block carrying `tx_id` (the tx_id index), or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id FROM blocks WHERE tx_id = ? LIMIT 1", (tx_id,)).fetchone()
        return None if row is None else int(row[0])

    def ids_of_txs(self, tx_ids: Sequence[bytes]) -> dict[bytes, int]:
        """`id_of_tx` of many tx ids at once (one query per IN_QUERY_IDS of them)."""
        found: dict[bytes, int] = {}
        with self._lock:
            for first in range(0, len(tx_ids), _IN_QUERY_IDS):
                part = list(tx_ids[first : first + _IN_QUERY_IDS])
                marks = ",".join("?" * len(part))
                found.update((bytes(tx_id), int(block_id)) for tx_id, block_id in
                             self._conn.execute(f"SELECT tx_id, id FROM blocks WHERE tx_id "
                                                f"IN ({marks})", part))
        return found

    @property
    def revocations_serial(self) -> int:
        """The serial of the revocation list the stored chain was last fully
        checked against (-1: none recorded)."""
        value = self._meta(_REVOCATIONS)
        return int(value) if value is not None and value.isdecimal() else -1

    def mark_revocations(self, serial: int) -> None:
        self._set_meta(_REVOCATIONS, str(serial))

    # --------------------------------------------------------------- writes

    def append(self, *blocks: Block, done: Iterable[bytes] = ()) -> None:
        """Store `blocks` (consecutive, after the tip) in one transaction and
        drop the pending votes `done` they (or others) already carry."""
        if blocks:
            self.replace_from(blocks[0].id, blocks, requeue=(), done=done)

    def replace_from(
        self,
        first_id: int,
        blocks: Iterable[Block],
        *,
        requeue: Iterable[Transaction],
        done: Iterable[bytes] = (),
    ) -> None:
        """Atomically: drop blocks with id >= first_id, store `blocks`, put `requeue`
        back in the pending queue and remove the tx ids in `done` from it; keep
        the tally and `verified_height` (the new tip: the node checked every
        block it stores) in step."""
        added = list(blocks)
        rows = [(b.id, b.hash, b.transaction.tx_id, b.encode()) for b in added]
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            dropped = [read_row(*row) for row in self._conn.execute(
                "SELECT id, hash, body FROM blocks WHERE id >= ? ORDER BY id", (first_id,))]
            self._conn.execute("DELETE FROM blocks WHERE id >= ?", (first_id,))
            self._conn.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", rows)
            self._conn.executemany(
                "INSERT OR IGNORE INTO pending (tx_id, timestamp, data, salt) VALUES (?, ?, ?, ?)",
                [(t.tx_id, t.timestamp, t.data, t.salt) for t in requeue],
            )
            self._conn.executemany(
                "DELETE FROM pending WHERE tx_id = ?", [(tx_id,) for tx_id in done]
            )
            readable = [b for b in dropped if isinstance(b, Block)]
            if len(readable) == len(dropped):
                change = voting.count_votes(added)
                for category, count in voting.count_votes(readable).items():
                    change[category] = change.get(category, 0) - count
                self._add_to_tally(change)
            else:
                # A damaged row's votes cannot be subtracted: count the rest again.
                self._recount_tally()
            # The blocks stored now were checked; the verified prefix grows to the
            # new tip only if it reached up to them (not after `mark_verified`
            # lowered it below a block found damaged: that stays to re-check).
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?",
                                     (_VERIFIED,)).fetchone()
            verified = int(row[0]) if row is not None and str(row[0]).isdecimal() else 0
            if verified >= first_id - 1:
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES "
                    "(?, (SELECT COALESCE(MAX(id), 0) FROM blocks))", (_VERIFIED,))

    def _add_to_tally(self, change: dict[str, int]) -> None:
        """Add `change` (category -> +/- votes) to the tally table; caller holds a transaction."""
        self._conn.executemany(
            "INSERT INTO tally VALUES (?, ?) "
            "ON CONFLICT (category) DO UPDATE SET count = count + excluded.count",
            [(category, count) for category, count in change.items() if count],
        )
        # A category whose last vote was dropped leaves the table, as the recount
        # omits it (only a subtraction can leave a zero: appends skip the scan).
        if any(count < 0 for count in change.values()):
            self._conn.execute("DELETE FROM tally WHERE count = 0")

    def tally(self) -> dict[str, int]:
        """The kept tally: votes per category, most first (what voting.tally of
        the stored chain returns, without walking it)."""
        with self._lock:
            rows = self._conn.execute("SELECT category, count FROM tally").fetchall()
        return voting.ordered({str(category): int(count) for category, count in rows})

    def forget_tally(self) -> None:
        """Mark the kept tally stale: the next `open` rebuilds it (see rebuild_tally)."""
        with self._lock:
            self._conn.execute("DELETE FROM meta WHERE key = ?", (_TALLY_KEPT,))

    def rebuild_tally(self) -> None:
        """Recount the tally table from the stored blocks, in one transaction (for a
        database older than the table, or after blocks were dropped that may have
        been edited, so that subtracting their votes could not be trusted)."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._recount_tally()

    def _recount_tally(self) -> None:
        """The tally table counted again from the stored blocks (rows that hold
        none are skipped: NodeState.restore drops them, and then recounts);
        caller holds a transaction."""
        # Streamed from the cursor: a long chain is never all in memory.
        counts = voting.count_votes(block for row in self._conn.execute(
            "SELECT id, hash, body FROM blocks WHERE id >= 0 ORDER BY id")
            if isinstance(block := read_row(*row), Block))
        self._conn.execute("DELETE FROM tally")
        self._add_to_tally(counts)
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (_TALLY_KEPT,))

    def add_pending(self, tx: Transaction) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO pending (tx_id, timestamp, data, salt) VALUES (?, ?, ?, ?)",
                (tx.tx_id, tx.timestamp, tx.data, tx.salt),
            )

    def drop_pending(self, tx_ids: Iterable[bytes]) -> None:
        with self._lock:
            self._conn.executemany(
                "DELETE FROM pending WHERE tx_id = ?", [(tx_id,) for tx_id in tx_ids]
            )

    def pending(self) -> list[Transaction]:
        """Votes accepted by this node and not yet in its chain, oldest first. A
        row that holds no transaction (a wrong type or size: only a hand edit
        makes one) is skipped."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT timestamp, data, salt FROM pending ORDER BY seq"
            ).fetchall()
        return [Transaction(ts, data, salt) for ts, data, salt in rows
                if isinstance(ts, int) and 0 <= ts <= MAX_UINT
                and isinstance(data, bytes) and len(data) <= MAX_DATA_BYTES
                and isinstance(salt, bytes) and len(salt) == SALT_BYTES]

    def save_certificates(self, certificates: Iterable[tuple[bytes, bytes]]) -> None:
        """Keep (member key, encoded certificate) pairs, so the directory alone
        proves every stored block's author a member (`votechain verify`)."""
        with self._lock:
            self._conn.executemany("INSERT OR IGNORE INTO certificates VALUES (?, ?)",
                                   list(certificates))

    def certificates(self) -> list[bytes]:
        """The encoded certificates kept by `save_certificates`."""
        with self._lock:
            rows = self._conn.execute("SELECT body FROM certificates").fetchall()
        # Not bytes(body): of an integer that would allocate that many bytes.
        return [body for (body,) in rows if isinstance(body, bytes)]

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL's committed pages into the database file (a PASSIVE
        checkpoint: writers go on meanwhile), on a connection of its own; see
        CHECKPOINT_INTERVAL. (Pages in the WAL, pages copied so far.) For the
        store a node writes (open), not open_readonly."""
        if self._path is None:
            return 0, 0
        with self._checkpoint_lock:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self._path, check_same_thread=False,
                                                     isolation_level=None)
            row = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        _busy, in_log, copied = row
        return int(in_log), int(copied)

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self._conn.close()


def read_row(row_id: int, column_hash: object, body: object) -> Block | UnreadableRow:
    """The block a stored row holds, or an UnreadableRow saying why it holds none."""
    label = column_hash if isinstance(column_hash, bytes) else b""
    if not isinstance(body, bytes):  # a hand edit: SQLite lets any column hold any type
        return UnreadableRow(row_id, label, f"does not decode (its body is "
                                            f"{type(body).__name__}, not a blob)")
    try:
        block = Block.decode(body)
    except ValueError as exc:  # EncodingError
        return UnreadableRow(row_id, label, f"does not decode ({exc})")
    if block.id != row_id:
        return UnreadableRow(row_id, label, f"holds block {block.id}, not {row_id}")
    if block.hash != column_hash:
        return UnreadableRow(row_id, label, "holds a block whose hash is not the row's")
    return block


def _checked(rows: Iterable[tuple[int, object, object]], first_id: int) -> Iterator[Block]:
    """The blocks `rows` (id, hash, body, from id `first_id` on) hold, each checked
    as history is read (`_history_problem`); DamagedStore at the first bad one."""
    before: Block | None = None
    for expected, row in enumerate(rows, start=first_id):
        block = read_row(*row)
        problem = _history_problem(expected, row[0], block, before)
        if problem is not None:
            raise DamagedStore(expected, problem)
        assert isinstance(block, Block)
        yield block
        before = block


def _history_problem(expected: int, row_id: int, block: Block | UnreadableRow,
                     before: Block | None) -> str | None:
    """What is wrong with a row read as history (None: nothing)."""
    if row_id != expected:
        return f"is missing (the ids jump to {row_id})"
    if isinstance(block, UnreadableRow):
        return block.detail
    if block.computed_hash() != block.hash:
        return "holds a block whose hash is not its content's"
    if before is not None and block.prev_hash != before.hash:
        return "does not link to the block before it"
    return None


def _quick_check(conn: sqlite3.Connection, db: Path) -> None:
    """SQLite's own structural check of the whole file, O(size) but with no index
    cross-checks (about as fast as reading the file; integrity_check would also
    check every index against its table). Raises StoreError unless "ok"."""
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        shown = "; ".join(problems[:_QUICK_CHECK_SHOWN])
        more = len(problems) - _QUICK_CHECK_SHOWN
        raise StoreError(
            f"{db} is damaged (PRAGMA quick_check: {shown}{f'; {more} more' if more > 0 else ''})"
            "; move it away and the node re-syncs its chain from its peers")

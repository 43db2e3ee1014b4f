"""ChainStore: a node's chain and pending votes in SQLite (standard library, WAL).

Every change is one transaction, so a `kill -9` at any instant leaves either
the old state or the new one: an append is one row, a fork switch deletes the
abandoned branch, inserts the new one and re-queues the dropped votes in one
commit. The node re-verifies the whole chain when it opens the store, so even
a database edited by hand cannot smuggle a bad block in.

Blocks are stored as their canonical encoding (`Block.encode()`), the same
bytes that travel on the wire; `votechain verify` reads them back offline.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from votechain.core.block import Block, Transaction, genesis_block
from votechain.errors import StoreError

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
    data BLOB NOT NULL
);
"""


class ChainStore:
    """Thread-safe: one connection, one lock; SQLite does the durability."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path, difficulty: int) -> ChainStore:
        """Open or create the store; refuse one made for another difficulty."""
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path / DB_FILE, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only a power cut
        # may lose the last commits, which the network then gives back by sync.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        store = cls(conn)
        if conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 0:
            # The genesis is stored too, so the table alone is a complete chain
            # that `votechain verify` can check from its first row.
            store.append(genesis_block())
        stored = store._meta("difficulty")
        if stored is None:
            store._set_meta("difficulty", str(difficulty))
        elif int(stored) != difficulty:
            conn.close()
            raise StoreError(
                f"{path / DB_FILE} holds a chain of difficulty {stored}, not {difficulty}"
            )
        return store

    @classmethod
    def open_readonly(cls, data_dir: Path) -> ChainStore:
        path = Path(data_dir) / DB_FILE
        if not path.exists():
            raise FileNotFoundError(f"no chain database at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        return cls(conn)

    @property
    def difficulty(self) -> int:
        value = self._meta("difficulty")
        if value is None:
            raise StoreError("the store records no difficulty")
        return int(value)

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def blocks(self) -> list[Block]:
        """Every stored block, genesis first. Raises EncodingError on a corrupt row."""
        with self._lock:
            rows = self._conn.execute("SELECT body FROM blocks ORDER BY id").fetchall()
        return [Block.decode(bytes(body)) for (body,) in rows]

    def append(self, block: Block, *, done: Iterable[bytes] = ()) -> None:
        """Store `block` and drop the pending votes it (or others) already carries."""
        self.replace_from(block.id, [block], requeue=(), done=done)

    def replace_from(
        self,
        first_id: int,
        blocks: Iterable[Block],
        *,
        requeue: Iterable[Transaction],
        done: Iterable[bytes] = (),
    ) -> None:
        """Atomically: drop blocks with id >= first_id, store `blocks`, put `requeue`
        back in the pending queue and remove the tx ids in `done` from it."""
        rows = [(b.id, b.hash, b.transaction.tx_id, b.encode()) for b in blocks]
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM blocks WHERE id >= ?", (first_id,))
            self._conn.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", rows)
            self._conn.executemany(
                "INSERT OR IGNORE INTO pending (tx_id, timestamp, data) VALUES (?, ?, ?)",
                [(t.tx_id, t.timestamp, t.data) for t in requeue],
            )
            self._conn.executemany(
                "DELETE FROM pending WHERE tx_id = ?", [(tx_id,) for tx_id in done]
            )

    def add_pending(self, tx: Transaction) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO pending (tx_id, timestamp, data) VALUES (?, ?, ?)",
                (tx.tx_id, tx.timestamp, tx.data),
            )

    def drop_pending(self, tx_ids: Iterable[bytes]) -> None:
        with self._lock:
            self._conn.executemany(
                "DELETE FROM pending WHERE tx_id = ?", [(tx_id,) for tx_id in tx_ids]
            )

    def pending(self) -> list[Transaction]:
        """Votes accepted by this node and not yet in its chain, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT tx_id, timestamp, data FROM pending ORDER BY seq"
            ).fetchall()
        return [Transaction(bytes(t), int(ts), bytes(d)) for t, ts, d in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

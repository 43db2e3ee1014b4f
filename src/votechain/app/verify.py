"""`votechain verify` on every core: the stored chain streamed through worker processes.

A block costs ~40 us to verify on one core: ~10 us to decode its stored bytes,
~3 us to re-hash it, ~22 us for the RSA-2048 signature (rule 5), a little for
its vote. All of that needs no other block, so it is the workers' share; what
does need other blocks (every transaction id at most once in the chain) stays
in this process. The design, in the order the rows travel:

1. This process reads the blocks table from SQLite with one cursor, CHUNK_BLOCKS
   rows at a time, as SQLite returns them: (id, hash column, body bytes). It
   never decodes them and never holds the chain: a chunk is a list of raw rows,
   and only a few chunks are alive at once (those in flight, and those checked
   but not yet merged). A gap in the ids ends the stream with an UnreadableRow
   for the first missing id, as ChainStore.rows would report it.
2. Each chunk, with the row before it, goes to `_check_chunk`, in a worker or in
   this process: it decodes every row and checks that it is the row's block
   (`node/store.py`'s row reader: the id and hash columns), links it to the one
   before (rule 1), and runs the stand-alone rules (core/rules.py
   `check_block_alone`: timestamp, sizes, membership, hash, difficulty,
   signature), stopping at the first failure. It sends back only what the
   chain-order check needs: the transaction ids, the chunk's vote counts, the
   hash of its last block, and the first failure as (position, exception type,
   detail). Raw rows cost ~1 us a block to send; whole Block objects cost ~17 us
   to pickle, more than half of what checking one costs.
3. This process merges the chunks' answers strictly in chain order
   (`_ChainOrder`): it adds the transaction ids to a dict of every id seen so far
   (id -> block: the one thing that grows with the chain, ~140 MB of the ~190 MB
   this process peaks at on a million blocks), sums the votes, and raises at
   the first failure. The gap's wording and the duplicate's are ChainStore.rows'
   and Chain.check_next's, copied (the tests compare the verdicts word for word).

The verdict is the one `Chain.verified` would give: the lowest block that fails
any rule, and the rule `Chain.append` checks first (link, then duplicate, then
the stand-alone rules in their order). The chunks are merged in chain order, so
every block below a chunk passed before the chunk is looked at, whatever order
the workers finish in. Within a chunk, the worker stops at its first failure p,
after recording p's transaction id if p reached the duplicate check (a link
failure comes before it, a stand-alone rule after it), so the merge finds a
duplicate at or below p before it raises p's own failure. A row that holds no
block (undecodable, another block, a gap) is a DamagedRow at its position: a
bad block below it is the lower, so the verdict, as before. Exceptions are
rebuilt here from the type and detail (an InvalidBlock does not pickle: its
constructor takes the block), around the block decoded again from the chunk's
row: only on the way out, once.

On a members-only network (a `network.json` in the data directory, or
`--network`), rule 6 is checked too: every block's author must hold a valid,
unrevoked certificate of that network. The certificates come from the store
(the node keeps every one it admitted) and the directory's own `member.cert`;
each is checked against the authority's key once, here, and the admitted
`Members` is pickled to each worker once, with the difficulty and the clock,
through the pool's initializer: the per-block check is then a dict lookup in
the worker, in `check_block_alone`'s order. A directory with no network file
is verified as an open network, and the report says that authorship was not
checked.

Two workers are one helper process plus this one: spawning an interpreter costs
~0.1 s of CPU, so on two cores one helper beats two. This process keeps
QUEUED_PER_HELPER chunks per helper queued in the pool and checks a chunk
itself whenever the pool has that many, so a helper finds its next chunk
waiting and this process does not wait for the helpers. At the end of the
stream it checks the pool's chunks still unanswered itself, newest first (the
helpers take the oldest first), and waits only for the oldest: a short chain
waits at most for a helper to start (~0.2 s: an interpreter, then our
imports) and check one chunk. One worker, or a chain too short to repay
starting one (MIN_PARALLEL_BLOCKS), runs the same streaming code in this
process with no pool at all. On this project's 2-core test machine, with
nothing else running, a million blocks verify at 20,000 to 24,600 blocks/s
with one worker and 33,800 to 41,700 with two: 1.68x to 1.87x, run against
run (two busy-loop processes there get 1.85x to 1.97x).

Workers are started with `spawn`: a fresh interpreter inherits no threads or
locks of this one (a SQLite connection, a logging handler). They ignore
SIGINT, so Ctrl-C reaches only this process, which then ends the pool in its
`finally` (`_stop`: once the chunks out are answered, tens of ms, so that no
worker is killed halfway through sending one): no worker outlives the call,
whichever way it leaves.

The rows are read through a read-only SQLite connection of this module's own
(one SELECT is one WAL snapshot, as `ChainStore.walk` reads): ChainStore
offers raw rows only as a whole list (`rows`, decoded), or decoded one by one
in its own process (`walk`); neither would leave the decoding to the workers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from votechain.core.block import Block, genesis_block
from votechain.core.node_state import UnreadableRow
from votechain.core.rules import check_block_alone, check_link
from votechain.core.voting import count_votes, ordered
from votechain.errors import (
    BadCertificate,
    BadGenesis,
    CliError,
    DamagedRow,
    DuplicateTransaction,
    InvalidBlock,
)
from votechain.node.store import DB_FILE, read_row

if TYPE_CHECKING:
    from votechain.core.membership import Members, Network

# A thousand blocks a chunk: ~40 ms of work on one core, long enough that
# sending it (~0.8 MB of raw rows, ~1 ms) is noise, short enough that the last
# chunk does not leave the other cores idle for long, and that the chunks alive
# at once weigh a few MB.
CHUNK_BLOCKS = 1024
# Below this many blocks the whole check takes less time (~40 us a block) than
# starting the worker interpreters, so the chain is verified in-process.
MIN_PARALLEL_BLOCKS = 4096
# A chunk takes milliseconds; a worker that died (OOM-killed, say) loses its
# chunk without a word, and multiprocessing.Pool would wait for it forever.
CHUNK_TIMEOUT = 120.0
# Chunks a helper has queued: one to work on, one waiting, so it never idles
# while this process checks a chunk of its own.
QUEUED_PER_HELPER = 2
# Chunks checked but not yet merged, beyond which this process waits for the
# oldest instead of reading on: bounds memory if a helper falls behind.
MAX_UNMERGED = 16

# One stored row as SQLite returns it: (id, hash column, body). The columns are
# `object`: SQLite lets any column hold any type, and a hand edit may use that.
_Row = tuple[int, object, object]
# What a chunk carries: raw rows (verify_store), blocks (verify_blocks), and an
# UnreadableRow where the stored ids jump (always last: the stream stops there).
_Item = _Row | Block | UnreadableRow


@dataclass(frozen=True, slots=True)
class Verified:
    """A chain that passed every rule, what it holds, and how long verifying it took."""

    count: int  # blocks, the genesis included
    tip_id: int
    tip_hash: bytes
    tally: dict[str, int]  # votes per category, most first (voting.ordered)
    difficulty: int
    seconds: float
    workers: int
    # The members-only network the chain was checked against (every author a
    # member), or None: an open network, authorship not checked.
    network: Network | None = None
    members: int = 0  # certificates admitted
    refused: int = 0  # certificates found but refused (another network's, forged, damaged)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def default_workers() -> int:
    return os.cpu_count() or 1


def verify_store(data_dir: Path, *, workers: int | None = None, now_ms: int | None = None,
                 network_path: Path | None = None) -> Verified:
    """Read the chain stored in `data_dir` and verify it; CliError says what is wrong.

    The network is `network_path`'s, or the directory's copy (network.json);
    with both, they must be the same network. With neither, the chain is
    checked as an open network's.

    The time reported includes reading and decoding the blocks: that is part
    of what `votechain verify` costs."""
    from votechain.errors import EncodingError, StoreError
    from votechain.node.store import ChainStore

    started = time.perf_counter()
    data_dir = Path(data_dir)
    members = _network_members(data_dir, network_path)
    try:
        store = ChainStore.open_readonly(data_dir)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    try:
        difficulty = store.difficulty
        certificates = store.certificates() if members is not None else []
    except (EncodingError, StoreError, ValueError, OSError) as exc:
        raise CliError(f"{data_dir}: unreadable chain: {exc}") from exc
    except sqlite3.Error as exc:
        raise CliError(f"{data_dir}: unreadable chain database: {exc}") from exc
    finally:
        store.close()
    refused = 0
    if members is not None:
        network = members.network
        if difficulty != network.difficulty:
            # The network decides the difficulty; a store made for another one
            # was not made by a node of this network.
            raise CliError(f"{data_dir}: the store was made for difficulty {difficulty}, "
                           f"network {network.name!r} has {network.difficulty}")
        refused = _admit_all(members, data_dir, certificates)
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    workers = _checked_workers(workers, CHUNK_BLOCKS)
    try:
        conn = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)
        try:
            # The highest id, from the primary key's b-tree: the chain's length
            # when it has no gap, enough to decide whether a pool pays.
            (top,) = conn.execute("SELECT MAX(id) FROM blocks").fetchone()
            if not isinstance(top, int) or top < 0:
                raise CliError(f"{data_dir}: unreadable chain: the store holds no block")
            if top + 1 < MIN_PARALLEL_BLOCKS:
                workers = 1
            order, used = _verify_chunks(
                _stored_chunks(conn, CHUNK_BLOCKS), _Rules(difficulty, now_ms, members),
                _genesis(members), workers)
        finally:
            conn.close()
    except InvalidBlock as exc:
        raise CliError(f"{data_dir}: bad chain: {exc}") from exc
    except sqlite3.Error as exc:
        raise CliError(f"{data_dir}: unreadable chain database: {exc}") from exc
    return Verified(order.count, order.height, order.tip_hash, ordered(order.votes), difficulty,
                    time.perf_counter() - started, used,
                    network=members.network if members is not None else None,
                    members=len(members.certificates()) if members is not None else 0,
                    refused=refused)


def _network_members(data_dir: Path, network_path: Path | None) -> Members | None:
    """The network to check `data_dir` against, with its newest revocation list
    applied and no certificate admitted yet; None for an open network."""
    from votechain.core.membership import Members
    from votechain.node import membership_files as files

    copy = data_dir / files.NETWORK_COPY
    try:
        given = files.read_network(network_path) if network_path is not None else None
        kept = files.read_network(copy) if copy.exists() else None
        if given is not None and kept is not None and given.id != kept.id:
            raise CliError(f"{data_dir} holds network {kept.name!r} ({kept.id.hex()[:16]}…), "
                           f"not {given.name!r} of {network_path} ({given.id.hex()[:16]}…)")
        network = given or kept
        if network is None:
            return None
        members = Members(network)
        for revocations in files.revocation_lists(data_dir, network_path):
            # Members keeps the list with the highest serial, whatever the order.
            members.revoke(revocations)
    except BadCertificate as exc:
        raise CliError(str(exc)) from exc
    return members


def _admit_all(members: Members, data_dir: Path, certificates: list[bytes]) -> int:
    """Admit the store's certificates and the directory's own; return how many
    were refused. A refused one is skipped, not fatal: if a block needed it,
    that block fails rule 6 and the verdict names it."""
    from votechain.node import membership_files as files

    refused = 0
    for raw in certificates:
        try:
            members.admit(raw)
        except BadCertificate:
            refused += 1
    own = data_dir / files.CERTIFICATE_FILE
    if own.exists():
        try:
            members.admit(files.read_certificate(own))
        except BadCertificate:
            refused += 1
    return refused


def verify_blocks(blocks: Sequence[Block], *, difficulty: int, now_ms: int,
                  workers: int | None = None, chunk: int | None = None,
                  min_parallel: int | None = None, members: Members | None = None) -> int:
    """Raise the InvalidBlock `Chain.verified` would raise, if any; return the
    number of processes that checked blocks (1: this one, no pool).
    `members`: a members-only network's (its genesis, and rule 6); None: open.

    The blocks in memory go through the same chunks as a store's rows, sent as
    Block objects (no encoding round trip, so a block built in memory over a
    size cap is refused for its size, as Chain.verified refuses it). `chunk`
    and `min_parallel` default to the module's constants, read at call time so
    a test can lower them to put a short chain through the pool."""
    chunk = CHUNK_BLOCKS if chunk is None else chunk
    workers = _checked_workers(workers, chunk)
    min_parallel = MIN_PARALLEL_BLOCKS if min_parallel is None else min_parallel
    if len(blocks) < min_parallel:
        workers = 1
    chunks: Iterator[list[_Item]] = (list(blocks[first:first + chunk])
                                     for first in range(0, len(blocks), chunk))
    _, used = _verify_chunks(chunks, _Rules(difficulty, now_ms, members), _genesis(members),
                             workers)
    return used


def _checked_workers(workers: int | None, chunk: int) -> int:
    workers = default_workers() if workers is None else workers
    if workers < 1 or chunk < 1:
        raise ValueError(f"workers and chunk must be at least 1, got {workers} and {chunk}")
    return workers


def _genesis(members: Members | None) -> Block:
    return members.network.genesis if members is not None else genesis_block()


# ================================================================ the stream


def _stored_chunks(conn: sqlite3.Connection, size: int) -> Iterator[list[_Item]]:
    """The stored rows from id 0 on, in id order, `size` at a time, undecoded.
    A gap in the ids ends the stream with an UnreadableRow for the first missing
    id, worded as ChainStore.rows words it (rows above a gap are never read: the
    verdict is at the gap or below it)."""
    # Negative ids (only a hand edit makes them) are no position of a chain.
    cursor = conn.execute("SELECT id, hash, body FROM blocks WHERE id >= 0 ORDER BY id")
    expected = 0
    while rows := cursor.fetchmany(size):
        # Primary-key ids only increase, so a batch has no gap exactly when its
        # last id is its first expected one plus its length less one: O(1) a batch.
        if rows[-1][0] != expected + len(rows) - 1:
            cut = next(i for i, row in enumerate(rows) if row[0] != expected + i)
            missing = expected + cut
            after = f"from {missing - 1} to" if missing else "to"
            gap = UnreadableRow(missing, b"", f"is missing (the stored ids jump {after} "
                                              f"{rows[cut][0]})")
            yield [*rows[:cut], gap]
            return
        expected += len(rows)
        yield rows


class _Rules(NamedTuple):
    """What the stand-alone rules need besides the block: the same in every process."""

    difficulty: int
    now_ms: int
    members: Members | None  # rule 6's certificates, admitted; None: an open network


class _Failure(NamedTuple):
    """The first block of a chunk that fails, as a worker reports it."""

    position: int  # in the chunk
    error: type[InvalidBlock]  # what Chain.verified raises there (DamagedRow: no block)
    detail: str


class _Checked(NamedTuple):
    """A chunk's answer: what the chain-order check needs, never the blocks."""

    tx_ids: list[bytes]  # of the blocks that reached the duplicate check, in order
    votes: dict[str, int]  # voting.count_votes of the blocks that passed
    tip_hash: bytes  # of the last block that passed (b"": none did)
    failure: _Failure | None


def _block_of(item: _Item) -> Block | UnreadableRow:
    if isinstance(item, Block | UnreadableRow):
        return item
    return read_row(*item)


def _check_chunk(prev: _Item, items: Sequence[_Item], rules: _Rules) -> _Checked:
    """Every rule but "no transaction twice" for `items`, in order, the first
    after `prev` (the block before it, or the row holding it); stops at the
    first failure. Runs in a worker, or in this process."""
    before = _block_of(prev)
    passed: list[Block] = []
    tx_ids: list[bytes] = []
    failure: _Failure | None = None
    for position, item in enumerate(items):
        block = _block_of(item)
        if isinstance(block, UnreadableRow):
            failure = _Failure(position, DamagedRow, block.detail)
            break
        try:
            # An unreadable `before` is the row ending the previous chunk: that
            # chunk's verdict, below this one, so there is nothing to link to.
            if isinstance(before, Block):
                check_link(block, before)
            # Chain.append checks the duplicate here, between the link and the
            # rest: the parent does it, from this list.
            tx_ids.append(block.transaction.tx_id)
            check_block_alone(block, difficulty=rules.difficulty, now_ms=rules.now_ms,
                              members=rules.members)
        except InvalidBlock as exc:
            failure = _Failure(position, type(exc), exc.detail)
            break
        passed.append(block)
        before = block
    return _Checked(tx_ids, count_votes(passed), passed[-1].hash if passed else b"", failure)


class _ChainOrder:
    """This process's share: the chunks' answers merged in chain order, the
    transaction ids of the whole chain, the votes, the tip."""

    def __init__(self, tip: Block, count: int) -> None:
        self.count = count  # blocks merged (and the genesis, if the chain held it)
        self.height = tip.id
        self.tip_hash = tip.hash
        self.votes: dict[str, int] = {}
        # Every transaction id merged so far, and its block (the genesis's is not
        # one: Chain.verified does not index it either).
        self._holders: dict[bytes, int] = {}

    def merge(self, items: Sequence[_Item], checked: _Checked) -> None:
        """Add the answer for `items`, the next chunk in chain order; raise the
        InvalidBlock Chain.verified raises if the chunk holds the first one."""
        # The blocks checked so far are linked, so the ids are the next ones.
        first = self.height + 1
        ids = dict(zip(checked.tx_ids, range(first, first + len(checked.tx_ids)), strict=True))
        # Two set operations in C a chunk; the walk in Python only when they fail.
        if len(ids) < len(checked.tx_ids) or not self._holders.keys().isdisjoint(ids):
            self._raise_duplicate(items, checked.tx_ids)
        if checked.failure is not None:
            position, error, detail = checked.failure
            found = _block_of(items[position])
            raise DamagedRow(found) if isinstance(found, UnreadableRow) else error(found, detail)
        self._holders.update(ids)
        self.count += len(ids)
        self.height += len(ids)
        if ids:
            self.tip_hash = checked.tip_hash
        for category, votes in checked.votes.items():
            self.votes[category] = self.votes.get(category, 0) + votes

    def _raise_duplicate(self, items: Sequence[_Item], tx_ids: list[bytes]) -> None:
        within: dict[bytes, int] = {}
        for position, tx_id in enumerate(tx_ids):
            holder = self._holders.get(tx_id, within.get(tx_id))
            if holder is not None:
                block = _block_of(items[position])
                assert isinstance(block, Block)  # it reached the duplicate check
                # Chain.check_next's words, so the verdict reads the same.
                raise DuplicateTransaction(block, f"tx {tx_id.hex()} is in block {holder}")
            within[tx_id] = self.height + 1 + position


# ================================================================ the processes


def _verify_chunks(chunks: Iterator[list[_Item]], rules: _Rules, genesis: Block,
                   workers: int) -> tuple[_ChainOrder, int]:
    """Check the chain the chunks hold, from its first block; return the merged
    chain and how many processes checked it. Raises the verdict."""
    head = next(chunks, [])
    prev: _Item = genesis
    order = _ChainOrder(genesis, 0)
    if head:
        first = _block_of(head[0])
        if isinstance(first, UnreadableRow):
            raise DamagedRow(first)
        if first.id == 0:
            # As Chain.verified: a stored genesis must be this network's, and
            # is otherwise not checked (it has no parent and no signature).
            if first != genesis:
                raise BadGenesis(first, "stored genesis differs from this network's")
            prev, head, order.count = head[0], head[1:], 1
    rest = _with_head(head, chunks)
    if workers == 1:
        for items in rest:
            order.merge(items, _check_chunk(prev, items, rules))
            prev = items[-1]
        return order, 1
    _verify_parallel(rest, prev, order, rules, workers - 1)
    return order, workers


def _with_head(head: list[_Item], chunks: Iterator[list[_Item]]) -> Iterator[list[_Item]]:
    if head:
        yield head
    yield from chunks


# A chunk on its way through this process: the row before it, its rows, and
# its answer, or the pool's promise of one.
_Entry = tuple[_Item, list[_Item], _Checked | AsyncResult[_Checked]]


def _verify_parallel(chunks: Iterator[list[_Item]], prev: _Item, order: _ChainOrder,
                     rules: _Rules, helpers: int) -> None:
    pool = _start_pool(helpers, rules)
    sent: list[AsyncResult[_Checked]] = []  # every chunk given to the pool, not yet answered
    try:
        unmerged: deque[_Entry] = deque()  # in chain order
        for items in chunks:
            sent = [answer for answer in sent if not answer.ready()]
            if len(sent) < QUEUED_PER_HELPER * helpers:
                sent.append(pool.apply_async(_check_in_worker, (prev, items)))
                unmerged.append((prev, items, sent[-1]))
            else:
                # The pool has enough to do: this process takes this chunk.
                unmerged.append((prev, items, _check_chunk(prev, items, rules)))
            prev = items[-1]
            while unmerged and (len(unmerged) > MAX_UNMERGED or _ready(unmerged[0][2])):
                order.merge(*_answered(unmerged.popleft()))
        # The stream is over. Rather than wait for the pool's last chunks, this
        # process checks those still unanswered, newest first (the helpers take
        # the oldest first), and waits only for the oldest.
        while unmerged:
            if not _ready(unmerged[0][2]):
                waiting = [i for i in range(1, len(unmerged)) if not _ready(unmerged[i][2])]
                if waiting:
                    before, items, _ = unmerged[waiting[-1]]
                    unmerged[waiting[-1]] = (before, items, _check_chunk(before, items, rules))
                    continue
            order.merge(*_answered(unmerged.popleft()))
    finally:
        _stop(pool, sent)


def _stop(pool: Pool, sent: list[AsyncResult[_Checked]]) -> None:
    """End the pool's processes, once none holds a chunk (a few tens of ms).

    Why wait: Pool.terminate kills a worker wherever it is, and one killed while
    sending its answer leaves the lock of the pool's result pipe taken, on
    which Pool.terminate's own task thread then waits forever (seen here, one
    run in a few dozen, when the verdict or the stolen last chunks left the
    pool busy). A pool with no chunk out is closed and joined instead: every
    worker exits on its own. Only a worker that does not answer within
    CHUNK_TIMEOUT (hung, or killed by the system) is terminated."""
    deadline = time.monotonic() + CHUNK_TIMEOUT
    idle = False
    try:
        for answer in sent:
            answer.wait(max(deadline - time.monotonic(), 0.0))
        idle = all(answer.ready() for answer in sent)
    finally:
        if idle:
            pool.close()
        else:
            pool.terminate()
        pool.join()


def _ready(answer: _Checked | AsyncResult[_Checked]) -> bool:
    return not isinstance(answer, AsyncResult) or answer.ready()


def _answered(entry: _Entry) -> tuple[list[_Item], _Checked]:
    _, items, answer = entry
    if isinstance(answer, AsyncResult):
        return items, answer.get(timeout=CHUNK_TIMEOUT)
    return items, answer


def _start_pool(workers: int, rules: _Rules) -> Pool:
    context = multiprocessing.get_context("spawn")
    in_main = threading.current_thread() is threading.main_thread()
    # A child started while SIGINT is ignored keeps it ignored from its first
    # instruction (Python installs its KeyboardInterrupt handler only over the
    # default disposition), so a Ctrl-C during the workers' start-up prints no
    # traceback from them either. The initializer covers a pool started from
    # another thread, where the disposition cannot be changed.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        # The rules travel once per worker, not once per chunk: with rule 6
        # they carry every admitted certificate.
        return context.Pool(workers, initializer=_worker_init, initargs=(rules,))
    finally:
        if in_main:
            signal.signal(signal.SIGINT,
                          signal.default_int_handler if previous is None else previous)


# In a worker: the rules `_worker_init` was given.
_worker_rules: _Rules | None = None


def _worker_init(rules: _Rules) -> None:
    global _worker_rules
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_rules = rules


def _check_in_worker(prev: _Item, items: list[_Item]) -> _Checked:
    assert _worker_rules is not None, "a verify worker started without _worker_init"
    return _check_chunk(prev, items, _worker_rules)

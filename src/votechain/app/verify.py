"""`votechain verify` on every core: the stored chain re-checked, signatures in parallel.

A block costs ~40 us to verify on one core, and three quarters of that is the
RSA-2048 signature (rule 5, core/rules.py). Signatures are independent of one
another, so they go to worker processes; everything else (genesis, links,
timestamp, sizes, hash, difficulty, duplicate transaction ids) runs in this
process, in chain order, through the same `Chain.append` the node uses, with
`signature=False`.

On a members-only network (a `network.json` in the data directory, or
`--network`), rule 6 is checked too: every block's author must hold a valid,
unrevoked certificate of that network. The certificates come from the store
(the node keeps every one it admitted) and the directory's own `member.cert`;
each is checked against the authority's key once, so the per-block check is a
dict lookup and runs in this process, in chain order, with the other cheap
rules. A directory with no network file is verified as an open network, and
the report says that authorship was not checked.

The verdict is the one `Chain.verified` would give: the lowest block that fails
any rule. The parent stops at the first block its own checks refuse (p); a
signature can only be the verdict if it belongs to a block below p, and the
chunks are read back in chain order, so the first chunk reporting a bad
signature holds the lowest one, whatever order the workers finish in.

What the workers receive is four fields per block (id, hash, author,
signature) pickled as plain tuples of bytes: ~1 us a block to send, against
~17 us to pickle whole Block objects or ~15 us to re-encode and decode them.

Workers are started with `spawn`: a fresh interpreter inherits no threads or
locks of this one (the node's SQLite connection, a logging handler). They
ignore SIGINT, so Ctrl-C reaches only this process, which then terminates the
pool in its `finally`: no worker outlives `verify_blocks`, whichever way it
leaves. One worker, or a chain too short to repay ~0.2 s of spawning
interpreters, is checked in-process with no pool at all.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from votechain.core.block import Block, genesis_block
from votechain.core.chain import Chain
from votechain.core.rules import check_signature
from votechain.errors import BadCertificate, BadGenesis, BadSignature, CliError, InvalidBlock

if TYPE_CHECKING:
    from votechain.core.membership import Members, Network

# A few hundred blocks a chunk: ~10 ms of RSA per chunk on one core, long enough
# that sending it (~0.3 ms) is noise, short enough that the last chunk does not
# leave the other cores idle for long.
CHUNK_BLOCKS = 256
# Below this many blocks the signatures take less time (~30 us each) than
# starting the worker interpreters, so the chain is verified in-process.
MIN_PARALLEL_BLOCKS = 4096
# A chunk takes milliseconds; a worker that died (OOM-killed, say) loses its
# chunk without a word, and multiprocessing.Pool would wait for it forever.
CHUNK_TIMEOUT = 120.0


class _Signed(NamedTuple):
    """The four fields of a block that rule 5 reads (a rules.SignedBlock)."""

    id: int
    hash: bytes
    author: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Verified:
    """A chain that passed every rule, and how long verifying it took."""

    blocks: list[Block]
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
        return len(self.blocks) / self.seconds if self.seconds > 0 else 0.0


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
    from votechain.core.node_state import UnreadableRow
    from votechain.errors import DamagedRow, EncodingError, StoreError
    from votechain.node.store import ChainStore

    started = time.perf_counter()
    members = _network_members(Path(data_dir), network_path)
    try:
        store = ChainStore.open_readonly(data_dir)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    try:
        difficulty = store.difficulty
        rows = store.rows()
        certificates = store.certificates() if members is not None else []
    except (EncodingError, StoreError, ValueError, OSError) as exc:
        raise CliError(f"{data_dir}: unreadable chain: {exc}") from exc
    except Exception as exc:  # sqlite3.Error, without importing sqlite3 here
        raise CliError(f"{data_dir}: unreadable chain database: {exc}") from exc
    finally:
        store.close()
    if not rows:
        raise CliError(f"{data_dir}: unreadable chain: the store holds no block")
    # The blocks up to the first row that holds none (undecodable, or a gap in
    # the ids): a bad block below it is the lower, so the verdict.
    damaged = next((row for row in rows if isinstance(row, UnreadableRow)), None)
    blocks = [row for row in rows[:damaged.id if damaged is not None else len(rows)]
              if isinstance(row, Block)]
    refused = 0
    if members is not None:
        network = members.network
        if difficulty != network.difficulty:
            # The network decides the difficulty; a store made for another one
            # was not made by a node of this network.
            raise CliError(f"{data_dir}: the store was made for difficulty {difficulty}, "
                           f"network {network.name!r} has {network.difficulty}")
        refused = _admit_all(members, Path(data_dir), certificates)
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    try:
        used = verify_blocks(blocks, difficulty=difficulty, now_ms=now_ms, workers=workers,
                             members=members)
    except InvalidBlock as exc:
        raise CliError(f"{data_dir}: bad chain: {exc}") from exc
    if damaged is not None:
        raise CliError(f"{data_dir}: bad chain: {DamagedRow(damaged)}")
    return Verified(blocks, difficulty, time.perf_counter() - started, used,
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
    number of processes that checked signatures (1: this one, no pool).
    `members`: a members-only network's (its genesis, and rule 6); None: open.

    `chunk` and `min_parallel` default to the module's constants, read at call
    time so a test can lower them to put a short chain through the pool."""
    workers = default_workers() if workers is None else workers
    chunk = CHUNK_BLOCKS if chunk is None else chunk
    min_parallel = MIN_PARALLEL_BLOCKS if min_parallel is None else min_parallel
    if workers < 1 or chunk < 1:
        raise ValueError(f"workers and chunk must be at least 1, got {workers} and {chunk}")
    if workers == 1 or len(blocks) < min_parallel:
        Chain.verified(blocks, difficulty=difficulty, now_ms=now_ms, members=members)
        return 1
    _verify_parallel(blocks, difficulty=difficulty, now_ms=now_ms, workers=workers, chunk=chunk,
                     members=members)
    return workers


def _verify_parallel(blocks: Sequence[Block], *, difficulty: int, now_ms: int,
                     workers: int, chunk: int, members: Members | None) -> None:
    # workers - 1 helper processes, and this one: spawning an interpreter costs
    # ~0.1 s of CPU, so on two cores one helper plus the parent beats two helpers.
    helpers = workers - 1
    # Enough chunks queued in the pool to keep every helper busy while the
    # parent works; the rest stay here, so the parent can take some itself.
    window = 2 * helpers
    pool = _start_pool(helpers)
    try:
        chunks: list[tuple[int, list[_Signed]]] = []  # (index in blocks of the first, fields)
        queued: deque[int] = deque()  # chunk numbers not yet given to anyone
        sent: dict[int, AsyncResult[tuple[int, str] | None]] = {}
        in_flight: list[AsyncResult[tuple[int, str] | None]] = []

        def dispatch() -> None:
            """Top the pool up to `window` chunks in flight, from the front (lowest ids)."""
            in_flight[:] = [result for result in in_flight if not result.ready()]
            while queued and len(in_flight) < window:
                number = queued.popleft()
                sent[number] = pool.apply_async(_check_chunk, (chunks[number][1],))
                in_flight.append(sent[number])

        def cut(batch: list[_Signed], first: int) -> None:
            if batch:
                chunks.append((first, batch))
                queued.append(len(chunks) - 1)
                dispatch()

        # The parent's own pass, in chain order, sending chunks as they fill:
        # the helpers check signatures while the parent checks links, hashes
        # and authors (rule 6 is a dict lookup: not worth sending anywhere).
        genesis = members.network.genesis if members is not None else genesis_block()
        chain = Chain(genesis=genesis)
        refused: InvalidBlock | None = None
        start = 0
        if blocks and blocks[0].id == 0:
            # As Chain.verified: a stored genesis must be this network's, and
            # is otherwise not checked (it has no parent and no signature).
            if blocks[0] != genesis:
                raise BadGenesis(blocks[0], "stored genesis differs from this network's")
            start = 1
        batch: list[_Signed] = []
        first = start
        for index in range(start, len(blocks)):
            block = blocks[index]
            try:
                chain.append(block, difficulty=difficulty, now_ms=now_ms, signature=False,
                             members=members)
            except InvalidBlock as exc:
                refused = exc
                break
            batch.append(_Signed(block.id, block.hash, block.author, block.signature))
            if len(batch) >= chunk:
                cut(batch, first)
                batch, first = [], index + 1
        cut(batch, first)

        # Then the parent checks chunks too, from the back (highest ids), while
        # the pool keeps taking them from the front.
        done: dict[int, tuple[int, str] | None] = {}
        while queued:
            dispatch()
            if queued:
                number = queued.pop()
                done[number] = _check_chunk(chunks[number][1])

        # In chain order: the first chunk with a bad signature has the lowest
        # one, and every such block lies below the one the parent refused.
        for number, (offset, _) in enumerate(chunks):
            bad = done[number] if number in done else sent[number].get(timeout=CHUNK_TIMEOUT)
            if bad is not None:
                position, detail = bad
                raise BadSignature(blocks[offset + position], detail)
        if refused is not None:
            raise refused
    finally:
        pool.terminate()
        pool.join()


def _start_pool(workers: int) -> Pool:
    context = multiprocessing.get_context("spawn")
    in_main = threading.current_thread() is threading.main_thread()
    # A child started while SIGINT is ignored keeps it ignored from its first
    # instruction (Python installs its KeyboardInterrupt handler only over the
    # default disposition), so a Ctrl-C during the workers' start-up prints no
    # traceback from them either. The initializer covers a pool started from
    # another thread, where the disposition cannot be changed.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        return context.Pool(workers, initializer=_worker_init)
    finally:
        if in_main:
            signal.signal(signal.SIGINT,
                          signal.default_int_handler if previous is None else previous)


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_chunk(chunk: list[_Signed]) -> tuple[int, str] | None:
    """In a worker: the first block of `chunk` whose signature fails, as
    (its position in the chunk, the BadSignature detail), or None."""
    for position, fields in enumerate(chunk):
        try:
            check_signature(fields)
        except BadSignature as exc:
            return position, exc.detail
    return None

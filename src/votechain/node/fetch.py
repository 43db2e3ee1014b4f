"""Fetching a branch from one peer (`fetch_branch`): find where its chain and
ours part, then fetch and check its batches in a pipeline, within named bounds
on what is held and for how long (node/config.py: MAX_BRANCH_BLOCKS,
FETCH_DEADLINE, FETCH_AHEAD_BATCHES). Apart from outbound.py, which keeps the
links and pools this uses.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from votechain.core.block import Block
from votechain.core.forkchoice import Tip
from votechain.errors import InvalidBlock, RemoteProtocolError, Unavailable
from votechain.node.config import FETCH_AHEAD_BATCHES, MAX_BRANCH_BLOCKS
from votechain.node.outbound import FetchDeadline, PeerLink
from votechain.protocol.peer import MAX_BATCH_BLOCKS, Blocks, Error, GetBlocks

__all__ = ["FetchFailed", "FetchedBranch", "HashAt", "OnMisbehaviour", "fetch_branch"]

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]
# Our block's hash at an id, or None once we no longer hold it (fetch_branch).
HashAt = Callable[[int], bytes | None]
# Told the address of a peer that sent invalid data, and why (fetch_branch).
OnMisbehaviour = Callable[[Address, str], None]


class FetchFailed(Unavailable):
    """A peer did not give the branch, with no sign that it lied: it no longer
    holds the tip it reported (it may have switched since), or it refused."""


@dataclass(frozen=True)
class FetchedBranch:
    """What a fetch brought: the peer's blocks from where its chain and ours part,
    each linked and checked. `complete`: they end at the target tip; otherwise
    they stopped short, at `stopped`: the "cap" on blocks held beyond our
    height, or the fetch's "deadline"; and are a prefix of the branch the peer
    claims."""

    blocks: list[Block]
    complete: bool
    stopped: Literal["", "cap", "deadline"] = ""


def fetch_branch(
    link: PeerLink,
    height: int,
    hash_at: HashAt,
    target: Tip,
    *,
    check: Callable[[Block], None],
    admit: Callable[[Sequence[bytes]], None] | None = None,
    batch_blocks: int = MAX_BATCH_BLOCKS,
    ahead: int = FETCH_AHEAD_BATCHES,
    max_blocks: int = MAX_BRANCH_BLOCKS,
    deadline: float | None = None,
    on_misbehaviour: OnMisbehaviour | None = None,
) -> FetchedBranch:
    """The peer's blocks from where its chain and ours part, up to `target` (the
    tip it reported), each linked and passed through `check` (the stand-alone
    rules: hash, difficulty, signature, membership): the caller holds no lock.
    Each batch's certificates go to `admit` first (None: an open network,
    ignore them), so blocks by members we never met can be checked.

    Our chain is read only through `height` and `hash_at(id)` (the hash of our
    block `id`, None if we no longer hold it), so a fetch costs in proportion to
    the fork's depth and the branch's length, not to our chain's height.

    The parting point is found by stepping back from min(our height, the
    target's id) in doubling steps until the peer's block there links to ours:
    a few round trips even when the branches part far back. From there the
    batches are fetched and checked in a pipeline (`_Prefetch`): while one batch
    is checked, the next ones are already being requested, at most `ahead`
    waiting. The first block that fails a check ends the fetch: nothing more is
    requested, the InvalidBlock raised names it, and `on_misbehaviour` is told
    the peer's address (as for any reply that breaks the protocol).

    What a fetch holds and how long it runs are bounded: no batch is asked past
    the target, nor more than `max_blocks` beyond our height (plus the few
    batches in the pipeline); and no request runs past `deadline` (a
    time.monotonic() value). At the cap or the deadline the fetch returns the
    blocks checked so far, not complete; the caller decides what a prefix is
    worth (node/resolver.py). A complete branch ends at the target: a peer
    whose chain no longer holds it raises FetchFailed.

    The RSA checks stay in this thread: `cryptography`'s verify holds the GIL
    (measured: two threads verify no faster than one), so threads would not
    spread them over cores."""
    try:
        return _fetch(link, height, hash_at, target, check=check, admit=admit,
                      batch_blocks=batch_blocks, ahead=ahead, max_blocks=max_blocks,
                      deadline=deadline)
    except (InvalidBlock, RemoteProtocolError) as exc:
        if on_misbehaviour is not None:
            on_misbehaviour(link.address, str(exc))
        raise


def _fetch(link: PeerLink, height: int, hash_at: HashAt, target: Tip, *,
           check: Callable[[Block], None], admit: Callable[[Sequence[bytes]], None] | None,
           batch_blocks: int, ahead: int, max_blocks: int,
           deadline: float | None) -> FetchedBranch:
    # The last id to ask for: the target's, or the cap's if nearer. start <= end
    # always: start is at most our height and the target's id.
    end = min(target.id, height + max(1, max_blocks))
    start, step = max(1, min(height, target.id)), 1
    while True:
        batch = _get_blocks(link, start, min(batch_blocks, end - start + 1), admit, deadline)
        if batch and batch[0].prev_hash == hash_at(start - 1):
            break
        if start == 1:
            if not batch:
                raise FetchFailed(f"it holds no block after genesis, though it reported "
                                  f"tip {target.id}")
            raise InvalidBlock(batch[0], "the peer's chain shares not even our genesis")
        start, step = max(1, start - step), step * 2
    branch: list[Block] = []
    prev: Block | None = None
    prefetch = _Prefetch(link, batch[-1].id + 1, end, batch_blocks, ahead, admit, deadline)
    try:
        while True:
            for index, block in enumerate(batch):
                if prev is not None and (block.id != prev.id + 1 or block.prev_hash != prev.hash):
                    if index == 0:
                        # Between two requests an honest peer may switch branch
                        # (a fork settled on its side): news, not a lie.
                        raise FetchFailed(f"its chain changed at block {block.id} while we "
                                          "fetched it")
                    raise InvalidBlock(block, "the peer sent a batch that does not link up")
                check(block)
                prev = block
            branch.extend(batch)
            if branch[-1].id >= end:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return FetchedBranch(branch, False, "deadline")
            next_batch = prefetch.next_batch()
            if next_batch is None:
                return FetchedBranch(branch, False, "deadline")
            if not next_batch:
                break  # the peer's chain ends here
            batch = next_batch
    except (InvalidBlock, RemoteProtocolError):
        # A lying peer: drop its connection, which ends the request in flight
        # at once (stop() would otherwise wait out its answer, however slow).
        link.disconnect()
        raise
    finally:
        prefetch.stop()  # on any exit, so no request follows a bad block
    last = branch[-1]
    if last.id == target.id:
        if last.hash != target.hash:
            raise FetchFailed(f"its block {target.id} is no longer the tip it reported")
        return FetchedBranch(branch, True)
    if last.id == end:
        return FetchedBranch(branch, False, "cap")
    raise FetchFailed(f"its chain ends at block {last.id}, short of the tip {target.id} "
                      "it reported")


class _Prefetch:
    """Requests the batches from `from_id` up to `end`, one after another, in a
    thread of its own, and hands them over in order through a queue of at most
    `ahead` batches. The end of the peer's chain is an empty batch; a failed
    request (timeout, closed connection, bad reply) is handed over in its
    place and ends the thread, as does `deadline`.

    Why a thread and not pipelined requests on the link: the connection is
    strictly request and reply, and one extra thread per fetch (a round fetches
    one branch at a time) is cheap next to the ~30 us of RSA per block that the
    checking thread spends meanwhile."""

    def __init__(self, link: PeerLink, from_id: int, end: int, batch_blocks: int, ahead: int,
                 admit: Callable[[Sequence[bytes]], None] | None,
                 deadline: float | None) -> None:
        self._link = link
        self._admit = admit
        self._end = end
        self._batch_blocks = batch_blocks
        self._deadline = deadline
        self._queue: queue.Queue[tuple[Block, ...] | BaseException] = queue.Queue(
            maxsize=max(1, ahead))  # 0 would mean no bound at all
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(from_id,), daemon=True,
                                        name="votechain-fetch")
        self._thread.start()

    def _run(self, next_id: int) -> None:
        try:
            while not self._stopping.is_set() and next_id <= self._end:
                limit = min(self._batch_blocks, self._end - next_id + 1)
                batch = _get_blocks(self._link, next_id, limit, self._admit, self._deadline)
                self._queue.put(batch)  # blocks while `ahead` batches wait to be checked
                if not batch:
                    return
                next_id = batch[-1].id + 1
        except BaseException as exc:  # the checking thread raises it in its own place
            self._queue.put(exc)

    def next_batch(self) -> tuple[Block, ...] | None:
        """The next batch (empty at the peer's tip), or None once the deadline
        passed; raises what its request raised."""
        wait = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            return None
        if isinstance(item, FetchDeadline):
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """No request after this returns. Sets the flag the thread reads before each
        request, then empties the queue so a thread blocked on a full one wakes
        (it puts at most one more item, into the emptied queue, then sees the
        flag), and waits for it: a request in flight is bounded by the link's
        timeout and the deadline, and closing the link (the node stopping)
        ends it at once."""
        self._stopping.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


def _get_blocks(link: PeerLink, from_id: int, limit: int,
                admit: Callable[[Sequence[bytes]], None] | None,
                deadline: float | None) -> tuple[Block, ...]:
    reply = link.request(GetBlocks(from_id, limit), deadline=deadline)
    if isinstance(reply, Error):
        raise FetchFailed(f"it refused to send blocks: {reply.reason}")
    if not isinstance(reply, Blocks):
        raise RemoteProtocolError(f"expected Blocks, got {type(reply).__name__}")
    if len(reply.blocks) > limit:
        raise RemoteProtocolError(f"asked for {limit} blocks, got {len(reply.blocks)}")
    if reply.blocks and reply.blocks[0].id != from_id:
        raise RemoteProtocolError(f"asked for blocks from {from_id}, got {reply.blocks[0].id}")
    if admit is not None:
        admit(reply.certificates)
    return reply.blocks

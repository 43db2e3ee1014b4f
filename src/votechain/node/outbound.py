"""The outbound side of a peer: one PeerLink per remote peer (a reusable
connection and an outbox of blocks to send), and fetching a branch from one.

Kept apart from peer.py so the node reads as its threads and rules, and this as
how it talks to one other node.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from votechain.core.block import Block
from votechain.core.forkchoice import Tip
from votechain.core.rules import check_block_alone
from votechain.errors import InvalidBlock, RemoteProtocolError
from votechain.net.connection import Connection
from votechain.protocol.wire import MAX_BATCH_BLOCKS, Blocks, GetBlocks, Hello, Message

# A request to another peer that takes longer than this is abandoned: a dead or
# stalled peer costs at most this long, in a thread of its own.
PEER_TIMEOUT = 3.0
# Blocks waiting for one peer; a peer further behind than this syncs instead.
OUTBOX_BLOCKS = 256
# How long a peer that failed a send is skipped by broadcasts.
PEER_BACKOFF = 2.0


class PeerLink:
    """A reusable outbound connection to one peer, reconnected on demand, with
    its own outbox of blocks to send.

    At most one thread drains a peer's outbox at a time, so a stalled peer ties
    up one network thread, not one per block; and after a failed send the
    outbox is emptied and the peer skipped for PEER_BACKOFF: it catches up by
    its own periodic sync once it answers again."""

    def __init__(self, address: tuple[str, int], hello: Hello) -> None:
        self.address = address
        self._hello = hello
        self._conn: Connection | None = None
        self.lock = threading.Lock()
        self._outbox: deque[Block] = deque(maxlen=OUTBOX_BLOCKS)
        self._outbox_lock = threading.Lock()
        self._draining = False
        self._backoff_until = 0.0
        self._closed = False

    def enqueue(self, block: Block) -> bool:
        """Queue `block`; True when the caller must start a drain for this link."""
        with self._outbox_lock:
            if time.monotonic() < self._backoff_until:
                return False
            self._outbox.append(block)
            if self._draining:
                return False
            self._draining = True
            return True

    def next_block(self) -> Block | None:
        """The next block to send, or None (and the drain ends) when the outbox is empty."""
        with self._outbox_lock:
            if self._outbox:
                return self._outbox.popleft()
            self._draining = False
            return None

    def failed(self) -> None:
        with self._outbox_lock:
            self._outbox.clear()
            self._backoff_until = time.monotonic() + PEER_BACKOFF

    def request(self, msg: Message, timeout: float = PEER_TIMEOUT) -> Message:
        """Send `msg` and return the reply; raises OSError (TimeoutError included),
        RemoteProtocolError or ConnectionClosed."""
        if not self.lock.acquire(timeout=timeout):
            raise TimeoutError(f"peer {self.address} is busy")
        try:
            if self._closed:
                raise ConnectionAbortedError(f"the link to {self.address} is closed")
            fresh = self._conn is None
            if self._conn is None:
                # Stored before the handshake, so close() can wake that too.
                self._conn = Connection.open(*self.address, timeout=timeout)
            conn = self._conn
            try:
                if fresh:
                    conn.handshake(self._hello, initiator=True)
                return conn.request(msg)
            except BaseException:
                # After any failure the stream may hold half a reply: start afresh.
                conn.close()
                self._conn = None
                raise
        finally:
            self.lock.release()

    def close(self) -> None:
        """Close the connection, first without the lock: a request in flight to a
        stalled peer is woken at once instead of holding stop() for its timeout."""
        self._closed = True  # no new connection from here on
        with self._outbox_lock:
            self._outbox.clear()
            self._backoff_until = float("inf")  # closed for good: queue nothing more
        conn = self._conn
        if conn is not None:
            conn.close()  # thread-safe and idempotent; wakes a blocked recv
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def fetch_branch(
    link: PeerLink, ours: list[Block], winner: Tip, *, difficulty: int, now_ms: int
) -> list[Block]:
    """The peer's blocks from where its chain and `ours` part, up to its tip, each
    checked on its own (hash, difficulty, signature): the caller holds no lock.

    The parting point is found by stepping back from min(our height, the
    winner's id) in doubling steps until the peer's block there links to ours:
    a few round trips even when the branches part far back."""
    start, step = max(1, min(len(ours) - 1, winner.id)), 1
    while True:
        batch = _get_blocks(link, start)
        if batch and batch[0].prev_hash == ours[start - 1].hash:
            break
        if start == 1:
            if not batch:
                return []  # the peer has nothing past genesis any more
            raise InvalidBlock(batch[0], "the peer's chain shares not even our genesis")
        start, step = max(1, start - step), step * 2
    branch = list(batch)
    while batch:
        batch = _get_blocks(link, branch[-1].id + 1)
        branch.extend(batch)
    prev: Block | None = None
    for block in branch:
        if prev is not None and (block.id != prev.id + 1 or block.prev_hash != prev.hash):
            raise InvalidBlock(block, "the peer sent a batch that does not link up")
        check_block_alone(block, difficulty=difficulty, now_ms=now_ms)
        prev = block
    return branch


def _get_blocks(link: PeerLink, from_id: int) -> tuple[Block, ...]:
    reply = link.request(GetBlocks(from_id, MAX_BATCH_BLOCKS))
    if not isinstance(reply, Blocks):
        raise RemoteProtocolError(f"expected Blocks, got {type(reply).__name__}")
    if reply.blocks and reply.blocks[0].id != from_id:
        raise RemoteProtocolError(f"asked for blocks from {from_id}, got {reply.blocks[0].id}")
    return reply.blocks

"""The outbound side of a peer: one PeerLink per remote peer (a reusable
connection and an outbox of blocks to send), the network threads that use
them (`Outbound`: broadcasts and questions to every peer), and fetching a
branch from one peer.

Kept apart from runtime.py so the node reads as its threads and rules, and this
as how it talks to the other nodes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor

from votechain.core.block import Block
from votechain.core.forkchoice import Tip
from votechain.core.membership import Members
from votechain.errors import ConnectionClosed, InvalidBlock, RemoteProtocolError
from votechain.net.connection import OBSERVER, Connection, LocalIdentity, PeerIdentity
from votechain.node.config import (
    FETCH_AHEAD_BATCHES,
    OUTBOX_BLOCKS,
    PEER_BACKOFF,
    PEER_TIMEOUT,
    NodeConfig,
)
from votechain.protocol.peer import (
    MAX_BATCH_BLOCKS,
    Add,
    AddResult,
    Blocks,
    GetBlocks,
    Hello,
    Message,
)

__all__ = ["OUTBOX_BLOCKS", "PEER_BACKOFF", "PEER_TIMEOUT", "Outbound", "PeerLink", "fetch_branch"]

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]
# Our block's hash at an id, or None once we no longer hold it (fetch_branch).
HashAt = Callable[[int], bytes | None]


class PeerLink:
    """A reusable outbound connection to one peer, reconnected on demand, with
    its own outbox of blocks to send.

    At most one thread drains a peer's outbox at a time, so a stalled peer ties
    up one network thread, not one per block; and after a failed send the
    outbox is emptied and the peer skipped for `backoff` s: it catches up by
    its own periodic sync once it answers again."""

    def __init__(
        self,
        address: Address,
        hello: Hello,
        *,
        identity: LocalIdentity = OBSERVER,
        members: Members | None = None,
        timeout: float = PEER_TIMEOUT,
        outbox_blocks: int = OUTBOX_BLOCKS,
        backoff: float = PEER_BACKOFF,
    ) -> None:
        self.address = address
        self._hello = hello
        self._identity = identity
        self._members = members
        # Who answered the last handshake at this address (None before one).
        self.peer: PeerIdentity | None = None
        self.timeout = timeout
        self._backoff = backoff
        self._conn: Connection | None = None
        self.lock = threading.Lock()
        self._outbox: deque[Block] = deque(maxlen=outbox_blocks)
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
            self._backoff_until = time.monotonic() + self._backoff

    def request(self, msg: Message, timeout: float | None = None) -> Message:
        """Send `msg` and return the reply (within `timeout`, the link's own by
        default); raises OSError (TimeoutError included), RemoteProtocolError or
        ConnectionClosed."""
        return self.ask(msg, timeout)[0]

    def ask(self, msg: Message, timeout: float | None = None) -> tuple[Message, PeerIdentity]:
        """`request`, and who answered it (proven by this connection's handshake)."""
        if timeout is None:
            timeout = self.timeout
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
                if self._closed:
                    # close() ran while we connected and found nothing to close:
                    # stored first, read second here, so one side always sees the other.
                    raise ConnectionAbortedError(f"the link to {self.address} is closed")
                if fresh:
                    self.peer = None
                    self.peer = conn.handshake(self._hello, initiator=True,
                                               identity=self._identity, members=self._members)
                peer = self.peer
                assert peer is not None  # set by this connection's handshake, under self.lock
                return conn.request(msg), peer
            except BaseException:
                # After any failure the stream may hold half a reply: start afresh.
                conn.close()
                self._conn = None
                raise
        finally:
            self.lock.release()

    def close(self) -> None:
        """Close the connection without taking the lock: a request in flight to a
        stalled peer is woken at once instead of holding stop() for its timeout.
        (Waiting for the lock would wait out a request still connecting, which
        stores its connection only once connected; request() checks `_closed`
        again after storing it, and closes it itself.)"""
        self._closed = True  # no new connection from here on
        with self._outbox_lock:
            self._outbox.clear()
            self._backoff_until = float("inf")  # closed for good: queue nothing more
        conn = self._conn
        if conn is not None:
            conn.close()  # thread-safe and idempotent; wakes a blocked recv


class Outbound:
    """This node's side of every other peer: a PeerLink each, made on first use,
    and the network threads that send blocks and ask questions through them.
    Nothing here waits for a slow peer while holding a lock of the node's."""

    def __init__(self, hello: Hello, identity: LocalIdentity, members: Members | None,
                 config: NodeConfig) -> None:
        self._hello = hello
        self._identity = identity
        self._members = members
        self._config = config
        self._links: dict[Address, PeerLink] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(config.network_threads,
                                            thread_name_prefix="votechain-net")

    def link(self, address: Address) -> PeerLink:
        with self._lock:
            link = self._links.get(address)
            if link is None:
                config = self._config
                link = self._links[address] = PeerLink(
                    address, self._hello, identity=self._identity, members=self._members,
                    timeout=config.peer_timeout,
                    outbox_blocks=config.outbox_blocks, backoff=config.peer_backoff)
                if self._closed:
                    link.close()  # close() closed the others already: refuse requests
            return link

    def broadcast(self, block: Block, peers: Iterable[Address]) -> None:
        """Send `block` to each of `peers`, each in its own
        thread with a bounded timeout; returns without waiting for them."""
        for address in peers:
            link = self.link(address)
            if link.enqueue(block):
                try:
                    self._executor.submit(self._drain, link)
                except RuntimeError:  # the executor is shut down: we are stopping
                    return

    def _drain(self, link: PeerLink) -> None:
        """Send `link`'s queued blocks in order, until its outbox is empty."""
        while (block := link.next_block()) is not None:
            try:
                reply = link.request(Add(block))
            except (OSError, RemoteProtocolError, ConnectionClosed) as exc:
                log.info("could not send block %d to %s: %s", block.id, link.address, exc)
                link.failed()
                continue
            if isinstance(reply, AddResult) and reply.status == "rejected":
                log.warning("peer %s rejected our block %d: %s", link.address, block.id,
                            reply.reason)

    def ask_all(self, peers: Iterable[Address],
                msg: Message) -> list[tuple[Address, Message, PeerIdentity]]:
        """Ask every peer at once; the replies that came, with who sent each (as its
        handshake proved), in the order of `peers`."""
        futures = [(a, self._executor.submit(self.link(a).ask, msg)) for a in peers]
        replies = []
        for address, future in futures:
            try:
                reply, peer = future.result(timeout=self._config.peer_timeout * 2)
                replies.append((address, reply, peer))
            # A silent, closed or misbehaving peer is no answer; a cancelled
            # request means we are stopping. Anything else is our bug and
            # propagates to the resolver, which logs it loudly.
            except (OSError, RemoteProtocolError, ConnectionClosed, CancelledError) as exc:
                log.debug("no answer from %s: %s", address, exc)
        return replies

    def close(self) -> None:
        """Close every link, which wakes each request in flight (a broadcast to a
        stalled peer, a poll), so the node stops now, not after a peer timeout."""
        with self._lock:
            self._closed = True
            links = list(self._links.values())
        for link in links:
            link.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def fetch_branch(
    link: PeerLink,
    height: int,
    hash_at: HashAt,
    winner: Tip,
    *,
    check: Callable[[Block], None],
    admit: Callable[[Sequence[bytes]], None] | None = None,
    batch_blocks: int = MAX_BATCH_BLOCKS,
    ahead: int = FETCH_AHEAD_BATCHES,
) -> list[Block]:
    """The peer's blocks from where its chain and ours part, up to its tip, each
    linked and passed through `check` (the stand-alone rules: hash, difficulty,
    signature, membership): the caller holds no lock. Each batch's
    certificates go to `admit` first (None: an open network, ignore them), so
    blocks by members we never met can be checked.

    Our chain is read only through `height` and `hash_at(id)` (the hash of our
    block `id`, None if we no longer hold it), so a fetch costs in proportion to
    the fork's depth and the branch's length, not to our chain's height.

    The parting point is found by stepping back from min(our height, the
    winner's id) in doubling steps until the peer's block there links to ours:
    a few round trips even when the branches part far back. From there the
    batches are fetched and checked in a pipeline (`_Prefetch`): while one batch
    is checked, the next ones are already being requested, at most `ahead`
    waiting. The first block that fails a check ends the fetch: nothing more is
    requested, and the InvalidBlock raised names it.

    The RSA checks stay in this thread: `cryptography`'s verify holds the GIL
    (measured: two threads verify no faster than one), so threads would not
    spread them over cores. There is no cap on the branch's length yet: the
    state adopts only a branch that holds the majority tip, so a truncated one
    would be skipped and a late joiner could never sync a long chain."""
    start, step = max(1, min(height, winner.id)), 1
    while True:
        batch = _get_blocks(link, start, batch_blocks, admit)
        if batch and batch[0].prev_hash == hash_at(start - 1):
            break
        if start == 1:
            if not batch:
                return []  # the peer has nothing past genesis any more
            raise InvalidBlock(batch[0], "the peer's chain shares not even our genesis")
        start, step = max(1, start - step), step * 2
    branch: list[Block] = []
    prev: Block | None = None
    prefetch = _Prefetch(link, batch[-1].id + 1, batch_blocks, ahead, admit)
    try:
        while batch:
            for block in batch:
                if prev is not None and (block.id != prev.id + 1 or block.prev_hash != prev.hash):
                    raise InvalidBlock(block, "the peer sent a batch that does not link up")
                check(block)
                prev = block
            branch.extend(batch)
            batch = prefetch.next_batch()
    finally:
        prefetch.stop()  # on any exit, so no request follows a bad block
    return branch


class _Prefetch:
    """Requests the batches from `from_id` on, one after another, in a thread of
    its own, and hands them over in order through a queue of at most `ahead`
    batches. The end of the peer's chain is an empty batch; a failed request
    (timeout, closed connection, bad reply) is handed over in its place and
    ends the thread.

    Why a thread and not pipelined requests on the link: the connection is
    strictly request and reply, and one extra thread per fetch (a round fetches
    one branch at a time) is cheap next to the ~30 us of RSA per block that the
    checking thread spends meanwhile."""

    def __init__(self, link: PeerLink, from_id: int, batch_blocks: int, ahead: int,
                 admit: Callable[[Sequence[bytes]], None] | None) -> None:
        self._link = link
        self._admit = admit
        self._batch_blocks = batch_blocks
        self._queue: queue.Queue[tuple[Block, ...] | BaseException] = queue.Queue(
            maxsize=max(1, ahead))  # 0 would mean no bound at all
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(from_id,), daemon=True,
                                        name="votechain-fetch")
        self._thread.start()

    def _run(self, next_id: int) -> None:
        try:
            while not self._stopping.is_set():
                batch = _get_blocks(self._link, next_id, self._batch_blocks, self._admit)
                self._queue.put(batch)  # blocks while `ahead` batches wait to be checked
                if not batch:
                    return
                next_id = batch[-1].id + 1
        except BaseException as exc:  # the checking thread raises it in its own place
            self._queue.put(exc)

    def next_batch(self) -> tuple[Block, ...]:
        """The next batch (empty at the peer's tip); raises what its request raised."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """No request after this returns. Sets the flag the thread reads before each
        request, then empties the queue so a thread blocked on a full one wakes
        (it puts at most one more item, into the emptied queue, then sees the
        flag), and waits for it: a request in flight is bounded by the link's
        timeout, and closing the link (the node stopping) ends it at once."""
        self._stopping.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


def _get_blocks(link: PeerLink, from_id: int, limit: int,
                admit: Callable[[Sequence[bytes]], None] | None) -> tuple[Block, ...]:
    reply = link.request(GetBlocks(from_id, limit))
    if not isinstance(reply, Blocks):
        raise RemoteProtocolError(f"expected Blocks, got {type(reply).__name__}")
    if len(reply.blocks) > limit:
        raise RemoteProtocolError(f"asked for {limit} blocks, got {len(reply.blocks)}")
    if reply.blocks and reply.blocks[0].id != from_id:
        raise RemoteProtocolError(f"asked for blocks from {from_id}, got {reply.blocks[0].id}")
    if admit is not None:
        admit(reply.certificates)
    return reply.blocks

"""The outbound side of a peer: one PeerLink per remote peer (a reusable
connection, an outbox of blocks to send, and the address's Backoff), the
network threads that use them (`Outbound`: broadcasts and questions to every
peer). Fetching a branch from one peer is node/fetch.py.

Kept apart from runtime.py so the node reads as its threads and rules, and this
as how it talks to the other nodes.

What a listed address that does not answer costs (the tracker lists whoever
registered, junk included): a request that fails puts the address in backoff
(node/peers.py), so it is skipped by broadcasts and polls for a while; and work
for an address that has not proven itself (never answered, or failing) runs in
a probe pool of its own, so it never queues ahead of the peers that answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed

from votechain.core.block import Block, Transaction
from votechain.core.forkchoice import Tip
from votechain.core.membership import Members
from votechain.errors import (
    ConnectionClosed,
    RemoteProtocolError,
)
from votechain.net.connection import OBSERVER, Connection, LocalIdentity, PeerIdentity
from votechain.node.config import (
    MAX_PEER_BACKOFF,
    OUTBOX_BLOCKS,
    PEER_BACKOFF,
    PEER_TIMEOUT,
    NodeConfig,
)
from votechain.node.peers import Backoff
from votechain.protocol.peer import (
    Add,
    AddResult,
    Announce,
    Hello,
    Message,
    Relay,
    Relayed,
)

__all__ = [
    "OUTBOX_BLOCKS",
    "PEER_BACKOFF",
    "PEER_TIMEOUT",
    "FetchDeadline",
    "Outbound",
    "PeerLink",
]

log = logging.getLogger("votechain.peer")

# A link (and its backoff) is kept for every address the tracker ever listed,
# so that junk that comes back is still skipped; but a tracker that lists new
# junk addresses without end must not grow that table without end. Beyond the
# addresses listed now plus this many, the links of addresses no longer listed
# and not in use are forgotten (~1 KiB each: a forgotten one that returns is
# only tried once more before its backoff starts again).
SPARE_LINKS = 1024
# Requests a drain sends to one peer before reading the first reply (blocks,
# relayed votes, our account, in order): enough to empty a backlog in one
# round trip, few enough that the replies waiting in the socket stay small.
PIPELINE_DEPTH = 16
# Under load, a drain waits up to LINGER for PIPELINE_DEPTH requests to gather
# before it sends what is queued (TCP's Nagle and cork, one level up): the
# member at the other end decides a run of blocks as one (PeerRequests.handle_all),
# and a run of one cost it 240 us a block in process against 105 us in runs
# of eight, before the socket and thread wake-ups saved. "Under load" means
# the link's last exchange ended less than LINGER_BUSY ago, so a vote after a
# quiet spell goes out at once. At 3 peers this took the peers' CPU per final
# vote from ~3.1 to ~2.5 ms, and 10 peers from 145 to 189 votes/s (docs/design.md).
LINGER = 0.005
LINGER_BUSY = 0.05

Address = tuple[str, int]
# A member told us of its chain: who (as its handshake proved), its tip, its
# lock (None: not said). PeerRequests.reported, for finality (core/finality.py).
OnReport = Callable[[PeerIdentity, Tip, "int | None"], None]


class FetchDeadline(TimeoutError):
    """Our own deadline for a fetch passed mid-request: not the peer's failure."""


class PeerLink:
    """A reusable outbound connection to one peer, reconnected on demand, with
    its own outbox of blocks to send and its Backoff.

    At most one thread drains a peer's outbox at a time, so a stalled peer ties
    up one network thread, not one per block. Any request that fails (connect,
    handshake, reply) empties the outbox and backs the address off: it is
    skipped by broadcasts and polls until its backoff ends, and catches up by
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
        max_backoff: float = MAX_PEER_BACKOFF,
        on_relays_dropped: Callable[[list[bytes]], None] | None = None,
        on_member: Callable[[bytes], None] | None = None,
    ) -> None:
        self.address = address
        # Told the key of each member a handshake here proves (relaying's
        # start-up ends once every seat has been reached: core/relaying.py).
        self._on_member = on_member
        # Told the tx ids of votes queued here to Relay that will never be sent
        # (the outbox emptied by a failure or by close, or overflowing), so that
        # their member mines them at once instead of after RELAY_PATIENCE.
        self._on_relays_dropped = on_relays_dropped
        self._hello = hello
        self._identity = identity
        self._members = members
        # Who answered the last handshake at this address (None before one).
        self.peer: PeerIdentity | None = None
        self.timeout = timeout
        self._conn: Connection | None = None
        self.lock = threading.Lock()
        # Blocks to Add and votes to Relay, in order.
        self._outbox: deque[Add | Transaction] = deque(maxlen=outbox_blocks)
        self._outbox_lock = threading.Lock()  # guards the outbox, the backoff and the latency
        # Notified when the outbox holds the `_lingering_for` items a drain
        # lingers for (0: none lingers), and at close.
        self._gathered = threading.Condition(self._outbox_lock)
        self._lingering_for = 0
        self._last_answer = float("-inf")  # time.monotonic() of the last exchange's end
        # Our account (Announce) is due here: sent after the queued blocks, once
        # however many changes came meanwhile (the latest is read when sent).
        self._announce_due = False
        self._draining = False
        self._backoff = Backoff(backoff, max_backoff)
        # Smoothed round trip of the requests answered here (s), None before one:
        # polls list the fastest peers first, so a slow one is the last holder asked.
        self._latency: float | None = None
        self._closed = False

    @property
    def proven(self) -> bool:
        """Whether the last request here succeeded (a votechain peer of our network
        answered); work for an unproven address goes to the probe pool."""
        with self._outbox_lock:
            return self._backoff.proven

    @property
    def latency(self) -> float:
        """The smoothed round trip of answered requests; infinite before the first."""
        with self._outbox_lock:
            return float("inf") if self._latency is None else self._latency

    def ready(self, now: float) -> bool:
        """Whether the address may be asked at `now` (not backed off)."""
        with self._outbox_lock:
            return self._backoff.ready(now)

    def enqueue(self, item: Add | Transaction) -> bool:
        """Queue a block to add or a vote to relay; True when the caller must
        start a drain for this link."""
        with self._outbox_lock:
            if not self._backoff.ready(time.monotonic()):
                return False
            outbox = self._outbox
            overflow = outbox[0] if len(outbox) == outbox.maxlen else None
            outbox.append(item)  # a full deque drops its oldest item
            if len(outbox) == self._lingering_for:
                self._gathered.notify()
            start = not self._draining
            self._draining = True
        if isinstance(overflow, Transaction):
            self._relays_dropped([overflow])
        return start

    def linger(self, limit: int = PIPELINE_DEPTH, seconds: float = LINGER,
               busy: float = LINGER_BUSY) -> None:
        """Under load (the last exchange here ended less than `busy` s ago),
        wait up to `seconds` for `limit` items to gather in the outbox, so that
        they go out, and are decided at the other end, as one run."""
        with self._gathered:
            if time.monotonic() - self._last_answer < busy:
                self._lingering_for = limit
                self._gathered.wait_for(lambda: len(self._outbox) >= limit or self._closed,
                                        seconds)
                self._lingering_for = 0

    def announce_due(self) -> bool:
        """Mark our account due here; True when the caller must start a drain."""
        with self._outbox_lock:
            if not self._backoff.ready(time.monotonic()):
                return False
            self._announce_due = True
            if self._draining:
                return False
            self._draining = True
            return True

    def next_items(self, limit: int) -> list[Add | Transaction | bool]:
        """Up to `limit` queued blocks and votes to send, in order, then True if
        our account is due; empty (and the drain ends) when nothing is left."""
        with self._outbox_lock:
            items: list[Add | Transaction | bool] = []
            while self._outbox and len(items) < limit:
                items.append(self._outbox.popleft())
            if self._announce_due and len(items) < limit:
                self._announce_due = False
                items.append(True)
            if not items:
                self._draining = False
            return items

    def failed(self, at_least: float = 0.0) -> float:
        """Count a failure: empty the outbox, back the address off (at least
        `at_least` s); how long it is now skipped for."""
        with self._outbox_lock:
            dropped = self._empty_outbox()
            self._announce_due = False
            delay = self._backoff.failed(time.monotonic(), at_least)
        self._relays_dropped(dropped)
        return delay

    def _empty_outbox(self) -> list[Transaction]:
        """Clear the outbox (caller holds its lock); the votes it held."""
        dropped = [item for item in self._outbox if isinstance(item, Transaction)]
        self._outbox.clear()
        return dropped

    def _relays_dropped(self, txs: list[Transaction]) -> None:
        if txs and self._on_relays_dropped is not None:
            self._on_relays_dropped([tx.tx_id for tx in txs])

    def _answered(self, seconds: float) -> None:
        with self._outbox_lock:
            self._last_answer = time.monotonic()
            self._backoff.succeeded()
            self._latency = seconds if self._latency is None else (self._latency + seconds) / 2

    def request(self, msg: Message, timeout: float | None = None, *,
                deadline: float | None = None) -> Message:
        """Send `msg` and return the reply (within `timeout`, the link's own by
        default, and by `deadline` if given); raises OSError (TimeoutError and
        FetchDeadline included), RemoteProtocolError or ConnectionClosed."""
        return self.ask(msg, timeout=timeout, deadline=deadline)[0][0]

    def ask(self, *msgs: Message, timeout: float | None = None,
            deadline: float | None = None) -> list[tuple[Message, PeerIdentity]]:
        """`request` for each of `msgs`, pipelined: all are sent before the first
        reply is read (the acceptor answers each in turn, in order:
        docs/protocol.md 3), each reply with who answered it (proven by this
        connection's handshake). The timeout applies to each read.

        A failure backs the address off, except when the link is busy with
        another request or our own `deadline` (a time.monotonic() value) cut
        the wait short: FetchDeadline, which blames nobody."""
        if timeout is None:
            timeout = self.timeout
        cut = False
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchDeadline(f"the deadline passed before asking {self.address}")
            if remaining < timeout:
                timeout, cut = remaining, True
        if not self.lock.acquire(timeout=timeout):
            if cut:
                raise FetchDeadline(f"the deadline passed while {self.address} was busy")
            raise TimeoutError(f"peer {self.address} is busy")
        started = time.monotonic()
        try:
            try:
                replies = self._exchange(msgs, timeout)
            except TimeoutError as exc:
                if cut:
                    raise FetchDeadline(f"the deadline passed waiting for {self.address}") from exc
                self._count_failure(exc)
                raise
            except (OSError, RemoteProtocolError, ConnectionClosed) as exc:
                self._count_failure(exc)
                raise
            self._answered(time.monotonic() - started)
            return replies
        finally:
            self.lock.release()

    def _exchange(self, msgs: tuple[Message, ...],
                  timeout: float) -> list[tuple[Message, PeerIdentity]]:
        """The requests themselves, under `self.lock`: connect and handshake if
        need be (the whole handshake within `timeout`), send them all, read
        the replies."""
        if self._closed:
            raise ConnectionAbortedError(f"the link to {self.address} is closed")
        if self._conn is not None and self._conn.closed:
            self._conn = None  # disconnect() closed it: connect afresh
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
            conn.timeout = timeout  # this request's, not the one that opened it
            if fresh:
                self.peer = None
                # A deadline for the whole handshake: a peer that trickles its
                # Hello a byte at a time holds a thread no longer than a silent one.
                self.peer = conn.handshake(self._hello, initiator=True, timeout=timeout,
                                           identity=self._identity, members=self._members)
                if self._on_member is not None and self.peer.member and self.peer.key:
                    self._on_member(self.peer.key)
            peer = self.peer
            assert peer is not None  # set by this connection's handshake, under self.lock
            conn.send(*msgs)  # in one write
            return [(conn.recv(), peer) for _ in msgs]
        except BaseException:
            # After any failure the stream may hold half a reply: start afresh.
            conn.close()
            self._conn = None
            raise

    def _count_failure(self, exc: BaseException) -> None:
        if self._closed:
            return  # we are stopping: no one failed
        was_proven = self.proven
        delay = self.failed()
        # A peer that answered before and stops is news; an address that never
        # answered (junk from the tracker) failing again is not, at any length.
        level = logging.INFO if was_proven else logging.DEBUG
        log.log(level, "peer %s:%d did not answer (%s): skipped for %g s",
                *self.address, exc, delay)

    @property
    def busy(self) -> bool:
        """Whether a request or a drain is using the link now."""
        with self._outbox_lock:
            return self._draining or self.lock.locked()

    def disconnect(self) -> None:
        """Close the connection, not the link: the next request connects afresh.
        For a peer that misbehaved, so that what its connection holds (a read
        buffer as large as its largest frame) is not kept while it is skipped."""
        conn = self._conn
        if conn is not None:
            conn.close()  # thread-safe; a request in flight on it fails

    def close(self) -> None:
        """Close the connection without taking the lock: a request in flight to a
        stalled peer is woken at once instead of holding stop() for its timeout.
        (Waiting for the lock would wait out a request still connecting, which
        stores its connection only once connected; request() checks `_closed`
        again after storing it, and closes it itself.)"""
        self._closed = True  # no new connection from here on
        with self._outbox_lock:
            dropped = self._empty_outbox()
            self._backoff.until = float("inf")  # closed for good: queue nothing more
            self._gathered.notify_all()  # a drain lingering here sends nothing more
        self._relays_dropped(dropped)
        conn = self._conn
        if conn is not None:
            conn.close()  # thread-safe and idempotent; wakes a blocked recv


class Outbound:
    """This node's side of every other peer: a PeerLink each, made on first use,
    and the network threads that send blocks and ask questions through them.
    Nothing here waits for a slow peer while holding a lock of the node's.

    Three bounded pools (config.py says why their sizes): broadcasts to proven
    peers, polls of proven peers, and probes (either, to an address not proven
    yet or failing). An address in backoff gets neither broadcasts nor polls."""

    def __init__(self, hello: Hello, identity: LocalIdentity, members: Members | None,
                 config: NodeConfig, *, announcement: Callable[[], Announce] | None = None,
                 on_report: OnReport | None = None,
                 on_relay_failed: Callable[[list[bytes]], None] | None = None) -> None:
        self._hello = hello
        # Our account for `announce`, read when it is sent; and who hears the
        # accounts and acknowledgements peers send back (both for finality).
        self._announcement = announcement
        self._on_report = on_report
        self._on_relay_failed = on_relay_failed
        self._identity = identity
        self._members = members
        self._config = config
        self._links: dict[Address, PeerLink] = {}
        # When each member was last told our account by a block or an answer
        # (`told`), so that `announce` need not tell it again at once.
        self._told: dict[bytes, float] = {}
        # Every member key a link has proven since we started (`members_reached`).
        self._reached: set[bytes] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._sends = ThreadPoolExecutor(config.broadcast_threads,
                                         thread_name_prefix="votechain-send")
        self._polls = ThreadPoolExecutor(config.poll_threads,
                                         thread_name_prefix="votechain-poll")
        self._probes = ThreadPoolExecutor(config.probe_threads,
                                          thread_name_prefix="votechain-probe")

    def link(self, address: Address) -> PeerLink:
        with self._lock:
            link = self._links.get(address)
            if link is None:
                config = self._config
                link = self._links[address] = PeerLink(
                    address, self._hello, identity=self._identity, members=self._members,
                    timeout=config.peer_timeout, outbox_blocks=config.outbox_blocks,
                    backoff=config.peer_backoff, max_backoff=config.max_peer_backoff,
                    on_relays_dropped=self._on_relay_failed, on_member=self._member_proven)
                if self._closed:
                    link.close()  # close() closed the others already: refuse requests
            return link

    def broadcast(self, block: Block, peers: Iterable[Address], locked: int = 0) -> None:
        """Send `block` (with our locked height) to each of `peers` not backed
        off, each in its own thread with a bounded timeout; returns without
        waiting for them."""
        add = Add(block, locked)
        for address in dict.fromkeys(peers):
            link = self.link(address)
            if link.enqueue(add):
                pool = self._sends if link.proven else self._probes
                try:
                    pool.submit(self._drain, link)
                except RuntimeError:  # the executor is shut down: we are stopping
                    return

    def member_keys(self) -> frozenset[bytes]:
        """The member keys proven by the links that answer now (relaying's reach)."""
        with self._lock:
            links = list(self._links.values())
        now = time.monotonic()
        return frozenset(link.peer.key for link in links
                         if link.peer is not None and link.peer.member
                         and link.peer.key is not None and link.ready(now))

    def _member_proven(self, member: bytes) -> None:
        with self._lock:
            self._reached.add(member)

    def members_reached(self) -> frozenset[bytes]:
        """Every member key a link has proven since we started, answering now
        or not (relaying's start-up: core/relaying.py)."""
        with self._lock:
            return frozenset(self._reached)

    def _member_link(self, member: bytes) -> PeerLink | None:
        """The link whose peer proved key `member`, if any."""
        with self._lock:
            return next((link for link in self._links.values()
                         if link.peer is not None and link.peer.key == member), None)

    def member_address(self, member: bytes) -> Address | None:
        """Where the member with key `member` listens, if a link to it answers now."""
        link = self._member_link(member)
        return None if link is None or not link.ready(time.monotonic()) else link.address

    def relay(self, member: bytes, txs: Iterable[Transaction]) -> bool:
        """Queue `txs` for the member `member` (Relay, after the blocks queued
        for it), without waiting; False if no link answers as that member."""
        link = self._member_link(member)
        if link is None:
            return False
        start = False
        for tx in txs:
            if not link.enqueue(tx):
                # Backed off meanwhile, or a drain runs already: only the first
                # case loses the vote, and its drain reports nothing for it.
                if not link.ready(time.monotonic()):
                    return False
                continue
            start = True
        if start:
            pool = self._sends if link.proven else self._probes
            try:
                pool.submit(self._drain, link)
            except RuntimeError:  # the executor is shut down: we are stopping
                return True
        return True

    def told(self, member: bytes) -> None:
        """We have just told `member` our tip and lock another way: it answered
        our Add, or we answered its Add (AddResult carries our lock)."""
        with self._lock:
            self._told[member] = time.monotonic()

    def announce(self, peers: Iterable[Address], quiet: float = 0.0) -> bool:
        """Send our account (Announce) to each of `peers` not backed off, after
        the blocks queued for it; returns without waiting. A member told our
        account another way within the last `quiet` seconds (`told`) is skipped
        this time: under load the leader's blocks and their answers carry the
        locks both ways, and announcing on top of them doubled the messages
        between the leader and each member. Whether any was skipped (the
        caller then announces again later: the last change before the load
        stops still goes out)."""
        if self._announcement is None:
            return False
        now = time.monotonic()
        with self._lock:
            recent = {key for key, at in self._told.items() if now - at < quiet}
        skipped = False
        for address in dict.fromkeys(peers):
            link = self.link(address)
            peer = link.peer
            if peer is not None and peer.key in recent:
                skipped = True
                continue
            if link.announce_due():
                pool = self._sends if link.proven else self._probes
                try:
                    pool.submit(self._drain, link)
                except RuntimeError:  # the executor is shut down: we are stopping
                    return False
        return skipped

    def _drain(self, link: PeerLink) -> None:
        """Send `link`'s queued blocks and votes in order, then our account if
        due, until nothing is left (a failed send empties it: PeerLink.ask backs
        the address off). What is queued goes out pipelined, up to
        PIPELINE_DEPTH requests before the first reply is read (PeerLink.ask):
        under load a follower's answer took 2-3 ms, and blocks queued behind
        each round trip. Under load it lingers first (PeerLink.linger), so that
        the blocks go out in runs. The replies are reports for finality: a peer that
        added or knows our block holds it; an Announce answers with the
        peer's own."""
        while True:
            link.linger()
            items = link.next_items(PIPELINE_DEPTH)
            if not items:
                return
            msgs: list[Add | Relay | Announce] = []
            for item in items:
                if isinstance(item, Add):
                    msgs.append(item)
                elif isinstance(item, Transaction):
                    msgs.append(Relay(item))
                elif (account := self._account()) is not None:
                    msgs.append(account)
            if not msgs:
                continue
            try:
                answers = link.ask(*msgs)
            except (OSError, RemoteProtocolError, ConnectionClosed) as exc:
                log.debug("could not send %d requests to %s: %s", len(msgs), link.address, exc)
                for msg in msgs:
                    if isinstance(msg, Relay):
                        self._relay_failed(msg, str(exc))
                continue
            # Of a run of our blocks the peer says it holds, the last is reported
            # alone: it holds those before it too, and finality keeps each
            # member's highest agreement (core/finality.py).
            held: tuple[Add, AddResult, PeerIdentity] | None = None
            for msg, (reply, peer) in zip(msgs, answers, strict=True):
                if (isinstance(msg, Add) and isinstance(reply, AddResult)
                        and reply.status in ("added", "known")):
                    held = (msg, reply, peer)
                    continue
                if held is not None:
                    self._holds(*held)
                    held = None
                self._answered(link, msg, reply, peer)
            if held is not None:
                self._holds(*held)

    def _holds(self, msg: Add, reply: AddResult, peer: PeerIdentity) -> None:
        """The peer added or knew our block: it holds it; its lock is below it,
        on this chain."""
        if self._on_report is not None:
            block = msg.block
            self._on_report(peer, Tip(block.id, block.hash), min(reply.locked, block.id))
            if peer.member and peer.key is not None:
                self.told(peer.key)  # our Add carried our lock

    def _answered(self, link: PeerLink, msg: Add | Relay | Announce, reply: Message,
                  peer: PeerIdentity) -> None:
        if isinstance(msg, Relay):
            if not isinstance(reply, Relayed) or reply.status == "refused":
                self._relay_failed(msg, getattr(reply, "reason", type(reply).__name__))
        elif isinstance(reply, AddResult) and isinstance(msg, Add):
            if reply.status == "rejected":
                log.warning("peer %s rejected our block %d: %s", link.address,
                            msg.block.id, reply.reason)
        elif isinstance(reply, Announce) and self._on_report is not None:
            self._on_report(peer, Tip(reply.tip_id, reply.tip_hash), reply.locked)

    def _relay_failed(self, msg: Relay, why: str) -> None:
        log.debug("relay of vote %s failed: %s", msg.transaction.tx_id.hex()[:16], why)
        if self._on_relay_failed is not None:
            self._on_relay_failed([msg.transaction.tx_id])

    def _account(self) -> Announce | None:
        return None if self._announcement is None else self._announcement()

    def ask_all(self, peers: Iterable[Address],
                msg: Message) -> list[tuple[Address, Message, PeerIdentity]]:
        """Ask every peer not backed off, all at once, and wait at most
        config.poll_deadline in all, however many are listed; the replies that
        came, with who sent each (as its handshake proved), fastest peer first
        (by each link's smoothed round trip, this one's included): the order
        in which a round asks the holders of a tip for its branch."""
        now = time.monotonic()
        deadline = now + self._config.poll_deadline
        listed = dict.fromkeys(peers)
        self._forget_unlisted(listed)
        asked: dict[Future[list[tuple[Message, PeerIdentity]]], PeerLink] = {}
        for address in listed:
            link = self.link(address)
            if not link.ready(now):
                continue
            pool = self._polls if link.proven else self._probes
            try:
                asked[pool.submit(link.ask, msg)] = link
            except RuntimeError:  # the executor is shut down: we are stopping
                break
        replies = []
        try:
            for future in as_completed(asked, timeout=max(0.0, deadline - time.monotonic())):
                link = asked[future]
                try:
                    [(reply, peer)] = future.result()
                # A silent, closed or misbehaving peer is no answer; a cancelled
                # request means we are stopping. Anything else is our bug and
                # propagates to the resolver, which logs it loudly.
                except (OSError, RemoteProtocolError, ConnectionClosed, CancelledError) as exc:
                    log.debug("no answer from %s: %s", link.address, exc)
                    continue
                replies.append((link, reply, peer))
        except TimeoutError:
            late = sum(1 for future in asked if not future.done())
            log.debug("%d of %d peers did not answer within the round's %g s",
                      late, len(asked), self._config.poll_deadline)
        finally:
            for future in asked:
                future.cancel()  # still queued behind slow probes: never started
        replies.sort(key=lambda r: r[0].latency)
        return [(link.address, reply, peer) for link, reply, peer in replies]

    def _forget_unlisted(self, listed: dict[Address, None]) -> None:
        """Drop the idle links of addresses no longer listed, once there are more
        than SPARE_LINKS of them (see SPARE_LINKS)."""
        with self._lock:
            if len(self._links) <= len(listed) + SPARE_LINKS:
                return
            gone = [link for address, link in self._links.items()
                    if address not in listed and not link.busy]
            for link in gone:
                del self._links[link.address]
        for link in gone:
            link.close()
        log.info("forgot %d peer addresses no longer listed", len(gone))

    def misbehaved(self, address: Address, reason: str) -> None:
        """`address` sent invalid data: skip it for config.misbehaviour_backoff
        (neither polled, so its tip does not count, nor fetched from), and log it."""
        link = self.link(address)
        delay = link.failed(at_least=self._config.misbehaviour_backoff)
        link.disconnect()
        log.warning("peer %s:%d sent invalid data (%s): skipped for %g s", *address, reason,
                    delay)

    def close(self) -> None:
        """Close every link, which wakes each request in flight (a broadcast to a
        stalled peer, a poll), so the node stops now, not after a peer timeout."""
        with self._lock:
            self._closed = True
            links = list(self._links.values())
        for link in links:
            link.close()
        for pool in (self._sends, self._polls, self._probes):
            pool.shutdown(wait=False, cancel_futures=True)

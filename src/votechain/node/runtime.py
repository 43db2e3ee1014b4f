"""Node: one votechain peer. Sockets, threads and processes around the pure core.

Threads (the seed's, made concrete):
- listener: blocks in accept() (no polling) and hands each connection to its
  own thread, which answers Hello, GetLatest, GetBlocks and Add;
- miner: takes the oldest pending vote, mines it on the current tip with the
  MinerPool, signs, appends, then broadcasts to every peer the tracker lists;
- resolver: every SYNC_INTERVAL, or at once when a block arrives that does not
  extend our tip, asks every peer for its latest block, takes the majority
  (forkchoice.py) and fetches and switches to it if our chain lacks it;
- tracker keeper: keeps the registration alive, re-registering when the
  tracker comes back.

One lock (`_lock`) guards the chain, the pending queue and the pool's
submit/abort. Holding it across submit and abort is what makes restart-on-new-
block race-free: a block appended between reading the tip and submitting the
job would otherwise have its abort erased by the submit. Everything slow (RSA
verification, mining, network requests) happens outside it.

The seed asked for a lock between the sending and the receiving thread because
one socket was shared by both; here inbound and outbound traffic use separate
connections, and each outbound connection (PeerLink) has its own lock so a
reply is never read by the wrong request.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from votechain import mining
from votechain.core import keys, voting
from votechain.core.block import TX_ID_BYTES, Block, Transaction
from votechain.core.chain import Chain, Switch
from votechain.core.forkchoice import Tip, Vote, candidates, holders
from votechain.core.rules import check_block_alone, check_difficulty
from votechain.errors import (
    ConnectionClosed,
    InvalidBlock,
    MalformedMessage,
    NodeStopping,
    RemoteProtocolError,
)
from votechain.net.connection import FRAME_DEADLINE, Connection
from votechain.net.sockets import accept_next, stop_listener, wake
from votechain.node.outbound import PEER_TIMEOUT, PeerLink, fetch_branch
from votechain.node.store import ChainStore
from votechain.protocol.wire import (
    MAX_BATCH_BLOCKS,
    PROTOCOL_VERSION,
    Add,
    AddResult,
    Blocks,
    Error,
    GetBlocks,
    GetLatest,
    Hello,
    Latest,
    Message,
)

log = logging.getLogger("votechain.peer")

# How often a node polls the majority tip even when nothing arrives, so a peer
# that missed a broadcast catches up without waiting for the next block.
SYNC_INTERVAL = 3.0
TRACKER_INTERVAL = 1.0
MIN_RESOLVE_INTERVAL = 0.05
# Inbound connections beyond this are refused: each costs a thread. When full, a
# new connection first evicts the oldest one still waiting for its Hello, so a
# flood of idle connections cannot lock honest peers out (only connections
# that completed a handshake keep their slot).
MAX_INBOUND = 256
# An inbound connection that sends nothing for this long is closed; honest peers
# reconnect on demand, and this bounds what an idle attacker can hold.
INBOUND_IDLE_TIMEOUT = 60.0
# Why 5 s: an honest peer sends its Hello the moment it connects. Until then a
# connection is nobody, and a slow-loris sending nothing (or its Hello a byte
# at a time) must give its slot and thread back quickly.
HANDSHAKE_TIMEOUT = 5.0
# Once a request's first byte is in, the whole frame must follow within this
# long (transport.FRAME_DEADLINE explains why); read at each new connection, so
# tests can shorten it.
INBOUND_FRAME_DEADLINE = FRAME_DEADLINE
# A malformed request (bad msgpack, unknown type, wrong field) is answered with
# an Error saying why, and the connection reads on, as docs/protocol.md says;
# after this many on one connection the peer is dropped, so one connection
# cannot make us write log lines without end.
MAX_BAD_REQUESTS = 8
# Threads that broadcast blocks and poll tips; a stalled peer holds one at most
# PEER_TIMEOUT.
NETWORK_THREADS = 32


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class NodeConfig:
    data_dir: Path
    tracker: tuple[str, int]
    host: str = "127.0.0.1"
    port: int = 0
    difficulty: int = 4
    workers: int | None = None
    miner: str = mining.DEFAULT_BACKEND


class Node:
    """A votechain peer; implements control.ControlHandler for its owner."""

    def __init__(self, config: NodeConfig) -> None:
        check_difficulty(config.difficulty)
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.address: tuple[str, int] = (config.host, config.port)
        self.difficulty = config.difficulty
        self.forks_resolved = 0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._resolve_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inbound: set[socket.socket] = set()
        self._links: dict[tuple[str, int], PeerLink] = {}
        self._known_peers: list[tuple[str, int]] = []
        self._self_addresses: set[tuple[str, int]] = set()
        self._pending: list[Transaction] = []
        self._started = False
        # Like Bitcoin Core's setnetworkactive: when False the node neither sends
        # nor answers blocks, so tests (and operators) can partition it and heal it.
        self.network_active = True
        self._resolving = threading.Lock()  # held by the resolver thread during a round

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        from votechain.net.control import ControlServer
        from votechain.net.tracker import TrackerClient

        self.key = keys.load_or_create(self.data_dir)
        self.store = ChainStore.open(self.data_dir, self.difficulty)
        self.chain = self._load_chain()
        self._pending = [t for t in self.store.pending() if not self.chain.block_with_tx(t.tx_id)]
        self.hello = Hello(PROTOCOL_VERSION, self.chain.genesis.hash, self.difficulty)
        self.pool = mining.MinerPool(self.config.workers, self.config.miner)
        try:
            # A backlog above MAX_INBOUND: a burst of connects waits in the kernel
            # queue instead of being dropped and retried a second later.
            self._listener = socket.create_server(
                (self.config.host, self.config.port), backlog=2 * MAX_INBOUND
            )
        except BaseException:  # e.g. the port is taken: leave no worker process behind
            self.pool.close()
            self.store.close()
            raise
        self._network = ThreadPoolExecutor(NETWORK_THREADS, thread_name_prefix="votechain-net")
        self.address = self._listener.getsockname()[:2]
        self._self_addresses = {self.address, ("127.0.0.1", self.address[1])}
        self.tracker = TrackerClient(*self.config.tracker, timeout=PEER_TIMEOUT)
        self.control = ControlServer(self, self.data_dir)
        self.control.start()
        self._started = True
        for name, target in (
            ("listener", self._accept_loop),
            ("miner", self._mine_loop),
            ("resolver", self._resolve_loop),
            ("tracker", self._tracker_loop),
        ):
            thread = threading.Thread(target=target, name=f"votechain-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("peer %s:%d started: height %d, %d pending, miner %s x%d",
                 *self.address, self.chain.height, len(self._pending), self.pool.backend,
                 self.pool.size)

    def _load_chain(self) -> Chain:
        """Reload and re-verify the stored chain; keep the valid prefix of a damaged one."""
        chain = Chain()
        bad: InvalidBlock | None = None
        stored = self.store.blocks()
        for block in stored[1:]:
            try:
                chain.append(block, difficulty=self.difficulty, now_ms=now_ms())
            except InvalidBlock as exc:
                bad = exc
                break
        if bad is not None:
            log.error("stored chain is invalid from block %d (%s); dropping it and re-syncing",
                      bad.block.id, bad)
            lost = [b for b in stored[bad.block.id :] if b.author == self.key.public_der]
            self.store.replace_from(bad.block.id, [], requeue=[b.transaction for b in lost])
        return chain

    def stop(self) -> None:
        """Unregister, stop every thread and worker, close the database. Idempotent."""
        if not self._started or self._stopping.is_set():
            return
        self._stopping.set()
        self._resolve_now.set()
        with self._changed:
            self.pool.abort()
            self._changed.notify_all()
        self.control.stop()
        stop_listener(self._listener, None)  # the accept thread is joined with the others
        self.tracker.close()
        with self._lock:
            inbound = list(self._inbound)
            links = list(self._links.values())
        for sock in inbound:
            wake(sock)
        # Closing the links wakes every request in flight (a broadcast to a stalled
        # peer, the resolver's polls), so the threads below end now, not after
        # PEER_TIMEOUT.
        for link in links:
            link.close()
        self._network.shutdown(wait=False, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout=10)
        self.pool.close()
        self.store.close()
        log.info("peer %s:%d stopped", *self.address)

    # ------------------------------------------------------------ inbound side

    def _accept_loop(self) -> None:
        # Inbound connections that have not completed their handshake, oldest
        # first (dicts keep insertion order); guarded by self._lock.
        waiting: dict[socket.socket, None] = {}
        while not self._stopping.is_set():
            accepted = accept_next(self._listener, self._stopping.is_set, self._stopping.wait, log)
            if accepted is None:
                return
            sock, _ = accepted
            with self._lock:
                if len(self._inbound) >= MAX_INBOUND:
                    if not waiting:
                        sock.close()
                        continue
                    # Shutting the oldest waiting socket down wakes its thread,
                    # which closes it and gives its slot back.
                    oldest = next(iter(waiting))
                    del waiting[oldest]
                    wake(oldest)
                self._inbound.add(sock)
                waiting[sock] = None
            thread = threading.Thread(target=self._serve, args=(sock, waiting), daemon=True,
                                      name="votechain-inbound")
            try:
                thread.start()
            except RuntimeError as exc:  # out of threads: refuse this one, keep accepting
                log.warning("cannot serve a new connection: %s", exc)
                with self._lock:
                    waiting.pop(sock, None)
                    self._inbound.discard(sock)
                sock.close()

    def _serve(self, sock: socket.socket, waiting: dict[socket.socket, None]) -> None:
        conn = Connection(sock, timeout=INBOUND_IDLE_TIMEOUT,
                          frame_deadline=INBOUND_FRAME_DEADLINE)
        bad_requests = 0
        try:
            conn.handshake(self.hello, initiator=False, timeout=HANDSHAKE_TIMEOUT)
            with self._lock:
                waiting.pop(sock, None)
            while not self._stopping.is_set():
                try:
                    msg = conn.recv()
                except MalformedMessage as exc:
                    # The bad frame was consumed whole: say why and read on, unless
                    # the framing itself is lost or this peer keeps doing it.
                    bad_requests += 1
                    if not conn.framed:
                        raise
                    if bad_requests > MAX_BAD_REQUESTS:
                        raise MalformedMessage(f"too many bad requests, the last: {exc}") from exc
                    log.warning("bad request from %s: %s", conn.peer, exc)
                    conn.send(Error(f"bad request: {exc.reason}"))
                    continue
                conn.send(self.handle(msg, conn.peer))
        except RemoteProtocolError as exc:
            log.warning("dropping connection from %s: %s", conn.peer, exc)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            with self._lock:
                waiting.pop(sock, None)
                self._inbound.discard(sock)
            conn.close()

    def handle(self, msg: Message, source: tuple[str, int]) -> Message:
        """Answer one request from another peer."""
        if not self.network_active:
            return Error("network inactive")
        if isinstance(msg, GetLatest):
            with self._lock:
                return Latest(self.chain.tip)
        if isinstance(msg, GetBlocks):
            with self._lock:
                batch = self.chain.blocks_from(msg.from_id, min(msg.limit, MAX_BATCH_BLOCKS))
            return Blocks(tuple(batch))
        if isinstance(msg, Add):
            return self.receive_block(msg.block, msg.public_key, source)
        return Error(f"unexpected {type(msg).__name__} message")

    def receive_block(self, block: Block, public_key: bytes, source: object) -> AddResult:
        """The seed's 'add a block' request: verify, then append, or resolve a fork."""
        if block.author != public_key:
            return self._reject(block, source, "author does not match the public key sent")
        with self._lock:
            if self.chain.has_hash(block.hash):
                return AddResult("known", "")
        try:
            check_block_alone(block, difficulty=self.difficulty, now_ms=now_ms())
        except InvalidBlock as exc:
            return self._reject(block, source, str(exc))
        with self._changed:
            if self.chain.has_hash(block.hash):
                return AddResult("known", "")
            tip = self.chain.tip
            if block.id == tip.id + 1 and block.prev_hash == tip.hash:
                try:
                    self.chain.append_checked(block)
                except InvalidBlock as exc:
                    return self._reject(block, source, str(exc))
                self._record_append(block)
                log.info("accepted block %d %s from %s", block.id, block.hash.hex()[:16], source)
                return AddResult("added", "")
        # Same id as one we hold, or a gap: the majority decides (in the resolver thread,
        # so this connection answers at once; it runs at most every MIN_RESOLVE_INTERVAL
        # however many such blocks arrive).
        if block.id > tip.id + 1:
            why = f"its id leaves a gap after our tip {tip.id}"
        elif block.id == tip.id + 1:
            why = f"its prev_hash {block.prev_hash.hex()[:16]} is not our tip's"
        else:
            why = f"we hold another block {block.id}"
        log.info("block %d from %s does not extend our chain (%s): resolving by majority",
                 block.id, source, why)
        self._resolve_now.set()
        return AddResult("fork", "")

    def _reject(self, block: Block, source: object, reason: str) -> AddResult:
        log.warning("rejected block %d from %s: %s", block.id, source, reason)
        return AddResult("rejected", reason)

    def _record_append(self, block: Block) -> None:
        """After the chain grew by `block` (lock held): persist, settle the pending
        queue, restart mining on the new tip, wake waiters."""
        tx_id = block.transaction.tx_id
        self.store.append(block, done=[tx_id])
        self._pending = [t for t in self._pending if t.tx_id != tx_id]
        self.pool.abort()
        self._changed.notify_all()

    # ------------------------------------------------------------------ mining

    def _mine_loop(self) -> None:
        while not self._stopping.is_set():
            with self._changed:
                while not self._pending and not self._stopping.is_set():
                    self._changed.wait()
                if self._stopping.is_set():
                    return
                tx = self._pending[0]
                tip = self.chain.tip
                template = Block(id=tip.id + 1, transaction=tx, nonce=0, prev_hash=tip.hash,
                                 hash=b"", signature=b"", author=self.key.public_der)
                self.pool.submit(template.content(), self.difficulty)
            nonce = self.pool.wait()
            if nonce is None:
                continue  # the tip moved (or we are stopping): start again on the new one
            mined = template.with_nonce(nonce)
            block = replace(mined, signature=self.key.sign(mined.hash))
            with self._changed:
                if self.chain.tip.hash != tip.hash:
                    continue
                try:
                    self.chain.append_checked(block)
                except InvalidBlock as exc:  # the vote reached the chain by another path
                    log.info("dropping mined block: %s", exc)
                    self._pending = [t for t in self._pending if t.tx_id != tx.tx_id]
                    self.store.drop_pending([tx.tx_id])
                    continue
                self._record_append(block)
            log.info("mined block %d %s (nonce %d)", block.id, block.hash.hex()[:16], nonce)
            self.broadcast(block)

    def broadcast(self, block: Block) -> None:
        """Send `block` and our public key to every other peer, each in its own
        thread with a bounded timeout; returns without waiting for them."""
        for address in self.peers():
            link = self._link(address)
            if link.enqueue(block):
                try:
                    self._network.submit(self._drain, link)
                except RuntimeError:  # the executor is shut down: we are stopping
                    return

    def _drain(self, link: PeerLink) -> None:
        """Send `link`'s queued blocks in order, until its outbox is empty."""
        while (block := link.next_block()) is not None:
            try:
                reply = link.request(Add(block, self.key.public_der))
            except (OSError, RemoteProtocolError, ConnectionClosed) as exc:
                log.info("could not send block %d to %s: %s", block.id, link.address, exc)
                link.failed()
                continue
            if isinstance(reply, AddResult) and reply.status == "rejected":
                log.warning("peer %s rejected our block %d: %s", link.address, block.id,
                            reply.reason)

    def _link(self, address: tuple[str, int]) -> PeerLink:
        with self._lock:
            link = self._links.get(address)
            if link is None:
                link = self._links[address] = PeerLink(address, self.hello)
                if self._stopping.is_set():
                    link.close()  # stop() closed the others already: refuse requests
            return link

    # ---------------------------------------------------------- tracker, peers

    def _tracker_loop(self) -> None:
        from votechain.errors import TrackerError

        while not self._stopping.is_set():
            try:
                if not self.tracker.connected:
                    self.tracker.connect()
                    self.tracker.register(self.address[1])
                    log.info("registered with tracker %s:%d", *self.config.tracker)
                    self._resolve_now.set()
                # Asking for the list doubles as the liveness check of the registration.
                nodes = self.tracker.nodes()
                with self._lock:
                    self._known_peers = [a for a in nodes if not self._is_self(a)]
            except TrackerError as exc:
                if self.tracker.connected:
                    log.warning("tracker connection lost: %s", exc)
                self.tracker.close()
            self._stopping.wait(TRACKER_INTERVAL)

    def _is_self(self, address: tuple[str, int]) -> bool:
        return address in self._self_addresses or (
            address[1] == self.address[1] and address[0] == self._tracker_local_ip()
        )

    def _tracker_local_ip(self) -> str | None:
        return self.tracker.local_ip

    def peers(self) -> list[tuple[str, int]]:
        """The other peers, fresh from the tracker (the seed asks for the list each
        time), or the last list seen if the tracker is unreachable."""
        from votechain.errors import TrackerError

        if not self.network_active:
            return []
        try:
            nodes = self.tracker.nodes()
        except TrackerError:
            with self._lock:
                return list(self._known_peers)
        others = [a for a in nodes if not self._is_self(a)]
        with self._lock:
            self._known_peers = others
        return others

    # ------------------------------------------------------- fork resolution

    def _resolve_loop(self) -> None:
        while not self._stopping.is_set():
            self._resolve_now.wait(SYNC_INTERVAL)
            self._resolve_now.clear()
            if self._stopping.is_set():
                return
            try:
                with self._resolving:
                    self.resolve()
            except Exception:  # our own bug: log it loudly, keep the node serving
                if not self._stopping.is_set():
                    log.exception("fork resolution failed")
            # However many fork blocks arrive, resolve at most this often: each round
            # polls every peer, and a flood of stale blocks must not make us spin.
            self._stopping.wait(MIN_RESOLVE_INTERVAL)

    def _ask_all(self, peers: Iterable[tuple[str, int]], msg: Message) -> list[
            tuple[tuple[str, int], Message]]:
        futures = [(a, self._network.submit(self._link(a).request, msg)) for a in peers]
        replies = []
        for address, future in futures:
            try:
                replies.append((address, future.result(timeout=PEER_TIMEOUT * 2)))
            except Exception as exc:
                log.debug("no answer from %s: %s", address, exc)
        return replies

    def resolve(self) -> Switch | None:
        """Poll every peer's latest block, take the majority (forkchoice.py) and
        switch to the best candidate that agrees with it, if we lack it."""
        peers = self.peers()
        with self._lock:
            votes = [Vote(Tip(self.chain.tip.id, self.chain.tip.hash), None)]
        for address, reply in self._ask_all(peers, GetLatest()):
            if isinstance(reply, Latest):
                votes.append(Vote(Tip(reply.block.id, reply.block.hash), address))
        ranked = candidates(votes)
        if not ranked:
            return None
        winner = ranked[-1]
        for target in ranked:
            with self._lock:
                if self.chain.has_hash(target.hash):
                    if target is winner or self.chain.has_hash(winner.hash):
                        return None  # we hold the best candidate that agrees with the majority
                    continue  # we hold it, but it is a minority fork: not good enough
            for holder in holders(votes, target):
                try:
                    branch = self._fetch_branch(holder, target)
                except (OSError, RemoteProtocolError, ConnectionClosed, InvalidBlock) as exc:
                    log.warning("could not fetch %d %s from %s: %s", target.id,
                                target.hash.hex()[:16], holder, exc)
                    continue
                if branch and (target is winner or self._contains(branch, winner)):
                    return self._adopt(branch, holder)
                break  # this holder's chain does not extend the majority: next candidate
        return None

    def _contains(self, branch: list[Block], tip: Tip) -> bool:
        """Whether our chain up to `branch`'s parting point, plus `branch`, holds `tip`."""
        if any(b.hash == tip.hash for b in branch):
            return True
        with self._lock:
            return tip.id < branch[0].id and self.chain[tip.id].hash == tip.hash

    def _fetch_branch(self, holder: tuple[str, int], winner: Tip) -> list[Block]:
        with self._lock:
            ours = self.chain.blocks()
        return fetch_branch(self._link(holder), ours, winner, difficulty=self.difficulty,
                            now_ms=now_ms())

    def _adopt(self, branch: list[Block], holder: tuple[str, int]) -> Switch | None:
        with self._changed:
            try:
                switch = self.chain.switch(branch, difficulty=self.difficulty, now_ms=now_ms(),
                                           prechecked=True)
            except InvalidBlock as exc:
                log.warning("majority branch from %s rejected: %s", holder, exc)
                return None
            if not switch.added and not switch.dropped:
                return None
            # Only our own votes go back into our queue: every dropped vote has exactly
            # one author, so it is mined again once, not once per peer that saw it.
            requeue = [b.transaction for b in switch.orphaned if b.author == self.key.public_der]
            added_tx = {b.transaction.tx_id for b in switch.added}
            self.store.replace_from(switch.fork_id + 1, switch.added, requeue=requeue,
                                    done=added_tx)
            queued = {t.tx_id for t in self._pending}
            self._pending = [t for t in requeue if t.tx_id not in queued] + self._pending
            self._pending = [t for t in self._pending if t.tx_id not in added_tx]
            self.pool.abort()
            self._changed.notify_all()
        if switch.dropped:
            self.forks_resolved += 1
            log.info("switched to the majority chain from %s at block %d: dropped %d, added %d, "
                     "re-queued %d of our votes", holder, switch.fork_id, len(switch.dropped),
                     len(switch.added), len(requeue))
        else:
            log.info("synced %d blocks from %s, height now %d", len(switch.added), holder,
                     self.chain.height)
        return switch

    # ---------------------------------------------------- application (owner)

    def submit(self, tx: Transaction) -> None:
        """Queue a transaction for mining; it survives a restart from here on."""
        with self._changed:
            if self.chain.block_with_tx(tx.tx_id) is None and all(
                    t.tx_id != tx.tx_id for t in self._pending):
                self.store.add_pending(tx)
                self._pending.append(tx)
                self._changed.notify_all()

    def submit_vote(self, category: str) -> bytes:
        tx = voting.vote_transaction(voting.validate_category(category), now_ms())
        self.submit(tx)
        return tx.tx_id

    def wait_for_tx(self, tx_id: bytes, timeout: float) -> Block | None:
        with self._changed:
            self._changed.wait_for(
                lambda: self.chain.block_with_tx(tx_id) is not None or self._stopping.is_set(),
                timeout,
            )
            block = self.chain.block_with_tx(tx_id)
            if block is None and self._stopping.is_set():
                raise NodeStopping(
                    f"the node stopped before vote {tx_id.hex()} was mined; it stays queued "
                    "and is mined when the node starts again"
                )
            return block

    def create(self, data: bytes, timeout: float = 60.0) -> Block:
        """The seed's create(): mine `data` into a block of our chain and broadcast it."""
        tx = Transaction(tx_id=secrets.token_bytes(TX_ID_BYTES), timestamp=now_ms(), data=data)
        self.submit(tx)
        block = self.wait_for_tx(tx.tx_id, timeout)
        if block is None:
            raise TimeoutError(f"transaction not mined within {timeout} s")
        return block

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                "height": self.chain.height,
                "tip": self.chain.tip.hash.hex(),
                "peers": len(self._known_peers),
                "pending": len(self._pending),
                "backend": f"{self.pool.backend} x{self.pool.size}",
                "hashrate": self.pool.hashrate,
                "forks_resolved": self.forks_resolved,
                "address": f"{self.address[0]}:{self.address[1]}",
            }

    def tally(self) -> dict[str, int]:
        with self._lock:
            blocks = self.chain.blocks()
        return voting.tally(blocks)

    def blocks(self) -> list[Block]:
        with self._lock:
            return self.chain.blocks()

    def set_network_active(self, active: bool) -> None:
        """Switch the node's peer-to-peer traffic on or off. Switching it off waits
        for a resolution round in flight, so none fetches anything afterwards."""
        self.network_active = active
        if active:
            self._resolve_now.set()
        else:
            with self._resolving:
                pass

    def wait_until(self, predicate: Callable[[Chain], bool], timeout: float) -> bool:
        """Block until `predicate(chain)` holds (for tests and the demo)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.chain), timeout)

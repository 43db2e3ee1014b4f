"""Node: one votechain peer. The runtime around a NodeState (core/node_state.py).

Every decision (append or not, fork or not, what to mine, which branch to
follow, which votes to re-queue) is the NodeState's; this module only feeds it
inputs and carries out the effects it returns: store writes, aborting the
miner, waking waiters, broadcasting, waking the resolver, log lines.

Threads (the seed design's, made concrete; docs/design.md):
- listener (inbound.py): blocks in accept() and hands each connection to its
  own thread, which answers its requests (peer_requests.py: GetLatest,
  GetBlocks, Announce, Relay and Add; Hello is the handshake's);
- miner: asks the state whether to hand the queued votes to the member that
  mines for everyone (relaying) or what to mine (the oldest queued vote on
  the tip), mines it with the MinerPool, and while the workers search the
  next block on it, signs it and hands it back; the state appends it and says
  to broadcast it to every peer the tracker listed last (outbound.py);
- finality is no thread of its own: members' reports (pushes, their
  answers, polls, Announce) move the locked and final heights
  (core/finality.py) in whichever thread received them; each change is
  persisted and wakes the voters whose votes became final (voters.py);
- announcer: tells the peers our tip and locked height when they changed,
  at most once per announce_interval, within the network's announce_budget;
- resolver (resolver.py): every sync_interval, or at once when a block arrives
  that does not extend our tip, polls every peer's tip and follows the plan
  the state makes of the majority;
- tracker keeper (peers.py): keeps the registration alive, re-registering
  when the tracker comes back, and the peer list fresh;
- checkpointer: every CHECKPOINT_INTERVAL copies the store's WAL into its
  database file (store.py says why that is not left to the commits);
- monitor (monitor.py): each second samples the miner's progress and the committed votes
  (the live hash rate and votes/s that status and metrics report), and every
  summary_interval logs a one-line summary;
- with `metrics` set, prometheus_client's HTTP server (node/metrics.py).

One lock (`_lock`, with the Condition `_changed` on it) guards the state and
the pool's submit/abort. Holding it across submit and abort is what makes
restart-on-new-block race-free: a block appended between reading the tip and
submitting the job would otherwise have its abort erased by the submit. Store
writes happen under it too, so the store sees changes in the chain's order,
and each decision's writes are done before the next decision: that is what
lets the state's chain keep only a window of recent blocks and read the rest
from the store (core/chain.py's History contract; `settled` after each write).
Everything slow (RSA verification, mining, network requests) happens outside.

The seed design (docs/design.md) asked for a lock between the sending and the
receiving thread because one socket was shared by both; here inbound and
outbound traffic use separate connections, and each outbound connection
(PeerLink) has its own lock so a reply is never read by the wrong request.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import assert_never

from votechain import __version__, mining
from votechain.core import keys, voting
from votechain.core.block import SALT_BYTES, Block, Transaction
from votechain.core.chain import Chain, Switch
from votechain.core.discipline import INVALID_BLOCK
from votechain.core.forkchoice import Tip
from votechain.core.membership import Members
from votechain.core.node_effects import (
    AbortMining,
    AnnounceTip,
    AppendBlocks,
    Broadcast,
    DropVotes,
    Effect,
    Finalized,
    QueueVote,
    ReplaceFrom,
    Resolve,
    Restored,
    Wake,
)
from votechain.core.node_state import RECHECK_TAIL, NodeState
from votechain.core.rules import check_difficulty
from votechain.errors import DamagedStore, InvalidVote, NodeStopping
from votechain.net.connection import LocalIdentity
from votechain.net.control_server import ControlServer
from votechain.node.certificates import CertificateKeeper
from votechain.node.config import SYNC_INTERVAL, NodeConfig, now_ms
from votechain.node.datadir import DataDirLock
from votechain.node.inbound import InboundServer
from votechain.node.metrics import NodeMetrics, Snapshot
from votechain.node.miner import Miner
from votechain.node.monitor import Monitor
from votechain.node.outbound import Outbound
from votechain.node.peer_requests import PeerRequests
from votechain.node.peers import PeerDirectory
from votechain.node.resolver import Resolver
from votechain.node.store import CHECKPOINT_INTERVAL, ChainStore
from votechain.node.voters import FinalWaiters
from votechain.protocol.control import NodeStatus
from votechain.protocol.peer import PROTOCOL_VERSION, Hello

# NodeConfig and now_ms are re-exported: callers import them from here, and
# SYNC_INTERVAL for tests that wait a few rounds of resolution.
__all__ = ["SYNC_INTERVAL", "Node", "NodeConfig", "now_ms"]

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]



class Node:
    """A votechain peer; implements control_server.ControlHandler for its owner."""

    def __init__(self, config: NodeConfig) -> None:
        check_difficulty(config.difficulty)
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.address: Address = (config.host, config.port)
        self.difficulty = config.difficulty
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # What the idle miner waits on, on the same lock: notified only when it
        # may have work (a vote queued, votes re-queued by a switch, a relay
        # that failed), not at every block appended, whose wake-up (a futex
        # and a GIL hand-off for nothing) cost followers ~15% of their time.
        self._work = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._resolve_now = threading.Event()
        self._announce_due = threading.Event()
        self._resolving = threading.Lock()  # held by the resolver thread during a round
        self._threads: list[threading.Thread] = []
        self._started = False
        # Like Bitcoin Core's setnetworkactive: when False the node neither sends
        # nor answers blocks, so tests (and operators) can partition it and heal it.
        self.network_active = True
        self.metrics: NodeMetrics | None = None
        # Voters waiting for their vote to be final (`wait_for_vote`).
        self._voters = FinalWaiters(self._lock, self._final_block, self._stopping)
        self._started_at = time.monotonic()

    @property
    def chain(self) -> Chain:
        """The state's chain; read it under `_lock` (or through `blocks()`)."""
        return self.state.chain

    @property
    def forks_resolved(self) -> int:
        return self.state.forks_resolved

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        # The data directory's lock before anything else (the key, the store, the
        # control files): a second node on it stops here, having changed nothing.
        self._dir_lock = DataDirLock.acquire(self.data_dir)
        try:
            self._start_locked()
        except BaseException:
            self._dir_lock.release()
            raise

    def _start_locked(self) -> None:
        membership = self.config.membership
        genesis = None
        self.members: Members | None = None
        is_member = True
        certificate = b""
        if membership is None:  # an open network (NodeConfig.membership says when)
            self.key = keys.load_or_create(self.data_dir)
        else:
            self.key = membership.key
            self.members = membership.members
            self.difficulty = membership.network.difficulty
            genesis = membership.network.genesis
            is_member = membership.certificate is not None
            if membership.certificate is not None:
                certificate = membership.certificate.encode()
        self.seats = membership.network.seats if membership is not None else self.config.seats
        self.store = ChainStore.open(self.data_dir, self.difficulty, genesis)  # quick_check
        self.certificates = CertificateKeeper(self.members, self.store)
        started = time.perf_counter()
        self.state, restored, whole = self._restore(is_member)
        log.info("stored chain re-checked to height %d in %.0f ms (%s)", self.state.chain.height,
                 (time.perf_counter() - started) * 1000,
                 "every block" if whole else f"the last {self.state.chain.in_memory} blocks")
        if restored.bad is not None:
            log.error("stored chain is invalid from block %d (%s); dropping it and re-syncing",
                      restored.bad.block.id, restored.bad)
            # The dropped rows may have been edited, so the votes the drop
            # subtracts from the kept tally are not to be trusted: recount. The
            # tally is marked stale first, so a crash in between recounts at open.
            self.store.forget_tally()
        with self._changed:
            self._carry_out(restored.effects)
        if restored.bad is not None:
            self.store.rebuild_tally()
        self.state.restore_finality(*self.store.finality)
        # Members of a network with seats relay votes to one miner (NodeState).
        self.state.relaying = self.seats > 0 and is_member and self.config.relay
        self.state.relays.patience_ms = round(self.config.relay_patience * 1000)
        self.state.relays.max_patience_ms = round(self.config.relay_max_patience * 1000)
        self._final_recorded = self.state.finality.final
        # Every block above the recorded height was just checked with every rule.
        if self.store.verified_height < self.state.chain.height:
            self.store.mark_verified(self.state.chain.height)
        if whole:  # membership too, of every block, against the revocations loaded now
            self.store.mark_revocations(self._revocations_serial())
        # From here on the chain keeps only its latest blocks in memory.
        self.state.chain.attach(self.store)
        self.hello = Hello(PROTOCOL_VERSION, self.chain.genesis.hash, self.difficulty)
        self.identity = LocalIdentity(self.key, certificate)
        self.pool = mining.MinerPool(self.config.workers, self.config.miner)
        # The rates' first samples: 0 per worker, and the votes the store holds.
        self.monitor = Monitor(lambda: self.state, self.pool, self.store,
                               summary_interval=self.config.summary_interval,
                               stopping=self._stopping)
        if self.config.metrics is not None:
            self.metrics = NodeMetrics(self._snapshot)
        failed = None if self.metrics is None else self.metrics.handshake_failures.inc
        # What we answer other peers (peer_requests.py). Inbound and outbound come
        # after it, so it reaches them through the node when it is called.
        self.requests = PeerRequests(
            self.state, self._changed, self._carry_out, self.certificates,
            network=None if membership is None else membership.network.name,
            active=lambda: self.network_active, store_damaged=self.store_damaged,
            misbehaved=lambda *offence: self.inbound.misbehaved(*offence),
            told=lambda member: self.outbound.told(member), metrics=self.metrics)
        try:
            self.inbound = InboundServer(
                self.config, self.hello, self.requests.handle_all, self._stopping,
                identity=self.identity,
                members=self.members, on_handshake_failure=failed)
        except BaseException:  # e.g. the port is taken: leave no worker process behind
            self.pool.close()
            self.store.close()
            raise
        self.address = self.inbound.address
        self.outbound = Outbound(self.hello, self.identity, self.members, self.config,
                                 announcement=self.requests.announcement,
                                 on_report=self.requests.reported,
                                 on_relay_failed=self._relay_failed)
        self.resolver = Resolver(
            self.state, self._changed, self.outbound, self.peers, self._carry_out, self.config,
            stopping=self._stopping, wake=self._resolve_now, round_lock=self._resolving,
            on_misbehaviour=self._fetched_invalid)
        self.miner = Miner(self.state, self._changed, self._work, self.pool, self.key,
                           self.difficulty,
                           carry_out=self._carry_out,
                           carry_out_unlocked=self._carry_out_unlocked,
                           reachable=self._reachable,
                           reached=self.outbound.members_reached,
                           relay=self._relay,
                           stopping=self._stopping, metrics=self.metrics)
        self.directory = PeerDirectory(self.config, self.address, stopping=self._stopping,
                                       changed=self._ask_round)
        self.tracker = self.directory.tracker
        self.control = ControlServer(self, self.data_dir)
        try:
            self.control.start()
            if self.metrics is not None and self.config.metrics is not None:
                try:
                    self.metrics.serve(*self.config.metrics)
                except BaseException:  # e.g. the metrics port is taken
                    self.control.stop()
                    raise
        except BaseException:  # e.g. a socket path this system cannot bind: the same
            self.inbound.close_listener()
            self.pool.close()
            self.store.close()
            raise
        self._started = True
        self._started_at = time.monotonic()
        for name, target in (
            ("listener", self.inbound.run),
            ("miner", self.miner.run),
            ("resolver", self.resolver.run),
            ("tracker", self.directory.run),
            ("monitor", lambda: self.monitor.run(self.inbound, self.directory)),
            ("announcer", self._announce_loop),
            ("checkpointer", self._checkpoint_loop),
        ):
            thread = threading.Thread(target=target, name=f"votechain-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        role = ("open network" if membership is None else
                f"network {membership.network.name!r} as "
                + (repr(membership.certificate.label) if membership.certificate else "observer"))
        log.info("peer %s:%d started (%s): height %d, %d pending, miner %s x%d",
                 *self.address, role, self.chain.height, self.state.pending_count,
                 self.pool.backend, self.pool.size)
        if self.seats == 0 and is_member:
            log.warning("the network file names no seats: a vote is reported final once it "
                        "is in this node's chain, not once a majority of the members keep it "
                        "(make the network with `votechain network create --seats N`)")

    def stop(self) -> None:
        """Unregister, stop every thread and worker, close the database. Idempotent."""
        if not self._started or self._stopping.is_set():
            return
        self._stopping.set()
        self._resolve_now.set()
        self._announce_due.set()
        with self._changed:
            self.pool.abort()
            self._changed.notify_all()
            self._work.notify_all()
            self._voters.wake_all()
        self.control.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.inbound.stop()  # the accept thread is joined with the others
        self.directory.close()
        # Closing the links wakes every request in flight (a broadcast to a stalled
        # peer, the resolver's polls), so the threads below end now, not after
        # peer_timeout.
        self.outbound.close()
        for thread in self._threads:
            thread.join(timeout=10)
        self.pool.close()
        self.store.close()
        self._dir_lock.release()  # last: the directory is free once nothing writes to it
        log.info("peer %s:%d stopped", *self.address)

    def _carry_out(self, effects: Iterable[Effect]) -> None:
        """Do what the state decided, in order; the caller holds `_lock`. A
        Broadcast waits for `_carry_out_unlocked`: it asks the tracker for the
        peers, which must never happen under the lock."""
        for effect in effects:
            match effect:  # the receive path's three first: each case is an isinstance
                case AppendBlocks(blocks=blocks, done=done):
                    self.certificates.keep(blocks)
                    self.store.append(*blocks, done=done)
                    self.state.chain.settled()
                    if self._voters and not self.state.finality.counting:
                        self._voters.settled(blocks)
                case AbortMining():
                    self.pool.abort()
                case Wake():
                    self._changed.notify_all()
                case Resolve(behind=pushed):
                    if pushed is None:
                        self.resolver.ask_round()
                    else:  # a gap: its author, who holds what we lack, is asked first
                        self.resolver.catch_up(pushed.author, Tip(pushed.id, pushed.hash))
                case QueueVote(tx=tx, persist=persist):
                    if persist:
                        self.store.add_pending(tx)
                    self._work.notify()
                case ReplaceFrom(first_id=first_id, blocks=blocks, requeue=requeue, done=done):
                    self.certificates.keep(blocks)
                    self.store.replace_from(first_id, blocks, requeue=requeue, done=done)
                    self.state.chain.settled()
                    self._work.notify()  # votes re-queued, or a new leader
                    if self._voters and not self.state.finality.counting:
                        self._voters.settled(blocks)
                case DropVotes(tx_ids=tx_ids):
                    self.store.drop_pending(tx_ids)
                case Finalized(locked=locked, final=final):
                    before, self._final_recorded = self._final_recorded, final
                    # Persisted before any peer hears of the lock (AnnounceTip
                    # comes after): peers count it, so it must outlive a crash.
                    self.store.mark_finality(locked, final)
                    if self._voters and final > before:
                        chain = self.state.chain
                        self._voters.settled(chain.blocks_from(before + 1, final - before))
                case AnnounceTip():
                    self._announce_due.set()  # the announcer thread sends it
                case Broadcast():
                    pass
                case _:
                    assert_never(effect)

    def _restore(self, is_member: bool) -> tuple[NodeState, Restored, bool]:
        """The state from the store, and whether every stored block was read.

        Usually only the tail is: the blocks above the height the store says
        it verified, and the last RECHECK_TAIL below it, each checked with
        every rule (NodeState.resume; the rest is read from the store when
        needed, each read re-hashed and linked). Every block is read and
        checked (NodeState.restore) when the tail fails, when the table has a
        gap (rows != highest id + 1: an index count), and when the revocation
        list differs from the one the chain was last checked against (a
        revocation from height H invalidates blocks however old)."""
        key, members, now = self.key.public_der, self.members, now_ms()
        verified = self.store.verified_height
        count, top = self.store.shape()
        anchor = min(verified, top - RECHECK_TAIL)
        if (anchor > 0 and count == top + 1
                and self.store.revocations_serial == self._revocations_serial()):
            state = NodeState.resume(key, self.difficulty, self.store, self.store.rows(anchor),
                                     self.store.pending(), now_ms=now, members=members,
                                     member=is_member, seats=self.seats)
            if state is not None:
                return state, Restored(), False
        state, restored = NodeState.restore(
            key, self.difficulty, self.store.rows(), self.store.pending(), now_ms=now,
            verified_height=verified, members=members, member=is_member, seats=self.seats)
        return state, restored, True

    def store_damaged(self, exc: DamagedStore) -> None:
        """A block read back from the store failed its checks (edited or damaged
        since it was stored): never serve it, and lower the store's verified
        height below it, so the next start checks every block from there and
        cuts the chain at the damage (NodeState.restore), re-syncing the rest."""
        log.error("%s", exc)
        self.store.mark_verified(min(self.store.verified_height, exc.block_id - 1))

    def _revocations_serial(self) -> int:
        """The serial of the revocation list this node runs with (-1: none)."""
        revocations = self.members.revocations if self.members is not None else None
        return -1 if revocations is None else revocations.serial

    def _fetched_invalid(self, address: Address, reason: str) -> None:
        """A peer sent invalid data while we fetched a branch from it: back its
        address off (we neither poll nor fetch from it for a while) and score it
        like an invalid block offered with Add, by its member key if its
        handshake proved one (core/discipline.py), so its inbound connections
        are refused once it is banned."""
        self.outbound.misbehaved(address, reason)
        self.inbound.misbehaved(address, self.outbound.link(address).peer, INVALID_BLOCK, reason)

    def _carry_out_unlocked(self, effects: Iterable[Effect]) -> None:
        """The effects that wait until `_lock` is released (see `_carry_out`)."""
        for effect in effects:
            if isinstance(effect, Broadcast):
                self.broadcast(effect.block)

    # ------------------------------------------------------------- voters

    def _final_block(self, tx_id: bytes) -> tuple[Block | None, bool]:
        """The block holding `tx_id` in our chain, and whether it is final; under `_lock`."""
        block = self.chain.block_with_tx(tx_id)
        final = self.state.finality.final_at(self.chain.height)
        return block, block is not None and block.id <= final

    def wait_for_vote(self, tx_id: bytes, timeout: float) -> tuple[Block | None, bool]:
        """Wait until the vote `tx_id` is final (a majority of the members keep
        its block: core/finality.py), at most `timeout` s: its block (None if
        not in our chain yet) and whether it is final (voters.py)."""
        return self._voters.wait(tx_id, timeout)

    # ------------------------------------------------------------------ mining

    def _announce_loop(self) -> None:
        """The announcer thread: our account (tip and lock) to every peer when it
        changed, at most once per announce_interval (stretched so that about
        announce_budget requests a second go out network-wide, config.py),
        however many changes came meanwhile. Under load the blocks and their answers carry the locks
        (Add, AddResult), so a member that exchanged one with us within the
        interval is skipped until it has not (Outbound.announce); this covers
        the rest (the last vote of a burst, the members that hear of a block
        only from its author's other peers)."""
        while not self._stopping.is_set():
            self._announce_due.wait()
            self._announce_due.clear()
            if self._stopping.is_set():
                return
            peers = self.directory.known if self.network_active else []
            config = self.config
            if self.outbound.announce(peers, quiet=config.announce_interval):
                self._announce_due.set()  # those skipped: again next turn
            others = len(peers)
            self._stopping.wait(max(config.announce_interval,
                                    (others + 1) * others / config.announce_budget))

    def _ask_round(self) -> None:
        self.resolver.ask_round()

    def _checkpoint_loop(self) -> None:
        while not self._stopping.wait(CHECKPOINT_INTERVAL):
            try:
                self.store.checkpoint()
            except sqlite3.Error as exc:  # busy or closing: the next turn tries again
                log.debug("WAL checkpoint skipped: %s", exc)

    def _reachable(self) -> frozenset[bytes]:
        """The member keys we can hand votes to now (relaying)."""
        return self.outbound.member_keys() if self.network_active else frozenset()

    def _relay(self, leader: bytes, txs: tuple[Transaction, ...]) -> None:
        """Hand `txs` to the member `leader` (without waiting); any it does not take
        are mined here (`_relay_failed`)."""
        if not self.outbound.relay(leader, txs):
            self._relay_failed([tx.tx_id for tx in txs])

    def _relay_failed(self, tx_ids: list[bytes]) -> None:
        with self._changed:
            self.state.relay_failed(tx_ids, now_ms())
            self._work.notify()

    def broadcast(self, block: Block) -> None:
        """Send `block` and our public key to every other peer, each in its own
        thread with a bounded timeout; returns without waiting for them."""
        # The tracker keeper's list (refreshed every tracker_interval), not a
        # tracker round trip per block: that was a third of the miner's time.
        self.outbound.broadcast(block, self.directory.known if self.network_active else [],
                                self.state.finality.locked)

    # ------------------------------------------------------------------- peers

    def peers(self) -> list[Address]:
        """The other peers, fresh from the tracker (peers.py); none while the
        network is switched off."""
        return self.directory.fresh() if self.network_active else []

    # ------------------------------------------------------- fork resolution

    def resolve(self) -> Switch | None:
        """One resolution round now (resolver.py); the switch made, if any."""
        return self.resolver.resolve()

    def _fetch_branch(self, holder: Address, winner: Tip) -> list[Block]:
        return self.resolver.fetch(holder, winner)

    def _adopt(self, branch: list[Block], holder: Address) -> Switch | None:
        return self.resolver.adopt(branch, holder)

    # ---------------------------------------------------- application (owner)

    def submit(self, tx: Transaction) -> None:
        """Queue a transaction for mining; it survives a restart from here on.
        An observer refuses (InvalidVote: the control channel's "refused")."""
        with self._changed:
            decision = self.state.vote_submitted(tx)
            self._carry_out(decision.effects)
        if not decision.queued and not self.state.member:
            raise InvalidVote(decision.reason)

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
        """The seed design's create() (docs/design.md): mine `data` into a block of
        our chain and broadcast it."""
        tx = Transaction(timestamp=now_ms(), data=data, salt=secrets.token_bytes(SALT_BYTES))
        self.submit(tx)
        block = self.wait_for_tx(tx.tx_id, timeout)
        if block is None:
            raise TimeoutError(f"transaction not mined within {timeout} s")
        return block

    def status(self) -> NodeStatus:
        membership = self.config.membership
        with self._lock:
            height, tip = self.chain.height, self.chain.tip.hash.hex()
            pending, forks = self.state.pending_count, self.state.forks_resolved
            finality = self.state.finality
            final, locked = finality.final_at(height), finality.locked
        return NodeStatus(
            height=height,
            tip=tip,
            peers=len(self.directory.known),
            pending=pending,
            backend=f"{self.pool.backend} x{self.pool.size}",
            hashrate=self.pool.hashrate,
            forks_resolved=forks,
            address=f"{self.address[0]}:{self.address[1]}",
            network="" if membership is None else membership.network.name,
            difficulty=self.difficulty,
            version=__version__,
            tracker="{}:{}".format(*self.config.tracker),
            tracker_up=bool(self.directory.up),
            uptime=round(time.monotonic() - self._started_at, 3),
            votes_per_second=self.monitor.vote_rate.total,
            live_hashrate=self.monitor.hash_rate.total,
            final_height=final,
            locked_height=locked,
            seats=self.seats,
        )

    # ------------------------------------------------------------- monitoring

    def _snapshot(self) -> Snapshot:
        return self.monitor.snapshot(self.inbound, self.directory)

    def tally(self, recount: bool = False) -> dict[str, int]:
        """Votes per category: the store's kept tally (at once, at any height), or
        with `recount` a walk over the chain (voting.tally), as the original
        design counts. The two agree: tests/test_tally.py."""
        if not recount:
            return self.store.tally()
        # A snapshot of the store, walked without the node's lock: the store
        # holds exactly the chain between two decisions (core/chain.py).
        return voting.tally(self.store.walk())

    def blocks(self) -> list[Block]:
        with self._lock:
            return self.chain.blocks()

    def set_network_active(self, active: bool) -> None:
        """Switch the node's peer-to-peer traffic on or off. Switching it off waits
        for a resolution round in flight, so none fetches anything afterwards."""
        self.network_active = active
        if active:
            self.resolver.ask_round()
        else:
            with self._resolving:
                pass

    def wait_until(self, predicate: Callable[[Chain], bool], timeout: float) -> bool:
        """Block until `predicate(chain)` holds (for tests and the demo)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.chain), timeout)


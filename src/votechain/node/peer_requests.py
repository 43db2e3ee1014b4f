"""PeerRequests: what a node answers another peer (docs/protocol.md section 2).

The inbound server (inbound.py) reads a connection's requests and hands them
here with who the handshake proved; this module asks the NodeState
(core/node_state.py) and carries out what it decides, with the node's
`carry_out`, under the node's one lock (runtime.py says why one). Kept apart
from runtime.py so the node reads as its threads and their lifecycle, and
this as the answer to each request: Hello is the handshake's (connection.py),
GetLatest, GetBlocks, Announce, Relay and Add are here.

Finality's inputs arrive here too: a member's Announce, and each run of
blocks it pushes, say which tip it holds and what it had locked
(core/finality.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import cast

from votechain.core.block import Block, Transaction
from votechain.core.discipline import Offence, block_offence
from votechain.core.forkchoice import Tip
from votechain.core.node_effects import BlockDecision, Effect, Resolve
from votechain.core.node_state import NodeState
from votechain.errors import DamagedStore
from votechain.net.connection import PeerIdentity
from votechain.node.certificates import CertificateKeeper
from votechain.node.config import now_ms
from votechain.node.metrics import NodeMetrics
from votechain.protocol.peer import (
    MAX_BATCH_BLOCKS,
    Add,
    AddResult,
    Announce,
    Blocks,
    Error,
    GetBlocks,
    GetLatest,
    Latest,
    Message,
    Relay,
    Relayed,
)

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]


class PeerRequests:
    """Answers the requests of other peers for one node (its state, its lock)."""

    def __init__(
        self,
        state: NodeState,
        changed: threading.Condition,
        carry_out: Callable[[Iterable[Effect]], None],
        certificates: CertificateKeeper,
        *,
        network: str | None,
        active: Callable[[], bool],
        store_damaged: Callable[[DamagedStore], None],
        misbehaved: Callable[[Address, PeerIdentity, Offence, str], object],
        told: Callable[[bytes], None],
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._state = state
        self._changed = changed  # on the node's lock: `with` it to decide
        self._carry_out = carry_out  # the node's; called holding the lock
        self._certificates = certificates
        # Who may add blocks, for the refusal's reason (None: an open network).
        self._network = network
        self._active = active  # Node.network_active: off, every request gets an Error
        self._store_damaged = store_damaged
        self._misbehaved = misbehaved  # InboundServer.misbehaved: scored, banned, dropped
        self._told = told  # Outbound.told: our lock went out with an answer
        self._metrics = metrics

    def handle_all(self, msgs: Sequence[Message], source: Address,
                   peer: PeerIdentity) -> list[Message]:
        """Answer requests one connection had ready together (node/inbound.py),
        one reply each, in order. A run of Adds is decided as one
        (`receive_blocks`): under load the leader pipelines its blocks to
        every member, and each block cost a member a lock round, a store
        transaction, a finality write and a wake-up of its own."""
        replies: list[Message] = []
        start = 0
        while start < len(msgs):
            end = start
            while end < len(msgs) and isinstance(msgs[end], Add):
                end += 1
            if end - start > 1 and self._active():
                replies.extend(self._added(cast("Sequence[Add]", msgs[start:end]), source, peer))
                start = end
            else:
                replies.append(self.handle(msgs[start], source, peer))
                start += 1
        return replies

    def handle(self, msg: Message, source: Address, peer: PeerIdentity) -> Message:
        """Answer one request from another peer (`peer`: who its handshake proved)."""
        if not self._active():
            return Error("network inactive")
        if isinstance(msg, GetLatest):
            with self._changed:
                return Latest(self._state.chain.tip)
        if isinstance(msg, Relay):
            return self._relayed_to_us(msg.transaction, peer)
        if isinstance(msg, Announce):
            if peer.member and peer.key is not None:
                self.reported(peer, Tip(msg.tip_id, msg.tip_hash), msg.locked)
            return self.announcement()
        if isinstance(msg, GetBlocks):
            try:
                with self._changed:
                    batch = self._state.chain.blocks_from(msg.from_id,
                                                          min(msg.limit, MAX_BATCH_BLOCKS))
            except DamagedStore as exc:
                self._store_damaged(exc)
                return Error(f"this node cannot serve block {exc.block_id}: its store is damaged")
            return Blocks(tuple(batch), self._certificates.of(batch))
        if isinstance(msg, Add):
            return self._added((msg,), source, peer)[0]
        return Error(f"unexpected {type(msg).__name__} message")

    # -------------------------------------------------------------- finality

    def announcement(self) -> Announce:
        """Our account for the peers: the tip and the locked height, read together."""
        with self._changed:
            tip = self._state.chain.tip
            return Announce(tip.id, tip.hash, self._state.finality.locked)

    def reported(self, peer: PeerIdentity, tip: Tip, locked: int | None) -> None:
        """A member told us of its chain (core/finality.py); observers count nothing."""
        if not peer.member or peer.key is None or not self._state.finality.counting:
            return
        with self._changed:
            self._carry_out(self._state.member_reported(peer.key, tip, locked))

    # ----------------------------------------------------------------- votes

    def _relayed_to_us(self, tx: Transaction, peer: PeerIdentity) -> Relayed:
        """Another member hands us a vote to mine (we are the author of its tip)."""
        if not peer.member or peer.key is None:
            return Relayed("refused", "only a member may relay a vote")
        with self._changed:
            decision = self._state.vote_submitted(tx, relayed=True)
            self._carry_out(decision.effects)
        if decision.queued:
            return Relayed("queued")
        return Relayed("known" if self._state.member else "refused", decision.reason)

    # ---------------------------------------------------------------- blocks

    def _added(self, adds: Sequence[Add], source: Address,
               peer: PeerIdentity) -> list[AddResult]:
        """Blocks a peer pushed to us (Add), in order: each one's answer."""
        if not peer.member or peer.key is None:
            network = (f"network {self._network!r}" if self._network is not None
                       else "this open network (no key proven)")
            reason = (f"not a member of {network}: an observer may read the chain "
                      "but not add blocks")
            for _ in adds:
                log.warning("refused a block from %s (%s): %s", source, peer.label, reason)
            return [AddResult("rejected", reason)] * len(adds)
        results = self.receive_blocks([add.block for add in adds], peer.key, source)
        # What the sender told us by pushing: it holds each block it pushed (its
        # own), and had locked below it. Of a run, two reports say it all, since
        # finality keeps each member's highest agreement and its last report: the
        # last block we hold too (the agreement), then the last it pushed.
        held: Add | None = None
        last: Add | None = None
        for add, result in zip(adds, results, strict=True):
            # An invalid block scores against its sender (core/discipline.py): enough
            # of them ban it, and inbound.py then drops and refuses it.
            offence = block_offence(result.status, result.reason)
            if offence is not None:
                self._misbehaved(source, peer, offence, result.reason)
            if result.status != "rejected":
                last = add
                if result.status != "fork":
                    held = add
        if last is None or not self._state.finality.counting:
            return results
        for told in (last,) if held is None or held is last else (held, last):
            block = told.block
            self.reported(peer, Tip(block.id, block.hash), min(told.locked, block.id))
        self._told(peer.key)  # these answers carry our lock
        locked = self._state.finality.locked
        return [result if result.status == "rejected" else replace(result, locked=locked)
                for result in results]

    def receive_blocks(self, blocks: Sequence[Block], public_key: bytes,
                       source: object) -> list[AddResult]:
        """Blocks from one peer, in order (the seed design's 'add a block' request,
        one block or a run): screen and decide under the lock, the
        stand-alone checks (RSA: the slow part) between, without it. A run is
        decided under one lock and its effects carried out as one
        (NodeState.blocks_checked)."""
        state, metrics = self._state, self._metrics
        with self._changed:
            decisions = [state.screen_block(block, public_key) for block in blocks]
        now = now_ms()
        for i, block in enumerate(blocks):
            if decisions[i] is None:
                started = time.perf_counter()
                decisions[i] = state.check_alone(block, now)
                if metrics is not None:
                    metrics.verify_seconds.observe(time.perf_counter() - started)
        todo = [i for i, decision in enumerate(decisions) if decision is None]
        if todo:
            with self._changed:
                checked, effects = state.blocks_checked([blocks[i] for i in todo])
                self._carry_out(effects)
            for i, decided in zip(todo, checked, strict=True):
                decisions[i] = decided
        results = []
        for block, decision in zip(blocks, decisions, strict=True):
            assert decision is not None  # every block was decided at one step
            self._log_received(block, decision, source)
            results.append(AddResult(decision.status, decision.reason))
        return results

    def _log_received(self, block: Block, decision: BlockDecision, source: object) -> None:
        if self._metrics is not None:
            self._metrics.block_received(decision.status, decision.kind)
        if decision.status == "added":
            log.info("accepted block %d %s from %s", block.id, block.hash.hex()[:16], source)
        elif decision.status == "rejected":
            log.warning("rejected block %d from %s: %s", block.id, source, decision.reason)
        elif decision.status == "fork":
            why = "; ".join(e.why for e in decision.effects if isinstance(e, Resolve))
            # Resolved in the resolver thread, so this connection is answered at once.
            log.info("block %d from %s does not extend our chain (%s): resolving by majority",
                     block.id, source, why)

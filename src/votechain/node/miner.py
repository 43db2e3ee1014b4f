"""The miner thread: the runtime around NodeState's mining decisions
(core/node_state.py `relay_due`, `next_job`, `nonce_found`).

Each turn, under the node's lock, it asks the state whether to hand the
queued votes to the member that mines for everyone (relaying,
core/relaying.py) and what to mine, and submits the job to the MinerPool;
submit and abort both happen under that lock, so a block appended between
reading the tip and submitting cannot have its abort erased by the submit.

Pipelined: while block N is searched for, block N+1 is already queued in the
MinerPool as a follow-on (MinerPool.follow), which the workers start the
moment they find N: its content is built from N's hash there, so the search
never waits for this thread to wake. Block N is then signed and appended
while N+1 is searched for and N+2 queued. A block's hash does not cover its
signature, so the next block's prev_hash is known before signing; signing
(~0.25 ms of RSA) and the store write no longer wait for each other. If a
found block is not appended after all (the tip moved meanwhile), the
searches built on it are aborted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace

from votechain.core.block import Block, Transaction
from votechain.core.keys import NodeKey
from votechain.core.node_effects import Effect, MineJob
from votechain.core.node_state import NodeState
from votechain.mining.pool import MAX_OUTSTANDING, MinerPool
from votechain.node.config import now_ms
from votechain.node.metrics import NodeMetrics

log = logging.getLogger("votechain.peer")


class Miner:
    """The miner thread's loop (`run`) for one node. `changed` is the node's
    lock (a Condition); `work`, a Condition on the same lock, is notified when
    there may be something to mine or relay. `carry_out` performs a
    decision's effects with the lock held, `carry_out_unlocked` the ones that
    wait for it to be released (a Broadcast); `reachable` names the member
    keys we can hand votes to, `reached` those reached since the node
    started, and `relay(leader, txs)` hands them over."""

    def __init__(
        self,
        state: NodeState,
        changed: threading.Condition,
        work: threading.Condition,
        pool: MinerPool,
        key: NodeKey,
        difficulty: int,
        *,
        carry_out: Callable[[Iterable[Effect]], None],
        carry_out_unlocked: Callable[[Iterable[Effect]], None],
        reachable: Callable[[], frozenset[bytes]],
        reached: Callable[[], frozenset[bytes]],
        relay: Callable[[bytes, tuple[Transaction, ...]], None],
        stopping: threading.Event,
        metrics: NodeMetrics | None,
    ) -> None:
        self._state = state
        self._changed = changed
        self._work = work  # on `changed`'s lock: notified when there may be work
        self._pool = pool
        self._key = key
        self._difficulty = difficulty
        self._carry_out = carry_out
        self._carry_out_unlocked = carry_out_unlocked
        self._reachable = reachable
        self._reached = reached
        self._relay = relay
        self._stopping = stopping
        self._metrics = metrics

    def run(self) -> None:
        found: tuple[MineJob, Block, float] | None = None  # mined, not yet signed
        # Submitted to the pool, wait() not yet returned, oldest first: the job
        # searched now, then the follow-ons the workers chain to it, each to the
        # one before (MAX_OUTSTANDING in all).
        searching: deque[MineJob] = deque()
        state, pool = self._state, self._pool
        mine_started = time.perf_counter()
        while not self._stopping.is_set():
            with self._changed:
                while True:
                    now = now_ms()
                    # (Who we reached since we started matters at start-up only.)
                    reached = self._reached() if state.starting_up else None
                    relay = state.relay_due(now, self._reachable(), reached)
                    if not searching:
                        job = state.next_job(now, () if found is None else (found[1],))
                        if job is not None:
                            pool.submit(job.template.content(), self._difficulty)
                            searching.append(job)
                            mine_started = time.perf_counter()
                    while 0 < len(searching) < MAX_OUTSTANDING and self._follow(searching,
                                                                                 found):
                        pass
                    if searching or relay is not None or found is not None \
                            or self._stopping.is_set():
                        break
                    # Nothing to do until the state changes, or a relayed vote's
                    # patience runs out (then it is ours to mine).
                    wait = state.relay_wait_ms(now)
                    self._work.wait(None if wait is None else wait / 1000 + 0.001)
            if relay is not None:
                self._relay(*relay)
            if found is not None:
                self._append(*found)
                found = None
            if not searching:
                continue
            nonce = pool.wait()
            job = searching.popleft()
            if nonce is None:
                # Aborted (or exhausted): a follow-on chained to it ends unsearched,
                # and the next job starts afresh on whatever the tip is now.
                while searching:
                    pool.wait()
                    searching.popleft()
                continue
            mined = job.template.with_nonce(nonce)
            ended = time.perf_counter()
            found = (job, mined, ended - mine_started)
            mine_started = ended
            if searching:  # its follow-on already runs on this hash
                follow = searching[0].template
                searching[0] = MineJob(replace(follow, prev_hash=mined.hash))

    def _follow(self, searching: deque[MineJob],
                found: tuple[MineJob, Block, float] | None) -> bool:
        """Queue the block after the last one queued, so that the workers start
        it the moment they find that one, without waiting for this thread to
        wake (under load that wait was ~0.55 ms a block, mostly for the GIL,
        against ~1.15 ms of hashing). Its parent's hash is not known yet: the
        workers compute its content from the pieces around it."""
        queued = tuple(job.template for job in searching)
        after = queued if found is None else (found[1], *queued)
        job = self._state.next_job(now_ms(), after)
        if job is None:
            return False
        self._pool.follow(*job.template.content_parts(), self._difficulty)
        searching.append(job)
        return True

    def _append(self, job: MineJob, mined: Block, mine_seconds: float) -> None:
        """Sign our mined block and hand it to the state: appended and broadcast,
        or not (a search already running on it is then aborted)."""
        sign_started = time.perf_counter()
        block = replace(mined, signature=self._key.sign(mined.hash))
        sign_seconds = time.perf_counter() - sign_started
        with self._changed:
            decision = self._state.nonce_found(job, block)
            if decision.status == "appended" and self._metrics is not None:
                # Under the lock, so whoever the append wakes sees it counted.
                self._metrics.mine_seconds.observe(mine_seconds)
                self._metrics.sign_seconds.observe(sign_seconds)
            self._carry_out(decision.effects)
            if decision.status != "appended":
                self._pool.abort()  # the next block's search was on this one
        if decision.status == "dropped":
            log.info("dropping mined block: %s", decision.reason)
        elif decision.status == "appended":
            log.info("mined block %d %s (nonce %d)", block.id, block.hash.hex()[:16], block.nonce)
        self._carry_out_unlocked(decision.effects)

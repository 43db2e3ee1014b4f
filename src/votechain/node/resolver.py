"""The resolver thread: fork resolution by majority, carried out.

Every `sync_interval`, or at once when a block arrives that does not extend our
tip, it asks every peer for its latest block and feeds the replies to the
NodeState, which plans the round (core/node_state.py states the rules). A
block that only shows we are behind (its id leaves a gap after our tip) is
first filled from the member that pushed it (`catch_up`): the blocks between
are fetched from it alone and appended if they continue our chain, and the
round runs only if they do not (a fork is the majority's to settle). The
resolver only fetches the branches the plan names, outside the node's lock,
each block checked on its own there (the RSA verifications are the slow
part), and hands each branch back to the state to adopt or skip.

What bounds a round, whatever the peers do (config.py gives each value's
reason):
- the poll: every listed peer not backed off is asked at once, and the round
  waits POLL_DEADLINE at most in all (Outbound.ask_all), however many are
  listed; the answers come fastest peer first, and that is the order in which
  the holders of a tip are asked for its branch;
- each holder: FETCH_DEADLINE for everything fetched from it in a round; what
  was checked by then is kept (as a chunk, below) and the next holder of the
  tip gets its turn, so a holder answering just under PEER_TIMEOUT slows a
  sync but cannot stall it;
- memory: at most MAX_BRANCH_BLOCKS blocks beyond our height are held before
  they are adopted. A longer branch is fetched and adopted in chunks.

Why adopting a chunk (a prefix of the branch, short of the tip) is safe: the
state adopts it only from a holder of the majority tip (or when the chunk
already holds that tip), only if it reaches past our own height, and after
every block in it passed the stand-alone checks and the chain's link and
duplicate rules: it is then the start of the majority's chain as far as any
member-signed block can show, and the next chunk continues it. A holder that
lied (it would need as many valid blocks, mined and signed by a member key)
gains one round: the next round sees we still lack the majority tip, finds
where its chain and ours part, and switches, re-queueing our votes as any
switch does. The alternative, a cap on the whole branch, would leave a late
joiner whose network is longer than the cap never able to sync; a cap that
counted the blocks replacing our own would leave a node on a long minority
fork stuck on it.

A peer whose reply breaks the rules (a block that fails a check, a batch that
does not link, a reply to another question) is reported to `on_misbehaviour`
(by default Outbound.misbehaved, which backs its address off and logs it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from votechain.core.block import Block
from votechain.core.chain import Switch
from votechain.core.forkchoice import Tip, Vote
from votechain.core.node_effects import BranchDecision, Effect, FetchBranch
from votechain.core.node_state import NodeState, Resolution
from votechain.core.rules import check_block_alone
from votechain.errors import BadCertificate, InvalidBlock, RemoteProtocolError, Unavailable
from votechain.node.config import NodeConfig, now_ms
from votechain.node.fetch import FetchedBranch, OnMisbehaviour, fetch_branch
from votechain.node.outbound import Outbound
from votechain.protocol.peer import GetLatest, Latest

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]


class Resolver:
    """Runs resolution rounds for one node. `changed` is the node's lock (a
    Condition), held around every call into `state`; `carry_out` performs a
    decision's effects with it held. `on_misbehaviour(address, reason)` is told
    of each peer that sent invalid data while we fetched from it (None: back
    its address off and log it, `Outbound.misbehaved`)."""

    def __init__(
        self,
        state: NodeState,
        changed: threading.Condition,
        outbound: Outbound,
        peers: Callable[[], list[Address]],
        carry_out: Callable[[Sequence[Effect]], object],
        config: NodeConfig,
        *,
        stopping: threading.Event,
        wake: threading.Event,
        round_lock: threading.Lock,
        on_misbehaviour: OnMisbehaviour | None = None,
    ) -> None:
        self._state = state
        self._changed = changed
        self._outbound = outbound
        self._peers = peers
        self._carry_out = carry_out
        self._config = config
        self._stopping = stopping
        self._wake = wake
        self._round = round_lock  # held during a round (set_network_active waits on it)
        self._on_misbehaviour = on_misbehaviour or outbound.misbehaved
        # What the next turn is for, set with `_wake`: a round (`ask_round`),
        # and the gap to fill from the member that showed it (`catch_up`).
        self._asked = threading.Lock()
        self._round_asked = False
        self._catch_up: tuple[bytes, Tip] | None = None

    def ask_round(self) -> None:
        """A resolution round at once (a fork seen, a peer list changed)."""
        with self._asked:
            self._round_asked = True
        self._wake.set()

    def catch_up(self, member: bytes, target: Tip) -> None:
        """Member `member` pushed block `target`, past a gap after our tip: ask it
        for the blocks we lack first (of several such, the highest), and poll
        the majority only if that does not bring us to `target`. At 20 peers
        under load, a member that fell a few blocks behind answered every
        later block with a full round (a poll of every peer, then a fetch):
        hundreds of rounds in a few seconds, on two shared cores."""
        with self._asked:
            if self._catch_up is None or target.id > self._catch_up[1].id:
                self._catch_up = (member, target)
        self._wake.set()

    def run(self) -> None:
        """The resolver thread's loop, until `stopping` is set."""
        while not self._stopping.is_set():
            timed_out = not self._wake.wait(self._config.sync_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._asked:
                catch_up, self._catch_up = self._catch_up, None
                # The periodic round, or a wake-up for anything but a gap alone.
                round_due = self._round_asked or timed_out or catch_up is None
                self._round_asked = False
            try:
                with self._round:
                    if catch_up is not None and not self._caught_up(*catch_up):
                        round_due = True  # not an extension of ours, or no answer
                    if round_due:
                        self.resolve()
            except Exception:  # our own bug: log it loudly, keep the node serving
                if not self._stopping.is_set():
                    log.exception("fork resolution failed")
            # At most one round per min_resolve_interval, however many fork
            # blocks arrive (config.py says why).
            self._stopping.wait(self._config.min_resolve_interval)

    def resolve(self) -> Switch | None:
        """One round: poll every peer's latest block, and switch to the best
        candidate that agrees with the majority, if we lack it; the last switch
        made, if any."""
        # Every answer is a Vote, with the member key its handshake proved (None
        # for an observer or a non-member); the state counts one per member key.
        votes = [
            Vote(Tip(reply.block.id, reply.block.hash), address,
                 peer.key if peer.member else None)
            for address, reply, peer in self._outbound.ask_all(self._peers(), GetLatest())
            if isinstance(reply, Latest)
        ]
        with self._changed:
            plan = self._state.tips_collected(votes)
            self._carry_out(plan.effects)  # the tips are members' reports too (finality)
        switch = None
        while not plan.done:
            with self._changed:
                fetch = self._state.next_fetch(plan)
            if fetch is None:
                break
            switch = self._follow(plan, fetch) or switch
        if switch is not None and plan.winner is not None:
            with self._changed:
                behind = not self._state.chain.holds(plan.winner.id, plan.winner.hash)
            if behind:
                # Chunks adopted but the majority tip not reached (a holder's time
                # ran out): the next round at once, not a sync_interval from now.
                # Only progress wakes it, so this cannot spin.
                self._wake.set()
        return switch

    def _caught_up(self, member: bytes, target: Tip) -> bool:
        """Fetch from `member` the blocks between our tip and `target`, and
        append them if they continue our chain (NodeState.catch_up); whether
        we now hold `target`. Dropping any block of ours is the majority's
        call, never this: a fork found here is left to the round."""
        with self._changed:
            if self._state.chain.holds(target.id, target.hash):
                return True  # they came meanwhile (the sender's next Adds)
        holder = self._outbound.member_address(member)
        if holder is None:
            return False
        try:
            fetched = self._fetch(holder, target, time.monotonic() + self._config.fetch_deadline)
        except (OSError, Unavailable, RemoteProtocolError, InvalidBlock) as exc:
            log.info("could not catch up to block %d from %s: %s", target.id, holder, exc)
            return False
        with self._changed:
            decision = self._state.catch_up(fetched.blocks)
            self._carry_out(decision.effects)
            height = self._state.chain.height
            held = self._state.chain.holds(target.id, target.hash)
        self._report(decision, holder, height)
        return held

    def _follow(self, plan: Resolution, fetch: FetchBranch) -> Switch | None:
        """Fetch `fetch.target`'s branch from `fetch.holder` and hand it to the
        state, chunk by chunk (each at most max_branch_blocks beyond our height),
        all within one fetch_deadline; the last switch made, if any."""
        deadline = time.monotonic() + self._config.fetch_deadline
        switch = None
        while True:
            try:
                fetched = self._fetch(fetch.holder, fetch.target, deadline)
            except (OSError, Unavailable, RemoteProtocolError, InvalidBlock) as exc:
                log.warning("could not fetch %d %s from %s: %s", fetch.target.id,
                            fetch.target.hash.hex()[:16], fetch.holder, exc)
                return switch  # the plan asks the next peer that reported it
            with self._changed:
                decision = self._state.branch_fetched(plan, fetch, fetched.blocks,
                                                      complete=fetched.complete)
                self._carry_out(decision.effects)
                height = self._state.chain.height
            adopted = self._report(decision, fetch.holder, height)
            switch = adopted or switch
            if fetched.complete or plan.done or adopted is None:
                return switch
            if fetched.stopped == "deadline" or time.monotonic() >= deadline:
                # (A chunk that ended at the cap just as the deadline passed: no
                # request would be sent, so this is the same, not a failure.)
                log.info("%s ran out of time at block %d: the next holder goes on",
                         fetch.holder, height)
                return switch  # the next holder of the tip gets its turn
            # At the cap: the next chunk from the same holder, within the same deadline.

    def fetch(self, holder: Address, target: Tip) -> list[Block]:
        """`holder`'s branch up to `target` (or its first chunk: see `_fetch`)."""
        return self._fetch(holder, target, time.monotonic() + self._config.fetch_deadline).blocks

    def _fetch(self, holder: Address, target: Tip, deadline: float) -> FetchedBranch:
        """`holder`'s branch up to `target`, each block checked on its own (no lock
        held), at most max_branch_blocks beyond our height and by `deadline`.
        Our chain is read a block hash at a time, each under the lock (the
        parting-point search reads a few), never copied whole: the cost follows
        the fork's depth, not our height."""
        with self._changed:
            height = self._state.chain.height
        config, state, now = self._config, self._state, now_ms()

        def check(block: Block) -> None:
            check_block_alone(block, difficulty=state.difficulty, now_ms=now,
                              members=state.members)

        return fetch_branch(self._outbound.link(holder), height, self._hash_at, target,
                            check=check, admit=self._admit if state.members else None,
                            batch_blocks=config.fetch_batch_blocks,
                            ahead=config.fetch_ahead_batches,
                            max_blocks=config.max_branch_blocks, deadline=deadline,
                            on_misbehaviour=self._on_misbehaviour)

    def _admit(self, certificates: Sequence[bytes]) -> None:
        """The certificates a Blocks reply carries; one the authority did not sign
        is the sender's lie, and ends the fetch."""
        members = self._state.members
        assert members is not None
        for raw in certificates:
            try:
                members.admit(raw)
            except BadCertificate as exc:
                raise RemoteProtocolError(f"a certificate in its blocks reply: {exc}") from exc

    def _hash_at(self, block_id: int) -> bytes | None:
        """Our block `block_id`'s hash; None if our chain no longer reaches it."""
        with self._changed:
            chain = self._state.chain
            return chain[block_id].hash if 0 <= block_id <= chain.height else None

    def adopt(self, branch: list[Block], holder: Address) -> Switch | None:
        """Switch to `branch` (fetched from `holder`, already checked block by block)."""
        with self._changed:
            decision = self._state.adopt(branch)
            self._carry_out(decision.effects)
            height = self._state.chain.height
        return self._report(decision, holder, height)

    def _report(self, decision: BranchDecision, holder: Address, height: int) -> Switch | None:
        """Log what adopting a branch did; the switch when the chain changed."""
        switch = decision.switch
        if decision.status == "invalid":
            log.warning("majority branch from %s rejected: %s", holder, decision.reason)
        elif decision.status == "skipped":
            log.debug("branch from %s skipped: %s", holder, decision.reason)
        elif decision.status == "switched" and switch is not None:
            log.info("switched to the majority chain from %s at block %d: dropped %d, added %d, "
                     "re-queued %d of our votes", holder, switch.fork_id, len(switch.dropped),
                     len(switch.added), len(decision.requeued))
        elif decision.status == "synced" and switch is not None:
            log.info("synced %d blocks from %s, height now %d", len(switch.added), holder, height)
        return switch if decision.status in ("switched", "synced") else None

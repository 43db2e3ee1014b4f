"""The monitor thread: samples the miner's progress and the committed votes
each MONITOR_INTERVAL (the live hash rate and votes/s that `status` and the
metrics report), logs a one-line summary every summary_interval, and builds
a metrics scrape's Snapshot from what the node keeps anyway."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from votechain.core.node_state import NodeState
from votechain.mining.pool import LiveRate, MinerPool
from votechain.node.inbound import InboundServer
from votechain.node.metrics import Snapshot
from votechain.node.peers import PeerDirectory
from votechain.node.store import ChainStore

log = logging.getLogger("votechain.peer")

# The live hash rate spans this many seconds of the miner's progress; votes/s
# spans a minute. The monitor samples both each MONITOR_INTERVAL.
HASHRATE_WINDOW = 5.0
VOTE_RATE_WINDOW = 60.0
MONITOR_INTERVAL = 1.0


class Monitor:
    """The rates of one node, and the thread (`run`) that samples them."""

    def __init__(self, state: Callable[[], NodeState], pool: MinerPool, store: ChainStore,
                 *, summary_interval: float, stopping: threading.Event) -> None:
        self._state = state
        self._pool = pool
        self._store = store
        self._summary_interval = summary_interval
        self._stopping = stopping
        self.hash_rate = LiveRate(HASHRATE_WINDOW)
        self.vote_rate = LiveRate(VOTE_RATE_WINDOW)
        # The first samples: 0 per worker, and the votes the store holds.
        self._sample(time.monotonic())

    def votes_committed(self) -> int:
        return sum(self._store.tally().values())

    def _sample(self, now: float) -> None:
        self.hash_rate.sample(now, self._pool.progress())
        self.vote_rate.sample(now, (self.votes_committed(),))

    def snapshot(self, inbound: InboundServer, directory: PeerDirectory) -> Snapshot:
        """For a metrics scrape: values the node keeps anyway, read without the
        node's lock (each is one attribute read or the store's own short lock),
        so a scrape never waits behind a block being appended."""
        state = self._state()
        height = state.chain.height
        return Snapshot(
            height=height,
            final_height=state.finality.final_at(height),
            votes_committed=self.votes_committed(),
            pending=state.pending_count,
            forks_resolved=state.forks_resolved,
            inbound_connections=inbound.connections,
            tracker_peers=len(directory.known),
            tracker_up=bool(directory.up),
            worker_hashrates=self.hash_rate.rates,
            votes_per_second=self.vote_rate.total,
        )

    def run(self, inbound: InboundServer, directory: PeerDirectory) -> None:
        """The monitor thread: sample the rates each second; log the summary."""
        next_summary = time.monotonic() + self._summary_interval
        while not self._stopping.wait(min(MONITOR_INTERVAL, self._summary_interval)):
            now = time.monotonic()
            self._sample(now)
            if now >= next_summary:
                next_summary = now + self._summary_interval
                state = self._state()
                log.info("summary: height %d, %.2f votes/s, %.3f MH/s, %d peers listed, "
                         "%d inbound, tracker %s, %d pending", state.chain.height,
                         self.vote_rate.total, self.hash_rate.total / 1e6,
                         len(directory.known), inbound.connections,
                         "up" if directory.up else "down", state.pending_count)

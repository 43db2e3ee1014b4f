"""A node's Prometheus metrics (`votechain peer --metrics HOST:PORT`), with the
official prometheus_client library.

Two kinds, so that the receive path pays at most one Counter.inc:
- values the node already keeps (height, pending votes, forks resolved, peers,
  tracker state, hash rates) are read when Prometheus scrapes, by a collector
  that calls `read()` (the runtime's snapshot): nothing is done per event;
- events nobody else counts (blocks received by status, rejected by class,
  handshake failures) and timings (block mine, sign, verify) are counters and
  histograms, bumped where they happen.

Each node has its own CollectorRegistry, not the library's global one, so
several nodes in one process (the tests) keep apart, and the default process
and platform collectors are not mixed in. Every label is bounded: a status is
one of four words, a rejection's reason is the InvalidBlock subclass's name
(core/node_effects.BlockDecision.kind), never the free-text reason a peer's
block could steer; a worker is its slot number.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Metric

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]

BLOCK_STATUSES = ("added", "known", "fork", "rejected")
# Mining a difficulty-4 block takes milliseconds to seconds; difficulty 6-7 minutes.
MINE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# An RSA-2048 signature takes ~1 ms, a verification (plus one hash) ~0.05 ms.
CRYPTO_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the node already keeps, read at each scrape."""

    height: int
    final_height: int  # kept by a majority of the members (core/finality.py)
    votes_committed: int  # votes in the chain (the store's kept tally, summed)
    pending: int
    forks_resolved: int
    inbound_connections: int
    tracker_peers: int  # other peers the tracker listed last
    tracker_up: bool
    worker_hashrates: tuple[float, ...]  # per miner worker slot, over the last seconds
    votes_per_second: float  # over the last minute


class _SnapshotCollector(Collector):
    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return self._families(self._read())

    @staticmethod
    def _families(s: Snapshot) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("votechain_height", "Id of the tip block.", s.height)
        yield gauge("votechain_final_height", "Id of the highest block a majority of the "
                    "members keep: votes up to it are final.", s.final_height)
        yield gauge("votechain_votes_committed", "Votes in the chain (the kept tally's total; "
                    "it drops when a fork switch requeues votes).", s.votes_committed)
        yield gauge("votechain_pending_votes", "Votes queued for mining.", s.pending)
        yield CounterMetricFamily("votechain_forks_resolved", "Majority switches that dropped "
                                  "blocks of ours.", value=s.forks_resolved)
        yield gauge("votechain_inbound_connections", "Open inbound peer connections.",
                    s.inbound_connections)
        yield gauge("votechain_tracker_peers", "Other peers the tracker listed last.",
                    s.tracker_peers)
        yield gauge("votechain_tracker_up", "1 while the tracker answers, else 0.",
                    int(s.tracker_up))
        yield gauge("votechain_hashrate", "Hashes per second, all workers, over the last "
                    "seconds.", sum(s.worker_hashrates))
        per_worker = GaugeMetricFamily("votechain_worker_hashrate", "Hashes per second of one "
                                       "miner worker, over the last seconds.", labels=["worker"])
        for index, rate in enumerate(s.worker_hashrates):
            per_worker.add_metric([str(index)], rate)
        yield per_worker
        yield gauge("votechain_votes_per_second", "Votes committed per second over the last "
                    "minute.", s.votes_per_second)


class NodeMetrics:
    """One node's metrics and, once `serve`d, its HTTP endpoint."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        # No auto_describe: the snapshot is read at scrapes only, not at register().
        self.registry = CollectorRegistry()
        self.registry.register(_SnapshotCollector(read))
        r = self.registry
        self.blocks_received = Counter(
            "votechain_blocks_received", "Blocks other peers offered us, by what we did.",
            ["status"], registry=r)
        self.blocks_rejected = Counter(
            "votechain_blocks_rejected", "Blocks refused, by the rule they broke.", ["reason"],
            registry=r)
        self.handshake_failures = Counter(
            "votechain_handshake_failures", "Inbound connections whose handshake failed "
            "(wrong network, bad hello or certificate).", registry=r)
        self.mine_seconds = Histogram(
            "votechain_block_mine_seconds", "Time to find the nonce of a block we appended.",
            buckets=MINE_BUCKETS, registry=r)
        self.sign_seconds = Histogram(
            "votechain_block_sign_seconds", "Time to sign a block we mined.",
            buckets=CRYPTO_BUCKETS, registry=r)
        self.verify_seconds = Histogram(
            "votechain_block_verify_seconds", "Time to check a received block alone "
            "(hash, difficulty, signature).", buckets=CRYPTO_BUCKETS, registry=r)
        # Every status shows from the start (0), so a rate() over it has a base.
        self._by_status = {status: self.blocks_received.labels(status)
                           for status in BLOCK_STATUSES}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address: Address | None = None

    # -------------------------------------------------------------- events

    def block_received(self, status: str, kind: str) -> None:
        counter = self._by_status.get(status)
        if counter is not None:
            counter.inc()
        if status == "rejected":
            self.blocks_rejected.labels(kind or "other").inc()

    # -------------------------------------------------------------- serving

    def serve(self, host: str, port: int) -> Address:
        """Serve /metrics on host:port (port 0: any free) in a daemon thread;
        the address bound."""
        server, thread = start_http_server(port, host, registry=self.registry)
        self._server, self._thread = server, thread
        bound = server.server_address
        self.address = (str(bound[0]), int(bound[1]))
        log.info("metrics on http://%s:%d/metrics", *self.address)
        return self.address

    def close(self) -> None:
        """Stop serving; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

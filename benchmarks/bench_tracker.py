"""How fast a busy tracker answers NODES.

A tracker with 1,000 registered peers (their connections held open by this
process, as real peers would) answers one client's NODES: a round trip over
loopback, the tracker formatting 1,000 entries and the client parsing them.
Target: at most 20 ms per NODES.

Run with ``pytest benchmarks --benchmark-only``; never part of the test suite.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from votechain.net.tracker_client import TrackerClient
from votechain.net.tracker_server import TrackerServer

PEERS = 1000
TARGET_SECONDS = 0.020

# Each peer costs two descriptors here (its client end and the tracker's end),
# plus headroom for the interpreter, pytest and the listener.
_FDS_NEEDED = 2 * PEERS + 256


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.fixture(scope="module")
def busy_tracker() -> Iterator[TrackerServer]:
    _raise_fd_limit(_FDS_NEEDED)
    peers: list[TrackerClient] = []
    # All PEERS come from 127.0.0.1 here: lift the per-address caps (issue 12's
    # defence against one address filling the tracker) for this measurement.
    with TrackerServer(max_connections_per_ip=PEERS + 64,
                       max_registrations_per_ip=PEERS) as server:
        try:
            for i in range(PEERS):
                peer = TrackerClient(*server.address)
                peer.connect()
                peer.register(10_000 + i)
                peers.append(peer)
            assert len(server.peers()) == PEERS
            yield server
        finally:
            for peer in peers:
                peer.close()


def test_nodes_with_1000_registered_peers(
    benchmark: BenchmarkFixture, busy_tracker: TrackerServer
) -> None:
    with TrackerClient(*busy_tracker.address) as client:
        nodes = benchmark(client.nodes)
    assert len(nodes) == PEERS  # the asker did not register
    stats = benchmark.stats
    assert stats is not None
    assert stats.stats.median <= TARGET_SECONDS, (
        f"NODES took {stats.stats.median * 1000:.2f} ms, target {TARGET_SECONDS * 1000:.0f} ms"
    )

"""Deprecated: the old home of the tracker's server and client, kept only until
every import names the new modules (net/tracker_server.py, net/tracker_client.py).
Delete it once nothing imports it."""

from __future__ import annotations

from votechain.net.tracker_client import TrackerClient, fetch_nodes
from votechain.net.tracker_server import (
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_PROBES,
    MAX_CONNECTIONS,
    TrackerServer,
)

__all__ = [
    "KEEPALIVE_IDLE",
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_PROBES",
    "MAX_CONNECTIONS",
    "TrackerClient",
    "TrackerServer",
    "fetch_nodes",
]

"""The control channel's messages: what the owner's `votechain` command and a
running node say to each other. Pure: no sockets (net/control.py carries them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """The reply to a status request; docs/protocol.md lists these fields as they are here."""

    height: int  # id of the tip block
    tip: str  # the tip block's hash, hex
    peers: int  # other peers the tracker listed last
    pending: int  # votes queued for mining
    backend: str  # miner backend and worker count, e.g. "native x2"
    hashrate: float  # hashes per second, over finished jobs
    forks_resolved: int  # majority switches that dropped blocks of ours
    address: str  # "HOST:PORT" the node listens on for peers

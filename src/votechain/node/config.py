"""NodeConfig: everything a node is started with, every timeout and cap included.

The constants below are the defaults, each with the reason for its value. A
node reads its own config, never these globals, so a test shortens a timeout
for one node by setting a field (`node.config.handshake_timeout = 0.3`); the
inbound side reads its fields at each new connection, so a change applies to
the next one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from votechain import mining
from votechain.net.connection import FRAME_DEADLINE
from votechain.protocol.peer import MAX_BATCH_BLOCKS

if TYPE_CHECKING:
    from votechain.node.membership_files import Membership

# How often a node polls the majority tip even when nothing arrives, so a peer
# that missed a broadcast catches up without waiting for the next block.
SYNC_INTERVAL = 3.0
# How often the tracker keeper refreshes the peer list; the request doubles as
# the liveness check of the registration, so a restarted tracker is noticed
# (and re-registered with) within this long.
TRACKER_INTERVAL = 1.0
# However many fork blocks arrive, resolve at most this often: each round
# polls every peer, and a flood of stale blocks must not make us spin.
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
# long (net/connection.FRAME_DEADLINE explains why).
INBOUND_FRAME_DEADLINE = FRAME_DEADLINE
# A malformed request (bad msgpack, unknown type, wrong field) is answered with
# an Error saying why, and the connection reads on, as docs/protocol.md says;
# after this many on one connection the peer is dropped, so one connection
# cannot make us write log lines without end.
MAX_BAD_REQUESTS = 8
# Threads that broadcast blocks and poll tips; a stalled peer holds one at most
# PEER_TIMEOUT.
NETWORK_THREADS = 32
# A request to another peer that takes longer than this is abandoned: a dead or
# stalled peer costs at most this long, in a thread of its own.
PEER_TIMEOUT = 3.0
# Blocks waiting for one peer; a peer further behind than this syncs instead.
OUTBOX_BLOCKS = 256
# How long a peer that failed a send is skipped by broadcasts.
PEER_BACKOFF = 2.0
# Blocks asked for per GetBlocks while fetching a branch: the protocol's cap, the
# fewest round trips. Tests set it lower to cross many batches with short chains.
FETCH_BATCH_BLOCKS = MAX_BATCH_BLOCKS
# While fetching a branch, batches fetched but not yet checked: at most this
# many wait (plus one in flight and one being checked). Two are enough to keep
# the checking thread busy, since a batch arrives faster than its RSA checks
# run; more would only hold more unchecked blocks from a peer that may be lying.
FETCH_AHEAD_BATCHES = 2


@dataclass
class NodeConfig:
    data_dir: Path
    tracker: tuple[str, int]
    host: str = "127.0.0.1"
    port: int = 0
    difficulty: int = 4
    workers: int | None = None
    miner: str = mining.DEFAULT_BACKEND
    # The members-only network this node belongs to (membership_files.load_membership
    # checks the data directory first), or None: an open network where every key
    # may write, which only in-process tests of other concerns use; `votechain
    # peer` always runs with one. Its difficulty overrides `difficulty`.
    membership: Membership | None = None
    # Timeouts (seconds) and caps; the constants above say why each is what it is.
    sync_interval: float = SYNC_INTERVAL
    tracker_interval: float = TRACKER_INTERVAL
    min_resolve_interval: float = MIN_RESOLVE_INTERVAL
    max_inbound: int = MAX_INBOUND
    inbound_idle_timeout: float = INBOUND_IDLE_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    inbound_frame_deadline: float = INBOUND_FRAME_DEADLINE
    max_bad_requests: int = MAX_BAD_REQUESTS
    network_threads: int = NETWORK_THREADS
    peer_timeout: float = PEER_TIMEOUT
    outbox_blocks: int = OUTBOX_BLOCKS
    peer_backoff: float = PEER_BACKOFF
    fetch_batch_blocks: int = FETCH_BATCH_BLOCKS
    fetch_ahead_batches: int = FETCH_AHEAD_BATCHES


def now_ms() -> int:
    """The wall clock as block timestamps count it: Unix time in milliseconds.
    The node's modules read the clock here and pass it into the pure core."""
    return time.time_ns() // 1_000_000

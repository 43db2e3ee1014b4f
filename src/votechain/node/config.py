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
from votechain.core import discipline
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
# newcomer evicts a connection of the address holding the most (its oldest one
# still waiting for its Hello, else its newest), so neither a flood of idle
# connections nor one address's handshaked ones lock out a peer from another
# address (Bitcoin Core's inbound eviction keeps a diverse set the same way).
MAX_INBOUND = 256
# Why 32: a host, or a site behind one NAT, runs a few peers with a link or two
# each to us; more from one address is one party holding slots that others
# need. At 32, filling MAX_INBOUND takes 8 addresses, and even then eviction
# keeps a slot for a 9th. Over it, a newcomer evicts its own address's oldest
# connection still waiting for its Hello, or is closed.
MAX_INBOUND_PER_IP = 32
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
# Misbehaviour scores and bans (core/discipline.py says why each value): the
# score that bans, how long a ban lasts, how many scores and bans are kept, and
# the addresses never banned by address (loopback: every peer on this host
# shares it). Read once, when the node starts.
BAN_THRESHOLD = discipline.BAN_THRESHOLD
BAN_SECONDS = discipline.BAN_SECONDS
MAX_SCORED = discipline.MAX_SCORED
NEVER_BAN = discipline.NEVER_BAN
# Three bounded thread pools talk to other peers (node/outbound.py), so that no
# kind of work waits behind another: broadcasts to peers whose last request
# succeeded, polls of those peers' tips, and probes (a broadcast or a poll to
# an address not yet proven, or failing: fresh from the tracker, silent,
# closed, not a votechain node). A tracker listing hundreds of junk addresses
# then fills only the probe pool, and a vote still reaches the answering peers
# at once. Each request holds a thread at most about PEER_TIMEOUT. Why 16
# each: far more proven peers than a polling station network has; a probe
# pool this size tries ~5 silent addresses a second, and each is retried only
# once per its backoff (MAX_PEER_BACKOFF).
BROADCAST_THREADS = 16
POLL_THREADS = 16
PROBE_THREADS = 16
# A request to another peer that takes longer than this is abandoned: a dead or
# stalled peer costs at most this long, in a thread of its own.
PEER_TIMEOUT = 3.0
# Blocks waiting for one peer; a peer further behind than this syncs instead.
OUTBOX_BLOCKS = 256
# How long an address that failed a request (a send, a poll, a handshake) is
# skipped by broadcasts and polls; doubled after each failure in a row
# (node/peers.py Backoff), up to MAX_PEER_BACKOFF.
PEER_BACKOFF = 2.0
# Why 60 s: junk addresses (silent, closed) are then retried once a minute,
# a few requests a second for hundreds of them; and the doubling only grows
# while attempts fail, so an honest peer back after an outage is skipped for
# at most about as long as it was away, never more than a minute (it catches
# up meanwhile by its own polls).
MAX_PEER_BACKOFF = 60.0
# A peer that sent invalid data (a bad block, a batch that does not link, a
# reply it was not asked for) is skipped at least this long: it is no longer
# polled, so its tip does not count and it is no holder to fetch from.
MISBEHAVIOUR_BACKOFF = 600.0
# A resolution round waits this long at most for the tips, however many peers
# are listed: every poll starts at once in its pool (proven peers in theirs,
# the rest in the probe pool), and whatever has not answered by then is left
# out of this round (polls still queued are cancelled). A peer that answers
# within PEER_TIMEOUT counts; the extra second is for threads to start on a
# loaded machine.
POLL_DEADLINE = PEER_TIMEOUT + 1.0
# Blocks asked for per GetBlocks while fetching a branch: the protocol's cap, the
# fewest round trips. Tests set it lower to cross many batches with short chains.
FETCH_BATCH_BLOCKS = MAX_BATCH_BLOCKS
# While fetching a branch, batches fetched but not yet checked: at most this
# many wait (plus one in flight and one being checked). Two are enough to keep
# the checking thread busy, since a batch arrives faster than its RSA checks
# run; more would only hold more unchecked blocks from a peer that may be lying.
FETCH_AHEAD_BATCHES = 2
# Blocks of a branch fetched beyond our own height and not yet adopted: a peer
# can stream valid-looking batches without end, and memory must not follow.
# Why 2048 (8 full batches): measured, a fetch holding that many blocks with
# every field at its cap grows the process by ~13 MiB (decoded blocks, frames,
# allocator slack: ~6.5 KiB a block), well inside the 50 MB a peer may cost
# us (tests/test_abuse_network.py); vote blocks are a third of that. The cap
# counts only blocks beyond our height: those that replace our own (a fork's
# depth) are no more than we already hold. A branch longer than this is
# fetched and adopted in chunks (node/resolver.py says why a chunk is safe to
# adopt), one store transaction each.
MAX_BRANCH_BLOCKS = 2048
# Fetching from one holder stops after this long, however slowly its answers
# come (each within PEER_TIMEOUT): the blocks checked by then are kept (a
# chunk, as at MAX_BRANCH_BLOCKS) and the next holder of the tip gets its
# turn. An honest peer serves a 256-block batch in milliseconds on a LAN
# (820 KiB at the field caps: under a second at 1 MB/s), so 10 s is dozens
# of batches; a slow or stalling one costs a round at most this much. Not
# below FRAME_DEADLINE (10 s), so one whole batch from a holder at the
# slowest rate a frame may come (82 KB/s) still gets through.
FETCH_DEADLINE = 10.0
# How often a peer logs its one-line summary (height, votes/s, hash rate,
# peers): an operator tailing the log sees the node is alive and working.
SUMMARY_INTERVAL = 60.0
# A relayed vote not in the chain after this long is mined by the member that
# relayed it (its leader died or ignores it). Far above the milliseconds a
# leader takes to mine a vote, so leadership does not flap under load; short
# enough that a dead leader costs its voters a couple of seconds.
RELAY_PATIENCE = 2.0
# ...counted from the last time the chain grew, while it keeps growing, but
# never longer than this after the hand-over (core/relaying.py): what a leader
# that censors some votes while mining others can cost their voters.
RELAY_MAX_PATIENCE = 10.0
# Announce (finality) at most this often: under load a node's tip and lock
# change with every block, and a request per peer per block was most of the
# network's messages; the blocks and their answers carry the locks meanwhile.
ANNOUNCE_INTERVAL = 0.02
# ...and so that the network as a whole sends at most about this many Announce
# requests a second: every member announces to every other, so at a fixed
# interval the total grows with the square of the network's size (10 peers at
# 20 ms: 4,500 requests a second, which cost more than the blocks; measured:
# 41 against 104 final votes/s with a 100 ms interval). A node of n peers
# (itself and n - 1 others) stretches its interval to n * (n - 1) / budget.
# A budget per node (100/s each) still let 20 peers send 2,000 a second, which
# took most of the two cores: 24-37 final votes/s, against 66-70 at a quarter
# of it (benchmarks/finality_load.py --peers 20).
ANNOUNCE_BUDGET = 500.0


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
    # How many members the network has, for finality (core/finality.py), when
    # `membership` is None; a members-only network's own file says it
    # (Network.seats). 0: finality counts this node alone.
    seats: int = 0
    # Whether a member of a network with seats hands its votes to the member
    # that mines for everyone (core/node_state.py, "Relaying"), and how long
    # it waits for one to reach the chain before mining it itself.
    relay: bool = True
    relay_patience: float = RELAY_PATIENCE
    relay_max_patience: float = RELAY_MAX_PATIENCE
    announce_interval: float = ANNOUNCE_INTERVAL
    announce_budget: float = ANNOUNCE_BUDGET
    # Timeouts (seconds) and caps; the constants above say why each is what it is.
    sync_interval: float = SYNC_INTERVAL
    tracker_interval: float = TRACKER_INTERVAL
    min_resolve_interval: float = MIN_RESOLVE_INTERVAL
    max_inbound: int = MAX_INBOUND
    max_inbound_per_ip: int = MAX_INBOUND_PER_IP
    inbound_idle_timeout: float = INBOUND_IDLE_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    inbound_frame_deadline: float = INBOUND_FRAME_DEADLINE
    max_bad_requests: int = MAX_BAD_REQUESTS
    ban_threshold: int = BAN_THRESHOLD
    ban_seconds: float = BAN_SECONDS
    max_scored: int = MAX_SCORED
    never_ban: tuple[str, ...] = NEVER_BAN
    broadcast_threads: int = BROADCAST_THREADS
    poll_threads: int = POLL_THREADS
    probe_threads: int = PROBE_THREADS
    peer_timeout: float = PEER_TIMEOUT
    outbox_blocks: int = OUTBOX_BLOCKS
    peer_backoff: float = PEER_BACKOFF
    max_peer_backoff: float = MAX_PEER_BACKOFF
    misbehaviour_backoff: float = MISBEHAVIOUR_BACKOFF
    poll_deadline: float = POLL_DEADLINE
    fetch_batch_blocks: int = FETCH_BATCH_BLOCKS
    fetch_ahead_batches: int = FETCH_AHEAD_BATCHES
    max_branch_blocks: int = MAX_BRANCH_BLOCKS
    fetch_deadline: float = FETCH_DEADLINE
    summary_interval: float = SUMMARY_INTERVAL
    # Where to serve Prometheus metrics (node/metrics.py), port 0 for any free
    # one (Node.metrics.address says which); None serves nothing.
    metrics: tuple[str, int] | None = None


def now_ms() -> int:
    """The wall clock as block timestamps count it: Unix time in milliseconds.
    The node's modules read the clock here and pass it into the pure core."""
    return time.time_ns() // 1_000_000

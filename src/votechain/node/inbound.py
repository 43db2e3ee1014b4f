"""The inbound side of a peer: the listening socket, the accept loop, and one
thread per connection that answers requests with the node's `handle`.

Every timeout and cap is read from the node's NodeConfig at each new
connection (config.py says why each has its value), so a test can shorten one
for the next connection by setting a field; the misbehaviour rules
(core/discipline.py) are read once, at start.

Who gets a slot, in order (`_admit`, under the lock):
1. an address banned for misbehaviour is closed at once, with a log line;
2. an address group (core/discipline.address_group: one IPv4 address, one
   IPv6 /64) holds at most `max_inbound_per_ip` connections: over it, the
   newcomer evicts its own group's oldest connection still waiting for its
   Hello, or is closed if every one of them is handshaked;
3. all `max_inbound` slots full: the newcomer evicts from the group holding
   the most connections (ties: one with a connection still waiting for its
   Hello, then not the newcomer's own) that group's oldest waiting
   connection, else its newest one (the long-standing connections are the
   costliest for an attacker to have made, so they are kept, as Bitcoin
   Core's eviction keeps them); if that group is the newcomer's own and all
   handshaked, the newcomer is closed instead. One address, however many
   handshakes it completes, cannot keep a peer from another address out.

Misbehaviour (scored per member key when the handshake proved one, else per
address group): a malformed frame or handshake, a bad certificate, and, through
`misbehaved`, an invalid block the node's `handle` rejected. A peer whose score
crosses the threshold is dropped at once, and refused until its ban ends: a
banned address at accept, a banned key right after its handshake.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

from votechain.core.discipline import (
    Ban,
    Discipline,
    Offence,
    Offender,
    address_group,
    handshake_offence,
    offender,
)
from votechain.core.membership import Members
from votechain.errors import ConnectionClosed, MalformedMessage, RemoteProtocolError
from votechain.net.connection import OBSERVER, Connection, LocalIdentity, PeerIdentity
from votechain.net.sockets import accept_next, stop_listener, wake
from votechain.node.config import NodeConfig
from votechain.protocol.peer import Error, Hello, Message

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]
# Requests read together while more are already buffered, at most, and so
# the replies sent together (outbound.py's PIPELINE_DEPTH is what a peer of
# ours sends ahead).
REPLY_BATCH = 16
# The node's answers to requests read together, one each in order, from the
# peer at an address, who proved its identity in the handshake.
Handler = Callable[[Sequence[Message], Address, PeerIdentity], list[Message]]


class InboundServer:
    """Accepts other peers' connections, each served in a thread of its own.

    `address_group` maps a source IP to the group that per-address caps and
    address bans count by; `clock` is what ban times are measured on (tests
    may inject either)."""

    def __init__(self, config: NodeConfig, hello: Hello, handle: Handler,
                 stopping: threading.Event, *, identity: LocalIdentity = OBSERVER,
                 members: Members | None = None,
                 address_group: Callable[[str], str] = address_group,
                 clock: Callable[[], float] = time.monotonic,
                 on_handshake_failure: Callable[[], None] | None = None) -> None:
        self._config = config
        self._on_handshake_failure = on_handshake_failure  # a metrics counter, if any
        self._hello = hello
        self._identity = identity
        self._members = members
        self._handle = handle
        self._stopping = stopping
        self._group_of = address_group
        self._clock = clock
        self._lock = threading.Lock()
        # Every open inbound connection and its address group; each group's
        # connections, oldest first; and those that have not completed their
        # handshake, oldest first (dicts keep insertion order). All under _lock.
        # An evicted connection leaves all three at once (its thread closes it).
        self._open: dict[socket.socket, str] = {}
        self._groups: dict[str, dict[socket.socket, None]] = {}
        self._waiting: dict[socket.socket, None] = {}
        self._discipline = Discipline(threshold=config.ban_threshold,
                                      ban_seconds=config.ban_seconds,
                                      max_scored=config.max_scored, max_bans=config.max_scored,
                                      never_ban=config.never_ban)
        # A backlog above max_inbound: a burst of connects waits in the kernel
        # queue instead of being dropped and retried a second later.
        self._listener = socket.create_server((config.host, config.port),
                                              backlog=2 * config.max_inbound)
        self.address: Address = self._listener.getsockname()[:2]

    @property
    def connections(self) -> int:
        """How many inbound connections are open (each holds a thread)."""
        with self._lock:
            return len(self._open)

    def connections_from(self, ip: str) -> int:
        """How many inbound connections `ip`'s address group holds."""
        with self._lock:
            return len(self._groups.get(self._group_of(ip), ()))

    # ------------------------------------------------------------ accepting

    def run(self) -> None:
        """The accept loop (the listener thread), until `stop()`."""
        while not self._stopping.is_set():
            accepted = accept_next(self._listener, self._stopping.is_set, self._stopping.wait, log)
            if accepted is None:
                return
            sock, (ip, port) = accepted
            group = self._group_of(ip)
            if not self._admit(sock, ip, port, group):
                sock.close()
                continue
            thread = threading.Thread(target=self._serve, args=(sock, group), daemon=True,
                                      name="votechain-inbound")
            try:
                thread.start()
            except RuntimeError as exc:  # out of threads: refuse this one, keep accepting
                log.warning("cannot serve a new connection: %s", exc)
                self._forget(sock)
                sock.close()

    def _admit(self, sock: socket.socket, ip: str, port: int, group: str) -> bool:
        """Give `sock` a slot, evicting another if need be (the module docstring's
        rules); False: close it."""
        config = self._config
        with self._lock:
            until = self._discipline.banned_until(Offender.address(group), self._clock())
            if until is not None:
                log.info("refusing a connection from %s:%d: banned for misbehaviour "
                         "(%.0f s left)", ip, port, until - self._clock())
                return False
            mine = self._groups.get(group, {})
            victim: socket.socket | None = None
            if len(mine) >= config.max_inbound_per_ip:
                victim = next((s for s in mine if s in self._waiting), None)
                if victim is None:
                    log.debug("refusing a connection from %s:%d: its address holds %d "
                              "connections, the most one may", ip, port, len(mine))
                    return False
            elif len(self._open) >= config.max_inbound:
                victim = self._victim(group)
                if victim is None:
                    log.debug("refusing a connection from %s:%d: every slot is taken, "
                              "the most by its own address", ip, port)
                    return False
            if victim is not None:
                self._evict(victim, ip)
            self._open[sock] = group
            self._groups.setdefault(group, {})[sock] = None
            self._waiting[sock] = None
        return True

    def _victim(self, newcomer: str) -> socket.socket | None:
        """The connection a newcomer from group `newcomer` takes the slot of, when
        every slot is full; None: refuse the newcomer. The caller holds the lock."""

        def rank(item: tuple[str, dict[socket.socket, None]]) -> tuple[int, bool, bool]:
            group, socks = item
            return len(socks), any(s in self._waiting for s in socks), group != newcomer

        if not self._groups:
            return None  # max_inbound is 0: nothing to make room in
        group, socks = max(self._groups.items(), key=rank)
        waiting = next((s for s in socks if s in self._waiting), None)
        if waiting is not None:
            return waiting
        if group == newcomer:
            return None  # it would only take the place of its own address's
        return next(reversed(socks))  # the newest: see the module docstring

    def _evict(self, victim: socket.socket, newcomer: str) -> None:
        """Free `victim`'s slot now; shutting it down wakes its thread, which closes
        it. The caller holds the lock."""
        group = self._open.get(victim, "?")
        if victim not in self._waiting:
            log.info("evicting a connection from %s (its address holds %d connections) "
                     "for one from %s", group, len(self._groups.get(group, ())), newcomer)
        self._forget_locked(victim)
        wake(victim)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._forget_locked(sock)

    def _forget_locked(self, sock: socket.socket) -> None:
        self._waiting.pop(sock, None)
        group = self._open.pop(sock, None)
        if group is None:
            return  # evicted already
        socks = self._groups.get(group)
        if socks is not None:
            socks.pop(sock, None)
            if not socks:
                del self._groups[group]

    # ------------------------------------------------------------ serving

    def _serve(self, sock: socket.socket, group: str) -> None:
        config = self._config
        conn = Connection(sock, timeout=config.inbound_idle_timeout,
                          frame_deadline=config.inbound_frame_deadline)
        who = Offender.address(group)  # until the handshake proves a member's key
        try:
            try:
                peer = conn.handshake(self._hello, initiator=False,
                                      timeout=config.handshake_timeout,
                                      identity=self._identity, members=self._members)
            except RemoteProtocolError as exc:
                if self._on_handshake_failure is not None:
                    self._on_handshake_failure()
                self._score(who, handshake_offence(exc), exc.reason)
                raise
            with self._lock:
                self._waiting.pop(sock, None)
            who = offender(group, peer.key if peer.member else None)
            if self._refuse_if_banned(conn, who):
                return
            self._serve_requests(conn, peer, who)
        except RemoteProtocolError as exc:
            log.warning("dropping connection from %s: %s", conn.peer, exc)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            self._forget(sock)
            conn.close()

    def _serve_requests(self, conn: Connection, peer: PeerIdentity, who: Offender) -> None:
        """Answer requests until the peer leaves, misbehaves too often, or we stop.
        The requests already read when the first arrives (a pipelining peer
        sent several at once, docs/protocol.md 3), up to REPLY_BATCH, are
        handled together (a run of blocks is decided as one: PeerRequests.handle_all)
        and their replies sent together, in order."""
        bad_requests = 0
        while not self._stopping.is_set():
            requests: list[Message] = []
            error: RemoteProtocolError | None = None
            while True:  # only the first recv() may wait
                try:
                    requests.append(conn.recv())
                except RemoteProtocolError as exc:
                    error = exc
                    break
                if len(requests) >= REPLY_BATCH or not conn.message_ready:
                    break
            held = self._handle(requests, conn.peer, peer) if requests else []
            if error is not None:
                banned = self._score(who, handshake_offence(error), error.reason)
                # A bad frame was consumed whole: say why and read on, unless the
                # framing itself is lost, the peer keeps doing it, or is banned now.
                if not isinstance(error, MalformedMessage) or not conn.framed or banned:
                    if held:  # what was answered before it still goes out
                        with contextlib.suppress(OSError, ConnectionClosed):
                            conn.send(*held)
                    raise error
                bad_requests += 1
                if bad_requests > self._config.max_bad_requests:
                    raise MalformedMessage(f"too many bad requests, the last: {error}") from error
                log.warning("bad request from %s: %s", conn.peer, error)
                held.append(Error(f"bad request: {error.reason}"))
            conn.send(*held)
            if self._banned(who):  # `handle` reported an offence that tipped it
                log.info("dropping connection from %s: %s is banned", conn.peer, who)
                return

    def _refuse_if_banned(self, conn: Connection, who: Offender) -> bool:
        """After the handshake: a banned member's key is told so and closed."""
        with self._lock:
            now = self._clock()
            until = self._discipline.banned_until(who, now)
        if until is None:
            return False
        log.info("refusing a connection from %s: %s is banned for misbehaviour (%.0f s left)",
                 conn.peer, who, until - now)
        with contextlib.suppress(OSError, ConnectionClosed):
            conn.send(Error(f"banned for misbehaviour for {until - now:.0f} s more"))
        return True

    # ------------------------------------------------------------ misbehaviour

    def misbehaved(self, source: Address, peer: PeerIdentity | None, offence: Offence,
                   detail: str) -> bool:
        """Score `offence` against the peer at `source` (its member key if `peer`
        proved one, else its address group); True if it is banned now. For the
        node's `handle` (an invalid block), and any part of the node that caught
        a peer sending invalid data."""
        key = peer.key if peer is not None and peer.member else None
        return self._score(offender(self._group_of(source[0]), key), offence, detail)

    def _score(self, who: Offender, offence: Offence | None, detail: str) -> bool:
        if offence is None:
            return False
        with self._lock:
            now = self._clock()
            ban = self._discipline.misbehaved(who, offence, now)
            score = self._discipline.score(who, now)
            banned = self._discipline.banned_until(who, now) is not None
        if ban is not None:
            log.warning("banning %s for %.0f s: misbehaviour score reached %d (the last: "
                        "%s: %s)", who, ban.until - now, self._discipline.threshold,
                        offence.what, detail)
        elif not banned:
            log.debug("%s: %s (+%d, score %d): %s", who, offence.what, offence.points,
                      score, detail)
        return banned

    def _banned(self, who: Offender) -> bool:
        with self._lock:
            return self._discipline.banned_until(who, self._clock()) is not None

    def banned(self, source: Address, peer: PeerIdentity | None = None) -> bool:
        """Whether the peer at `source` (or its proven member key) is banned now."""
        key = peer.key if peer is not None and peer.member else None
        return self._banned(offender(self._group_of(source[0]), key))

    def discouraged(self) -> list[Ban]:
        """The bans in force, ending soonest first (`until` is on this server's clock)."""
        with self._lock:
            return self._discipline.discouraged(self._clock())

    def score(self, source: Address, peer: PeerIdentity | None = None) -> int:
        """The misbehaviour score of the peer at `source` (or of its member key)."""
        key = peer.key if peer is not None and peer.member else None
        with self._lock:
            return self._discipline.score(offender(self._group_of(source[0]), key),
                                          self._clock())

    # ------------------------------------------------------------ stopping

    def stop(self) -> None:
        """Close the listener, then wake every connection's thread, which closes its
        socket; the caller has set `stopping` and joins the threads."""
        stop_listener(self._listener, None)
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            wake(sock)

    def close_listener(self) -> None:
        """For a start-up that fails after the listener was made."""
        self._listener.close()

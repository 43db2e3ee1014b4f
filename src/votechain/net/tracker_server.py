"""The tracker server: a thin socket-and-thread shell around protocol/tracker_lines.py,
which holds the protocol itself (framing, parsing, formatting, caps); this
module only moves bytes. Its client is net/tracker_client.py.

As in the seed design (docs/design.md): the accept thread accepts, one thread per
connection serves it, and the peer list sits behind a lock. A peer is listed
from its ``REGISTER`` until its connection closes, so the open connection is
the peer's liveness signal (TCP keepalive notices a peer whose host vanished
without closing it). Nothing polls: threads block in ``accept``/``recv``
and ``stop()`` wakes them by shutting their sockets down.

Per-address bounds (issue 12): connections and registrations are counted per
address group (core/discipline.address_group: an IPv4 address, an IPv6 /64;
injectable), so no one address can fill the tracker or its list:

- a group holds at most ``MAX_CONNECTIONS_PER_IP`` connections; a newcomer
  over it evicts its own group's oldest unregistered connection (or is
  refused, ``ERROR too many connections from your address``, if every one is
  registered);
- a group lists at most ``MAX_REGISTRATIONS_PER_IP`` peers; a REGISTER over it
  gets ``ERROR too many registrations from your address`` and the connection
  stays usable;
- at ``MAX_CONNECTIONS`` in all, a newcomer is not refused: it evicts the oldest
  unregistered connection of the group holding the most connections (among
  the groups with an unregistered one; a query or a flood, never a listed
  peer), and only if every connection is registered, the newest registration
  of the largest group, unless that group is the newcomer's own (then it is
  refused, ``ERROR too many connections``). One address, however many
  connections it opens, cannot keep a peer from another address off the list.

An evicted connection is closed without a word (shut down, then closed by its
thread); an evicted registration leaves the list at once.

Deliberate simplifications: one thread per connection (fine for the few
thousand peers ``MAX_CONNECTIONS`` allows; no asyncio), and a peer is known by
the source IP of its tracker connection, so peers behind a NAT are not
reachable by the addresses the tracker hands out.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from votechain.core.discipline import address_group
from votechain.errors import LineTooLongError, TrackerProtocolError
from votechain.net.sockets import accept_next, stop_listener, wake
from votechain.protocol.tracker_lines import (
    ErrorReply,
    LineBuffer,
    Nodes,
    Ok,
    Register,
    Request,
    encode_nodes,
    encode_response,
    parse_request,
)

log = logging.getLogger("votechain.tracker")

# Why 4096: each connection costs a thread (its stack is reserved, mostly not
# touched) and a file descriptor. Past this many, a flood of connections would
# exhaust threads or descriptors and take down service for the real peers.
MAX_CONNECTIONS = 4096

# Why 64: a peer holds one connection (its registration) and opens a one-shot
# NODES query now and then, so even MAX_REGISTRATIONS_PER_IP peers behind one
# address need a few dozen. With 64, filling MAX_CONNECTIONS takes 64
# addresses, and even then eviction keeps room for a newcomer from another.
MAX_CONNECTIONS_PER_IP = 64

# Why 16: a host, or a site behind one NAT, runs a few peers of a network;
# sixteen is generous for that. Every listed entry is one a new peer may try
# to reach, so this also bounds the junk one address can list (issue 12 saw
# 620 junk entries from one address slow a vote from 0.1 s to 35 s).
MAX_REGISTRATIONS_PER_IP = 16

# Why 10 s: a client that sends half a request and stalls (slow loris) ties up
# a thread and a connection slot. A real client writes a whole request line in
# one send, so a line that is not whole ten seconds after its first byte is not
# from a real client. Measured from the first byte, not from the last one: a
# client dribbling a byte a second would otherwise never time out.
# Registered peers are exempt: their idle connection is their registration.
PARTIAL_LINE_TIMEOUT = 10.0

# Why 30 s: a connection that has not registered is a one-shot NODES query or
# a peer about to register; it sends at once. One that sits silent this long
# only holds a thread and a slot, so it is dropped. Registered peers are
# exempt: their idle connection is their registration.
UNREGISTERED_IDLE_TIMEOUT = 30.0

# Why 10 s: a client that does not read its replies fills its receive window
# and would block our send forever, pinning the thread. Give up and drop it.
SEND_TIMEOUT = 10.0

# A registered peer's connection is idle by design, so a peer whose host
# vanished without closing it (power cut, cable pulled: no FIN, no RST) would
# stay listed forever. TCP keepalive probes an idle connection after
# KEEPALIVE_IDLE s, every KEEPALIVE_INTERVAL s, and the kernel reports it dead
# after KEEPALIVE_PROBES unanswered ones: such a peer is unlisted within ~90 s.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 3

# Enough for any request line plus some pipelining; the LineBuffer cap, not
# this, bounds what a connection can make us hold.
_RECV_BYTES = 4096


TOO_MANY = "too many connections"
TOO_MANY_FROM_YOU = "too many connections from your address"
TOO_MANY_REGISTRATIONS = "too many registrations from your address"


@dataclass
class _Group:
    """The live (not evicted) connections of one address group, oldest first."""

    unregistered: dict[socket.socket, None] = field(default_factory=dict)
    registered: dict[socket.socket, None] = field(default_factory=dict)  # by registration

    def __len__(self) -> int:
        return len(self.unregistered) + len(self.registered)


class TrackerServer:
    """A tracker on ``(host, port)``; ``port=0`` picks a free port (see ``address``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_ip: int = MAX_CONNECTIONS_PER_IP,
        max_registrations_per_ip: int = MAX_REGISTRATIONS_PER_IP,
        address_group: Callable[[str], str] = address_group,
        partial_line_timeout: float = PARTIAL_LINE_TIMEOUT,
        idle_timeout: float = UNREGISTERED_IDLE_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._max_per_ip = max_connections_per_ip
        self._max_registrations_per_ip = max_registrations_per_ip
        self._group_of = address_group
        self._partial_line_timeout = partial_line_timeout
        self._idle_timeout = idle_timeout
        self._send_timeout = send_timeout
        self._lock = threading.Lock()
        # Registered peers by connection; dicts keep insertion order, which is
        # registration order. A second REGISTER keeps the peer's place.
        self._peers: dict[socket.socket, tuple[str, int]] = {}
        # Every connection whose thread runs, and that thread (evicted ones too,
        # until their thread ends, so stop() joins them).
        self._connections: dict[socket.socket, threading.Thread] = {}
        # The live connections by address group; each connection's group; and
        # those evicted whose thread has not ended yet. Under _lock.
        self._groups: dict[str, _Group] = {}
        self._group_by_conn: dict[socket.socket, str] = {}
        self._evicted: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None
        self._stopping = False
        self._stopped = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind, listen and start accepting; returns once connections are accepted."""
        with self._lock:
            if self._listener is not None or self._stopping:
                raise RuntimeError("a TrackerServer can be started only once")
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                # So a restarted tracker can rebind while old connections
                # linger in TIME_WAIT.
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self._host, self._port))
                listener.listen(socket.SOMAXCONN)
            except OSError:
                listener.close()
                raise
            self._listener = listener
            host, port = listener.getsockname()[:2]
            self._address = (host, port)
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener,), name="tracker-accept", daemon=True
            )
            self._accept_thread.start()
        log.info("tracker listening on %s:%d", host, port)

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("TrackerServer.address read before start()")
        return self._address

    def peers(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._peers.values())

    def connections(self, ip: str | None = None) -> int:
        """How many connections are open and not evicted: all, or from `ip`'s group."""
        with self._lock:
            if ip is None:
                return len(self._connections) - len(self._evicted)
            return len(self._groups.get(self._group_of(ip), ()))

    def stop(self) -> None:
        """Stop accepting, close every connection and join every thread. Idempotent."""
        with self._lock:
            self._stopping = True
            listener, accept_thread = self._listener, self._accept_thread
        stop_listener(listener, accept_thread)
        # The accept thread is gone, so no connection can be added any more.
        with self._lock:
            connections = list(self._connections.items())
            for conn, _thread in connections:
                # Wakes the thread's recv()/send(); the thread closes the socket
                # itself, under the lock, so this never touches a reused fd.
                wake(conn)
        for _conn, thread in connections:
            thread.join()
        self._stopped.set()

    def serve_forever(self) -> None:
        """start(), then block until stop() is called (from a signal handler or thread)."""
        self.start()
        self._stopped.wait()

    def __enter__(self) -> TrackerServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------ threads

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            accepted = accept_next(listener, lambda: self._stopping, self._stopped.wait, log)
            if accepted is None:
                return
            conn, addr = accepted
            group = self._group_of(addr[0])
            with self._lock:
                refusal = TOO_MANY if self._stopping else self._make_room(group, addr[0])
                if refusal is None:
                    thread = threading.Thread(
                        target=self._serve_connection,
                        args=(conn, addr[0], group),
                        name=f"tracker-conn-{addr[0]}:{addr[1]}",
                        daemon=True,
                    )
                    self._connections[conn] = thread
                    self._group_by_conn[conn] = group
                    self._groups.setdefault(group, _Group()).unregistered[conn] = None
                    try:
                        thread.start()
                    except RuntimeError as exc:  # out of threads: refuse, keep accepting
                        log.warning("cannot serve %s:%d: %s", addr[0], addr[1], exc)
                        self._forget(conn)
                        refusal = TOO_MANY
            if refusal is not None:
                self._refuse(conn, addr, refusal)

    def _make_room(self, group: str, ip: str) -> str | None:
        """Make room for a newcomer from `group` (the module docstring's rules),
        evicting one connection if need be; the refusal's reason, or None. The
        caller holds the lock."""
        mine = self._groups.get(group)
        if mine is not None and len(mine) >= self._max_per_ip:
            victim = next(iter(mine.unregistered), None)
            if victim is None:
                return TOO_MANY_FROM_YOU
        elif len(self._connections) - len(self._evicted) >= self._max_connections:
            victim = self._victim(group)
            if victim is None:
                return TOO_MANY
        else:
            return None
        self._evict(victim, ip)
        return None

    def _victim(self, newcomer: str) -> socket.socket | None:
        """Whom a newcomer from group `newcomer` replaces when the tracker is full;
        None: refuse it. The caller holds the lock."""

        def rank(item: tuple[str, _Group]) -> tuple[int, bool]:
            return len(item[1]), item[0] != newcomer

        with_unregistered = [item for item in self._groups.items() if item[1].unregistered]
        if with_unregistered:
            _, most = max(with_unregistered, key=rank)
            return next(iter(most.unregistered))  # the oldest: the likeliest idle
        if not self._groups:
            return None  # max_connections is 0: nothing to make room in
        group, most = max(self._groups.items(), key=rank)
        if group == newcomer or not most.registered:
            return None  # it would only take the place of its own address's
        return next(reversed(most.registered))  # the newest: keep long-standing peers

    def _evict(self, victim: socket.socket, newcomer: str) -> None:
        """Take `victim` off the list and out of the counts now; shutting it down
        wakes its thread, which closes it. The caller holds the lock."""
        self._evicted.add(victim)
        self._ungroup(victim)
        peer = self._peers.pop(victim, None)
        if peer is not None:
            log.info("evicting %s:%d (registered) for a newcomer from %s", *peer, newcomer)
        else:
            log.debug("evicting an unregistered connection for a newcomer from %s", newcomer)
        wake(victim)

    def _ungroup(self, conn: socket.socket) -> None:
        group = self._group_by_conn.pop(conn, None)
        if group is None:
            return
        entry = self._groups[group]
        entry.unregistered.pop(conn, None)
        entry.registered.pop(conn, None)
        if not entry:
            del self._groups[group]

    def _forget(self, conn: socket.socket) -> None:
        """`conn`'s thread is done with it (or never started). The caller holds the lock."""
        self._ungroup(conn)
        self._evicted.discard(conn)
        self._connections.pop(conn, None)

    @staticmethod
    def _refuse(conn: socket.socket, addr: tuple[str, int], reason: str) -> None:
        log.warning("refusing %s:%d: %s", addr[0], addr[1], reason)
        # A fresh socket's send buffer is empty, so a non-blocking send of a
        # few bytes goes through; if it somehow does not, the close says enough.
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(encode_response(ErrorReply(reason)))
        conn.close()

    def _serve_connection(self, conn: socket.socket, ip: str, group: str) -> None:
        _keep_alive(conn)
        lines = LineBuffer()
        line_started = 0.0  # when the first byte of the partial line arrived
        try:
            while True:
                # A registered peer may idle, even mid-line, for as long as it
                # likes: that is its registration. Anyone else must send a
                # line soon and finish it soon (slow loris).
                with self._lock:
                    registered = conn in self._peers
                if registered:
                    conn.settimeout(None)
                elif lines.has_pending_bytes:
                    remaining = line_started + self._partial_line_timeout - time.monotonic()
                    if remaining <= 0:
                        log.info("dropping %s: line not finished in time (slow loris)", ip)
                        return
                    conn.settimeout(remaining)
                else:
                    conn.settimeout(self._idle_timeout)
                try:
                    data = conn.recv(_RECV_BYTES)
                except TimeoutError:
                    if lines.has_pending_bytes:
                        log.info("dropping %s: line not finished in time (slow loris)", ip)
                    else:
                        log.info("dropping %s: silent and not registered", ip)
                    return
                if not data:
                    return  # orderly close by the client, or stop()
                if not lines.has_pending_bytes:
                    line_started = time.monotonic()
                lines.feed(data)
                answered = False
                while (line := lines.next_line()) is not None:
                    self._send(conn, self._handle(conn, ip, group, line))
                    answered = True
                if answered:
                    # What is left is a new line, begun with this chunk.
                    line_started = time.monotonic()
        except LineTooLongError as exc:
            log.info("dropping %s: %s", ip, exc.reason)
            with contextlib.suppress(OSError):
                self._send(conn, encode_response(ErrorReply(exc.reason)))
        except OSError as exc:
            # Resets, send timeouts, stop(): the client is gone either way.
            log.debug("connection from %s ended: %s", ip, exc)
        except Exception:
            # Our bug, not the client's: say so loudly, but one broken
            # connection must not take the tracker down.
            log.exception("tracker bug while serving %s", ip)
        finally:
            with self._lock:
                peer = self._peers.pop(conn, None)
                self._forget(conn)
                conn.close()
            if peer is not None:
                log.info("unregistered %s:%d", *peer)

    def _handle(self, conn: socket.socket, ip: str, group: str, line: bytes) -> bytes:
        try:
            request: Request = parse_request(line)
        except TrackerProtocolError as exc:
            log.debug("bad request from %s: %s", ip, exc.reason)
            return encode_response(ErrorReply(exc.reason))
        match request:
            case Register(port=port):
                with self._lock:
                    if conn in self._evicted:  # its thread has not noticed yet
                        return encode_response(ErrorReply(TOO_MANY))
                    entry = self._groups[group]
                    if (conn not in self._peers
                            and len(entry.registered) >= self._max_registrations_per_ip):
                        refused = True
                    else:
                        refused = False
                        self._peers[conn] = (ip, port)
                        entry.unregistered.pop(conn, None)
                        entry.registered.setdefault(conn, None)  # a second keeps its place
                if refused:
                    log.debug("refused to register %s:%d: %s", ip, port, TOO_MANY_REGISTRATIONS)
                    return encode_response(ErrorReply(TOO_MANY_REGISTRATIONS))
                log.info("registered %s:%d", ip, port)
                return encode_response(Ok())
            case Nodes():
                # Snapshot under the lock, format outside it, so a slow
                # formatter never holds up registrations.
                with self._lock:
                    peers = list(self._peers.values())
                return encode_nodes(peers)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        # sendall's timeout bounds the whole call, not each partial send.
        conn.settimeout(self._send_timeout)
        conn.sendall(data)


def _keep_alive(conn: socket.socket) -> None:
    """Turn on TCP keepalive with our timings, where the platform has them."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ):
            if hasattr(socket, name):
                conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)

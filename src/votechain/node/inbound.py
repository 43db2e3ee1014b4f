"""The inbound side of a peer: the listening socket, the accept loop, and one
thread per connection that answers requests with the node's `handle`.

Every timeout and cap is read from the node's NodeConfig at each new
connection (config.py says why each has its value), so a test can shorten one
for the next connection by setting a field.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

from votechain.core.membership import Members
from votechain.errors import ConnectionClosed, MalformedMessage, RemoteProtocolError
from votechain.net.connection import OBSERVER, Connection, LocalIdentity, PeerIdentity
from votechain.net.sockets import accept_next, stop_listener, wake
from votechain.node.config import NodeConfig
from votechain.protocol.peer import Error, Hello, Message

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]
# The node's answer to one request, from the peer at an address, who proved
# its identity in the handshake.
Handler = Callable[[Message, Address, PeerIdentity], Message]


class InboundServer:
    """Accepts other peers' connections, each served in a thread of its own."""

    def __init__(self, config: NodeConfig, hello: Hello, handle: Handler,
                 stopping: threading.Event, *, identity: LocalIdentity = OBSERVER,
                 members: Members | None = None) -> None:
        self._config = config
        self._hello = hello
        self._identity = identity
        self._members = members
        self._handle = handle
        self._stopping = stopping
        self._lock = threading.Lock()
        # Every open inbound connection; and those that have not completed their
        # handshake, oldest first (dicts keep insertion order). Both under _lock.
        self._open: set[socket.socket] = set()
        self._waiting: dict[socket.socket, None] = {}
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

    def run(self) -> None:
        """The accept loop (the listener thread), until `stop()`."""
        while not self._stopping.is_set():
            accepted = accept_next(self._listener, self._stopping.is_set, self._stopping.wait, log)
            if accepted is None:
                return
            sock, _ = accepted
            with self._lock:
                if len(self._open) >= self._config.max_inbound:
                    if not self._waiting:
                        sock.close()
                        continue
                    # Shutting the oldest waiting socket down wakes its thread,
                    # which closes it and gives its slot back.
                    oldest = next(iter(self._waiting))
                    del self._waiting[oldest]
                    wake(oldest)
                self._open.add(sock)
                self._waiting[sock] = None
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                      name="votechain-inbound")
            try:
                thread.start()
            except RuntimeError as exc:  # out of threads: refuse this one, keep accepting
                log.warning("cannot serve a new connection: %s", exc)
                self._forget(sock)
                sock.close()

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._waiting.pop(sock, None)
            self._open.discard(sock)

    def _serve(self, sock: socket.socket) -> None:
        config = self._config
        conn = Connection(sock, timeout=config.inbound_idle_timeout,
                          frame_deadline=config.inbound_frame_deadline)
        bad_requests = 0
        try:
            peer = conn.handshake(self._hello, initiator=False, timeout=config.handshake_timeout,
                                  identity=self._identity, members=self._members)
            with self._lock:
                self._waiting.pop(sock, None)
            while not self._stopping.is_set():
                try:
                    msg = conn.recv()
                except MalformedMessage as exc:
                    # The bad frame was consumed whole: say why and read on, unless
                    # the framing itself is lost or this peer keeps doing it.
                    bad_requests += 1
                    if not conn.framed:
                        raise
                    if bad_requests > config.max_bad_requests:
                        raise MalformedMessage(f"too many bad requests, the last: {exc}") from exc
                    log.warning("bad request from %s: %s", conn.peer, exc)
                    conn.send(Error(f"bad request: {exc.reason}"))
                    continue
                conn.send(self._handle(msg, conn.peer, peer))
        except RemoteProtocolError as exc:
            log.warning("dropping connection from %s: %s", conn.peer, exc)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            self._forget(sock)
            conn.close()

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

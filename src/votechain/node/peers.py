"""Who the other peers are: the tracker registration, kept alive by the tracker
keeper thread, and the peer list the tracker gives (ourselves left out); and,
per address, whether it answers (`Backoff`).

The tracker lists whoever registered: an address that is silent, closed, not
a votechain node or not a member costs a request each time it is tried. So
each address keeps a `Backoff`: after a failure it is skipped for a while,
twice as long after each failure in a row up to a cap, and forgiven by its
first success. Outbound (outbound.py) reads it before each broadcast and poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from votechain.errors import TrackerError
from votechain.net.tracker_client import TrackerClient
from votechain.node.config import NodeConfig

log = logging.getLogger("votechain.peer")

Address = tuple[str, int]


class Backoff:
    """When one address may be tried again. Pure: no clock of its own, `now` (a
    time.monotonic() value) is passed in; not thread-safe (its PeerLink locks).

    After the n-th failure in a row the address is skipped for
    min(base * 2**(n-1), cap) s; a success ends that and marks it `proven`.
    The delay doubles only with the attempts that fail, so an honest peer that
    was unreachable for T s (frozen, restarting) is skipped for at most about
    T s more once it answers again, never more than `cap`; a junk address is
    tried once per `cap` once it has failed a few times. A floor set for
    misbehaviour (`at_least`) stays until it ends, success or not: a reply
    still in flight when the peer was caught must not forgive it."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0  # in a row, since the last success
        self.until = 0.0  # skipped before this time
        self.penalty_until = 0.0  # ...and before this one, whatever succeeds
        # The last attempt succeeded: this address answered as a votechain peer
        # of our network. False until then, and again after any failure.
        self.proven = False

    def ready(self, now: float) -> bool:
        """Whether the address may be tried at `now`."""
        return now >= self.until and now >= self.penalty_until

    def failed(self, now: float, at_least: float = 0.0) -> float:
        """Count a failure at `now`; how long the address is now skipped for
        (`at_least`: a floor, for a peer that misbehaved)."""
        self.failures += 1
        self.proven = False
        delay = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 64))
        self.until = max(self.until, now + delay)
        if at_least > 0:
            self.penalty_until = max(self.penalty_until, now + at_least)
        return max(delay, at_least)

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0
        self.proven = True


class PeerDirectory:
    """The tracker client of one node, listening on `address`; `changed` is
    called each time the node (re-)registers and each time the keeper's list
    names a peer it did not, so the node can resolve, and reach the newcomer,
    at once."""

    def __init__(self, config: NodeConfig, address: Address, *, stopping: threading.Event,
                 changed: Callable[[], None]) -> None:
        self._config = config
        self._address = address
        self._stopping = stopping
        self._changed = changed
        self._self_addresses = {address, ("127.0.0.1", address[1])}
        self._lock = threading.Lock()
        self._known: list[Address] = []
        # Whether the tracker answered the keeper's last request: None before
        # the first attempt; written by the keeper thread only.
        self.up: bool | None = None
        self.tracker = TrackerClient(*config.tracker, timeout=config.peer_timeout)

    @property
    def known(self) -> list[Address]:
        """The other peers in the tracker's last answer."""
        with self._lock:
            return list(self._known)

    def run(self) -> None:
        """The tracker keeper thread: re-register when the tracker comes back,
        refresh the list every tracker_interval."""
        host, port = self._config.tracker
        while not self._stopping.is_set():
            try:
                if not self.tracker.connected:
                    self.tracker.connect()
                    self.tracker.register(self._address[1])
                    if self.up is None:
                        log.info("registered with tracker %s:%d", host, port)
                    elif not self.up:
                        log.warning("tracker %s:%d is back: registered again", host, port)
                    else:  # the connection broke in another thread (fresh()), unnoticed here
                        log.debug("re-registered with tracker %s:%d", host, port)
                    self.up = True
                    self._changed()
                # Asking for the list doubles as the liveness check of the registration.
                before = set(self.known)
                if not before.issuperset(self._remember(self.tracker.nodes())):
                    # A peer joined: the round polls it, which proves our link
                    # to it. Until a member has reached every seat it mines
                    # none of its votes (core/relaying.py, "Start-up"), and
                    # nothing else may contact a peer that registered after us
                    # for a sync_interval.
                    self._changed()
            except TrackerError as exc:
                # One line when the tracker is lost (or unreachable from the
                # start), however long it stays away: retries are not news.
                if self.up is not False:
                    log.warning("tracker %s:%d %s: %s; running on the peers known (%d), "
                                "retrying every %g s", host, port,
                                "unreachable" if self.up is None else "lost", exc,
                                len(self.known), self._config.tracker_interval)
                self.up = False
                self.tracker.close()
            self._stopping.wait(self._config.tracker_interval)

    def fresh(self) -> list[Address]:
        """The other peers, fresh from the tracker (the seed design asks for the
        list each time; docs/design.md), or the last list seen if the tracker is
        unreachable."""
        try:
            nodes = self.tracker.nodes()
        except TrackerError:
            return self.known
        return self._remember(nodes)

    def _remember(self, nodes: list[Address]) -> list[Address]:
        others = [a for a in nodes if not self._is_self(a)]
        with self._lock:
            self._known = others
        return others

    def _is_self(self, address: Address) -> bool:
        return address in self._self_addresses or (
            address[1] == self._address[1] and address[0] == self.tracker.local_ip
        )

    def close(self) -> None:
        self.tracker.close()

"""Who the other peers are: the tracker registration, kept alive by the tracker
keeper thread, and the peer list the tracker gives (ourselves left out).
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


class PeerDirectory:
    """The tracker client of one node, listening on `address`; `registered` is
    called each time the node (re-)registers, so it can resolve at once."""

    def __init__(self, config: NodeConfig, address: Address, *, stopping: threading.Event,
                 registered: Callable[[], None]) -> None:
        self._config = config
        self._address = address
        self._stopping = stopping
        self._registered = registered
        self._self_addresses = {address, ("127.0.0.1", address[1])}
        self._lock = threading.Lock()
        self._known: list[Address] = []
        self.tracker = TrackerClient(*config.tracker, timeout=config.peer_timeout)

    @property
    def known(self) -> list[Address]:
        """The other peers in the tracker's last answer."""
        with self._lock:
            return list(self._known)

    def run(self) -> None:
        """The tracker keeper thread: re-register when the tracker comes back,
        refresh the list every tracker_interval."""
        while not self._stopping.is_set():
            try:
                if not self.tracker.connected:
                    self.tracker.connect()
                    self.tracker.register(self._address[1])
                    log.info("registered with tracker %s:%d", *self._config.tracker)
                    self._registered()
                # Asking for the list doubles as the liveness check of the registration.
                self._remember(self.tracker.nodes())
            except TrackerError as exc:
                if self.tracker.connected:
                    log.warning("tracker connection lost: %s", exc)
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

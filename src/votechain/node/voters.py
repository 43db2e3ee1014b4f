"""Voters waiting for their votes to be final (core/finality.py): each waits on
its own event, set only when the final height passes its vote's block, so an
append wakes nobody whose vote it does not settle (the alternative, every
waiter re-checking its vote at every append, costs a lookup per waiter per
block). Not thread-safe on its own: every method runs under the node's lock,
except `wait`, which takes it itself around its checks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from votechain.core.block import Block
from votechain.errors import NodeStopping

# (the block holding a tx id in our chain, and whether it is final), read under the lock.
Lookup = Callable[[bytes], tuple[Block | None, bool]]


class FinalWaiters:
    """The voters waiting, by tx id; `lock` is the node's."""

    def __init__(self, lock: threading.RLock, lookup: Lookup, stopping: threading.Event) -> None:
        self._lock = lock
        self._lookup = lookup
        self._stopping = stopping
        self._waiting: dict[bytes, list[threading.Event]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def wait(self, tx_id: bytes, timeout: float) -> tuple[Block | None, bool]:
        """Wait at most `timeout` s for vote `tx_id` to be final: its block (None
        if not in our chain) and whether it is final. Raises NodeStopping if
        the node stops before the vote is in a block."""
        event = threading.Event()
        with self._lock:
            block, final = self._lookup(tx_id)
            if final:
                return block, True
            self._waiting.setdefault(tx_id, []).append(event)
        try:
            event.wait(timeout)
        finally:
            with self._lock:
                events = self._waiting.get(tx_id, [])
                events.remove(event)
                if not events:
                    self._waiting.pop(tx_id, None)
                block, final = self._lookup(tx_id)
        if block is None and self._stopping.is_set():
            raise NodeStopping(
                f"the node stopped before vote {tx_id.hex()} was mined; it stays queued "
                "and is mined when the node starts again")
        return block, final

    def settled(self, blocks: Iterable[Block]) -> None:
        """`blocks` became final: wake the voters of their votes (under the lock)."""
        waiting = self._waiting
        for block in blocks:
            for event in waiting.get(block.transaction.tx_id, ()):
                event.set()

    def wake_all(self) -> None:
        """The node stops: every waiter returns (under the lock)."""
        for events in self._waiting.values():
            for event in events:
                event.set()

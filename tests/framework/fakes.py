"""In-memory stand-ins for the node, for tests of what sits in front of it.

- `FakeNode`: a ControlHandler (net/control_server.py) whose "miner" is the
  test: votes are queued, and `mine_all()` (called at once unless `auto_mine`
  is off) puts them in blocks. The control channel and the `votechain`
  command are tested against it without a real node, its keys or its miner.
"""

from __future__ import annotations

import threading

from votechain.core.block import HASH_BYTES, Block, Transaction, genesis_block
from votechain.core.voting import tally, vote_transaction
from votechain.protocol.control import NodeStatus


class FakeNode:
    """A ControlHandler whose 'miner' is the test: `mine_all()` puts queued votes in blocks."""

    def __init__(self) -> None:
        self.chain: list[Block] = [genesis_block()]
        self.queue: list[bytes] = []
        self._txs: dict[bytes, Transaction] = {}
        self._changed = threading.Condition()
        self.auto_mine = True
        self.fail_status = False
        self.recounts = 0  # tally(recount=True) calls, so a test sees the flag arrive

    def submit_vote(self, category: str) -> bytes:
        tx = vote_transaction(category, now_ms=1_000)
        with self._changed:
            self._txs[tx.tx_id] = tx
            self.queue.append(tx.tx_id)
        if self.auto_mine:
            self.mine_all()
        return tx.tx_id

    def mine_all(self) -> None:
        with self._changed:
            for tx_id in self.queue:
                prev = self.chain[-1]
                block = Block(
                    id=prev.id + 1,
                    transaction=self._txs[tx_id],
                    nonce=0,
                    prev_hash=prev.hash,
                    hash=bytes([len(self.chain)]) * HASH_BYTES,
                    signature=b"",
                    author=b"",
                )
                self.chain.append(block)
            self.queue.clear()
            self._changed.notify_all()

    def wait_for_tx(self, tx_id: bytes, timeout: float) -> Block | None:
        def find() -> Block | None:
            return next((b for b in self.chain if b.transaction.tx_id == tx_id), None)

        with self._changed:
            self._changed.wait_for(lambda: find() is not None, timeout)
            return find()

    def wait_for_vote(self, tx_id: bytes, timeout: float) -> tuple[Block | None, bool]:
        """A fake network of one: a vote is final once in a block."""
        block = self.wait_for_tx(tx_id, timeout)
        return block, block is not None

    def status(self) -> NodeStatus:
        if self.fail_status:
            raise RuntimeError("the node broke")
        tip = self.chain[-1]
        return NodeStatus(
            height=tip.id,
            tip=tip.hash.hex(),
            peers=2,
            pending=len(self.queue),
            backend="pure",
            hashrate=1234.5,
            forks_resolved=0,
            address="127.0.0.1:9000",
            network="fake",
            difficulty=3,
            version="0.1.0",
            tracker="127.0.0.1:8000",
            tracker_up=True,
            uptime=1.5,
            votes_per_second=0.25,
            live_hashrate=2000.0,
            final_height=tip.id,
            locked_height=tip.id,
            seats=0,
        )

    def tally(self, recount: bool = False) -> dict[str, int]:
        self.recounts += recount  # a fake keeps no tally: both ways walk its chain
        return tally(self.chain)

"""Chain: the in-memory blockchain of one node, and the rules that need the whole chain.

Pure: no locks, no I/O, the clock passed in. The node wraps it in one lock and
mirrors every change into the store.

Beyond the per-block rules (rules.py) a chain enforces one more: a transaction
id appears at most once. That is what makes a vote count once even when a fork
switch re-queues it and it is mined again, and what makes a replayed block
from another branch useless.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from votechain.core.block import Block, genesis_block
from votechain.core.rules import check_block_alone, check_link
from votechain.errors import BadGenesis, BadLink, DuplicateTransaction

if TYPE_CHECKING:
    from votechain.core.membership import Members


@dataclass(frozen=True, slots=True)
class Switch:
    """What replacing a chain's suffix did: where the branches part, and the
    abandoned blocks whose transactions the new branch does not carry."""

    fork_id: int
    added: tuple[Block, ...]
    dropped: tuple[Block, ...]
    orphaned: tuple[Block, ...]


class Chain:
    def __init__(self, blocks: Iterable[Block] = (), genesis: Block | None = None) -> None:
        self._blocks: list[Block] = [genesis or genesis_block()]
        self._by_tx: dict[bytes, int] = {}
        self._by_hash: dict[bytes, int] = {self._blocks[0].hash: 0}
        for block in blocks:
            if block.id == 0:
                if block != self._blocks[0]:
                    raise BadGenesis(block, "stored genesis differs from this network's")
                continue
            self._push(block)

    @classmethod
    def verified(cls, blocks: Sequence[Block], *, difficulty: int, now_ms: int,
                 members: Members | None = None) -> Chain:
        """A chain from stored blocks, every rule re-checked (raises at the first bad one)."""
        chain = cls(genesis=members.network.genesis if members is not None else None)
        if blocks and blocks[0].id == 0:
            if blocks[0] != chain.genesis:
                raise BadGenesis(blocks[0], "stored genesis differs from this network's")
            blocks = blocks[1:]
        for block in blocks:
            chain.append(block, difficulty=difficulty, now_ms=now_ms, members=members)
        return chain

    @property
    def genesis(self) -> Block:
        return self._blocks[0]

    @property
    def tip(self) -> Block:
        return self._blocks[-1]

    @property
    def height(self) -> int:
        return self._blocks[-1].id

    def __len__(self) -> int:
        return len(self._blocks)

    def __getitem__(self, block_id: int) -> Block:
        return self._blocks[block_id]

    def blocks(self) -> list[Block]:
        return list(self._blocks)

    def blocks_from(self, first_id: int, limit: int) -> list[Block]:
        return self._blocks[max(first_id, 0) : max(first_id, 0) + max(limit, 0)]

    def has_hash(self, block_hash: bytes) -> bool:
        return block_hash in self._by_hash

    def block_with_tx(self, tx_id: bytes) -> Block | None:
        index = self._by_tx.get(tx_id)
        return None if index is None else self._blocks[index]

    def check_next(self, block: Block) -> None:
        """The cheap, chain-dependent checks of a block that would extend the tip."""
        check_link(block, self.tip)
        if block.transaction.tx_id in self._by_tx:
            raise DuplicateTransaction(block, f"tx {block.transaction.tx_id.hex()} is in block "
                                              f"{self._by_tx[block.transaction.tx_id]}")

    def append(self, block: Block, *, difficulty: int, now_ms: int,
               signature: bool = True, members: Members | None = None) -> None:
        """Validate `block` fully against the tip and append it (`signature=False`:
        every rule but the RSA signature, see rules.check_block_alone)."""
        self.check_next(block)
        check_block_alone(block, difficulty=difficulty, now_ms=now_ms, signature=signature,
                          members=members)
        self._push(block)

    def append_checked(self, block: Block) -> None:
        """Append a block whose stand-alone checks already passed (outside the
        node's lock); only the cheap link and duplicate checks run here."""
        self.check_next(block)
        self._push(block)

    def _push(self, block: Block) -> None:
        self._blocks.append(block)
        self._by_tx[block.transaction.tx_id] = block.id
        self._by_hash[block.hash] = block.id

    def fork_point(self, branch: Sequence[Block]) -> int:
        """The id of the last block of ours that `branch` builds on (branch[0]'s parent).

        Raises BadLink when branch[0] hangs off no block we hold."""
        first = branch[0]
        parent_id = first.id - 1
        if 0 <= parent_id <= self.height and self._blocks[parent_id].hash == first.prev_hash:
            return parent_id
        raise BadLink(first, "builds on a block this node does not hold")

    def switch(self, branch: Sequence[Block], *, difficulty: int, now_ms: int,
               prechecked: bool = False, members: Members | None = None) -> Switch:
        """Replace everything after branch[0]'s parent with `branch`, atomically:
        on any invalid block nothing changes. `prechecked` skips the stand-alone
        checks already done outside the lock.

        Costs the fork's depth plus the branch's length, not the chain's height:
        the kept prefix is neither copied nor walked, only its indexes read."""
        parent_id = self.fork_point(branch)
        # Blocks the branch repeats verbatim are not part of the fork.
        skip = 0
        while (skip < len(branch) and parent_id + 1 + skip <= self.height
               and self._blocks[parent_id + 1 + skip].hash == branch[skip].hash):
            skip += 1
        fork_id = parent_id + skip
        new_blocks = tuple(branch[skip:])
        # Validate the new blocks against the kept prefix (ids 0..fork_id) in
        # place: copying the prefix would make every switch cost the chain's
        # height; this costs the fork's depth plus the branch's length. The
        # rules and their order are append's: link, duplicate, stand-alone.
        prev = self._blocks[fork_id]
        in_branch: dict[bytes, int] = {}
        for block in new_blocks:
            check_link(block, prev)
            tx_id = block.transaction.tx_id
            holder = in_branch.get(tx_id)
            if holder is None:
                index = self._by_tx.get(tx_id)
                # A vote in the part about to be dropped may be carried again.
                holder = index if index is not None and index <= fork_id else None
            if holder is not None:
                raise DuplicateTransaction(block, f"tx {tx_id.hex()} is in block {holder}")
            if not prechecked:
                check_block_alone(block, difficulty=difficulty, now_ms=now_ms, members=members)
            in_branch[tx_id] = block.id
            prev = block
        # Every block passed: only now change anything.
        dropped = tuple(self._blocks[fork_id + 1 :])
        for block in dropped:
            # Guarded: a chain from the unchecked constructor may index a tx id
            # or hash at another block; a switch must not fail halfway on it.
            if self._by_tx.get(block.transaction.tx_id) == block.id:
                del self._by_tx[block.transaction.tx_id]
            if self._by_hash.get(block.hash) == block.id:
                del self._by_hash[block.hash]
        del self._blocks[fork_id + 1 :]
        for block in new_blocks:
            self._push(block)
        orphaned = tuple(b for b in dropped if b.transaction.tx_id not in in_branch)
        return Switch(fork_id=fork_id, added=new_blocks, dropped=dropped, orphaned=orphaned)

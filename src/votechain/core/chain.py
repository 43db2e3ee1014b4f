"""Chain: the blockchain of one node, and the rules that need the whole chain.

Pure: no locks, no I/O, the clock passed in. The node wraps it in one lock and
mirrors every change into the store.

Beyond the per-block rules (rules.py) a chain enforces one more: a transaction
id appears at most once. That is what makes a vote count once even when a fork
switch re-queues it and it is mined again, and what makes a replayed block
from another branch useless.

Where the blocks live. A chain made alone holds every block in memory (tests,
`votechain verify`, the state a node restores before it is attached). A
node's chain is `attach`ed to a History (node/store.py's ChainStore: SQLite)
and keeps in memory only a window of its latest blocks, WINDOW to 2*WINDOW of
them, and the tx ids of those: older blocks and the duplicate-vote rule's
lookups go to the history through its indexes, so memory does not grow with
the chain. The contract that makes that safe: the history holds exactly this
chain's blocks below the window whenever a method is called, which the node
keeps by writing each decision's effects to the store before the next one
and calling `settled()` after each write; a chain forgets only blocks it was
told are settled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, overload

from votechain.core.block import Block, genesis_block
from votechain.core.rules import check_block_alone, check_link
from votechain.errors import BadGenesis, BadLink, DuplicateTransaction

if TYPE_CHECKING:
    from votechain.core.membership import Members

# Blocks an attached chain keeps in memory at least: a fork switch shallower than
# this reads nothing from the history. It trims itself back to WINDOW once it
# holds twice as many, so trimming costs O(1) a block on average.
WINDOW = 1024


class History(Protocol):
    """Where an attached chain's older blocks live (node/store.py's ChainStore).
    Reads only: the node writes to it through its effects."""

    def block_at(self, block_id: int) -> Block:
        """The block of id `block_id` (raises StoreError if it holds none)."""
        ...

    def blocks_between(self, first_id: int, end_id: int) -> list[Block]:
        """The blocks of ids first_id .. end_id - 1, in order."""
        ...

    def id_of_tx(self, tx_id: bytes) -> int | None:
        """The id of the block carrying `tx_id`, or None."""
        ...

    def ids_of_txs(self, tx_ids: Sequence[bytes]) -> dict[bytes, int]:
        """The id of the block carrying each of `tx_ids` that some block carries."""
        ...


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
        self._genesis = genesis or genesis_block()
        # The window: the blocks of ids _base.. in memory (all of them, _base 0,
        # until the chain is attached to a history).
        self._blocks: list[Block] = [self._genesis]
        self._base = 0
        self._by_tx: dict[bytes, int] = {}
        self._history: History | None = None
        for block in blocks:
            if block.id == 0:
                if block != self._genesis:
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

    @classmethod
    def resumed(cls, history: History, anchor: Block, genesis: Block | None = None) -> Chain:
        """A chain attached to `history` whose tip is `anchor`, every block below
        it in the history (trusted: the caller checked what it had to)."""
        chain = cls(genesis=genesis)
        chain._history = history
        chain._blocks = [anchor]
        chain._base = anchor.id
        return chain

    # ------------------------------------------------------------ where blocks live

    def attach(self, history: History) -> None:
        """From now on the blocks below the window live in `history`, which holds
        this chain's blocks as of now; the in-memory ones are trimmed to the window."""
        self._history = history
        self.settled()

    def settled(self) -> None:
        """The history now holds every block of this chain: forget the oldest
        beyond the window (no-op for a chain not attached)."""
        if self._history is None or len(self._blocks) <= 2 * WINDOW:
            return
        cut = len(self._blocks) - WINDOW
        for block in self._blocks[:cut]:
            if self._by_tx.get(block.transaction.tx_id) == block.id:
                del self._by_tx[block.transaction.tx_id]
        del self._blocks[:cut]
        self._base += cut

    @property
    def in_memory(self) -> int:
        """How many blocks the chain holds in memory (the window, when attached)."""
        return len(self._blocks)

    # ------------------------------------------------------------------- reads

    @property
    def genesis(self) -> Block:
        return self._genesis

    @property
    def tip(self) -> Block:
        return self._blocks[-1]

    @property
    def height(self) -> int:
        return self._blocks[-1].id

    def __len__(self) -> int:
        return self.height + 1

    @overload
    def __getitem__(self, key: int) -> Block: ...
    @overload
    def __getitem__(self, key: slice) -> list[Block]: ...

    def __getitem__(self, key: int | slice) -> Block | list[Block]:
        if isinstance(key, slice):
            return self.blocks()[key]
        block_id = key + len(self) if key < 0 else key
        if not 0 <= block_id <= self.height:
            raise IndexError(f"block {key} is not in a chain of height {self.height}")
        if block_id >= self._base:
            return self._blocks[block_id - self._base]
        if block_id == 0:
            return self._genesis
        assert self._history is not None  # _base > 0 only when attached
        return self._history.block_at(block_id)

    def blocks(self) -> list[Block]:
        """Every block, genesis first (read from the history below the window:
        for tests and tools; the node serves ranges with `blocks_from`)."""
        return self.blocks_from(0, len(self))

    def iter_blocks(self, batch: int = WINDOW) -> Iterator[Block]:
        """Every block, genesis first, read `batch` at a time (a walk of a long
        chain that never holds it all in memory)."""
        for first in range(0, len(self), batch):
            yield from self.blocks_from(first, batch)

    def blocks_from(self, first_id: int, limit: int) -> list[Block]:
        first = max(first_id, 0)
        end = min(first + max(limit, 0), len(self))
        if first >= end:
            return []
        older: list[Block] = []
        if first < self._base:
            assert self._history is not None
            older = self._history.blocks_between(first, min(end, self._base))
        return older + self._blocks[max(first - self._base, 0) : max(end - self._base, 0)]

    def holds(self, block_id: int, block_hash: bytes) -> bool:
        """Whether the block of id `block_id` in this chain has hash `block_hash`
        (ids are positions: no index of hashes is needed)."""
        return 0 <= block_id <= self.height and self[block_id].hash == block_hash

    def block_with_tx(self, tx_id: bytes) -> Block | None:
        block_id = self._tx_holder(tx_id)
        return None if block_id is None else self[block_id]

    def _tx_holder(self, tx_id: bytes) -> int | None:
        """The id of the block carrying `tx_id`: the window's dict, else the history's index."""
        block_id = self._by_tx.get(tx_id)
        if block_id is not None or self._history is None:
            return block_id
        block_id = self._history.id_of_tx(tx_id)
        # The history's rows at or above the window's base are the window's.
        return block_id if block_id is not None and block_id < self._base else None

    def _txs_held(self, tx_ids: Sequence[bytes]) -> dict[bytes, int]:
        """`_tx_holder` of each of `tx_ids` that this chain carries, in one go."""
        held = {tx_id: self._by_tx[tx_id] for tx_id in tx_ids if tx_id in self._by_tx}
        if self._history is not None:
            rest = [tx_id for tx_id in tx_ids if tx_id not in held]
            if rest:
                held.update((tx_id, block_id) for tx_id, block_id
                            in self._history.ids_of_txs(rest).items() if block_id < self._base)
        return held

    # ------------------------------------------------------------------ writes

    def check_next(self, block: Block) -> None:
        """The cheap, chain-dependent checks of a block that would extend the tip."""
        check_link(block, self.tip)
        holder = self._tx_holder(block.transaction.tx_id)
        if holder is not None:
            raise DuplicateTransaction(block, f"tx {block.transaction.tx_id.hex()} is in block "
                                              f"{holder}")

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

    def fork_point(self, branch: Sequence[Block]) -> int:
        """The id of the last block of ours that `branch` builds on (branch[0]'s parent).

        Raises BadLink when branch[0] hangs off no block we hold."""
        first = branch[0]
        parent_id = first.id - 1
        if self.holds(parent_id, first.prev_hash):
            return parent_id
        raise BadLink(first, "builds on a block this node does not hold")

    def parting(self, branch: Sequence[Block]) -> int:
        """The id of the last block `branch` and our chain share: its parent, or
        further up when the branch repeats blocks we hold verbatim (those are
        not part of the fork). Raises BadLink as `fork_point` does."""
        parent_id = self.fork_point(branch)
        skip = 0
        while skip < len(branch) and self.holds(parent_id + 1 + skip, branch[skip].hash):
            skip += 1
        return parent_id + skip

    def switch(self, branch: Sequence[Block], *, difficulty: int, now_ms: int,
               prechecked: bool = False, members: Members | None = None) -> Switch:
        """Replace everything after branch[0]'s parent with `branch`, atomically:
        on any invalid block nothing changes. `prechecked` skips the stand-alone
        checks already done outside the lock.

        Costs the fork's depth plus the branch's length, not the chain's height:
        the kept prefix is neither copied nor walked, only its indexes read."""
        fork_id = self.parting(branch)
        new_blocks = tuple(branch[fork_id - self.fork_point(branch):])
        # Validate the new blocks against the kept prefix (ids 0..fork_id) in
        # place: copying the prefix would make every switch cost the chain's
        # height; this costs the fork's depth plus the branch's length. The
        # rules and their order are append's: link, duplicate, stand-alone.
        prev = self[fork_id]
        in_branch: dict[bytes, int] = {}
        # One indexed query for the whole branch, not one per block (a sync adopts
        # thousands at a time).
        stored = self._txs_held([b.transaction.tx_id for b in new_blocks])
        for block in new_blocks:
            check_link(block, prev)
            tx_id = block.transaction.tx_id
            holder = in_branch.get(tx_id)
            if holder is None:
                index = stored.get(tx_id)
                # A vote in the part about to be dropped may be carried again.
                holder = index if index is not None and index <= fork_id else None
            if holder is not None:
                raise DuplicateTransaction(block, f"tx {tx_id.hex()} is in block {holder}")
            if not prechecked:
                check_block_alone(block, difficulty=difficulty, now_ms=now_ms, members=members)
            in_branch[tx_id] = block.id
            prev = block
        # Every block passed: only now change anything.
        dropped = tuple(self.blocks_from(fork_id + 1, self.height - fork_id))
        for block in dropped:
            # Guarded: a chain from the unchecked constructor may index a tx id
            # at another block; a switch must not fail halfway on it.
            if self._by_tx.get(block.transaction.tx_id) == block.id:
                del self._by_tx[block.transaction.tx_id]
        if fork_id >= self._base:
            del self._blocks[fork_id + 1 - self._base :]
        else:
            # Deeper than the window: the window starts again at the fork point
            # (read from the history, which still holds it and everything below).
            # The blocks it held are all dropped, so no tx id of theirs is left.
            self._blocks = [self[fork_id]]
            self._base = fork_id
        for block in new_blocks:
            self._push(block)
        orphaned = tuple(b for b in dropped if b.transaction.tx_id not in in_branch)
        return Switch(fork_id=fork_id, added=new_blocks, dropped=dropped, orphaned=orphaned)

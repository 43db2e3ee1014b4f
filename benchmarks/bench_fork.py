"""The cost of a fork switch on a long chain: it should grow with the fork's depth,
not with the chain's height (issue "Long chains").

Two measurements, each a median over ROUNDS switches of one shape (DEPTH blocks
dropped, DEPTH added: there, then back), with `prechecked=True` as the node
does after checking the blocks outside its lock, so RSA does not hide the
chain's own cost:

- `test_fork_switch` (in memory): a chain of HEIGHT blocks built cheaply
  (difficulty 0, nonce 0, no signature; links and hashes real), held wholly
  in memory as `Chain`'s unchecked constructor makes it;
- `test_fork_switch_on_the_store`: the node's own arrangement at heights
  10,000 and 1,000,000: the chain of signed blocks that benchmarks/long_chain.py
  builds and caches under .benchmarks/long/ (copied, since the switches write
  to it), a Chain attached to that ChainStore with its window of recent
  blocks in memory, and each switch followed by the store write the node
  makes for it (`replace_from`: one SQLite transaction, tally kept).

The medians go in bench_rates as microseconds; benchmarks/conftest.py prints
the heights side by side. Run with ``make bench`` or
``pytest benchmarks/bench_fork.py --benchmark-only``.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from blockkit import cheap_blocks
from long_chain import LONG_CHAIN_DIR, copy_store, prepare
from votechain.core.block import Block, genesis_block
from votechain.core.chain import WINDOW, Chain, Switch
from votechain.node.store import ChainStore

DEPTH = 3
ROUNDS = 200
AUTHOR = b"bench-fork-author"


@functools.cache
def _fork(height: int) -> tuple[list[Block], list[Block]]:
    """A HEIGHT-block chain (genesis excluded) and a DEPTH-block rival of its last DEPTH."""
    main = cheap_blocks(genesis_block(), [f"m{i}" for i in range(height)], AUTHOR)
    rival = cheap_blocks(main[height - DEPTH - 1], [f"r{i}" for i in range(DEPTH)], AUTHOR)
    return main, rival


def _switch_back_and_forth(benchmark: BenchmarkFixture, chain: Chain, main: list[Block],
                           rival: list[Block],
                           after: Callable[[Switch], None] | None = None) -> float:
    """The median microseconds of ROUNDS switches between `main` and `rival`
    (`after(switch)`: what the node does next, inside the timing)."""
    branches = [rival, main]
    durations: list[float] = []
    turn = [0]

    def switch() -> None:
        branch = branches[turn[0] % 2]
        turn[0] += 1
        started = time.perf_counter()
        result = chain.switch(branch, difficulty=0, now_ms=0, prechecked=True)
        if after is not None:
            after(result)
        durations.append(time.perf_counter() - started)
        assert len(result.added) == len(result.dropped) == DEPTH

    benchmark.pedantic(switch, rounds=ROUNDS, iterations=1)  # type: ignore[no-untyped-call]
    return statistics.median(durations) * 1e6


@pytest.mark.parametrize("height", [1_000, 50_000])
def test_fork_switch(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], height: int
) -> None:
    main, rival = _fork(height)
    chain = Chain(main)
    micros = _switch_back_and_forth(benchmark, chain, main[-DEPTH:], rival)
    assert chain.height == height
    bench_rates[f"fork_switch_us_{height}"] = micros
    benchmark.extra_info["switch_us"] = micros


@pytest.mark.parametrize("height", [10_000, 1_000_000])
def test_fork_switch_on_the_store(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], height: int,
    tmp_path: Path,
) -> None:
    long_chain = prepare(LONG_CHAIN_DIR, height)  # built once: cached under .benchmarks/long/
    network = long_chain.organizer.network
    copy_store(long_chain.data_dir, tmp_path)
    store = ChainStore.open(tmp_path, network.difficulty, network.genesis)
    try:
        # A running node's arrangement: the last WINDOW blocks in memory, the rest in SQLite.
        recent = store.blocks_between(height - WINDOW, height + 1)
        chain = Chain.resumed(store, recent[0], genesis=network.genesis)
        for block in recent[1:]:
            chain.append_checked(block)
        main = recent[-DEPTH:]
        rival = cheap_blocks(recent[-DEPTH - 1], [f"r{i}" for i in range(DEPTH)], AUTHOR)

        def stored(result: Switch) -> None:
            store.replace_from(result.fork_id + 1, result.added, requeue=())
            chain.settled()

        micros = _switch_back_and_forth(benchmark, chain, main, rival, stored)
        assert chain.tip == main[-1] and store.tip() == main[-1]
    finally:
        store.close()
    bench_rates[f"long_switch_us@{height}"] = micros  # in the long-chain table
    benchmark.extra_info["switch_us"] = micros

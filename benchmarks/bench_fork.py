"""The cost of a fork switch on a long chain: it should grow with the fork's depth,
not with the chain's height (issue "Long chains").

A chain of HEIGHT blocks is built cheaply: difficulty 0, nonce 0, no signature
(the blocks' links and hashes are real, so the link rule runs as in a node),
loaded with Chain's unchecked constructor. Its last DEPTH blocks have a rival:
a DEPTH-block branch from the same parent. Each timed call switches to the
other branch (there, then back), with `prechecked=True` as the node does after
checking the blocks outside its lock, so RSA does not hide the chain's own cost.
Every call is one switch of the same shape: DEPTH blocks dropped, DEPTH added.

The median time goes in bench_rates as microseconds; benchmarks/conftest.py
prints the two heights side by side. Run with ``make bench`` or
``pytest benchmarks/bench_fork.py --benchmark-only``.
"""

from __future__ import annotations

import functools
import statistics
import time

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from blockkit import cheap_blocks
from votechain.core.block import Block, genesis_block
from votechain.core.chain import Chain

DEPTH = 3
ROUNDS = 200
AUTHOR = b"bench-fork-author"


@functools.cache
def _fork(height: int) -> tuple[list[Block], list[Block]]:
    """A HEIGHT-block chain (genesis excluded) and a DEPTH-block rival of its last DEPTH."""
    main = cheap_blocks(genesis_block(), [f"m{i}" for i in range(height)], AUTHOR)
    rival = cheap_blocks(main[height - DEPTH - 1], [f"r{i}" for i in range(DEPTH)], AUTHOR)
    return main, rival


@pytest.mark.parametrize("height", [1_000, 50_000])
def test_fork_switch(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], height: int
) -> None:
    main, rival = _fork(height)
    chain = Chain(main)
    branches = [rival, main[-DEPTH:]]
    durations: list[float] = []
    turn = [0]

    def switch() -> None:
        branch = branches[turn[0] % 2]
        turn[0] += 1
        started = time.perf_counter()
        result = chain.switch(branch, difficulty=0, now_ms=0, prechecked=True)
        durations.append(time.perf_counter() - started)
        assert len(result.added) == len(result.dropped) == DEPTH

    benchmark.pedantic(switch, rounds=ROUNDS, iterations=1)  # type: ignore[no-untyped-call]
    assert chain.height == height
    micros = statistics.median(durations) * 1e6
    bench_rates[f"fork_switch_us_{height}"] = micros
    benchmark.extra_info["switch_us"] = micros

"""Start-up from a long stored chain: before and after "verified once".

A 10,000-block store (difficulty 1, blocks mined and signed by tests/blockkit.py)
is built once; then, each timed over a few rounds:

- `restore_full`: NodeState.restore re-verifying every block, RSA signature
  included (what start-up did before, and still does for a database older
  than its `verified_height` record);
- `restore_verified`: NodeState.restore with the store's verified_height:
  links, hashes, difficulty, sizes and duplicate votes of every block, RSA
  signatures only for the last RECHECK_TAIL blocks;
- `startup`: the whole start-up read path after the change: ChainStore.open
  (PRAGMA quick_check of the file), reading and decoding every block, and the
  verified restore.

Times go in bench_rates as milliseconds; benchmarks/conftest.py prints them.
Run with ``make bench`` or ``pytest benchmarks/bench_startup.py --benchmark-only``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from blockkit import LOW_DIFFICULTY, NOW, T0, fixed_key, make_block
from votechain.core.block import SALT_BYTES, Block, Transaction, genesis_block
from votechain.core.node_state import NodeState
from votechain.node.store import ChainStore

BLOCKS = 10_000
ROUNDS = 3


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Block]]:
    """A data directory holding a BLOCKS-block chain, and the chain itself."""
    data_dir = tmp_path_factory.mktemp("startup")
    store = ChainStore.open(data_dir, LOW_DIFFICULTY)
    blocks = [genesis_block()]
    for n in range(BLOCKS):
        tx = Transaction(T0 + n, f"c{n % 7}".encode(), n.to_bytes(SALT_BYTES, "big"))
        blocks.append(make_block(blocks[-1], tx))
    store.replace_from(1, blocks[1:], requeue=())  # one transaction: verified_height = BLOCKS
    assert store.verified_height == BLOCKS
    store.close()
    return data_dir, blocks


def timed(benchmark: BenchmarkFixture, run: Callable[[], object]) -> float:
    """The best of ROUNDS timed calls of `run`, in milliseconds."""
    durations: list[float] = []

    def once() -> None:
        started = time.perf_counter()
        run()
        durations.append(time.perf_counter() - started)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)  # type: ignore[no-untyped-call]
    return min(durations) * 1000


def restore(blocks: list[Block], verified_height: int) -> None:
    _, restored = NodeState.restore(fixed_key().public_der, LOW_DIFFICULTY, blocks, [],
                                    now_ms=NOW, verified_height=verified_height)
    assert restored.bad is None


def test_restore_full(benchmark: BenchmarkFixture, bench_rates: dict[str, float],
                      stored: tuple[Path, list[Block]]) -> None:
    _, blocks = stored
    bench_rates["restore_full_ms"] = timed(benchmark, lambda: restore(blocks, 0))
    benchmark.extra_info["blocks"] = BLOCKS


def test_restore_verified(benchmark: BenchmarkFixture, bench_rates: dict[str, float],
                          stored: tuple[Path, list[Block]]) -> None:
    _, blocks = stored
    bench_rates["restore_verified_ms"] = timed(benchmark, lambda: restore(blocks, BLOCKS))
    bench_rates["startup_blocks"] = BLOCKS
    benchmark.extra_info["blocks"] = BLOCKS


def test_startup(benchmark: BenchmarkFixture, bench_rates: dict[str, float],
                 stored: tuple[Path, list[Block]]) -> None:
    data_dir, _ = stored

    def start() -> None:
        store = ChainStore.open(data_dir, LOW_DIFFICULTY)
        try:
            restore(store.blocks(), store.verified_height)
        finally:
            store.close()

    bench_rates["startup_ms"] = timed(benchmark, start)
    benchmark.extra_info["blocks"] = BLOCKS

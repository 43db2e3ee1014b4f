"""`votechain verify` throughput (app/verify.py): a 10,000-block stored chain
re-verified with one worker (in-process, no pool) and with one worker per core.

The time is what the command pays end to end, as it reports it: reading and
decoding the blocks from SQLite, the parent's sequential checks, and (with the
pool) spawning the workers and shipping them the signatures. The chain is mined
at difficulty 1, so building it costs only its RSA signing (~1.5 ms a block,
once per module); verification does the same work at any difficulty.

Run with `make bench`, or alone:
`pytest -q -p no:cacheprovider benchmarks/bench_verify.py --benchmark-only`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from blockkit import NOW, make_chain
from votechain.app.verify import verify_store
from votechain.node.store import ChainStore

CHAIN_BLOCKS = 10_000
DIFFICULTY = 1
ROUNDS = 3
CORES = os.cpu_count() or 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify-chain")
    store = ChainStore.open(path, DIFFICULTY)
    try:
        for block in make_chain(CHAIN_BLOCKS)[1:]:
            store.append(block)
    finally:
        store.close()
    return path


def best_rate(benchmark: BenchmarkFixture, fn: Callable[[], int]) -> float:
    """Blocks/s of the fastest of ROUNDS calls, timed here (the same with --benchmark-disable)."""
    durations: list[float] = []
    counts: list[int] = []

    def timed() -> None:
        started = time.perf_counter()
        counts.append(fn())
        durations.append(time.perf_counter() - started)

    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)  # type: ignore[no-untyped-call]
    assert multiprocessing.active_children() == []
    return counts[0] / min(durations)


def verify_with(data_dir: Path, workers: int) -> Callable[[], int]:
    def run() -> int:
        verified = verify_store(data_dir, workers=workers, now_ms=NOW)
        assert verified.workers == workers
        return verified.count

    return run


def test_verify_one_worker(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], data_dir: Path
) -> None:
    rate = best_rate(benchmark, verify_with(data_dir, 1))
    bench_rates["verify_1_per_s"] = rate
    benchmark.extra_info["blocks_per_s"] = round(rate)


def test_verify_every_core(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], data_dir: Path
) -> None:
    rate = best_rate(benchmark, verify_with(data_dir, CORES))
    bench_rates["verify_n_per_s"] = rate
    bench_rates["verify_workers"] = CORES
    benchmark.extra_info["blocks_per_s"] = round(rate)
    benchmark.extra_info["workers"] = CORES

"""Miner and validation throughput, with the ratios that say whether the native
kernel earns its keep.

- hashlib's single-stream SHA-256 rate (compressions/s): one nonce hash is one
  compression, so this is the bar for "as fast as the library can hash";
- hash rates at difficulty 16 over fixed ranges (nothing found, every nonce
  hashed): pure, native 1 worker, portable C 1 worker, MinerPool on every core;
- the pool's abort latency (abort() to wait() returning);
- the pool's dispatch round trip alone (submit a job found by the first nonce,
  wait() for it), on 1 worker and on every core, and blocks/s of submit + wait
  at difficulty 4 on 1 worker beside the same searches done in-process: what a
  node pays per block for mining in worker processes;
- blocks/s mined and signed at difficulty 4, and blocks/s validated
  (`rules.check_block_alone`, public-key cache warm).

Each benchmark puts hashes_per_s, x_pure and x_sha256_limit in its extra_info;
benchmarks/conftest.py prints a summary at the end of the run. The figures come
from this module's own clock around each round, so they are the same with
--benchmark-disable.

Run with ``make bench`` (``pytest benchmarks --benchmark-only``).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from votechain import mining
from votechain.app import bench
from votechain.core import rules
from votechain.core.block import HASH_BYTES, SALT_BYTES, Block, Transaction, genesis_block
from votechain.core.keys import NodeKey
from votechain.mining import backend as backend_mod

ROUNDS = 3
PURE_NONCES = 1_000_000
NATIVE_NONCES = bench.NATIVE_NONCES
PORTABLE_NONCES = bench.PORTABLE_NONCES
ABORT_ROUNDS = 100
# Round trips timed one by one: enough for a steady p99 in a few seconds at worst.
DISPATCH_ROUNDS = 2000
DISPATCH_WARMUP = 50
# Blocks mined by the 1-worker pool, in a fixed sequence of contents, so the
# nonces (the luck) are the same from one run to the next and only the pool's
# own cost differs between two versions of it.
POOL_BLOCKS = 200
BLOCK_DIFFICULTY = 4
BLOCK_ROUNDS = 20
VALIDATION_BLOCKS = 50

needs_native = pytest.mark.skipif(
    backend_mod.native_module is None,
    reason=f"native extension unavailable: {backend_mod.native_unavailable_reason}",
)


class Clock:
    """Times each call of `fn` itself, so rates do not depend on pytest-benchmark's mode."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.durations: list[float] = []

    def __call__(self) -> None:
        started = time.perf_counter()
        self.fn()
        self.durations.append(time.perf_counter() - started)

    @property
    def best(self) -> float:
        return min(self.durations)


def run_rounds(benchmark: BenchmarkFixture, clock: Clock, *, rounds: int,
               setup: Callable[[], None] | None = None, warmup: int = 0) -> None:
    """pytest-benchmark's pedantic mode: exactly `rounds` timed calls, one each,
    after `warmup` calls of the bare function that neither clock sees."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        clock.fn()
    benchmark.pedantic(clock, setup=setup, rounds=rounds, iterations=1)  # type: ignore[no-untyped-call]


def baseline(rates: dict[str, float], key: str) -> float:
    """The limit or pure rate, measured here (quickly) if its benchmark was deselected."""
    if key not in rates:
        rates[key] = bench.sha256_limit() if key == "limit" else bench.kernel_rate("pure", 200_000)
    return rates[key]


def record(benchmark: BenchmarkFixture, rates: dict[str, float], key: str, rate: float) -> None:
    rates[key] = rate
    benchmark.extra_info["hashes_per_s"] = rate
    benchmark.extra_info["x_pure"] = rate / baseline(rates, "pure")
    benchmark.extra_info["x_sha256_limit"] = rate / baseline(rates, "limit")


def search_range(backend: str, nonces: int) -> Callable[[], object]:
    search = mining.kernel(backend)
    content, start, difficulty = bench.BENCH_CONTENT, bench.BENCH_START, bench.BENCH_DIFFICULTY
    return lambda: search(content, difficulty, start, start + nonces, None)


# --- hash rates --------------------------------------------------------------------------


def test_sha256_single_stream_limit(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float]
) -> None:
    buffer = bytes(bench.LIMIT_BUFFER_BYTES)
    clock = Clock(lambda: hashlib.sha256(buffer).digest())
    run_rounds(benchmark, clock, rounds=ROUNDS)
    rate = len(buffer) / clock.best / bench.SHA256_BLOCK_BYTES
    bench_rates["limit"] = rate
    record(benchmark, bench_rates, "limit", rate)


def test_hashrate_pure(benchmark: BenchmarkFixture, bench_rates: dict[str, float]) -> None:
    clock = Clock(search_range("pure", PURE_NONCES))
    run_rounds(benchmark, clock, rounds=ROUNDS)
    record(benchmark, bench_rates, "pure", PURE_NONCES / clock.best)


@needs_native
def test_hashrate_native_1_worker(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float]
) -> None:
    clock = Clock(search_range("native", NATIVE_NONCES))
    run_rounds(benchmark, clock, rounds=ROUNDS)
    benchmark.extra_info["kernel"] = mining.describe()
    record(benchmark, bench_rates, "native", NATIVE_NONCES / clock.best)


@needs_native
def test_hashrate_portable_1_worker(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float]
) -> None:
    clock = Clock(search_range("portable", PORTABLE_NONCES))
    run_rounds(benchmark, clock, rounds=ROUNDS)
    record(benchmark, bench_rates, "portable", PORTABLE_NONCES / clock.best)


@pytest.fixture(scope="module")
def pool() -> Iterator[mining.MinerPool]:
    with mining.MinerPool(os.cpu_count() or 1, backend=bench.pool_backend()) as p:
        yield p


def test_hashrate_pool_every_core(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], pool: mining.MinerPool
) -> None:
    nonces = bench.pool_nonces(pool.backend, pool.size)
    if pool.backend == "pure":
        nonces = pool.size * PURE_NONCES

    def job() -> None:
        pool.submit(bench.BENCH_CONTENT, bench.BENCH_DIFFICULTY, bench.BENCH_START,
                    bench.BENCH_START + nonces)
        assert pool.wait() is None

    clock = Clock(job)
    run_rounds(benchmark, clock, rounds=ROUNDS)
    bench_rates["pool_workers"] = pool.size
    benchmark.extra_info["workers"] = pool.size
    benchmark.extra_info["backend"] = pool.backend
    rate = nonces / clock.best
    record(benchmark, bench_rates, "pool", rate)
    if "native" in bench_rates:
        benchmark.extra_info["x_native_1"] = rate / bench_rates["native"]


def test_pool_abort_latency(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], pool: mining.MinerPool
) -> None:
    def start_job() -> None:
        pool.submit(bench.BENCH_CONTENT, bench.BENCH_DIFFICULTY)
        with contextlib.suppress(TimeoutError):
            pool.wait(timeout=0.01)  # every worker is hashing by now

    stops: list[float] = []

    def abort() -> None:
        pool.abort()
        assert pool.wait() is None
        assert pool.last_stop_latency is not None
        stops.append(pool.last_stop_latency)

    clock = Clock(abort)
    run_rounds(benchmark, clock, rounds=ABORT_ROUNDS, setup=start_job)
    p50, p99 = bench.percentiles_ms(clock.durations)
    stop_p50, stop_p99 = bench.percentiles_ms(stops)
    bench_rates.update(abort_p50_ms=p50, abort_p99_ms=p99, abort_stop_p50_ms=stop_p50,
                       abort_stop_p99_ms=stop_p99)
    benchmark.extra_info.update(p50_ms=p50, p99_ms=p99, stop_p50_ms=stop_p50,
                                stop_p99_ms=stop_p99)


@pytest.fixture(scope="module")
def pool_1() -> Iterator[mining.MinerPool]:
    with mining.MinerPool(1, backend=bench.pool_backend()) as p:
        yield p


@contextlib.contextmanager
def one_cpu_for(pool: mining.MinerPool) -> Iterator[None]:
    """This process and every worker of `pool` on one CPU, for the duration.

    Why: in a VM, waking a process whose (virtual) CPU has gone idle costs tens
    of microseconds whatever carries the wake-up (a bare pipe byte's round trip
    was ~8 us on one vCPU and ~70 us across two, on the 2-vCPU machine these
    figures were first taken on), and the scheduler chooses the placement run by
    run. On one CPU the figure is the pool's own cost plus two context switches,
    and stays put from one run to the next."""
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity")
    before = {pid: os.sched_getaffinity(pid) for pid in [0, *pool.pids]}
    cpu = {min(before[0])}
    try:
        for pid in before:
            os.sched_setaffinity(pid, cpu)
        yield
    finally:
        for pid, cpus in before.items():  # the pool outlives the test (a module fixture)
            os.sched_setaffinity(pid, cpus)


@pytest.mark.parametrize("placement", ["1_worker", "1_worker_same_cpu", "every_core"])
def test_pool_dispatch_round_trip(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], request: pytest.FixtureRequest,
    placement: str,
) -> None:
    """submit() + wait() of a job at difficulty 0 (the first nonce searched meets
    it): what the pool itself costs per job, with next to no hashing in it.
    "1_worker" and "every_core" leave placement to the scheduler, as a node does;
    "1_worker_same_cpu" pins (see one_cpu_for), for a figure that does not
    depend on where the worker happened to land."""
    if placement == "every_core":
        pool: mining.MinerPool = request.getfixturevalue("pool")
        pinned: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        pool = request.getfixturevalue("pool_1")
        pinned = one_cpu_for(pool) if placement == "1_worker_same_cpu" else contextlib.nullcontext()
    contents = [hashlib.sha256(b"dispatch %d" % n).digest() for n in range(16)]
    counter = itertools.count()

    def round_trip() -> None:
        n = next(counter)
        # Every worker's first nonce meets it; whichever reports first stops the others.
        assert pool.mine(contents[n % len(contents)], 0, n * 1000) is not None

    clock = Clock(round_trip)
    with pinned:
        run_rounds(benchmark, clock, rounds=DISPATCH_ROUNDS, warmup=DISPATCH_WARMUP)
    p50, p99 = bench.percentiles_ms(clock.durations)
    bench_rates[f"dispatch_{placement}_p50_us"] = p50 * 1e3
    bench_rates[f"dispatch_{placement}_p99_us"] = p99 * 1e3
    benchmark.extra_info.update(workers=pool.size, backend=pool.backend, p50_us=p50 * 1e3,
                                p99_us=p99 * 1e3)


def block_contents(count: int) -> list[bytes]:
    return [hashlib.sha256(b"pool block %d" % n).digest() for n in range(count)]


def test_pool_blocks_per_second_1_worker(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], pool_1: mining.MinerPool
) -> None:
    """submit() + wait() at difficulty 4 on one worker, back to back, over the same
    POOL_BLOCKS contents every run. Beside it the same searches in this process,
    one pass before the pool's rounds and one after (the mean of the two, so a
    change of load during the run weighs on both sides): one worker searches in
    order from 0 as they do, so both hash the same nonces and the difference is
    what the pool costs per block."""
    contents = block_contents(POOL_BLOCKS)
    search = mining.kernel(pool_1.backend)
    nonces: list[int | None] = []

    def search_here() -> float:
        nonces.clear()
        started = time.perf_counter()
        nonces.extend(search(content, BLOCK_DIFFICULTY, 0, mining.NONCE_SPACE, None)
                      for content in contents)
        return time.perf_counter() - started

    before = search_here()
    counter = itertools.count()

    def one_block() -> None:
        n = next(counter) % POOL_BLOCKS
        assert pool_1.mine(contents[n], BLOCK_DIFFICULTY) == nonces[n]

    clock = Clock(one_block)
    run_rounds(benchmark, clock, rounds=POOL_BLOCKS)
    in_process = (before + search_here()) / 2
    pooled = sum(clock.durations)
    rounds = len(clock.durations)
    bench_rates["pool_blocks_per_s"] = rounds / pooled
    benchmark.extra_info.update(
        blocks_per_s=rounds / pooled, in_process_blocks_per_s=POOL_BLOCKS / in_process,
        overhead_us_per_block=(pooled / rounds - in_process / POOL_BLOCKS) * 1e6,
        backend=pool_1.backend,
    )


# --- blocks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> NodeKey:
    return NodeKey.generate()


def mine_and_sign(prev: Block, tx: Transaction, key: NodeKey, difficulty: int) -> Block:
    """What a node does per block: mine the nonce, then sign the hash."""
    template = Block(id=prev.id + 1, transaction=tx, nonce=0, prev_hash=prev.hash,
                     hash=bytes(HASH_BYTES), signature=b"", author=key.public_der)
    nonce = mining.search(template.content(), difficulty, backend=mining.DEFAULT_BACKEND)
    assert nonce is not None
    mined = template.with_nonce(nonce)
    return replace(mined, signature=key.sign(mined.hash))


def test_blocks_mined_and_signed_per_second(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], key: NodeKey
) -> None:
    counter = itertools.count()
    genesis = genesis_block()

    def one_block() -> None:
        n = next(counter)
        tx = Transaction(1_700_000_000_000 + n, b"bench", n.to_bytes(SALT_BYTES, "big"))
        mine_and_sign(genesis, tx, key, BLOCK_DIFFICULTY)

    clock = Clock(one_block)
    run_rounds(benchmark, clock, rounds=BLOCK_ROUNDS)
    # Mining time varies with luck; the mean over the rounds is the sustained rate.
    bench_rates["blocks_per_s"] = len(clock.durations) / sum(clock.durations)
    benchmark.extra_info["blocks_per_s"] = bench_rates["blocks_per_s"]
    benchmark.extra_info["backend"] = mining.DEFAULT_BACKEND


def test_block_validations_per_second(
    benchmark: BenchmarkFixture, bench_rates: dict[str, float], key: NodeKey
) -> None:
    blocks: list[Block] = []
    prev = genesis_block()
    for n in range(VALIDATION_BLOCKS):
        prev = mine_and_sign(prev, Transaction(1_700_000_000_000, b"validate",
                                               n.to_bytes(SALT_BYTES, "big")),
                             key, BLOCK_DIFFICULTY)
        blocks.append(prev)
    now_ms = 1_800_000_000_000
    rules.check_block_alone(blocks[0], difficulty=BLOCK_DIFFICULTY, now_ms=now_ms)  # warm

    def validate_all() -> None:
        for block in blocks:
            rules.check_block_alone(block, difficulty=BLOCK_DIFFICULTY, now_ms=now_ms)

    clock = Clock(validate_all)
    run_rounds(benchmark, clock, rounds=10)
    bench_rates["validations_per_s"] = len(blocks) / clock.best
    benchmark.extra_info["validations_per_s"] = bench_rates["validations_per_s"]

"""Long-chain figures (issue 10) at heights 10,000 and 1,000,000, on real
`votechain` processes (benchmarks/long_chain.py does the measuring):

- start-up: a peer on the stored chain, spawn to `status` answering at the full
  height, and the peer's resident memory then;
- sync: a fresh peer (empty, admitted) joining the tracker the first peer
  serves on, spawn to `status` at the full height with the same tip: blocks/s;
- `votechain verify`: blocks/s with one worker and with one per core;
- two peers on copies of the chain voting concurrently: committed votes/s,
  the median of VOTE_WINDOWS windows of VOTE_SECONDS.

benchmarks/conftest.py prints them as one table with the issue's goals beside
them (start-up < 2 s and RSS < 150 MB at 1,000,000; RSS and vote rate within
20% of the 10,000 figures; verify with 2 workers >= 1.6x one). The goals are
reported, not asserted: a slow machine must not fail `make bench`. What is
asserted is correctness: every peer reaches the full height with the stored tip,
the synced peer's tip is the source's, `verify` finds the chain OK, the two
voting peers settle on one tip.

The chains are cached under .benchmarks/long/ (difficulty 1), where
`benchmarks/long_chain.py` keeps them too: the 10,000-block one builds in
seconds, the 1,000,000-block one in about 4 minutes on 2 cores, once. One height
alone: `pytest -q -s -p no:cacheprovider benchmarks/bench_long_chain.py -k 10000
--benchmark-only` (or `-k 1M`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import long_chain
from benchkit import run
from long_chain import LongChain, Served, Startup, Synced, VerifyRun, VotingPair

# Ids that -k can tell apart: "1000000" would contain "10000".
HEIGHTS = [pytest.param(10_000, id="10000"), pytest.param(1_000_000, id="1M")]
CORES = os.cpu_count() or 1
VOTE_SECONDS = 10.0
# Windows of VOTE_SECONDS, their median reported: two peers racing each other
# (issue 11) make one window's rate swing by a third from run to run.
VOTE_WINDOWS = 3
# Above pyproject's 300 s per test: building the 1,000,000-block chain (the first
# test's setup) takes minutes. Each wait inside has its own deadline, scaled to
# the height (long_chain.deadline), so a hang still fails well before this.
pytestmark = pytest.mark.timeout(3600)


def announce(config: pytest.Config, text: str) -> None:
    """Print past pytest's capture: a 4-minute build should not pass in silence."""
    capture = config.pluginmanager.getplugin("capturemanager")
    assert capture is not None
    with capture.global_and_fixture_disabled():
        print(text, flush=True)


class Run:
    """One height's chain, and the tracker and serving peer that start-up and
    sync share, started on first use and stopped (`quiet`) before the figures
    that should not share the CPU with them."""

    def __init__(self, chain: LongChain) -> None:
        self.chain = chain
        self._processes = ExitStack()
        self._served: Served | None = None
        self.startup: Startup | None = None

    def tracker(self) -> Served:
        """The tracker (started on first use), no peer yet."""
        if self._served is None:
            self._served = self._processes.enter_context(Served(self.chain))
        return self._served

    def served(self) -> Served:
        """The tracker, and the peer on the chain (its start-up kept in `startup`)."""
        served = self.tracker()
        if self.startup is None:
            self.startup = served.start_source()
        return served

    def quiet(self) -> None:
        """Stop the tracker and the peer, if they run."""
        self._processes.close()
        self._served = None
        self.startup = None


@pytest.fixture(scope="module", params=HEIGHTS)
def long_run(request: pytest.FixtureRequest) -> Iterator[Run]:
    height: int = request.param
    root = long_chain.LONG_CHAIN_DIR
    have = long_chain.built_height(root, height)
    if have < height:
        announce(request.config,
                 f"\nbuilding the {height:,}-block chain in {long_chain.chain_dir(root, height)} "
                 f"(from {have:,}; once, then cached: ~4 minutes on 2 cores for 1,000,000)")
        started = time.monotonic()
        chain = long_chain.prepare(root, height)
        announce(request.config, f"built in {time.monotonic() - started:.0f} s")
    else:
        chain = long_chain.prepare(root, height)
    holder = Run(chain)
    try:
        yield holder
    finally:
        holder.quiet()


def timed_once(benchmark: BenchmarkFixture, fn: Callable[[], None]) -> None:
    """One round of `fn` (each is seconds to minutes of real processes)."""
    run(benchmark, fn, rounds=1, iterations=1, warmup_rounds=0)


def test_startup(benchmark: BenchmarkFixture, bench_rates: dict[str, float],
                 long_run: Run) -> None:
    long_run.quiet()  # start-up of a peer on the chain, measured afresh
    long_run.tracker()  # not timed: only the peer's start-up is

    def start() -> None:
        long_run.served()

    timed_once(benchmark, start)
    up = long_run.startup
    assert up is not None
    height = long_run.chain.height
    bench_rates[f"long_startup_s@{height}"] = up.seconds
    bench_rates[f"long_rss_mb@{height}"] = up.rss_mb
    benchmark.extra_info.update(seconds=round(up.seconds, 3), rss_mb=round(up.rss_mb, 1))
    print(f"\n{height:,} blocks: start-up to status {up.seconds:.2f} s, "
          f"peer RSS {up.rss_mb:.0f} MB")


def test_sync(benchmark: BenchmarkFixture, bench_rates: dict[str, float],
              long_run: Run) -> None:
    served = long_run.served()
    synced: list[Synced] = []
    timed_once(benchmark, lambda: synced.append(served.sync_fresh()))
    result = synced[0]
    height = long_run.chain.height
    bench_rates[f"long_sync_per_s@{height}"] = result.rate
    benchmark.extra_info.update(blocks_per_s=round(result.rate), rss_mb=round(result.rss_mb, 1))
    print(f"\n{height:,} blocks: a fresh peer synced in {result.seconds:.2f} s, "
          f"{result.rate:,.0f} blocks/s, its RSS {result.rss_mb:.0f} MB")


@pytest.mark.parametrize("workers", [1, CORES], ids=["1-worker", "every-core"])
def test_verify(benchmark: BenchmarkFixture, bench_rates: dict[str, float], long_run: Run,
                workers: int) -> None:
    long_run.quiet()  # no peer sharing the cores
    runs: list[VerifyRun] = []
    timed_once(benchmark, lambda: runs.append(long_chain.verify(long_run.chain, workers)))
    verified = runs[0]
    height = long_run.chain.height
    assert verified.blocks == height + 1  # the genesis too
    bench_rates[f"long_verify_{'1' if workers == 1 else 'n'}@{height}"] = verified.rate
    bench_rates["long_verify_workers"] = CORES
    benchmark.extra_info.update(blocks_per_s=round(verified.rate), workers=workers)
    print(f"\n{height:,} blocks: verify with {workers} worker(s) {verified.rate:,.0f} blocks/s "
          f"({verified.command_seconds:.2f} s whole command)")


def test_two_peers_voting(benchmark: BenchmarkFixture, bench_rates: dict[str, float],
                          long_run: Run) -> None:
    long_run.quiet()
    chain = long_run.chain
    rates: list[float] = []
    with VotingPair(chain.work / "vote", chain, chain.organizer) as pair:
        timed_once(benchmark, lambda: rates.extend(pair.vote(VOTE_SECONDS)
                                                    for _ in range(VOTE_WINDOWS)))
        settled = pair.wait_converged()
    rate = statistics.median(rates)
    bench_rates[f"long_votes_per_s@{chain.height}"] = rate
    benchmark.extra_info.update(votes_per_s=round(rate, 1), voters=2 * long_chain.VOTERS)
    print(f"\n{chain.height:,} blocks: two peers voting ({long_chain.VOTERS} clients each, "
          f"median of {VOTE_WINDOWS} windows of {VOTE_SECONDS:g} s: "
          f"{', '.join(f'{r:.0f}' for r in rates)}): {rate:.1f} votes/s committed; "
          f"settled at height "
          f"{settled.height:,}")

"""`votechain bench`: how fast each miner backend hashes on this machine, and how
that compares with what one core can do at all.

Measured in one process, in this order:

1. the single-stream SHA-256 limit: hashlib over a 16 MiB buffer (best of 3),
   bytes/s / 64 = compressions/s. A nonce's preimage (32-byte content + 8-byte
   nonce, padded) is exactly one 64-byte block, so one hash is one compression
   and this is the rate a miner that calls the library's SHA-256 could reach;
2. the pure-Python miner, one process (the baseline of the "x pure" column);
3. the native kernel, one process, the fastest this CPU has (AVX-512 x16, SHA-NI, or C);
4. the native kernel's portable C path, one process;
5. the MinerPool with one worker per core.

Every measurement searches a fixed nonce range at difficulty 16, which nothing
in these ranges meets, so the whole range is hashed and the figure is exact;
the ranges are sized for about a second each. Then the pool's abort latency:
the time from abort() to wait() returning, over ABORT_TRIALS jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from votechain import mining
from votechain.mining import backend as backend_mod

# 16 zero hex digits (64 zero bits): never met within a few billion nonces, so
# each search hashes its whole range.
BENCH_DIFFICULTY = 16
# Nonces per measurement, for roughly one second each on a current x86-64 core
# (AVX-512 x16 ~60-66 M/s, SHA-NI ~30-35 M/s, portable C ~5-11 M/s, pure ~1.5-2 M/s).
PURE_NONCES = 2_000_000
NATIVE_NONCES = 50_000_000
PORTABLE_NONCES = 5_000_000
LIMIT_BUFFER_BYTES = 16 * 1024 * 1024
LIMIT_ROUNDS = 3
SHA256_BLOCK_BYTES = 64
ABORT_TRIALS = 30
# A fixed, arbitrary content and an unaligned start crossing no special boundary.
BENCH_CONTENT = hashlib.sha256(b"votechain bench").digest()
BENCH_START = 1_000_003


@dataclass(frozen=True, slots=True)
class Row:
    backend: str
    workers: int
    hashes_per_s: float
    x_pure: float | None
    x_sha256_limit: float


@dataclass(frozen=True, slots=True)
class AbortLatency:
    """Two clocks: `stop_*` from the flag being set to the last worker's search
    loop ending (what restart-on-new-block waits for); `p50/p99` from abort() to
    wait() returning, which adds the pipe round trip and the scheduler."""

    p50_ms: float
    p99_ms: float
    stop_p50_ms: float
    stop_p99_ms: float
    trials: int


def sha256_limit(rounds: int = LIMIT_ROUNDS, size: int = LIMIT_BUFFER_BYTES) -> float:
    """SHA-256 compressions per second of one hashlib stream (best of `rounds`)."""
    buffer = bytes(size)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        hashlib.sha256(buffer).digest()
        best = min(best, time.perf_counter() - started)
    return size / best / SHA256_BLOCK_BYTES


def kernel_rate(backend: str, nonces: int) -> float:
    """Hashes per second of one `backend` search over `nonces` nonces in this process."""
    search = mining.kernel(backend)
    started = time.perf_counter()
    found = search(BENCH_CONTENT, BENCH_DIFFICULTY, BENCH_START, BENCH_START + nonces, None)
    elapsed = time.perf_counter() - started
    if found is not None:  # would mean the range was not fully hashed
        raise RuntimeError(f"difficulty {BENCH_DIFFICULTY} met at nonce {found}")
    return nonces / elapsed


def pool_rate(pool: mining.MinerPool, nonces: int) -> float:
    """Hashes per second of the whole pool over `nonces` nonces (submit to result)."""
    started = time.perf_counter()
    pool.submit(BENCH_CONTENT, BENCH_DIFFICULTY, BENCH_START, BENCH_START + nonces)
    found = pool.wait()
    elapsed = time.perf_counter() - started
    if found is not None:
        raise RuntimeError(f"difficulty {BENCH_DIFFICULTY} met at nonce {found}")
    return nonces / elapsed


def abort_once(pool: mining.MinerPool) -> tuple[float, float]:
    """Seconds from abort() to wait() returning, and from abort() to the last
    worker stopping, for a job that is surely running."""
    pool.submit(BENCH_CONTENT, BENCH_DIFFICULTY)
    with contextlib.suppress(TimeoutError):
        pool.wait(timeout=0.01)  # lets every worker get going; an impossible job never ends
    started = time.perf_counter()
    pool.abort()
    pool.wait()
    returned = time.perf_counter() - started
    assert pool.last_stop_latency is not None
    return returned, pool.last_stop_latency


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of `samples` seconds, in milliseconds."""
    ordered = sorted(samples)
    p99 = statistics.quantiles(ordered, n=100, method="inclusive")[98] if len(ordered) > 1 \
        else ordered[0]
    return statistics.median(ordered) * 1e3, p99 * 1e3


def abort_latency(pool: mining.MinerPool, trials: int = ABORT_TRIALS) -> AbortLatency:
    returned, stopped = zip(*(abort_once(pool) for _ in range(trials)), strict=True)
    return AbortLatency(*percentiles_ms(list(returned)), *percentiles_ms(list(stopped)), trials)


def pool_backend() -> str:
    return mining.DEFAULT_BACKEND


def pool_nonces(backend: str, workers: int) -> int:
    return workers * (PURE_NONCES if backend == "pure" else NATIVE_NONCES)


@dataclass
class BenchResult:
    rows: list[Row]
    notes: list[str]
    abort: AbortLatency | None


def measure(progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    notes: list[str] = []
    progress("single-stream SHA-256 limit")
    limit = sha256_limit()
    rows = [Row("sha256 limit (hashlib)", 1, limit, None, 1.0)]

    def add(name: str, workers: int, rate: float) -> None:
        rows.append(Row(name, workers, rate, rate / pure, rate / limit))

    progress("pure")
    pure = kernel_rate("pure", PURE_NONCES)
    add("pure", 1, pure)
    if backend_mod.native_module is None:
        notes.append(f"native rows skipped: {backend_mod.native_unavailable_reason}")
    else:
        path = backend_mod.native_module.kernel_name()
        progress(f"native ({path})")
        add(f"native ({path})", 1, kernel_rate("native", NATIVE_NONCES))
        progress("portable C")
        add("portable C", 1, kernel_rate("portable", PORTABLE_NONCES))
    workers = os.cpu_count() or 1
    backend = pool_backend()
    progress(f"MinerPool ({backend}, {workers} workers)")
    with mining.MinerPool(workers, backend=backend) as pool:
        add(f"MinerPool ({backend})", workers, pool_rate(pool, pool_nonces(backend, workers)))
        progress("abort latency")
        abort = abort_latency(pool)
    return BenchResult(rows, notes, abort)


def format_table(result: BenchResult) -> str:
    header = ("backend", "workers", "hashes/s", "x pure", "x single-stream limit")
    lines = [(r.backend, str(r.workers), f"{r.hashes_per_s / 1e6:.2f} M/s",
              "-" if r.x_pure is None else f"{r.x_pure:.1f}", f"{r.x_sha256_limit:.2f}")
             for r in result.rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(line) for line in lines)]
    out.extend(f"note: {note}" for note in result.notes)
    if result.abort is not None:
        a = result.abort
        out.append(f"pool abort, flag to every worker stopped ({a.trials} trials): "
                   f"p50 {a.stop_p50_ms:.2f} ms, p99 {a.stop_p99_ms:.2f} ms")
        out.append(f"pool abort, abort() to wait() returning: "
                   f"p50 {a.p50_ms:.2f} ms, p99 {a.p99_ms:.2f} ms")
    out.append(f"difficulty {BENCH_DIFFICULTY} (nothing found, every nonce hashed); "
               f"miner: {mining.describe()}")
    return "\n".join(out)


def to_json(result: BenchResult) -> str:
    rows: list[dict[str, object]] = [asdict(r) for r in result.rows]
    if result.abort is not None:
        # The latency belongs to the pool: attach it to the pool's row.
        rows[-1]["abort_p50_ms"] = result.abort.p50_ms
        rows[-1]["abort_p99_ms"] = result.abort.p99_ms
        rows[-1]["abort_stop_p50_ms"] = result.abort.stop_p50_ms
        rows[-1]["abort_stop_p99_ms"] = result.abort.stop_p99_ms
    return json.dumps(rows, indent=2)


def run_bench(as_json: bool) -> int:
    """Measure and print; the table (or JSON rows) on stdout, notes on stderr for JSON."""
    def progress(step: str) -> None:
        if not as_json:
            print(f"measuring {step} ...", file=sys.stderr, flush=True)

    result = measure(progress)
    if as_json:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        print(to_json(result))
    else:
        print(format_table(result))
    return 0

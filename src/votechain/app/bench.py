"""`votechain bench`: how fast each miner backend hashes on this machine, by
worker count, against what one core's SHA-256 can do at all.

What is measured, in one process:

1. the single-stream SHA-256 limit: hashlib over a 16 MiB buffer (best of 3),
   bytes/s / 64 = compressions/s. A nonce's preimage (32-byte content + 8-byte
   nonce, padded) is exactly one 64-byte block, so one hash is one compression
   and this is the rate a miner that calls the library's SHA-256 could reach
   on one core;
2. for every backend asked for (native: the fastest kernel this CPU has,
   AVX-512 x16, SHA-NI or C; portable: the C path; pure: hashlib) and every
   worker count, a MinerPool of that many workers, the way a peer mines:
   one calibration job sizes the range to about `--seconds`, then `--repeat`
   jobs over that range give min, median and max;
3. the pool's abort latency, on the first backend's largest pool.

Every job searches a fixed nonce range at difficulty 16, which nothing in
these ranges meets, so the whole range is hashed and each figure is exact
(nonces / seconds from submit() to wait() returning). Ranges are whole rounds
of the pool's chunks (pool.CHUNK per worker), so every worker gets the same
share and none idles at the end.

What is recorded beside the figures (`Machine`): the CPU model, the CPU
flags the native dispatch reads, the kernel it chose, the Python, votechain
and Cython versions. app/bench_report.py prints all of it as a table or JSON,
and draws the chart.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import votechain
from votechain import mining
from votechain.errors import CliError
from votechain.mining import backend as backend_mod
from votechain.mining.worker import CHUNK

# 16 zero hex digits (64 zero bits): never met within a few billion nonces, so
# each search hashes its whole range.
BENCH_DIFFICULTY = 16
LIMIT_BUFFER_BYTES = 16 * 1024 * 1024
LIMIT_ROUNDS = 3
SHA256_BLOCK_BYTES = 64
ABORT_TRIALS = 30
# A fixed, arbitrary content and an unaligned start crossing no special boundary.
BENCH_CONTENT = hashlib.sha256(b"votechain bench").digest()
BENCH_START = 1_000_003
# Fixed ranges for benchmarks/bench_mining.py (`make bench`), which times a
# kernel in this process: roughly one second each on a current x86-64 core
# (AVX-512 x16 ~60-66 M/s, SHA-NI ~30-35 M/s, portable C ~5-11 M/s, pure ~1.5-2 M/s).
# `votechain bench` sizes its ranges from a calibration job instead.
PURE_NONCES = 2_000_000
NATIVE_NONCES = 50_000_000
PORTABLE_NONCES = 5_000_000
DEFAULT_REPEAT = 3
DEFAULT_SECONDS = 1.0
# The CPU flags (as /proc/cpuinfo names them) that native/dispatch.c asks cpuid
# about when it picks a kernel: AVX-512F+VL for avx512x16, SHA-NI with SSE4.1
# and SSSE3 for sha-ni.
DISPATCH_FLAGS = ("avx512f", "avx512vl", "sha_ni", "sse4_1", "ssse3")


# ================================================================ options


def parse_backends(text: str) -> tuple[str, ...]:
    """'native,pure' -> ('native', 'pure'): known names, in the order given, once each."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in mining.BACKENDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected backends from {','.join(mining.BACKENDS)}, comma-separated; got {text!r}")
    return tuple(dict.fromkeys(names))


def parse_worker_counts(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4): positive worker counts, once each, in increasing order."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected worker counts such as 1,2,4 (positive integers); got {text!r}")
    return tuple(sorted({int(part) for part in parts}))


def default_backends() -> tuple[str, ...]:
    """Every backend this install has: all three with the extension, else pure."""
    return mining.BACKENDS if backend_mod.native_module is not None else ("pure",)


def default_worker_counts() -> tuple[int, ...]:
    """One worker, and one per core."""
    return tuple(sorted({1, os.cpu_count() or 1}))


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = field(default_factory=default_backends)
    workers: tuple[int, ...] = field(default_factory=default_worker_counts)
    repeat: int = DEFAULT_REPEAT
    seconds: float = DEFAULT_SECONDS
    as_json: bool = False
    plot: Path | None = None


def options_from(backends: Sequence[str] | None, workers: Sequence[int] | None, repeat: int,
                 seconds: float, as_json: bool, plot_path: Path | None) -> BenchOptions:
    """BenchOptions from the command line's values; None means the default."""
    return BenchOptions(
        backends=tuple(backends) if backends else default_backends(),
        workers=tuple(workers) if workers else default_worker_counts(),
        repeat=repeat, seconds=seconds, as_json=as_json, plot=plot_path,
    )


# ================================================================ the machine


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cpus: int
    cpu_flags: dict[str, bool] | None  # DISPATCH_FLAGS as the kernel reports them
    kernel: str | None  # what native/dispatch.c chose; None without the extension
    miner: str
    python: str
    votechain: str
    cython: str | None  # the Cython that compiled the extension
    platform: str


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo; empty where there is none."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def cython_version(native: Any) -> str | None:
    """The Cython version that built `native`: Cython 3 registers its shared
    function type in a module named after the compiler's version
    ('_cython_3_3_1'), and every compiled function's type lives there."""
    match = re.fullmatch(r"_cython_(\d+(?:_\d+)+)", type(native.search).__module__)
    return match.group(1).replace("_", ".") if match else None


def machine(cpuinfo: dict[str, str] | None = None) -> Machine:
    info = _cpuinfo() if cpuinfo is None else cpuinfo
    flags = set(info["flags"].split()) if "flags" in info else None
    native = backend_mod.native_module
    return Machine(
        cpu_model=info.get("model name") or platform.processor() or platform.machine(),
        cpus=os.cpu_count() or 1,
        cpu_flags=None if flags is None else {flag: flag in flags for flag in DISPATCH_FLAGS},
        kernel=None if native is None else native.kernel_name(),
        miner=mining.describe(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        votechain=votechain.__version__,
        cython=None if native is None else cython_version(native),
        platform=platform.platform(),
    )


# ================================================================ measuring


@dataclass(frozen=True)
class Measurement:
    """`repeat` jobs of `nonces` nonces on a pool of `workers` `backend` workers."""

    backend: str
    kernel: str
    workers: int
    nonces: int
    samples: tuple[float, ...]  # hashes per second, one per job

    @property
    def label(self) -> str:
        return self.backend if self.backend == self.kernel else f"{self.backend} ({self.kernel})"


@dataclass(frozen=True)
class AbortLatency:
    """Two clocks: `stop_*` from the flag being set to the last worker's search
    loop ending (what restart-on-new-block waits for); `p50/p99` from abort() to
    wait() returning, which adds the pipe round trip and the scheduler."""

    p50_ms: float
    p99_ms: float
    stop_p50_ms: float
    stop_p99_ms: float
    trials: int
    backend: str
    workers: int


@dataclass
class BenchResult:
    machine: Machine
    options: BenchOptions
    sha256_limit: float
    results: list[Measurement]
    abort: AbortLatency | None
    notes: list[str]

    def rate(self, backend: str, workers: int) -> float | None:
        """The median rate of `backend` with `workers` workers, if measured."""
        for m in self.results:
            if (m.backend, m.workers) == (backend, workers):
                return statistics.median(m.samples)
        return None


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


def pool_backend() -> str:
    """The backend a peer's pool uses by default (benchmarks/bench_mining.py)."""
    return mining.DEFAULT_BACKEND


def pool_nonces(backend: str, workers: int) -> int:
    """A fixed range for a pool of `workers` (benchmarks/bench_mining.py)."""
    return workers * (PURE_NONCES if backend == "pure" else NATIVE_NONCES)


def sized_range(rate: float, workers: int, seconds: float) -> int:
    """Nonces for about `seconds` at `rate`, in whole rounds of one chunk per
    worker (so the shares are equal), at least one round."""
    round_size = workers * CHUNK
    return max(1, round(rate * seconds / round_size)) * round_size


def measure_pool(pool: mining.MinerPool, repeat: int, seconds: float) -> tuple[int, list[float]]:
    """(nonces per job, rates): one round to calibrate (and warm up), then `repeat` jobs."""
    nonces = sized_range(pool_rate(pool, pool.size * CHUNK), pool.size, seconds)
    return nonces, [pool_rate(pool, nonces) for _ in range(repeat)]


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
    return AbortLatency(*percentiles_ms(list(returned)), *percentiles_ms(list(stopped)), trials,
                        pool.backend, pool.size)


def kernel_label(backend: str) -> str:
    if backend == "pure":
        return "hashlib"
    if backend == "portable":
        return "portable"
    native = backend_mod.native_module
    return "native" if native is None else str(native.kernel_name())


def measure(options: BenchOptions, progress: Callable[[str], None] = lambda _: None
            ) -> BenchResult:
    """Every (backend, workers) pair of `options`; raises CliError for a backend
    this install lacks, before measuring anything."""
    for name in options.backends:
        try:
            mining.kernel(name)
        except mining.BackendUnavailable as exc:
            raise CliError(str(exc)) from exc
    progress("single-stream SHA-256 limit")
    limit = sha256_limit()
    results: list[Measurement] = []
    abort: AbortLatency | None = None
    for name in options.backends:
        for workers in options.workers:
            progress(f"{name}, {workers} worker{'s' if workers > 1 else ''}")
            with mining.MinerPool(workers, backend=name) as pool:
                nonces, samples = measure_pool(pool, options.repeat, options.seconds)
                results.append(Measurement(name, kernel_label(name), workers, nonces,
                                           tuple(samples)))
                if abort is None and workers == options.workers[-1]:
                    progress("abort latency")
                    abort = abort_latency(pool)
    notes = []
    if backend_mod.native_module is None:
        notes.append(f"native and portable not measured: {backend_mod.native_unavailable_reason}")
    return BenchResult(machine(), options, limit, results, abort, notes)

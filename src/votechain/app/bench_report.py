"""`votechain bench`'s output: the table, the JSON document and the chart, from
the BenchResult that app/bench.py measures; and `run_bench`, the command.

The chart is drawn with matplotlib, the optional extra `votechain[plot]`
(`pip install votechain[plot]`): nothing else needs it, so it is imported
only for --plot, and checked before anything is measured, so a missing
library or a bad file name costs the user one line, not a minute of
benchmarking first.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from votechain.app.bench import (
    BENCH_DIFFICULTY,
    LIMIT_BUFFER_BYTES,
    LIMIT_ROUNDS,
    BenchOptions,
    BenchResult,
    measure,
)
from votechain.app.render import format_table
from votechain.errors import CliError

PLOT_EXTRA = "pip install votechain[plot]"


# ================================================================ reporting


def _mps(rate: float) -> str:
    return f"{rate / 1e6:.2f} M/s"


def format_report(result: BenchResult) -> str:
    header = ("backend", "workers", "median", "min", "max", "x pure", "x single-stream limit")
    limit = result.sha256_limit
    rows = [("sha256 limit (hashlib)", "1", _mps(limit), "-", "-", "-", "1.00")]
    for m in result.results:
        median = statistics.median(m.samples)
        pure = result.rate("pure", m.workers)
        rows.append((m.label, str(m.workers), _mps(median), _mps(min(m.samples)),
                     _mps(max(m.samples)), "-" if pure is None else f"{median / pure:.1f}",
                     f"{median / limit:.2f}"))
    out = [format_table(header, rows)]
    out.extend(f"note: {note}" for note in result.notes)
    if result.abort is not None:
        a = result.abort
        out.append(f"pool abort ({a.backend}, {a.workers} workers, {a.trials} trials): flag to "
                   f"every worker stopped p50 {a.stop_p50_ms:.2f} ms, p99 {a.stop_p99_ms:.2f} ms; "
                   f"abort() to wait() returning p50 {a.p50_ms:.2f} ms, p99 {a.p99_ms:.2f} ms")
    opts = result.options
    out.append(f"{opts.repeat} jobs of ~{opts.seconds:g} s each at difficulty {BENCH_DIFFICULTY} "
               f"(nothing found, every nonce hashed); miner: {result.machine.miner}; "
               f"CPU: {result.machine.cpu_model}, {result.machine.cpus} cores")
    return "\n".join(out)


def to_json(result: BenchResult) -> str:
    limit = result.sha256_limit
    results = []
    for m in result.results:
        median = statistics.median(m.samples)
        pure = result.rate("pure", m.workers)
        results.append({
            "backend": m.backend, "kernel": m.kernel, "workers": m.workers,
            "nonces_per_job": m.nonces, "jobs": len(m.samples),
            "hashes_per_s": {"min": min(m.samples), "median": median, "max": max(m.samples)},
            "samples": list(m.samples),
            "x_pure": None if pure is None else median / pure,
            "x_sha256_limit": median / limit,
        })
    opts = result.options
    document = {
        "machine": asdict(result.machine),
        "settings": {"backends": list(opts.backends), "workers": list(opts.workers),
                     "repeat": opts.repeat, "seconds": opts.seconds,
                     "difficulty": BENCH_DIFFICULTY},
        "sha256_limit": {"hashes_per_s": limit, "measured": "hashlib, one stream, best of "
                         f"{LIMIT_ROUNDS} over {LIMIT_BUFFER_BYTES // 2**20} MiB"},
        "results": results,
        "abort_latency": None if result.abort is None else asdict(result.abort),
        "notes": result.notes,
    }
    return json.dumps(document, indent=2)


# ================================================================ the chart


def check_plot_path(path: Path) -> None:
    """Fail in one line, before any measuring, when the chart cannot be drawn:
    no matplotlib, a format it does not write, no such directory."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise CliError(f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA}") from exc
    formats = Figure().canvas.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in formats:
        raise CliError(f"--plot {path}: expected a file name ending in "
                       f"{', '.join('.' + f for f in sorted(formats))}")
    if not path.parent.is_dir():
        raise CliError(f"--plot {path}: no such directory {path.parent}")


def plot(result: BenchResult, path: Path) -> None:
    """Grouped bars, one group per worker count and one bar per backend (the
    median; whiskers from min to max), and the single-stream SHA-256 limit as
    a dashed line. Log scale when the backends are more than 20x apart."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    counts = list(result.options.workers)
    backends = list(dict.fromkeys(m.backend for m in result.results))
    fig = Figure(figsize=(9, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(backends))
    top = result.sha256_limit
    bottom = result.sha256_limit
    for b, name in enumerate(backends):
        ms = [m for m in result.results if m.backend == name]
        xs = [counts.index(m.workers) + (b - (len(backends) - 1) / 2) * width for m in ms]
        medians = [statistics.median(m.samples) / 1e6 for m in ms]
        errors = [[med - min(m.samples) / 1e6 for med, m in zip(medians, ms, strict=True)],
                  [max(m.samples) / 1e6 - med for med, m in zip(medians, ms, strict=True)]]
        bars = ax.bar(xs, medians, width, yerr=errors, capsize=3, label=ms[0].label)
        # The median inside its bar, clear of the whiskers above it.
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in medians], label_type="center",
                     fontsize=8, color="white", fontweight="bold")
        top = max(top, *(max(m.samples) for m in ms))
        bottom = min(bottom, *(min(m.samples) for m in ms))
    limit = result.sha256_limit / 1e6
    ax.axhline(limit, color="black", linestyle="--", linewidth=1,
               label=f"single-stream SHA-256 limit (hashlib), {limit:.1f} M/s")
    if top / bottom > 20:
        ax.set_yscale("log")
        ax.set_ylim(bottom / 1e6 / 1.5, top / 1e6 * 1.5)
    else:
        ax.set_ylim(0, top / 1e6 * 1.15)
    ax.set_xticks(range(len(counts)), [f"{n} worker{'s' if n > 1 else ''}" for n in counts])
    ax.set_ylabel("million hashes per second (median; whiskers: min-max)")
    mach = result.machine
    ax.set_title(f"votechain {mach.votechain} miner: {mach.cpu_model}, {mach.cpus} cores, "
                 f"native kernel {mach.kernel or 'none'}", fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    try:
        fig.savefig(path)
    except OSError as exc:
        raise CliError(f"cannot write the chart to {path}: {exc.strerror or exc}") from exc


# ================================================================ the command


def run_bench(options: BenchOptions) -> int:
    """Measure and print: the table (or JSON) on stdout, progress and notes on stderr."""
    if options.plot is not None:
        check_plot_path(options.plot)

    def progress(step: str) -> None:
        if not options.as_json:
            print(f"measuring {step} ...", file=sys.stderr, flush=True)

    result = measure(options, progress)
    if options.plot is not None:
        plot(result, options.plot)
    if options.as_json:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        print(to_json(result))
    else:
        print(format_report(result))
        if options.plot is not None:
            print(f"chart written to {options.plot}")
    return 0

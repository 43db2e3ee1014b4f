"""Shared state of the benchmark session: the miner figures, printed as one summary.

Each miner benchmark records its rate in the session's `bench_rates` dict; at the
end of the run `pytest_terminal_summary` prints them with the ratios that matter
(native/pure, native/limit, pool/native-1, abort p99), so the `make bench`
output alone answers "how fast is the miner here, and against what". The
long-chain figures (bench_long_chain.py) follow as a table by height, with
issue 10's goals and whether each was met beside them, then the finality
figures (bench_finality.py) as a table by peer count, with issue 11's goals.

The network benchmarks run on the tests' own harness (tests/framework/), so
tests/ goes on the import path here, as pytest puts it there for the tests
themselves (tests/ has no __init__.py: its conftest's directory is prepended to
sys.path); `make lint` type-checks benchmarks with MYPYPATH=tests to match.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS_DIR = str(Path(__file__).resolve().parent.parent / "tests")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

RATES_KEY = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def bench_rates(request: pytest.FixtureRequest) -> dict[str, float]:
    return request.config.stash.setdefault(RATES_KEY, {})


def _ratio(rates: dict[str, float], num: str, den: str) -> str:
    if num in rates and den in rates and rates[den] > 0:
        return f"{rates[num] / rates[den]:.1f}x"
    return "n/a"


def _rate(rates: dict[str, float], key: str, unit: str = "M hashes/s", scale: float = 1e6) -> str:
    return f"{rates[key] / scale:.2f} {unit}" if key in rates else "not measured"


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    rates = config.stash.get(RATES_KEY, None)
    if not rates:
        return
    workers = int(rates.get("pool_workers", 0))
    miner = any(key in rates for key in ("limit", "pure", "native", "portable", "pool"))
    lines = [] if not miner else [
        f"single-stream SHA-256 limit (hashlib): {_rate(rates, 'limit', 'M compressions/s')}",
        f"pure, 1 worker:       {_rate(rates, 'pure')}",
        f"native, 1 worker:     {_rate(rates, 'native')}   "
        f"native/pure {_ratio(rates, 'native', 'pure')}, "
        f"native/limit {_ratio(rates, 'native', 'limit')}",
        f"portable C, 1 worker: {_rate(rates, 'portable')}   "
        f"portable/pure {_ratio(rates, 'portable', 'pure')}",
        f"MinerPool, {workers} workers: {_rate(rates, 'pool')}   "
        f"pool/native-1 {_ratio(rates, 'pool', 'native')}, "
        f"pool/pure {_ratio(rates, 'pool', 'pure')}",
    ]
    if "abort_p99_ms" in rates:
        lines.append(f"pool abort, flag to every worker stopped: "
                     f"p50 {rates['abort_stop_p50_ms']:.2f} ms, "
                     f"p99 {rates['abort_stop_p99_ms']:.2f} ms")
        lines.append(f"pool abort, abort() to wait() returning: "
                     f"p50 {rates['abort_p50_ms']:.2f} ms, p99 {rates['abort_p99_ms']:.2f} ms")
    for placement in ("1_worker", "1_worker_same_cpu", "every_core"):
        if f"dispatch_{placement}_p50_us" in rates:
            lines.append(f"pool dispatch round trip, {placement.replace('_', ' ')}: "
                         f"p50 {rates[f'dispatch_{placement}_p50_us']:.1f} us, "
                         f"p99 {rates[f'dispatch_{placement}_p99_us']:.1f} us")
    if "pool_blocks_per_s" in rates:
        lines.append(f"pool submit + wait at difficulty 4, 1 worker: "
                     f"{rates['pool_blocks_per_s']:.0f} blocks/s")
    if "blocks_per_s" in rates:
        lines.append(f"mine + sign at difficulty 4: {rates['blocks_per_s']:.1f} blocks/s")
    if "validations_per_s" in rates:
        lines.append(f"check_block_alone (key cache warm): "
                     f"{rates['validations_per_s']:.0f} blocks/s")
    if "startup_ms" in rates:
        lines.append(f"start-up, {rates.get('startup_blocks', 0):,.0f} blocks: restore full "
                     f"{rates.get('restore_full_ms', 0):.0f} ms, verified once "
                     f"{rates.get('restore_verified_ms', 0):.0f} ms, open + read + restore "
                     f"{rates['startup_ms']:.0f} ms")
    network = (
        ("receive_per_s", "receive path (decode + check, one core)", "blocks/s", "20,000"),
        ("rsa_verify_per_s", "RSA-2048 verify alone", "/s", None),
        ("sync_per_s", "sync of a 10,000-block chain", "blocks/s", "10,000"),
        ("propagation_p50_ms", "propagation to the last of 5 peers, p50", "ms", "<= 10"),
    )
    for key, label, unit, target in network:
        if key in rates:
            goal = f"   (target {target})" if target else ""
            lines.append(f"{label}: {rates[key]:,.1f} {unit}{goal}")
    if "verify_1_per_s" in rates:
        lines.append(f"verify, 1 worker: {rates['verify_1_per_s']:,.0f} blocks/s")
    if "verify_n_per_s" in rates:
        lines.append(f"verify, {int(rates['verify_workers'])} workers: "
                     f"{rates['verify_n_per_s']:,.0f} blocks/s, "
                     f"ratio {_ratio(rates, 'verify_n_per_s', 'verify_1_per_s')}")
    if "fork_switch_us_1000" in rates and "fork_switch_us_50000" in rates:
        lines.append(f"3-block fork switch (prechecked): "
                     f"{rates['fork_switch_us_1000']:,.1f} us at height 1,000, "
                     f"{rates['fork_switch_us_50000']:,.1f} us at height 50,000")
    long_chain = _long_chain_lines(rates)
    if long_chain:
        lines += ([""] if lines else []) + long_chain  # a blank line after the others
    finality = _finality_lines(rates)
    if finality:
        lines += ([""] if lines else []) + finality
    terminalreporter.write_sep("=", "votechain benchmark summary")
    for line in lines:
        terminalreporter.write_line(line)


# Issue 10's goals for the long-chain figures (bench_long_chain.py records them as
# "long_NAME@HEIGHT"): a peer's start-up and memory stay flat as the chain grows.
LONG_SMALL, LONG_LARGE = 10_000, 1_000_000
STARTUP_GOAL_S = 2.0  # at LONG_LARGE
RSS_GOAL_MB = 150.0  # at LONG_LARGE
FLAT = 0.2  # RSS and vote rate at LONG_LARGE within 20% of LONG_SMALL's
VERIFY_SPEEDUP_GOAL = 1.6  # 2 workers against 1


def _long_chain_lines(rates: dict[str, float]) -> list[str]:
    """The long-chain figures as a table, one column per height, the goal and
    whether it was met beside each: reported, never asserted."""
    heights = sorted({int(key.rsplit("@", 1)[1]) for key in rates
                      if key.startswith("long_") and "@" in key})
    if not heights:
        return []

    def at(name: str, height: int) -> float | None:
        return rates.get(f"long_{name}@{height}")

    def speedup(height: int) -> float | None:
        one, every = at("verify_1", height), at("verify_n", height)
        return every / one if one and every is not None else None

    def grown(name: str) -> float | None:
        """The LONG_LARGE figure over the LONG_SMALL one."""
        small, large = at(name, LONG_SMALL), at(name, LONG_LARGE)
        return large / small if small and large is not None else None

    def verdict(*checks: tuple[float | None, Callable[[float], bool]]) -> str:
        if any(value is None for value, _ in checks):
            return "not measured"
        return "met" if all(ok(value) for value, ok in checks if value is not None) else "MISSED"

    workers = int(rates.get("long_verify_workers", 0))
    rows: list[tuple[str, Callable[[int], str | None], str, str]] = [
        ("start-up to serving", lambda h: _fmt(at("startup_s", h), "{:.2f} s"),
         f"< {STARTUP_GOAL_S:g} s at {LONG_LARGE:,}",
         verdict((at("startup_s", LONG_LARGE), lambda s: s < STARTUP_GOAL_S))),
        ("peer RSS at start-up", lambda h: _fmt(at("rss_mb", h), "{:.0f} MB"),
         f"< {RSS_GOAL_MB:g} MB at {LONG_LARGE:,}, <= {1 + FLAT:g}x {LONG_SMALL:,}'s",
         verdict((at("rss_mb", LONG_LARGE), lambda mb: mb < RSS_GOAL_MB),
                 (grown("rss_mb"), lambda x: x <= 1 + FLAT))),
        ("verify, 1 worker", lambda h: _fmt(at("verify_1", h), "{:,.0f} blocks/s"), "", ""),
        (f"verify, {workers} workers", lambda h: _fmt(at("verify_n", h), "{:,.0f} blocks/s"),
         "", ""),
        (f"verify, {workers} workers / 1", lambda h: _fmt(speedup(h), "{:.2f}x"),
         f">= {VERIFY_SPEEDUP_GOAL:g}x at {LONG_LARGE:,} (2 workers)",
         verdict((speedup(LONG_LARGE), lambda x: x >= VERIFY_SPEEDUP_GOAL))),
        ("sync of a fresh peer", lambda h: _fmt(at("sync_per_s", h), "{:,.0f} blocks/s"), "", ""),
        ("two peers voting", lambda h: _fmt(at("votes_per_s", h), "{:.1f} votes/s"),
         f">= {1 - FLAT:g}x {LONG_SMALL:,}'s at {LONG_LARGE:,}",
         verdict((grown("votes_per_s"), lambda x: x >= 1 - FLAT))),
        ("3-block fork switch + write", lambda h: _fmt(at("switch_us", h), "{:,.0f} us"),
         f"<= {1 + FLAT:g}x {LONG_SMALL:,}'s at {LONG_LARGE:,}",
         verdict((grown("switch_us"), lambda x: x <= 1 + FLAT))),
    ]
    width = 18
    lines = [f"{'long chain, height':<28}"
             + "".join(f"{h:>{width},}" for h in heights) + "   goal (issue 10)"]
    for label, value, goal, met in rows:
        cells = "".join(f"{value(h) or '-':>{width}}" for h in heights)
        lines.append(f"{label:<28}{cells}   {goal:<44}{met}".rstrip())
    return lines


def _fmt(value: float | None, form: str) -> str | None:
    return None if value is None else form.format(value)


# Issue 11's goals for final votes under load (bench_finality.py records its
# figures as "finality_NAME@PEERS"): throughput that holds up as peers join,
# fast finality, and never a confirmation taken back.
SINGLE_GOAL = 700.0  # final votes/s, one peer
THREE_GOAL = 450.0  # final votes/s, three peers
THREE_SCALING = 0.9  # three peers against one, in the same run
TEN_SCALING = 0.6  # ten peers against one
P99_GOAL_MS = 100.0  # at three peers
SETTLE_GOAL_S = 10.0  # twenty peers, after the load stops


def _finality_lines(rates: dict[str, float]) -> list[str]:
    """The finality figures as a table, one column per peer count, then each
    of issue 11's goals with the figure it judges and whether it was met:
    reported, never asserted (bench_finality.py asserts the safety counts)."""
    peer_counts = sorted({int(key.rsplit("@", 1)[1]) for key in rates
                          if key.startswith("finality_") and "@" in key})
    if not peer_counts:
        return []

    def at(name: str, peers: int) -> float | None:
        return rates.get(f"finality_{name}@{peers}")

    def scaling(peers: int) -> float | None:
        single, many = at("final_per_s", 1), at("final_per_s", peers)
        return many / single if single and many is not None else None

    def settle(peers: int) -> str | None:
        seconds = at("settle_s", peers)
        if seconds is None:
            return None
        return "not converged" if math.isinf(seconds) else f"{seconds:.2f} s"

    def errors(peers: int) -> str | None:
        total = at("errors", peers)
        if total is None:
            return None
        return (f"{total:.0f} ({at('errors_not_mined', peers) or 0:.0f}/"
                f"{at('errors_not_final', peers) or 0:.0f})")

    def safety(peers: int) -> str | None:
        counts = [at(name, peers) for name in ("orphaned", "lost", "doubled")]
        if any(count is None for count in counts):
            return None
        return "/".join(f"{count:.0f}" for count in counts if count is not None)

    def cpu(peers: int) -> str | None:
        in_peers, in_workers = at("cpu_peers_ms", peers), at("cpu_workers_ms", peers)
        if in_peers is None or in_workers is None or math.isnan(in_peers):
            return None
        return f"{in_peers:.2f}+{in_workers:.2f} ms"

    rows: list[tuple[str, Callable[[int], str | None]]] = [
        ("final votes/s", lambda p: _fmt(at("final_per_s", p), "{:,.1f}")),
        ("  against one peer", lambda p: _fmt(scaling(p), "{:.2f}x")),
        ("finality latency p50", lambda p: _fmt(at("p50_ms", p), "{:,.1f} ms")),
        ("finality latency p99", lambda p: _fmt(at("p99_ms", p), "{:,.1f} ms")),
        ("errors (not mined/not final)", errors),
        ("forks resolved/s", lambda p: _fmt(at("forks_per_s", p), "{:,.2f}")),
        ("settled after the load", settle),
        ("orphaned/lost/doubled", safety),
        ("CPU/vote: peers, workers", cpu),
        ("cores busy (with the clients)", lambda p: _fmt(at("cores", p), "{:.2f}")),
    ]
    width = 16
    lines = [f"{'finality under load, peers':<30}" + "".join(f"{p:>{width}}" for p in peer_counts)]
    for label, value in rows:
        lines.append(f"{label:<30}" + "".join(f"{value(p) or '-':>{width}}" for p in peer_counts))

    def goal(text: str, figure: str | None, ok: bool | None) -> str:
        verdict = "not measured" if ok is None else "met" if ok else "MISSED"
        return f"  {text:<52}{figure or '-':>16}   {verdict}"

    def check(value: float | None, ok: Callable[[float], bool]) -> bool | None:
        return None if value is None else ok(value)

    single, three = at("final_per_s", 1), at("final_per_s", 3)
    p99 = at("p99_ms", 3)
    settled_20 = at("settle_s", 20)
    unsafe = [p for p in peer_counts if (safety(p) or "x") != "0/0/0"]
    lines += [
        "goals (issue 11)",
        goal(f"1 peer >= {SINGLE_GOAL:g} final votes/s", _fmt(single, "{:,.1f}"),
             check(single, lambda r: r >= SINGLE_GOAL)),
        goal(f"3 peers >= {THREE_GOAL:g} final votes/s", _fmt(three, "{:,.1f}"),
             check(three, lambda r: r >= THREE_GOAL)),
        goal(f"3 peers >= {THREE_SCALING:g}x one peer's rate", _fmt(scaling(3), "{:.2f}x"),
             check(scaling(3), lambda x: x >= THREE_SCALING)),
        goal(f"10 peers >= {TEN_SCALING:g}x one peer's rate", _fmt(scaling(10), "{:.2f}x"),
             check(scaling(10), lambda x: x >= TEN_SCALING)),
        goal(f"p99 finality latency at 3 peers < {P99_GOAL_MS:g} ms", _fmt(p99, "{:,.1f} ms"),
             check(p99, lambda ms: ms < P99_GOAL_MS)),
        goal("orphaned, lost, doubled: 0 in every run",
             "0 everywhere" if not unsafe else f"not 0 at {unsafe}", not unsafe),
        goal(f"20 peers settled within {SETTLE_GOAL_S:g} s after the load", settle(20),
             check(settled_20, lambda s: s <= SETTLE_GOAL_S)),
    ]
    return lines

"""Shared state of the benchmark session: the miner figures, printed as one summary.

Each miner benchmark records its rate in the session's `bench_rates` dict; at the
end of the run `pytest_terminal_summary` prints them with the ratios that matter
(native/pure, native/limit, pool/native-1, abort p99), so the `make bench`
output alone answers "how fast is the miner here, and against what".

The network benchmarks run on the tests' own harness (tests/framework/), so
tests/ goes on the import path here, as pytest puts it there for the tests
themselves (tests/ has no __init__.py: its conftest's directory is prepended to
sys.path); `make lint` type-checks benchmarks with MYPYPATH=tests to match.
"""

from __future__ import annotations

import sys
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
    lines = [
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
    terminalreporter.write_sep("=", "votechain benchmark summary")
    for line in lines:
        terminalreporter.write_line(line)

"""`votechain bench` as a user drives it: its options, the JSON it prints (with
the machine), its table, the chart with matplotlib and the one-line message
without it. Measurements use tiny jobs (--seconds 0.01: one chunk per worker),
so the figures mean nothing here; their shape and consistency are checked.
In the pure run the native backends are absent and only pure is measured."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from framework.backends import NATIVE_MISSING
from votechain.app import bench
from votechain.app.cli import build_parser, main
from votechain.mining import backend as backend_mod
from votechain.mining.worker import CHUNK

# What this run can measure: the native kernel where built, and pure always.
AVAILABLE = "pure" if NATIVE_MISSING else "native,pure"
TINY = ("--seconds", "0.01", "--repeat", "2")


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["bench", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- options


def test_backend_and_worker_lists_parse() -> None:
    assert bench.parse_backends("native,pure") == ("native", "pure")
    assert bench.parse_backends(" pure , portable,pure") == ("pure", "portable")
    assert bench.parse_worker_counts("4,1,2,2") == (1, 2, 4)
    for bad in ("", ",", "gpu", "native,gpu"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_backends(bad)
    for bad in ("", "0", "1,", "-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_worker_counts(bad)


def test_parser_defaults_and_values() -> None:
    args = build_parser().parse_args(["bench"])
    assert (args.backend, args.workers, args.repeat, args.seconds, args.json, args.plot) == (
        None, None, 3, 1.0, False, None)
    options = bench.options_from(args.backend, args.workers, args.repeat, args.seconds,
                                 args.json, args.plot)
    assert options.backends == bench.default_backends()
    assert options.workers[0] == 1
    args = build_parser().parse_args(["bench", "--backend", "pure,native", "--workers", "2,1",
                                      "--repeat", "5", "--seconds", "0.5", "--json",
                                      "--plot", "out.png"])
    assert (args.backend, args.workers, args.repeat, args.seconds, args.json, args.plot) == (
        ("pure", "native"), (1, 2), 5, 0.5, True, Path("out.png"))


@pytest.mark.parametrize("bad", [["--backend", "gpu"], ["--workers", "0"], ["--repeat", "0"],
                                 ["--seconds", "0"], ["--seconds", "soon"]])
def test_bad_options_are_one_line_usage_errors(capsys: pytest.CaptureFixture[str],
                                               bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("votechain bench: error: "), err


def test_an_unavailable_backend_fails_in_one_line(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # As in an install without the extension (the pure run is one, for real).
    monkeypatch.setattr(backend_mod, "native_module", None)
    monkeypatch.setattr(backend_mod, "native_unavailable_reason", "votechain._native is not built")
    code, out, err = run_main(capsys, "--backend", "portable", *TINY)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "the native miner is unavailable" in err, err


# ---------------------------------------------------------------- JSON


def test_json_has_the_machine_settings_and_min_median_max(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "--backend", AVAILABLE, "--workers", "1,2", *TINY,
                              "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"machine", "settings", "sha256_limit", "results", "abort_latency",
                        "notes"}
    machine = doc["machine"]
    assert machine["cpus"] >= 1 and machine["cpu_model"]
    assert machine["python"].split()[1] == ".".join(map(str, sys.version_info[:3]))
    assert machine["votechain"] == "0.1.0"
    if NATIVE_MISSING:
        assert machine["kernel"] is None and machine["cython"] is None
        assert doc["notes"] and "native and portable not measured" in doc["notes"][0]
    else:
        assert machine["kernel"] in ("avx512x16", "sha-ni", "portable")
        assert machine["cython"] and machine["cython"][0].isdigit()
    if machine["cpu_flags"] is not None:  # Linux: /proc/cpuinfo
        assert set(machine["cpu_flags"]) == set(bench.DISPATCH_FLAGS)
    assert doc["settings"] == {"backends": AVAILABLE.split(","), "workers": [1, 2],
                               "repeat": 2, "seconds": 0.01, "difficulty": 16}
    assert doc["sha256_limit"]["hashes_per_s"] > 0
    results = doc["results"]
    assert [(r["backend"], r["workers"]) for r in results] == [
        (b, w) for b in AVAILABLE.split(",") for w in (1, 2)]
    for r in results:
        rates = r["hashes_per_s"]
        assert len(r["samples"]) == r["jobs"] == 2
        assert rates["min"] <= rates["median"] <= rates["max"]
        assert rates["min"] == min(r["samples"]) and rates["max"] == max(r["samples"])
        assert r["nonces_per_job"] % (r["workers"] * CHUNK) == 0  # equal shares
        assert r["x_sha256_limit"] == pytest.approx(rates["median"]
                                                    / doc["sha256_limit"]["hashes_per_s"])
        assert r["x_pure"] > 0  # pure is measured at every worker count here
        if r["backend"] == "pure":
            assert r["x_pure"] == 1.0 and r["kernel"] == "hashlib"
    abort = doc["abort_latency"]
    assert (abort["backend"], abort["workers"]) == (AVAILABLE.split(",")[0], 2)
    assert abort["trials"] == bench.ABORT_TRIALS and abort["p50_ms"] <= abort["p99_ms"]
    assert "measuring" not in err  # --json: no progress lines


def test_table_lists_every_measurement(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "--backend", "pure", "--workers", "1", *TINY)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["backend", "workers", "median", "min", "max"]
    assert lines[2].startswith("sha256 limit (hashlib)")
    assert lines[3].startswith("pure (hashlib)")
    assert "measuring pure, 1 worker ..." in err


def test_machine_reads_cpuinfo_and_the_cython_version() -> None:
    cpuinfo = {"model name": "Test CPU 9000", "flags": "fpu sse4_1 ssse3 sha_ni avx2"}
    machine = bench.machine(cpuinfo)
    assert machine.cpu_model == "Test CPU 9000"
    assert machine.cpu_flags == {"avx512f": False, "avx512vl": False, "sha_ni": True,
                                 "sse4_1": True, "ssse3": True}
    assert bench.machine({}).cpu_flags is None

    def fake_module(module_name: str) -> SimpleNamespace:
        kind = type("cython_function_or_method", (), {"__module__": module_name})
        return SimpleNamespace(search=kind())

    assert bench.cython_version(fake_module("_cython_3_3_1")) == "3.3.1"
    assert bench.cython_version(fake_module("builtins")) is None


# ---------------------------------------------------------------- the chart


def test_plot_without_matplotlib_says_how_to_get_it(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    # None in sys.modules makes `import matplotlib` raise ImportError, as if absent.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    chart = tmp_path / "chart.png"
    code, out, err = run_main(capsys, "--backend", "pure", *TINY, "--plot", str(chart))
    assert code == 1 and out == ""
    assert err.count("\n") == 1, err  # one line, and nothing measured before it
    assert "pip install votechain[plot]" in err
    assert not chart.exists()


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib (votechain[plot]; "
                        "the test extras install it)")
    chart = tmp_path / "chart.png"
    code, out, err = run_main(capsys, "--backend", AVAILABLE, "--workers", "1,2", *TINY,
                              "--plot", str(chart))
    assert code == 0, err
    assert f"chart written to {chart}" in out
    data = chart.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_plot_refuses_a_bad_file_name_before_measuring(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="without matplotlib, --plot fails earlier "
                        "(test_plot_without_matplotlib_says_how_to_get_it)")
    for path, why in ((tmp_path / "chart.xyz", "expected a file name ending in"),
                      (tmp_path / "missing" / "chart.png", "no such directory")):
        code, out, err = run_main(capsys, "--backend", "pure", *TINY, "--plot", str(path))
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and why in err, err

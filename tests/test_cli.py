"""The `votechain` command as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.fakes import FakeNode
from framework.processes import Processes, run
from votechain import __version__
from votechain.app.args import parse_hostport
from votechain.app.render import display_width, format_hashrate, format_table, format_tally
from votechain.net.control_server import ControlServer


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def node_dir(tmp_path: Path) -> Iterator[tuple[Path, FakeNode]]:
    """A data directory served by an in-memory node, as a running peer's would be."""
    node = FakeNode()
    data_dir = tmp_path / "node"
    server = ControlServer(node, data_dir)
    server.start()
    yield data_dir, node
    server.stop()


# ---------------------------------------------------------------- in process


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_hostport("[::1]:9") == ("::1", 9)
    for bad in ("8000", "host:", ":80", "host:0", "host:65536", "host:http"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_hostport(bad)


def test_format_tally_scales_bars_to_the_largest_count() -> None:
    table = format_tally({"alice": 4, "bob": 1}, bars=True).splitlines()
    assert table[0].split() == ["category", "votes"]
    assert table[1].count("█") == 40
    assert table[2].count("█") == 10
    assert table[-1].split() == ["total", "5"]
    assert format_tally({}) == "no votes yet"


def test_tally_columns_align_by_display_width() -> None:
    # CJK (2 columns each), an emoji (2), a name with a combining accent (0 for
    # the accent; NFD on purpose), plain ASCII: every count ends in one column.
    counts = {"東京都": 3, "🗳️ urn": 12, "cafe\u0301": 7, "bob": 100}
    lines = format_tally(counts).splitlines()
    assert display_width("東京都") == 6
    assert display_width("🗳️ urn") == 6  # U+1F5F3 (N) + VS16: emoji, 2 columns
    assert display_width("cafe\u0301") == 4
    ends = {display_width(line) for line in lines}
    assert ends == {display_width("category") + 2 + 5}, lines
    assert lines[1].startswith("東京都   ")  # padded to "category"'s 8 columns, then 2 spaces


def test_format_table_pads_wide_cells_by_columns() -> None:
    full = "\uff46\uff55\uff4c\uff4c"  # "full" in FULLWIDTH LATIN letters: 8 columns
    table = format_table(("name", "rate"), [(full, "1.0"), ("x", "22.5")]).splitlines()
    assert table[0] == "name      rate"
    assert table[1] == "--------  ----"
    assert table[2] == full + "   1.0"
    assert table[3] == "x         22.5"


def test_format_hashrate() -> None:
    assert format_hashrate(12.0) == "12 H/s"
    assert format_hashrate(2_500_000.0) == "2.50 MH/s"


# ---------------------------------------------------------------- version and info


@pytest.mark.parametrize("args", [["--version"], ["info"]])
def test_version_and_info_name_the_miner(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert f"votechain {__version__}" in result.stdout
    assert "miner backend: " in result.stdout
    assert "SHA-NI detected: " in result.stdout


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["peer"],
        ["peer", "--network", "x.network", "--tracker", "nonsense"],
        # The network decides: a peer takes no --network-less start, no --difficulty.
        ["peer", "--tracker", "127.0.0.1:8000"],
        ["peer", "--network", "x.network", "--tracker", "127.0.0.1:8000", "--difficulty", "4"],
        ["tracker", "--port", "70000"],
        ["demo", "--peers", "0"],
        ["vote", "--timeout", "0", "alice"],
        ["network"],
        ["network", "dissolve"],
        ["network", "create"],
        ["network", "create", "n", "--difficulty", "99"],
        ["network", "admit", "n.network", "--data-dir", "d"],
        ["network", "revoke", "n.network", "--authority", "n.authority"],
        ["network", "revoke", "n.network", "--authority", "a", "--member", "d",
         "--from-height", "-1"],
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "error" in one_line(result.stderr)


@pytest.mark.parametrize(("category", "reason"), [("", "empty"), ("x" * 65, "at most 64")])
def test_bad_category_is_a_usage_error(tmp_path: Path, category: str, reason: str) -> None:
    result = run("vote", "--data-dir", str(tmp_path), category)
    assert result.returncode == 2
    assert reason in one_line(result.stderr)


# ---------------------------------------------------------------- no node


@pytest.mark.parametrize("command", [["vote", "alice"], ["tally"], ["status", "--json"]])
def test_no_running_node_is_one_line_exit_1(tmp_path: Path, command: list[str]) -> None:
    result = run(*command[:1], "--data-dir", str(tmp_path), *command[1:])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"no running node at {tmp_path}" in one_line(result.stderr)


def test_verify_without_a_chain_is_one_line_exit_1(tmp_path: Path) -> None:
    result = run("verify", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no chain" in one_line(result.stderr)


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "--data-dir", "{tmp}", "--network", "{tmp}/missing.network"],
        ["peer", "--network", "{tmp}/missing.network", "--tracker", "127.0.0.1:9"],
        ["network", "admit", "{tmp}/missing.network", "--authority", "{tmp}/a",
         "--data-dir", "{tmp}/d"],
        ["network", "revoke", "{tmp}/missing.network", "--authority", "{tmp}/a",
         "--member", "{tmp}/d"],
        ["network", "create", "n", "--out", "/proc/votechain"],
    ],
)
def test_a_missing_or_unwritable_network_file_is_one_line_exit_1(
    tmp_path: Path, command: list[str]
) -> None:
    result = run(*(arg.replace("{tmp}", str(tmp_path)) for arg in command), timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"votechain {' '.join(command[:2 if command[0] == 'network' else 1])}"
                           ": error: ")
    assert "missing.network" in line or "/proc/votechain" in line


# ---------------------------------------------------------------- against a node


def test_vote_tally_and_status_through_the_control_channel(
    node_dir: tuple[Path, FakeNode],
) -> None:
    data_dir, node = node_dir
    result = run("vote", "--data-dir", str(data_dir), "alice")
    assert result.returncode == 0, result.stderr
    assert f"block 1 {node.chain[1].hash.hex()}" in result.stdout
    run("vote", "--data-dir", str(data_dir), "bob")
    run("vote", "--data-dir", str(data_dir), "alice")

    result = run("tally", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"alice": 2, "bob": 1}'
    table = run("tally", "--data-dir", str(data_dir)).stdout
    assert table.splitlines()[1].split() == ["alice", "2"]

    result = run("status", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert '"height": 3' in result.stdout
    assert "1.23 kH/s" in run("status", "--data-dir", str(data_dir)).stdout


def test_vote_timeout_is_one_line_exit_1(node_dir: tuple[Path, FakeNode]) -> None:
    data_dir, node = node_dir
    node.auto_mine = False
    result = run("vote", "--data-dir", str(data_dir), "--timeout", "0.1", "alice")
    assert result.returncode == 1
    assert "not mined within" in one_line(result.stderr)


# ---------------------------------------------------------------- tracker


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_tracker_starts_prints_its_address_and_stops_on_a_signal(
    processes: Processes, sig: signal.Signals
) -> None:
    tracker = processes.start("tracker", "tracker", "--port", "0")
    assert tracker.address is not None
    host, port = tracker.address
    assert host == "127.0.0.1"
    assert port > 0
    tracker.popen.send_signal(sig)
    assert tracker.popen.wait(10) == 0
    assert "Traceback" not in tracker.log_path.read_text()


def test_tracker_on_a_busy_port_is_one_line_exit_1(processes: Processes) -> None:
    tracker = processes.start("tracker", "tracker", "--port", "0")
    assert tracker.address is not None
    result = run("tracker", "--port", str(tracker.address[1]))
    assert result.returncode == 1
    assert "cannot listen" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("text", "address"),
    [("9100", ("127.0.0.1", 9100)), (":9100", ("127.0.0.1", 9100)),
     ("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:0", ("::1", 0))],
)
def test_metrics_address_defaults_to_loopback(text: str, address: tuple[str, int]) -> None:
    from votechain.app.cli import parse_metrics_address

    assert parse_metrics_address(text) == address


@pytest.mark.parametrize("text", ["", "host:", "host:99999", "a:b", ":x"])
def test_bad_metrics_addresses_are_usage_errors(text: str) -> None:
    from votechain.app.cli import parse_metrics_address

    with pytest.raises(argparse.ArgumentTypeError):
        parse_metrics_address(text)


def test_peer_and_tracker_take_log_options() -> None:
    from votechain.app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["tracker", "--log-level", "debug", "--log-file", "t.log"])
    assert (args.log_level, args.log_file, args.quiet) == ("debug", Path("t.log"), False)
    args = parser.parse_args(["peer", "--network", "n.network", "--tracker", "h:1", "-q",
                              "--metrics", ":9100"])
    assert (args.log_level, args.log_file, args.quiet) == ("info", None, True)
    assert args.metrics == ("127.0.0.1", 9100)
    result = run("tracker", "--log-level", "loud")
    assert result.returncode == 2
    assert "invalid choice: 'loud'" in one_line(result.stderr)


def test_every_option_has_help_that_shows_its_default() -> None:
    """Issue 13: `--help` of every command and step explains every option, and
    names the default of each that has one (argparse shows none by itself)."""
    import argparse

    from votechain.app.cli import build_parser

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                text = action.help or ""
                has_default = action.default not in (None, False, argparse.SUPPRESS)
                if not text or (has_default and not action.required and "default" not in text):
                    missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "votechain")
    assert not missing, missing

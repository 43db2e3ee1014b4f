"""The `votechain` command: run a tracker or a peer, talk to a running peer, verify a chain.

Each subcommand is one small `cmd_*` function here, except the steps of a
members-only network (`votechain network create|join|admit|install|revoke`):
they live in app/network_cli.py, whose `add_network_command` adds the group to
the parser built here. Argument types are in app/args.py. Modules a subcommand
needs are imported inside it, so `votechain --help` and `votechain vote` start
fast and do not load the miner, SQLite or the peer.

Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 usage
error (one line), 130 interrupted by Ctrl-C, except for `tracker` and `peer`,
whose stop signal SIGINT is (like SIGTERM): they shut down cleanly and exit 0.
Expected failures never print a traceback; an unexpected exception is a bug
and does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from votechain import __version__
from votechain.app.args import (
    parse_difficulty,
    parse_hostport,
    parse_port,
    parse_positive_int,
    parse_timeout,
)
from votechain.app.network_cli import add_network_command, load_membership
from votechain.app.render import format_hashrate, format_tally, out
from votechain.core.voting import validate_category
from votechain.errors import CliError, InvalidVote

if TYPE_CHECKING:
    from votechain.net.control_client import ControlClient

PROG = "votechain"
DEFAULT_DATA_DIR = Path("votechain-data")
DEFAULT_TRACKER_PORT = 8000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (prog: error: ...), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ================================================================ daemon helpers


def _stop_on_signals() -> threading.Event:
    """An event that SIGINT or SIGTERM sets (the way a tracker or peer is told to stop).

    Installed before the server starts: a signal that arrives right after the
    "listening" line must stop it cleanly, not kill it with the default action.
    """
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


LOG_LEVELS = ("debug", "info", "warning", "error")


def _setup_logging(args: argparse.Namespace) -> None:
    # A daemon's INFO lines are its record: one per block accepted, rejected or
    # switched, one per peer registered, the tracker lost and back, a summary
    # every minute. --quiet keeps only warnings (as --log-level warning).
    level: int = getattr(logging, args.log_level.upper())
    if args.quiet:
        level = max(level, logging.WARNING)
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s"
    if args.log_file is None:
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
        return
    try:
        logging.basicConfig(level=level, format=fmt, filename=args.log_file, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot open the log file {args.log_file}: "
                       f"{exc.strerror or exc}") from exc


def parse_metrics_address(text: str) -> tuple[str, int]:
    """--metrics: 'HOST:PORT', ':PORT' or 'PORT' (host 127.0.0.1: metrics are
    for this host's Prometheus unless an address is chosen)."""
    if text.isdigit() or text.startswith(":"):
        port = parse_port(text.lstrip(":"))
        return "127.0.0.1", port
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, :PORT or PORT, got {text!r}")
    return host, parse_port(port_text)


def _logging_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="log warnings only (as --log-level warning)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="the least severe lines logged (default info)")
    p.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                   help="append the log to FILE instead of stderr (default: stderr)")


# ================================================================ subcommands


def cmd_tracker(args: argparse.Namespace) -> int:
    from votechain.net.tracker_server import TrackerServer

    _setup_logging(args)
    stop = _stop_on_signals()
    server = TrackerServer(args.host, args.port)
    try:
        server.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    return _serve_until_signalled("tracker", lambda: server.address, stop, server.stop)


def cmd_peer(args: argparse.Namespace) -> int:
    from votechain import mining
    from votechain.errors import StoreError
    from votechain.node.runtime import Node, NodeConfig

    _setup_logging(args)
    membership = load_membership(args)
    stop = _stop_on_signals()
    config = NodeConfig(
        data_dir=Path(args.data_dir),
        tracker=args.tracker,
        host=args.host,
        port=args.port,
        difficulty=membership.network.difficulty,
        workers=args.workers,
        miner=args.miner or mining.DEFAULT_BACKEND,
        membership=membership,
        metrics=args.metrics,
    )
    try:
        node = Node(config)
        node.start()
    except (OSError, mining.BackendUnavailable, StoreError) as exc:
        # Expected trouble (port taken, no native miner, a data directory made for
        # another network): one line. Anything else is a bug and keeps its traceback.
        raise CliError(f"cannot start the peer: {exc}") from exc
    return _serve_until_signalled("peer", lambda: node.address, stop, node.stop)


def _serve_until_signalled(
    kind: str,
    address: Callable[[], tuple[str, int]],
    stop: threading.Event,
    shutdown: Callable[[], None],
) -> int:
    """Print the listening line (what scripts and the demo wait for), block until
    SIGINT or SIGTERM, then shut down, whatever happens in between."""
    try:
        host, port = address()
        out(f"votechain {kind} listening on {host}:{port}")
        # Event.wait() in the main thread returns when a signal handler sets the event.
        stop.wait()
    finally:
        shutdown()
    return 0


def _client(data_dir: Path) -> ControlClient:
    from votechain.net.control_client import ControlClient

    return ControlClient.from_data_dir(data_dir)


def cmd_vote(args: argparse.Namespace) -> int:
    try:
        category = validate_category(args.category)
    except InvalidVote as exc:
        raise CliError(str(exc), code=2) from exc
    block_id, block_hash = _client(args.data_dir).vote(category, timeout=args.timeout)
    # Only once final: a majority of the members keep the block (core/finality.py).
    out(f"vote for {category!r} mined in block {block_id} {block_hash}, final")
    return 0


def cmd_tally(args: argparse.Namespace) -> int:
    counts = _client(args.data_dir).tally(recount=args.recount)
    out(json.dumps(counts, ensure_ascii=False) if args.json else format_tally(counts))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args.data_dir).node_status()
    if args.json:
        out(json.dumps(dataclasses.asdict(status), ensure_ascii=False))
        return 0
    rows = [
        ("network", f"{status.network or '(open)'}, difficulty {status.difficulty}"),
        ("version", status.version),
        ("uptime", _format_uptime(status.uptime)),
        ("height", status.height),
        ("final height", _format_final(status.final_height, status.locked_height,
                                       status.seats)),
        ("tip", status.tip),
        ("tracker", f"{status.tracker} ({'up' if status.tracker_up else 'DOWN'})"),
        ("peers", status.peers),
        ("pending votes", status.pending),
        ("votes/s", f"{status.votes_per_second:.2f} (last minute)"),
        ("miner", status.backend),
        ("hash rate", f"{format_hashrate(status.live_hashrate)} now, "
                      f"{format_hashrate(status.hashrate)} over finished jobs"),
        ("forks resolved", status.forks_resolved),
    ]
    out("\n".join(f"{name:<16}{value}" for name, value in rows))
    return 0


def _format_final(final: int, locked: int, seats: int) -> str:
    """'41 (locked 42; majority of 5 seats)', or what a network without seats means."""
    if seats == 0:
        return f"{final} (no seats named: final once in this node's chain)"
    return f"{final} (locked {locked}; majority of {seats} seats)"


def _format_uptime(seconds: float) -> str:
    """'3 h 02 min 05 s', '4 min 10 s', '12 s'."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def cmd_verify(args: argparse.Namespace) -> int:
    from votechain.app.verify import verify_store

    # The genesis, every link, hash, difficulty and signature (over --workers
    # processes), that no transaction appears twice, and on a members-only
    # network that every author was a member at that height; the tally is
    # counted on the way, so the chain is read once and never held whole.
    verified = verify_store(
        args.data_dir, workers=args.workers, now_ms=time.time_ns() // 1_000_000,
        network_path=args.network,
    )
    counts = verified.tally
    plural = "s" if verified.workers > 1 else ""
    network = verified.network
    if network is None:
        # Said in the OK line itself, so nobody reads "OK" as "only members wrote".
        whose = "open network: authorship not checked"
    else:
        refused = f", {verified.refused} refused" if verified.refused else ""
        whose = (f"network {network.name!r} id {network.id.hex()}, every author one of "
                 f"{verified.members} members{refused}")
    out(
        f"chain OK: {verified.count} blocks (height {verified.tip_id}), difficulty "
        f"{verified.difficulty}, {whose}, tip {verified.tip_hash.hex()}, "
        f"{sum(counts.values())} votes in {len(counts)} categories; verified "
        f"{verified.count} blocks in {verified.seconds:.2f} s "
        f"({verified.rate:,.0f} blocks/s, {verified.workers} worker{plural})"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from votechain.app.demo import run_demo

    return run_demo(
        peers=args.peers,
        votes=args.votes,
        difficulty=args.difficulty,
        deadline=args.deadline,
        seed=args.seed,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from votechain.app.bench import options_from
    from votechain.app.bench_report import run_bench

    return run_bench(options_from(args.backend, args.workers, args.repeat, args.seconds,
                                  args.json, args.plot))


def _bench_type(name: str) -> Callable[[str], object]:
    """bench.py's parser `name`, imported only when the option is given (bench.py
    loads the miner, which `votechain --help` must not)."""

    def parse(text: str) -> object:
        from votechain.app import bench

        parser: Callable[[str], object] = getattr(bench, name)
        return parser(text)

    return parse


def _info_lines() -> list[str]:
    from votechain import mining

    return [
        f"votechain {__version__}",
        f"miner backend: {mining.describe()}",
        f"SHA-NI detected: {'yes' if mining.sha_ni_available() else 'no'}",
    ]


def cmd_info(_args: argparse.Namespace) -> int:
    import platform

    from votechain import mining

    lines = _info_lines()
    lines += [
        f"default backend: {mining.DEFAULT_BACKEND}",
        f"available backends: {', '.join(mining.BACKENDS)}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
        f"platform: {platform.platform()}",
        f"cpus: {os.cpu_count()}",
    ]
    out("\n".join(lines))
    return 0


class _VersionAction(argparse.Action):
    """--version: the version, the miner in use and SHA-NI, then exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and miner, exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        out("\n".join(_info_lines()))
        parser.exit(0)


# ================================================================ parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="A peer-to-peer proof-of-work voting blockchain.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def data_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir", type=Path, default=DEFAULT_DATA_DIR,
            help=f"the peer's data directory (default ./{DEFAULT_DATA_DIR})",
        )  # fmt: skip

    p = command("tracker", cmd_tracker, "run a tracker (the peers' meeting point)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=parse_port, default=DEFAULT_TRACKER_PORT, help="default 8000")
    _logging_options(p)

    p = command("peer", cmd_peer, "run a peer: keep the chain, mine votes, gossip blocks")
    p.add_argument("--network", type=Path, required=True, metavar="NAME.network",
                   help="the network file from the organizer (`votechain network create`); "
                        "it sets the genesis and the difficulty")
    p.add_argument("--tracker", type=parse_hostport, required=True, metavar="HOST:PORT",
                   help="the tracker where peers meet (required)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=parse_port, default=0,
                   help="port to listen on (default 0: any free)")
    data_dir(p)
    p.add_argument("--observer", action="store_true",
                   help="read and audit only: no certificate needed, no votes, no blocks "
                        "written, tips not counted")
    p.add_argument("--revocations", type=Path, default=None, metavar="NAME.revoked",
                   help="the organizer's revocation list (default: NAME.revoked beside "
                        "the network file, if there)")
    p.add_argument("--workers", type=parse_positive_int, default=None,
                   help="miner processes (default: one per core)")
    p.add_argument("--miner", choices=("native", "portable", "pure"), default=None,
                   help="miner backend (default: native if built, else pure)")
    p.add_argument("--metrics", type=parse_metrics_address, default=None,
                   metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (':PORT' or "
                        "'PORT': on 127.0.0.1; default: not served)")
    _logging_options(p)

    add_network_command(sub)

    p = command("vote", cmd_vote, "cast a vote through a running peer and wait until it is mined")
    data_dir(p)
    p.add_argument("--timeout", type=parse_timeout, default=120.0, help="seconds (default 120)")
    p.add_argument("category", help="what to vote for: 1 to 64 characters, no control characters")

    p = command("tally", cmd_tally, "count the votes per category in a running peer's chain")
    data_dir(p)
    p.add_argument("--json", action="store_true", help='print {"category": count, ...}')
    p.add_argument("--recount", action="store_true",
                   help="count by walking the whole chain instead of reading the tally "
                        "the peer keeps (slower; the two must agree)")

    p = command("status", cmd_status, "a running peer's network, height, tip, tracker, "
                "peers, queue, votes/s and hash rate")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("verify", cmd_verify, "re-verify a stored chain offline, on every core")
    data_dir(p)
    p.add_argument("--network", type=Path, default=None, metavar="NAME.network",
                   help="check against this network (default: the data directory's "
                        "network.json; with neither, an open network: authors not checked)")
    p.add_argument("--workers", type=parse_positive_int, default=None,
                   help="signature-checking processes (default: one per core)")

    p = command("demo", cmd_demo, "run a tracker and peers locally, vote, show the tally")
    p.add_argument("--peers", type=parse_positive_int, default=3, help="default 3")
    p.add_argument("--votes", type=parse_positive_int, default=30, help="default 30")
    p.add_argument("--difficulty", type=parse_difficulty, default=4, help="default 4")
    p.add_argument("--deadline", type=parse_timeout, default=300.0, help="seconds (default 300)")
    p.add_argument("--seed", type=int, default=None, help="seed for the random votes")

    p = command("bench", cmd_bench, "measure the miner backends' hash rates, by worker count, "
                "against this machine's single-stream SHA-256 limit")
    p.add_argument("--backend", type=_bench_type("parse_backends"), default=None,
                   metavar="native,portable,pure",
                   help="backends to measure, comma-separated (default: every one this "
                        "install has)")
    p.add_argument("--workers", type=_bench_type("parse_worker_counts"), default=None,
                   metavar="1,2,...",
                   help="miner pool sizes to measure, comma-separated (default: 1 and one "
                        "per core)")
    p.add_argument("--repeat", type=parse_positive_int, default=3, metavar="N",
                   help="jobs per backend and worker count, for min/median/max (default 3)")
    p.add_argument("--seconds", type=parse_timeout, default=1.0, metavar="S",
                   help="about how long each job runs (default 1)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: the machine, the settings, the results")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="also draw the results as a chart (needs matplotlib: "
                        "pip install votechain[plot])")

    command("info", cmd_info, "show the version, miner backend and CPU features")
    return parser


def main(argv: list[str] | None = None) -> int:
    from votechain.errors import ControlError

    parser = build_parser()
    prog = PROG
    try:
        args = parser.parse_args(argv)
        prog = " ".join([PROG, args.command, *([args.step] if "step" in args else [])])
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except CliError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except ControlError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a failure to explain.
        return 130
    except BrokenPipeError:
        # `votechain tally | head`: the reader left. Point stdout at /dev/null so
        # the interpreter's final flush does not complain about the pipe either.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

"""The `votechain` command: run a tracker or a peer, talk to a running peer, verify a chain.

Each subcommand is one small `cmd_*` function. Modules a subcommand needs are
imported inside it, so `votechain --help` and `votechain vote` start fast and do
not load the miner, SQLite or the peer.

Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 usage
error (one line), 130 interrupted by Ctrl-C. Expected failures never print a
traceback; an unexpected exception is a bug and does.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from votechain import __version__
from votechain.app.render import format_hashrate, format_tally
from votechain.core.voting import validate_category
from votechain.errors import CliError, InvalidVote

if TYPE_CHECKING:
    from votechain.core.membership import Revocations
    from votechain.net.control_client import ControlClient
    from votechain.node.membership_files import Membership

PROG = "votechain"
DEFAULT_DATA_DIR = Path("votechain-data")
DEFAULT_TRACKER_PORT = 8000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (prog: error: ...), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ================================================================ argument types


def parse_hostport(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port); argparse turns ValueError into exit 2."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _difficulty(text: str) -> int:
    from votechain.core.rules import MAX_DIFFICULTY

    if not text.isdigit() or int(text) > MAX_DIFFICULTY:
        raise argparse.ArgumentTypeError(f"expected a difficulty 0..{MAX_DIFFICULTY}, got {text!r}")
    return int(text)


def _height(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a block height 0 or more, got {text!r}")
    return int(text)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 3600], got {text!r}")
    return value


# ================================================================ output helpers


def _out(text: str = "") -> None:
    print(text, flush=True)


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


def _setup_logging(quiet: bool) -> None:
    # A daemon's INFO lines are its record: one per block accepted, rejected or
    # switched, one per peer registered. --quiet keeps only warnings.
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


# ================================================================ subcommands


def cmd_tracker(args: argparse.Namespace) -> int:
    from votechain.net.tracker_server import TrackerServer

    _setup_logging(args.quiet)
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

    _setup_logging(args.quiet)
    membership = _load_membership(args)
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
    )
    try:
        node = Node(config)
        node.start()
    except (OSError, mining.BackendUnavailable, StoreError) as exc:
        # Expected trouble (port taken, no native miner, a data directory made for
        # another network): one line. Anything else is a bug and keeps its traceback.
        raise CliError(f"cannot start the peer: {exc}") from exc
    return _serve_until_signalled("peer", lambda: node.address, stop, node.stop)


def _load_membership(args: argparse.Namespace) -> Membership:
    """The network and this data directory's membership of it, checked before
    anything starts, so a peer that may not write says why in one line."""
    from votechain.node import membership_files as files

    with _membership_errors():
        network = files.read_network(args.network)
        revocations = files.read_revocations(args.revocations) if args.revocations else None
        return files.load_membership(network, Path(args.data_dir), network_path=args.network,
                                     revocations=revocations, observer=args.observer)


@contextlib.contextmanager
def _membership_errors() -> Iterator[None]:
    """A bad network, certificate, key or revocation file, a data directory that
    is not admitted, a file we cannot write: the user's to fix, so one line."""
    from votechain.errors import BadCertificate, NotAdmitted

    try:
        yield
    except (BadCertificate, NotAdmitted) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        # "PATH: Permission denied", or the message we gave a FileExistsError.
        text = f"{exc.filename}: {exc.strerror}" if exc.strerror and exc.filename else str(exc)
        raise CliError(text) from exc


def cmd_network_create(args: argparse.Namespace) -> int:
    from votechain.node import membership_files as files

    with _membership_errors():
        network_path, authority_path = files.create_network(args.name, args.difficulty, args.out)
        network = files.read_network(network_path)
    _out(f"network {network.name!r}, difficulty {network.difficulty}, id {network.id.hex()}")
    _out(f"public, for every peer and auditor: {network_path}")
    _out(f"secret, for the organizer only:     {authority_path} (mode 0600; keep it offline)")
    return 0


def cmd_network_join(args: argparse.Namespace) -> int:
    from votechain.core.keys import KEY_FILE
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    with _membership_errors():
        network = files.read_network(args.network)
        member, pub_path = files.join(network, args.data_dir)
    _out(f"{args.data_dir} joins network {network.name!r} (id {network.id.hex()})")
    _out(f"wrote {pub_path}: send it to the organizer; {args.data_dir / files.NETWORK_COPY} "
         f"is kept, and {args.data_dir / KEY_FILE} stays here")
    _out(f"key fingerprint {fingerprint(member).hex()}: read it to the organizer, who sees "
         "the same one when admitting it")
    _out(f"then: votechain network install {args.network} --data-dir {args.data_dir} "
         "--certificate FILE")
    return 0


def cmd_network_admit(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    if args.member_key is None:
        return _admit_directory(args)
    key_path: Path = args.member_key
    if args.label is None and key_path.name == files.PUBLIC_KEY_FILE:
        # Every station's `join` writes member.pub: the name says nothing of whose it is.
        raise CliError(f"{key_path} does not say which station it is: give --label "
                       "(or save it as, e.g., town-hall.pub)")
    label = args.label or key_path.name.removesuffix(files.PUBLIC_KEY_SUFFIX)
    out = args.out or files.default_certificate_path(key_path, label)
    with _membership_errors():
        network = files.read_network(args.network)
        authority = files.read_authority(args.authority)
        member = files.read_public_key(key_path)
        cert = files.admit_key(network, authority, member, label, out, _revocations(args))
    _out(f"admitted {cert.label!r} to network {network.name!r}: "
         f"key fingerprint {fingerprint(cert.member).hex()}")
    _out(f"wrote {out}: check the fingerprint with the station, then send it the file "
         "(`votechain network install`)")
    return 0


def _admit_directory(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    if args.out is not None:
        raise CliError("--out goes with --member-key (with --data-dir the certificate "
                       f"is written to DIR/{files.CERTIFICATE_FILE})", code=2)
    # Default label: the directory's own name, resolved so that "." names something.
    label = args.label or Path(args.data_dir).resolve().name
    with _membership_errors():
        network = files.read_network(args.network)
        authority = files.read_authority(args.authority)
        cert = files.admit(network, authority, args.data_dir, label, _revocations(args))
    _out(f"admitted {cert.label!r} to network {network.name!r}: "
         f"key fingerprint {fingerprint(cert.member).hex()}")
    _out(f"wrote {Path(args.data_dir) / files.CERTIFICATE_FILE} and "
         f"{Path(args.data_dir) / files.NETWORK_COPY}")
    return 0


def _revocations(args: argparse.Namespace) -> Revocations | None:
    """The revocation list beside the network file, if there (call inside _membership_errors)."""
    from votechain.node import membership_files as files

    revoked_path = files.beside(args.network, files.REVOKED_SUFFIX)
    return files.read_revocations(revoked_path) if revoked_path.exists() else None


def cmd_network_install(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    with _membership_errors():
        network = files.read_network(args.network)
        cert = files.install(network, args.data_dir, args.certificate,
                             network_path=args.network)
    _out(f"installed {args.data_dir / files.CERTIFICATE_FILE}: {cert.label!r} is a member of "
         f"network {network.name!r}, key fingerprint {fingerprint(cert.member).hex()}")
    _out(f"start the peer: votechain peer --network {args.network} --data-dir {args.data_dir} "
         "--tracker HOST:PORT")
    return 0


def cmd_network_revoke(args: argparse.Namespace) -> int:
    from votechain.core.membership import fingerprint
    from votechain.node import membership_files as files

    with _membership_errors():
        network = files.read_network(args.network)
        authority = files.read_authority(args.authority)
        member = files.read_member_key(args.member)
        revoked_path = files.beside(args.network, files.REVOKED_SUFFIX)
        revocations = files.revoke(network, authority, revoked_path, member, args.from_height)
    _out(f"revoked key {fingerprint(member).hex()} from height {args.from_height} "
         f"in {revoked_path} (serial {revocations.serial}, "
         f"{len(revocations.revoked)} key{'s' if len(revocations.revoked) != 1 else ''} revoked)")
    _out("give that file to every peer: each reads it at its next start "
         f"(beside {Path(args.network).name}, or --revocations)")
    return 0


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
        _out(f"votechain {kind} listening on {host}:{port}")
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
    _out(f"vote for {category!r} mined in block {block_id} {block_hash}")
    return 0


def cmd_tally(args: argparse.Namespace) -> int:
    counts = _client(args.data_dir).tally(recount=args.recount)
    _out(json.dumps(counts, ensure_ascii=False) if args.json else format_tally(counts))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args.data_dir).node_status()
    if args.json:
        _out(json.dumps(dataclasses.asdict(status), ensure_ascii=False))
        return 0
    rows = [
        ("height", status.height),
        ("tip", status.tip),
        ("peers", status.peers),
        ("pending votes", status.pending),
        ("miner", status.backend),
        ("hash rate", format_hashrate(status.hashrate)),
    ]
    _out("\n".join(f"{name:<14}{value}" for name, value in rows))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from votechain.app.verify import verify_store
    from votechain.core.voting import tally

    # The genesis, every link, hash, difficulty and signature (those over
    # --workers processes), that no transaction appears twice, and on a
    # members-only network that every author was a member at that height.
    verified = verify_store(
        args.data_dir, workers=args.workers, now_ms=time.time_ns() // 1_000_000,
        network_path=args.network,
    )
    blocks = verified.blocks
    counts = tally(blocks)
    tip = blocks[-1]
    plural = "s" if verified.workers > 1 else ""
    network = verified.network
    if network is None:
        # Said in the OK line itself, so nobody reads "OK" as "only members wrote".
        whose = "open network: authorship not checked"
    else:
        refused = f", {verified.refused} refused" if verified.refused else ""
        whose = (f"network {network.name!r} id {network.id.hex()}, every author one of "
                 f"{verified.members} members{refused}")
    _out(
        f"chain OK: {len(blocks)} blocks (height {tip.id}), difficulty {verified.difficulty}, "
        f"{whose}, tip {tip.hash.hex()}, {sum(counts.values())} votes in {len(counts)} "
        f"categories; verified {len(blocks)} blocks in {verified.seconds:.2f} s "
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
    from votechain.app.bench import run_bench

    return run_bench(args.json)


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
    _out("\n".join(lines))
    return 0


class _VersionAction(argparse.Action):
    """--version: the version, the miner in use and SHA-NI, then exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and miner, exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        _out("\n".join(_info_lines()))
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
    p.add_argument("--port", type=_port, default=DEFAULT_TRACKER_PORT, help="default 8000")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")

    p = command("peer", cmd_peer, "run a peer: keep the chain, mine votes, gossip blocks")
    p.add_argument("--network", type=Path, required=True, metavar="NAME.network",
                   help="the network file from the organizer (`votechain network create`); "
                        "it sets the genesis and the difficulty")
    p.add_argument("--tracker", type=parse_hostport, required=True, metavar="HOST:PORT",
                   help="the tracker where peers meet (required)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port to listen on (default 0: any free)")
    data_dir(p)
    p.add_argument("--observer", action="store_true",
                   help="read and audit only: no certificate needed, no votes, no blocks "
                        "written, tips not counted")
    p.add_argument("--revocations", type=Path, default=None, metavar="NAME.revoked",
                   help="the organizer's revocation list (default: NAME.revoked beside "
                        "the network file, if there)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="miner processes (default: one per core)")
    p.add_argument("--miner", choices=("native", "portable", "pure"), default=None,
                   help="miner backend (default: native if built, else pure)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")

    about = "a members-only network: create it, join, admit and install members, revoke keys"
    network = sub.add_parser("network", help=about, description=about)
    steps = network.add_subparsers(dest="step", metavar="STEP", required=True)

    def step(name: str, func: Callable[[argparse.Namespace], int],
             help_text: str) -> argparse.ArgumentParser:
        q = steps.add_parser(name, help=help_text, description=help_text)
        q.set_defaults(func=func)
        return q

    def network_and_authority(q: argparse.ArgumentParser) -> None:
        q.add_argument("network", type=Path, metavar="NAME.network", help="the network file")
        q.add_argument("--authority", type=Path, required=True, metavar="NAME.authority",
                       help="the network's secret authority key (the organizer's)")

    q = step("create", cmd_network_create,
             "write NAME.network (public) and NAME.authority (secret, 0600)")
    q.add_argument("name", metavar="NAME", help="the network's name, 1 to 64 characters")
    q.add_argument("--difficulty", type=_difficulty, default=4,
                   help="leading zero hex digits of every block hash (default 4)")
    q.add_argument("--out", type=Path, default=Path("."),
                   help="directory for the two files (default: the current one)")

    q = step("join", cmd_network_join,
             "a station: make its key (if missing) and write member.pub for the organizer")
    q.add_argument("network", type=Path, metavar="NAME.network", help="the network file")
    q.add_argument("--data-dir", type=Path, required=True,
                   help="the station's data directory (created if missing); its private "
                        "key stays there")

    q = step("admit", cmd_network_admit,
             "the organizer: certify a station's public key (--member-key), or a data "
             "directory's key on this machine (--data-dir)")
    network_and_authority(q)
    whose = q.add_mutually_exclusive_group(required=True)
    whose.add_argument("--member-key", type=Path, metavar="FILE.pub",
                       help="the station's public key (its member.pub, from `votechain "
                            "network join`): writes a certificate to send back")
    whose.add_argument("--data-dir", type=Path,
                       help="a data directory on this machine: its key (made if missing) "
                            "gets DIR/member.cert; for one machine and the demo")
    q.add_argument("--label", default=None,
                   help="who the member is, e.g. a polling station (default: the .pub "
                        "file's name, or the directory's name)")
    q.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="with --member-key: where to write the certificate (default: "
                        "LABEL.cert beside the .pub file)")

    q = step("install", cmd_network_install,
             "a station: check the organizer's certificate and make it DIR/member.cert")
    q.add_argument("network", type=Path, metavar="NAME.network", help="the network file")
    q.add_argument("--data-dir", type=Path, required=True,
                   help="the station's data directory (where `join` made its key)")
    q.add_argument("--certificate", type=Path, required=True, metavar="FILE",
                   help="the certificate the organizer sent (`votechain network admit "
                        "--member-key`)")

    q = step("revoke", cmd_network_revoke,
             "revoke a member's key in NAME.revoked, beside the network file")
    network_and_authority(q)
    q.add_argument("--member", type=Path, required=True, metavar="PATH",
                   help="the member: its certificate (.cert), public key (.pub), data "
                        "directory or node_key.pem")
    q.add_argument("--from-height", type=_height, default=0, metavar="H",
                   help="its blocks from this height on become invalid (default 0: all)")

    p = command("vote", cmd_vote, "cast a vote through a running peer and wait until it is mined")
    data_dir(p)
    p.add_argument("--timeout", type=_timeout, default=120.0, help="seconds (default 120)")
    p.add_argument("category", help="what to vote for: 1 to 64 characters, no control characters")

    p = command("tally", cmd_tally, "count the votes per category in a running peer's chain")
    data_dir(p)
    p.add_argument("--json", action="store_true", help='print {"category": count, ...}')
    p.add_argument("--recount", action="store_true",
                   help="count by walking the whole chain instead of reading the tally "
                        "the peer keeps (slower; the two must agree)")

    p = command("status", cmd_status, "a running peer's height, tip, peers, queue and miner")
    data_dir(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = command("verify", cmd_verify, "re-verify a stored chain offline, on every core")
    data_dir(p)
    p.add_argument("--network", type=Path, default=None, metavar="NAME.network",
                   help="check against this network (default: the data directory's "
                        "network.json; with neither, an open network: authors not checked)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="signature-checking processes (default: one per core)")

    p = command("demo", cmd_demo, "run a tracker and peers locally, vote, show the tally")
    p.add_argument("--peers", type=_positive_int, default=3, help="default 3")
    p.add_argument("--votes", type=_positive_int, default=30, help="default 30")
    p.add_argument("--difficulty", type=_difficulty, default=4, help="default 4")
    p.add_argument("--deadline", type=_timeout, default=300.0, help="seconds (default 300)")
    p.add_argument("--seed", type=int, default=None, help="seed for the random votes")

    p = command("bench", cmd_bench, "measure the miner backends' hash rates")
    p.add_argument("--json", action="store_true", help="print JSON")

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

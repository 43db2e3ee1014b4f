"""Long-chain figures (issue 10), measured on real `votechain` processes: the
functions benchmarks/bench_long_chain.py runs in `make bench`, and a script for
one height at a time with the tally times too.

    .venv/bin/python benchmarks/long_chain.py [--blocks 100000] [--dir DIR]
                                              [--vote-seconds S] [--no-sync]

`prepare` builds a chain of BLOCKS vote blocks at difficulty 1 into
DIR/store-BLOCKS (once: a later run reuses it, an interrupted one resumes), on a
members-only network made once in DIR (as `votechain network create` does),
every data directory admitted to it before its peer starts (`votechain network
admit`). Building costs the RSA signing of every block (~1.5 ms a block on one
core, spread over every core): 10,000 blocks take seconds, 1,000,000 about 4
minutes on 2 cores. The default DIR is .benchmarks/long, where the benchmarks
cache their chains too. Then:
- start-up (`Served.start_source`): a `votechain peer` process on that data
  directory, from spawn to its control channel answering `status` at the full
  height (the node reads, checks and loads the chain first), and the peer's
  resident memory once it answers;
- sync (`Served.sync_fresh`): a fresh peer (empty data directory, admitted)
  started against the same tracker, from spawn to its `status` at the full
  height with the source's tip: blocks/s is the height over that time;
- `tally` (kept in SQLite) and `tally --recount` (a walk of the chain) times
  (the script only);
- `verify`: `votechain verify` with 1 worker and with every core, the rate as
  the command reports it (reading and decoding the blocks included, the
  interpreter's start-up not);
- `voting_rate` (the script with `--vote-seconds S`): two peers on copies of
  the chain, each taking votes from VOTERS threads for S seconds: committed
  votes/s (the script also runs two peers on empty chains: the fork switches
  that concurrent voting causes must not cost more as the chain grows).

Every process started is stopped on the way out (`Processes.stop_all`), and the
directories made for fresh and voting peers are removed: a synced 1,000,000-block
chain is ~900 MB.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:  # run as a script; benchmarks/conftest.py does it too
    sys.path.insert(0, str(ROOT / "tests"))

from blockkit import NOW, mine_block  # noqa: E402
from framework.processes import Processes, run, wait_for  # noqa: E402
from votechain.app.demo import ChildProcess  # noqa: E402
from votechain.core import keys  # noqa: E402
from votechain.core.block import Block  # noqa: E402
from votechain.core.membership import Certificate, Network  # noqa: E402
from votechain.core.voting import vote_transaction  # noqa: E402
from votechain.errors import ControlError  # noqa: E402
from votechain.net.control_client import ControlClient  # noqa: E402
from votechain.node import membership_files as files  # noqa: E402
from votechain.node.store import DB_FILE, ChainStore  # noqa: E402
from votechain.protocol.control import NodeStatus  # noqa: E402

LONG_CHAIN_DIR = ROOT / ".benchmarks" / "long"  # ignored by git, as the other cached chains
DIFFICULTY = 1
NETWORK_NAME = "long-chain"
CATEGORIES = ("red", "green", "blue", "amber", "violet")
QUIET = os.environ.get("LONG_CHAIN_VERBOSE") is None  # peers log only warnings
VOTERS = 4  # client threads per peer casting votes, one at a time each
# Blocks written per SQLite transaction while building: one transaction per block
# would cost minutes of fsyncs; the node itself appends one at a time.
BUILD_BATCH = 2_000
BUILD_REPORT = 50_000  # a progress line this often, not 500 of them for 1,000,000
# Deadlines are bounds on failure, not guesses at speed (tests/framework/waiting.py):
# a minute, plus the height at a rate far below any the node has shown, so a
# slow machine or the unoptimised node still finishes, and a hang still fails.
SLOWEST_START = 1_000  # blocks/s: loading a stored chain at start-up
SLOWEST_SYNC = 500  # blocks/s: fetching, checking and storing a chain
SLOWEST_VERIFY = 1_000  # blocks/s: `votechain verify` at one worker


def deadline(blocks: int, slowest_rate: float) -> float:
    return 60.0 + blocks / slowest_rate


# ================================================================ the chain


class Organizer:
    """The benchmark's network, made once under `root`, and its authority."""

    def __init__(self, root: Path) -> None:
        self.network_path = root / f"{NETWORK_NAME}{files.NETWORK_SUFFIX}"
        authority_path = files.beside(self.network_path, files.AUTHORITY_SUFFIX)
        if not self.network_path.exists():
            files.create_network(NETWORK_NAME, DIFFICULTY, root)
        self.network: Network = files.read_network(self.network_path)
        self._authority = files.read_authority(authority_path)

    def admit(self, data_dir: Path) -> Certificate:
        """`data_dir`'s certificate (its key made, and admitted, on first use)."""
        if (data_dir / files.CERTIFICATE_FILE).exists():
            return files.read_certificate(data_dir / files.CERTIFICATE_FILE)
        return files.admit(self.network, self._authority, data_dir, data_dir.name)


@dataclass(frozen=True)
class LongChain:
    """A built chain: where it is stored, its height and tip, its network."""

    root: Path
    data_dir: Path
    height: int
    tip: str  # hex, as `status` reports it
    organizer: Organizer

    @property
    def work(self) -> Path:
        """Logs and the data directories of the peers started beside the chain's."""
        return self.root / f"run-{self.height}"


def chain_dir(root: Path, blocks: int) -> Path:
    return root / f"store-{blocks}"


def built_height(root: Path, blocks: int) -> int:
    """How far the chain of `blocks` blocks under `root` is built (0: not begun)."""
    try:
        store = ChainStore.open_readonly(chain_dir(root, blocks))
    except FileNotFoundError:
        return 0
    try:
        return store.tip().id
    except sqlite3.Error:  # the file made, its tables not yet
        return 0
    finally:
        store.close()


def prepare(root: Path, blocks: int) -> LongChain:
    """The chain of `blocks` blocks under `root`, built (or finished) first if need be."""
    root.mkdir(parents=True, exist_ok=True)
    organizer = Organizer(root)
    data_dir = chain_dir(root, blocks)
    tip = build(data_dir, blocks, organizer)
    assert tip.id == blocks, f"{data_dir} holds {tip.id:,} blocks, not {blocks:,}"
    return LongChain(root, data_dir, blocks, tip.hash.hex(), organizer)


def build(data_dir: Path, count: int, organizer: Organizer) -> Block:
    """Blocks by `data_dir`'s own member key up to height `count`; the tip. The
    store keeps the key's certificate, so a copy of the database proves every
    author a member (`VotingPair`) and a fresh peer receives it with the blocks.

    Mined in order on one core (difficulty 1: a few hashes a block), signed on
    every core: a block's hash does not cover its signature, so the signatures
    of a batch are independent."""
    certificate = organizer.admit(data_dir)
    key = keys.load_or_create(data_dir)
    assert key.public_der == certificate.member
    store = ChainStore.open(data_dir, DIFFICULTY, organizer.network.genesis)
    try:
        store.save_certificates([(key.public_der, certificate.encode())])
        prev = store.tip()
        if prev.id >= count:
            return prev
        started = time.monotonic()
        with ProcessPoolExecutor(initializer=_load_signer, initargs=(data_dir,)) as pool:
            for first in range(prev.id + 1, count + 1, BUILD_BATCH):
                mined = []
                for i in range(first, min(first + BUILD_BATCH, count + 1)):
                    tx = vote_transaction(CATEGORIES[i % len(CATEGORIES)], NOW - 10**6 + i)
                    prev = mine_block(prev, tx, author=key.public_der, difficulty=DIFFICULTY)
                    mined.append(prev)
                signatures = pool.map(_sign, [b.hash for b in mined], chunksize=250)
                batch = [replace(b, signature=s) for b, s in zip(mined, signatures, strict=True)]
                prev = batch[-1]
                store.replace_from(batch[0].id, batch, requeue=())
                if prev.id % BUILD_REPORT < BUILD_BATCH or prev.id == count:
                    print(f"  built {prev.id:,} blocks ({time.monotonic() - started:.0f} s)",
                          flush=True)
        return prev
    finally:
        store.close()


_signer: keys.NodeKey | None = None


def _load_signer(data_dir: Path) -> None:
    global _signer
    _signer = keys.load_or_create(data_dir)


def _sign(block_hash: bytes) -> bytes:
    assert _signer is not None
    return _signer.sign(block_hash)


def copy_store(source: Path, target: Path) -> None:
    """`source`'s chain database into `target` (a data directory), certificates
    table included: SQLite's online backup, whole and consistent even while a
    peer has the source open (a file copy would miss what is still in its WAL)."""
    src = sqlite3.connect(f"file:{source / DB_FILE}?mode=ro", uri=True)
    dst = sqlite3.connect(target / DB_FILE)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


# ================================================================ processes


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status(data_dir: Path) -> NodeStatus:
    return ControlClient.from_data_dir(data_dir).node_status()


def wait_status(data_dir: Path, ready: Callable[[NodeStatus], bool], timeout: float,
                what: str) -> NodeStatus:
    """The peer on `data_dir`'s status once `ready` holds (under `timeout`); a
    peer not answering yet (no control file, socket refused) is "not yet"."""
    seen: list[NodeStatus] = []

    def check() -> bool:
        seen.append(status(data_dir))
        del seen[:-1]
        return ready(seen[-1])

    wait_for(check, timeout, what)
    return seen[-1]


def start_peer(procs: Processes, name: str, tracker: tuple[str, int], data_dir: Path,
               organizer: Organizer, timeout: float = 600) -> ChildProcess:
    """`votechain peer` on `data_dir` (admitted to `organizer`'s network)."""
    return procs.start(name, "peer", "--network", str(organizer.network_path), "--tracker",
                       f"{tracker[0]}:{tracker[1]}", "--data-dir", str(data_dir),
                       "--workers", "1", *(["-q"] if QUIET else []), timeout=timeout)


def fresh_dir(path: Path, organizer: Organizer) -> Path:
    """An empty data directory at `path` (whatever was there removed), admitted."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)  # as the node wants it: it holds the key
    organizer.admit(path)
    return path


@dataclass(frozen=True)
class Startup:
    seconds: float  # spawn to `status` answering at the full height
    rss_mb: float  # the peer process's resident memory then (not its miner worker's)


@dataclass(frozen=True)
class Synced:
    height: int
    seconds: float  # the fresh peer's spawn to its `status` at the source's tip
    rss_mb: float  # the fresh peer's resident memory then

    @property
    def rate(self) -> float:
        return self.height / self.seconds


class Served:
    """A tracker and, once `start_source` ran, a peer serving the long chain: what
    start-up is measured on, and what a fresh peer syncs from. A context: every
    process started is stopped on the way out."""

    def __init__(self, chain: LongChain) -> None:
        self.chain = chain
        chain.work.mkdir(parents=True, exist_ok=True)
        self.procs = Processes(chain.work)
        self.tracker: tuple[str, int] | None = None
        self.source: ChildProcess | None = None
        self._fresh = itertools.count()

    def __enter__(self) -> Served:
        try:
            tracker = self.procs.start("tracker", "tracker", "--port", "0")
        except BaseException:
            self.procs.stop_all()
            raise
        assert tracker.address is not None  # set once the tracker printed it
        self.tracker = tracker.address
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.procs.stop_all()

    def start_source(self) -> Startup:
        """Start the peer on the chain's own data directory; its start-up."""
        assert self.tracker is not None and self.source is None
        chain = self.chain
        timeout = deadline(chain.height, SLOWEST_START)
        started = time.monotonic()
        self.source = start_peer(self.procs, "source", self.tracker, chain.data_dir,
                                 chain.organizer, timeout)
        serving = wait_status(chain.data_dir, lambda s: s.height >= chain.height, timeout,
                              f"the peer on {chain.height:,} blocks to answer at full height")
        seconds = time.monotonic() - started
        rss = rss_mb(self.source.popen.pid)
        assert (serving.height, serving.tip) == (chain.height, chain.tip), (
            f"the peer serves {serving.height} {serving.tip}, "
            f"its store holds {chain.height} {chain.tip}")
        return Startup(seconds, rss)

    def sync_fresh(self) -> Synced:
        """A fresh peer, admitted, started against the tracker: the time until it
        holds the source's chain (same height, same tip). It is stopped and its
        directory removed afterwards."""
        assert self.tracker is not None and self.source is not None, "start_source first"
        chain = self.chain
        name = f"fresh-{next(self._fresh)}"
        data_dir = fresh_dir(chain.work / name, chain.organizer)  # its key made untimed
        timeout = deadline(chain.height, SLOWEST_SYNC)
        started = time.monotonic()
        child = start_peer(self.procs, name, self.tracker, data_dir, chain.organizer)
        try:
            synced = wait_status(data_dir, lambda s: s.height >= chain.height, timeout,
                                 f"a fresh peer to sync {chain.height:,} blocks")
            seconds = time.monotonic() - started
            rss = rss_mb(child.popen.pid)
            assert synced.tip == chain.tip, (
                f"the fresh peer's tip {synced.height} {synced.tip} is not the source's "
                f"{chain.height} {chain.tip}")
        finally:
            self.procs.stop(child)
            self.procs.children.remove(child)
        shutil.rmtree(data_dir, ignore_errors=True)
        return Synced(chain.height, seconds, rss)


# ================================================================ verify


@dataclass(frozen=True)
class VerifyRun:
    workers: int
    blocks: int  # verified, genesis included
    rate: float  # blocks/s as the command reports it (reading the store included)
    command_seconds: float  # the whole process, interpreter start-up included


# The end of `votechain verify`'s OK line (app/cli.py cmd_verify).
_VERIFIED = re.compile(r"verified (\d+) blocks in [\d.]+ s \(([\d,]+) blocks/s, (\d+) workers?\)")


def verify(chain: LongChain, workers: int) -> VerifyRun:
    """`votechain verify` of the chain's store, against its network, with `workers`."""
    started = time.monotonic()
    done = run("verify", "--data-dir", str(chain.data_dir), "--network",
               str(chain.organizer.network_path), "--workers", str(workers),
               timeout=deadline(chain.height, SLOWEST_VERIFY))
    seconds = time.monotonic() - started
    line = (done.stdout.strip().splitlines() or [""])[-1]
    assert done.returncode == 0 and line.startswith("chain OK"), (
        f"verify exited {done.returncode}: {line}{done.stderr.strip()[-2000:]}")
    assert f"tip {chain.tip}" in line, line
    match = _VERIFIED.search(line)
    assert match is not None, f"verify's line is not as expected: {line}"
    assert int(match.group(3)) == workers, line
    return VerifyRun(workers, int(match.group(1)), float(match.group(2).replace(",", "")),
                     seconds)


# ================================================================ voting


class VotingPair:
    """Two peers, each on a copy of `source`'s chain (or an empty one) and
    admitted with a key of its own, started against a tracker of their own and
    seeing each other; `vote` measures them. A context: stopped and removed on
    the way out."""

    def __init__(self, work: Path, source: LongChain | None, organizer: Organizer) -> None:
        self.work = work
        self.source = source
        self.organizer = organizer
        self.height = source.height if source is not None else 0
        self.dirs: list[Path] = []
        self.procs = Processes(work)

    def __enter__(self) -> VotingPair:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            for name in ("a", "b"):
                data_dir = fresh_dir(self.work / name, self.organizer)
                if self.source is not None:  # with the certificates table: the authors' proofs
                    copy_store(self.source.data_dir, data_dir)
                self.dirs.append(data_dir)
            tracker = self.procs.start("tracker", "tracker", "--port", "0")
            assert tracker.address is not None
            timeout = deadline(self.height, SLOWEST_START)
            for i, data_dir in enumerate(self.dirs):
                start_peer(self.procs, f"voter-{i}", tracker.address, data_dir,
                           self.organizer, timeout)
            for data_dir in self.dirs:
                wait_status(data_dir, lambda s: s.height >= self.height and s.peers >= 1,
                            timeout, f"{data_dir.name} at height {self.height:,}, "
                            "seeing the other peer")
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close()

    def _close(self) -> None:
        self.procs.stop_all()
        for data_dir in self.dirs:
            shutil.rmtree(data_dir, ignore_errors=True)

    def vote(self, seconds: float) -> float:
        """Committed votes/s: VOTERS threads per peer, each casting one vote at a
        time (`vote` returns once the vote is in a block of that peer's chain)
        for `seconds`. A vote refused or timed out counts for nothing."""
        committed = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def voter(data_dir: Path, n: int) -> None:
            client = ControlClient.from_data_dir(data_dir)
            while time.monotonic() < stop_at:
                try:
                    client.vote(CATEGORIES[n % len(CATEGORIES)], timeout=30)
                except ControlError:
                    continue
                with lock:
                    committed[0] += 1

        threads = [threading.Thread(target=voter, args=(d, n)) for d in self.dirs
                   for n in range(VOTERS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return committed[0] / (time.monotonic() - started)

    def wait_converged(self, timeout: float = 60.0) -> NodeStatus:
        """Both peers on one tip: the votes settled, whichever fork won."""
        a, b = self.dirs

        def same_tip() -> bool:
            return status(a).tip == status(b).tip

        wait_for(same_tip, timeout, "the two voting peers to agree on one tip")
        return status(a)


def voting_rate(work: Path, source: LongChain | None, seconds: float,
                organizer: Organizer) -> float:
    """Committed votes/s of two peers voting concurrently (`VotingPair`)."""
    with VotingPair(work, source, organizer) as pair:
        rate = pair.vote(seconds)
        pair.wait_converged()
        return rate


# ================================================================ the script


def tally_seconds(data_dir: Path, recount: bool) -> float:
    """`votechain tally` of the running peer on `data_dir`, the whole command."""
    started = time.monotonic()
    done = run("tally", "--data-dir", str(data_dir), *(["--recount"] if recount else []),
               timeout=600)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=LONG_CHAIN_DIR)
    parser.add_argument("--vote-seconds", type=float, default=0.0)
    parser.add_argument("--sync", action=argparse.BooleanOptionalAction, default=True,
                        help="measure a fresh peer's sync (default: yes)")
    args = parser.parse_args()
    blocks: int = args.blocks
    print(f"chain of {blocks:,} blocks in {chain_dir(args.dir, blocks)}", flush=True)
    chain = prepare(args.dir, blocks)
    with Served(chain) as served:
        up = served.start_source()
        print(f"start-up to status: {up.seconds:.2f} s; peer RSS {up.rss_mb:.0f} MB", flush=True)
        for recount in (False, True):
            seconds = tally_seconds(chain.data_dir, recount)
            print(f"tally {'--recount' if recount else '(kept)'}: {seconds:.2f} s "
                  "(whole command)", flush=True)
        if args.sync:
            synced = served.sync_fresh()
            print(f"sync of a fresh peer: {synced.seconds:.2f} s, {synced.rate:,.0f} blocks/s; "
                  f"its RSS {synced.rss_mb:.0f} MB", flush=True)
    for workers in (1, os.cpu_count() or 1):
        verified = verify(chain, workers)
        print(f"verify --workers {workers}: {verified.rate:,.0f} blocks/s "
              f"({verified.command_seconds:.2f} s whole command)", flush=True)
    if args.vote_seconds > 0:
        at_height = voting_rate(chain.work / "vote-full", chain, args.vote_seconds,
                                chain.organizer)
        at_zero = voting_rate(chain.work / "vote-empty", None, args.vote_seconds,
                              chain.organizer)
        print(f"two peers voting, {VOTERS} clients each, {args.vote_seconds:g} s: "
              f"{at_height:.0f} votes/s at height {blocks:,}, {at_zero:.0f} at height 0 "
              f"({at_height / at_zero:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

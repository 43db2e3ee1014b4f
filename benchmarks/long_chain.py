"""Long-chain figures, measured on real processes (not part of `make bench`: building
the chain signs every block, about a millisecond each, so 100,000 blocks take
minutes).

    .venv/bin/python benchmarks/long_chain.py [--blocks 100000] [--dir DIR]

Builds a chain of BLOCKS vote blocks at difficulty 1 into DIR/store (once; a
later run reuses it), on a members-only network made once in DIR (as `votechain
network create` does), every data directory admitted to it before its peer
starts (`votechain network admit`), then prints:
- start-up: a `votechain peer` process on that data directory, from spawn to
  its control channel answering `status` (the node reads, checks and loads
  the whole chain first), and the peer's resident memory once it answers;
- `tally` (kept in SQLite) and `tally --recount` (a walk of the chain) times;
- `votechain verify` with 1 worker and with every core;
- with `--vote-seconds S`: two peers on copies of the chain and two on empty
  chains, each pair taking votes from VOTERS threads per peer for S seconds:
  committed votes/s at the full height against height 0 (the fork switches
  that concurrent voting causes must not cost more as the chain grows).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from blockkit import NOW, make_block  # noqa: E402
from framework.processes import Processes  # noqa: E402
from framework.waiting import wait_until  # noqa: E402
from votechain.app.demo import ChildProcess  # noqa: E402
from votechain.core import keys  # noqa: E402
from votechain.core.membership import Certificate, Network  # noqa: E402
from votechain.core.voting import vote_transaction  # noqa: E402
from votechain.errors import ControlError  # noqa: E402
from votechain.net.control_client import ControlClient  # noqa: E402
from votechain.node import membership_files as files  # noqa: E402
from votechain.node.store import ChainStore  # noqa: E402

DIFFICULTY = 1
NETWORK_NAME = "long-chain"
CATEGORIES = ("red", "green", "blue", "amber", "violet")
VOTERS = 4  # client threads per peer casting votes, one at a time each
# Blocks written per SQLite transaction while building: one transaction per block
# would cost minutes of fsyncs; the node itself appends one at a time.
BUILD_BATCH = 2_000


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


def build(data_dir: Path, count: int, organizer: Organizer) -> None:
    """Blocks by `data_dir`'s own member key; the store keeps its certificate,
    so a copy of the database proves every author a member (`voting_rate`)."""
    certificate = organizer.admit(data_dir)
    key = keys.load_or_create(data_dir)
    assert key.public_der == certificate.member
    store = ChainStore.open(data_dir, DIFFICULTY, organizer.network.genesis)
    try:
        store.save_certificates([(key.public_der, certificate.encode())])
        have = len(store.blocks()) - 1
        if have >= count:
            return
        prev = store.blocks()[-1]
        started = time.monotonic()
        batch = []
        for i in range(have + 1, count + 1):
            tx = vote_transaction(CATEGORIES[i % len(CATEGORIES)], NOW - 10**6 + i)
            prev = make_block(prev, tx, key=key, difficulty=DIFFICULTY)
            batch.append(prev)
            if len(batch) == BUILD_BATCH or i == count:
                store.replace_from(batch[0].id, batch, requeue=())
                batch = []
                print(f"  built {i:,} blocks ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        store.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(args: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "votechain", *args], capture_output=True,
                          text=True, check=False)
    return time.monotonic() - started, (done.stdout + done.stderr).strip().splitlines()[-1]


def start_peer(procs: Processes, name: str, tracker: tuple[str, int], data_dir: Path,
               organizer: Organizer) -> ChildProcess:
    """`votechain peer` on `data_dir` (admitted to `organizer`'s network)."""
    return procs.start(name, "peer", "--network", str(organizer.network_path), "--tracker",
                       f"{tracker[0]}:{tracker[1]}", "--data-dir", str(data_dir),
                       "--workers", "1", "-q", timeout=600)


def voting_rate(root: Path, source: Path | None, seconds: float,
                organizer: Organizer) -> float:
    """Committed votes/s of two peers voting concurrently, both starting from a
    copy of `source` (or an empty chain), each admitted with a key of its own."""
    dirs = []
    for name in ("a", "b"):
        target = root / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if source is not None:  # with the certificates table: the authors' proofs
            shutil.copy(source / "chain.sqlite3", target / "chain.sqlite3")
        organizer.admit(target)
        dirs.append(target)
    procs = Processes(root)
    try:
        tracker = procs.start("tracker", "tracker", "--port", "0")
        assert tracker.address is not None
        for i, data_dir in enumerate(dirs):
            start_peer(procs, f"peer-{i}", tracker.address, data_dir, organizer)
        committed = [0]
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def voter(data_dir: Path, n: int) -> None:
            client = ControlClient.from_data_dir(data_dir)
            while time.monotonic() < deadline:
                try:
                    client.vote(CATEGORIES[n % len(CATEGORIES)], timeout=30)
                except ControlError:
                    continue
                with lock:
                    committed[0] += 1

        threads = [threading.Thread(target=voter, args=(d, n)) for d in dirs
                   for n in range(VOTERS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return committed[0] / (time.monotonic() - started)
    finally:
        procs.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/votechain-long-chain"))
    parser.add_argument("--vote-seconds", type=float, default=0.0)
    args = parser.parse_args()
    blocks: int = args.blocks
    data_dir = args.dir / f"store-{blocks}"
    print(f"chain of {args.blocks:,} blocks in {data_dir}", flush=True)
    args.dir.mkdir(parents=True, exist_ok=True)
    organizer = Organizer(args.dir)
    build(data_dir, args.blocks, organizer)

    procs = Processes(args.dir)
    try:
        tracker = procs.start("tracker", "tracker", "--port", "0")
        assert tracker.address is not None  # set once the tracker printed it
        started = time.monotonic()
        peer = start_peer(procs, "peer", tracker.address, data_dir, organizer)

        def answers() -> bool:
            try:
                status = ControlClient.from_data_dir(data_dir).node_status()
                return status.height == blocks
            except ControlError:
                return False

        wait_until(answers, 600, what="the peer to answer status at full height")
        print(f"start-up to status: {time.monotonic() - started:.2f} s; "
              f"peer RSS {rss_mb(peer.popen.pid):.0f} MB", flush=True)
        for extra in ([], ["--recount"]):
            seconds, _ = timed(["tally", "--data-dir", str(data_dir), *extra])
            print(f"tally {' '.join(extra) or '(kept)'}: {seconds:.2f} s (whole command)")
    finally:
        procs.stop_all()
    for workers in (1, os.cpu_count() or 1):
        seconds, line = timed(["verify", "--data-dir", str(data_dir), "--workers", str(workers)])
        print(f"verify --workers {workers}: {seconds:.2f} s: {line}", flush=True)
    if args.vote_seconds > 0:
        at_height = voting_rate(args.dir / "vote-full", data_dir, args.vote_seconds, organizer)
        at_zero = voting_rate(args.dir / "vote-empty", None, args.vote_seconds, organizer)
        print(f"two peers voting, {VOTERS} clients each, {args.vote_seconds:g} s: "
              f"{at_height:.0f} votes/s at height {blocks:,}, {at_zero:.0f} at height 0 "
              f"({at_height / at_zero:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

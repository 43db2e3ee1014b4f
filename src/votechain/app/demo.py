"""`votechain demo`: a whole network on this machine, a round of votes, the tally.

It does what an organizer and the polling stations would: creates a
members-only network (`demo.network`, `demo.authority`) in a temporary
directory and admits one data directory per peer (`votechain network create`
and `admit`, through the same node/membership_files.py). Then it starts a
tracker and `peers` peers as separate processes (`python -m votechain ...
--network demo.network`, so nothing is shared but the loopback network and
those files), casts `votes` random votes on random peers, waits until every
peer holds the same chain, and prints the tally, each peer's height and tip,
and the hash rates. Exit 0 when every vote was mined and the peers agree on
a chain that holds them all; otherwise exit 1 with one line on stderr saying
which of these failed (`verdict`).

Every process started is stopped on the way out, also on Ctrl-C: SIGTERM,
then SIGKILL after a grace period. The children's logs go to files in the
temporary directory, which is kept (and named) when something went wrong.

`ChildProcess` and `stop_all` are also what the end-to-end tests use.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TypeVar

import votechain
from votechain.app.render import format_hashrate, format_tally, out
from votechain.errors import ControlError, DemoError
from votechain.net.control_client import ControlClient
from votechain.node import membership_files
from votechain.protocol.control import NodeStatus

# Why 30 s: a peer generates its RSA key and spawns its miner processes before
# it listens; on a loaded machine that takes seconds, not minutes.
START_TIMEOUT = 30.0
# Why 5 s: a peer's stop() joins its threads and miner processes, well under a second normally.
STOP_GRACE = 5.0
CATEGORIES = ("alice", "bob", "carol", "dave", "erin")
# Uneven on purpose, so the tally shows a winner rather than a tie.
WEIGHTS = (5, 4, 3, 2, 1)

_LISTENING = re.compile(rb"^votechain (\w+) listening on (.+):(\d+)$")
T = TypeVar("T")


def child_env() -> dict[str, str]:
    """The environment for a child: ours, plus the directory this votechain was
    imported from first on PYTHONPATH, so `python -m votechain` runs the same code."""
    env = dict(os.environ)
    source = str(Path(votechain.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ChildProcess:
    """A `python -m votechain ARGS` child whose stderr goes to `log_path`."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "votechain", *args]
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env(),
        )
        self.address: tuple[str, int] | None = None

    def wait_listening(self, timeout: float = START_TIMEOUT) -> tuple[str, int]:
        """Read stdout until the 'votechain ... listening on HOST:PORT' line; (host, port)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.popen.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DemoError(f"{self.name} did not start in {timeout:g} s{self._log_tail()}")
                if not selector.select(remaining):
                    continue
                # os.read, not .read(): returns what is there instead of waiting for more.
                chunk = os.read(self.popen.stdout.fileno(), 4096)
                if not chunk:
                    code = self.popen.wait()
                    raise DemoError(f"{self.name} exited with status {code}{self._log_tail()}")
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].strip()
        match = _LISTENING.match(line)
        if match is None:
            raise DemoError(f"{self.name} printed {line!r}, not its listening line")
        self.address = (match.group(2).decode(), int(match.group(3)))
        return self.address

    def _log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
            if tail:
                return ":\n  " + "\n  ".join(tail)
        return ""

    def signal_stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def finish(self, grace: float) -> int:
        """Wait up to `grace` s for the exit, then SIGKILL; close our ends. Returns the status."""
        try:
            code = self.popen.wait(max(grace, 0.0))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return code

    def stop(self, grace: float = STOP_GRACE) -> int:
        self.signal_stop()
        return self.finish(grace)


def stop_all(children: Iterable[ChildProcess], grace: float = STOP_GRACE) -> None:
    """SIGTERM every child at once, then give them `grace` s in total before SIGKILL."""
    children = list(children)
    for child in children:
        child.signal_stop()
    deadline = time.monotonic() + grace
    for child in children:
        child.finish(deadline - time.monotonic())


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T | None:
    """Poll `predicate` until it returns something other than None, or until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result is not None or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# ================================================================ the demo


class _Progress:
    """A plain-text progress bar on stderr; on a terminal it redraws in place."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.width, self.done, self.failed = total, width, 0, 0
        self._tty = sys.stderr.isatty()

    def step(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        if self._tty or self.done == self.total:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "." * (self.width - filled)
            failed = f", {self.failed} failed" if self.failed else ""
            end = "\n" if self.done == self.total else ""
            print(f"\rvoting [{bar}] {self.done}/{self.total}{failed}", end=end, file=sys.stderr)
            sys.stderr.flush()


def _client_for(peer_dir: Path, timeout: float) -> ControlClient:
    def attempt() -> ControlClient | None:
        try:
            return ControlClient.from_data_dir(peer_dir)
        except ControlError:
            return None

    client = wait_for(attempt, timeout)
    if client is None:
        raise DemoError(f"no control channel at {peer_dir} after {timeout:g} s")
    return client


def _snapshot(clients: Sequence[ControlClient]) -> list[tuple[NodeStatus, dict[str, int]]]:
    return [(client.node_status(), client.tally()) for client in clients]


def _converged(
    clients: Sequence[ControlClient], expected: int
) -> list[tuple[NodeStatus, dict[str, int]]] | None:
    snapshot = _snapshot(clients)
    tips = {status.tip for status, _ in snapshot}
    # `>=`: a vote whose wait timed out may still have been mined since.
    complete = all(sum(counts.values()) >= expected for _, counts in snapshot)
    return snapshot if len(tips) == 1 and complete else None


def run_demo(*, peers: int, votes: int, difficulty: int, deadline: float, seed: int | None) -> int:

    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="votechain-demo-"))
    children: list[ChildProcess] = []
    keep = True  # the directory, for its logs, unless the demo succeeds or is interrupted
    # SIGTERM (kill, a closing session) must stop the children too, like Ctrl-C.
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    # One miner process per peer on small machines, more where there are cores to spare.
    workers = max(1, (os.cpu_count() or 1) // peers)
    try:
        tracker = ChildProcess("tracker", ["tracker", "--port", "0"], root / "tracker.log")
        children.append(tracker)
        host, port = tracker.wait_listening()
        print(f"tracker on {host}:{port}; starting {peers} peers in {root}", file=sys.stderr)
        dirs = [root / f"peer{i}" for i in range(peers)]
        network_path = _admit_peers(root, dirs, difficulty)
        for i, peer_dir in enumerate(dirs):
            args = ["peer", "--tracker", f"{host}:{port}", "--network", str(network_path)]
            args += ["--data-dir", str(peer_dir), "--workers", str(workers)]
            children.append(ChildProcess(f"peer{i}", args, root / f"peer{i}.log"))
        for child in children[1:]:
            child.wait_listening()
        clients = [_client_for(peer_dir, START_TIMEOUT) for peer_dir in dirs]

        voting = _cast_votes(clients, votes, rng, deadline)
        cast = voting.mined
        print(f"waiting for {peers} peers to agree on {cast} votes", file=sys.stderr)
        snapshot = wait_for(lambda: _converged(clients, cast), deadline)
        if snapshot is None:
            snapshot = _snapshot(clients)
        tips = {status.tip for status, _ in snapshot}
        out(format_tally(snapshot[0][1], bars=True))
        out()
        out(f"{'peer':<7}{'height':>7}  {'tip':<16}  hash rate")
        for i, (status, _counts) in enumerate(snapshot):
            out(
                f"peer{i:<3}{status.height:>7}  {status.tip[:16]:<16}  "
                f"{format_hashrate(status.hashrate)}"
            )
        problem = verdict(voting, agreed=len(tips) == 1, held=sum(snapshot[0][1].values()),
                          deadline=deadline)
        if problem is not None:
            print(f"votechain demo: error: {problem}", file=sys.stderr)
            return 1
        keep = False
        return 0
    except DemoError as exc:
        print(f"votechain demo: error: {exc}", file=sys.stderr)
        return 1
    except ControlError as exc:
        print(f"votechain demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        keep = False
        raise
    finally:
        stop_all(reversed(children))
        signal.signal(signal.SIGTERM, previous_sigterm)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"votechain demo: logs and data kept in {root}", file=sys.stderr)


def _admit_peers(root: Path, dirs: Sequence[Path], difficulty: int) -> Path:
    """The organizer's part: a network in `root`, each of `dirs` admitted as a
    member (its key made there). Returns the network file the peers start with."""
    # Every peer is a seat: a vote is final once a majority of them keep it.
    network_path, authority_path = membership_files.create_network("demo", difficulty, root,
                                                                   len(dirs))
    network = membership_files.read_network(network_path)
    authority = membership_files.read_authority(authority_path)
    for peer_dir in dirs:
        membership_files.admit(network, authority, peer_dir, peer_dir.name)
    print(f"network {network.name!r} {network.id.hex()[:16]}…, difficulty {difficulty}, "
          f"{network.seats} seats: {len(dirs)} members admitted", file=sys.stderr)
    return network_path


@dataclass
class Voting:
    """How the round of votes went: how many were cast and mined, and the first
    failure's reason (they tend to share one: not mined in time, a peer gone)."""

    cast: int = 0
    mined: int = 0
    first_failure: str | None = None

    @property
    def failed(self) -> int:
        return self.cast - self.mined


def verdict(voting: Voting, *, agreed: bool, held: int, deadline: float) -> str | None:
    """None if the demo succeeded, else one line saying what failed: votes not
    mined, peers on different tips, or a chain that lost mined votes."""
    problems = []
    if voting.failed:
        problems.append(f"{voting.failed} of {voting.cast} votes failed "
                        f"(the first: {voting.first_failure})")
    if not agreed:
        problems.append(f"the peers disagree after {deadline:g} s")
    elif held < voting.mined:
        problems.append(f"the chain holds {held} of the {voting.mined} votes mined")
    return "; ".join(problems) or None


def _cast_votes(
    clients: Sequence[ControlClient], votes: int, rng: random.Random, deadline: float
) -> Voting:
    """Cast `votes` random votes on random peers, as many at once as there are
    peers (so blocks race and forks get resolved); how many were mined, and why
    the others failed. The failures are summed up once, in `verdict`, not one
    line each: thirty lines of the same timeout say no more than one."""
    progress = _Progress(votes)
    interrupted = threading.Event()
    lock = threading.Lock()
    voting = Voting()

    def cast(client: ControlClient, category: str) -> None:
        failure = None
        try:
            client.vote(category, timeout=deadline)
        except ControlError as exc:
            failure = f"vote for {category}: {exc}"
        with lock:
            voting.cast += 1
            if failure is None:
                voting.mined += 1
            elif voting.first_failure is None and not interrupted.is_set():
                # After Ctrl-C the peers are being stopped: failures are expected.
                voting.first_failure = failure
            progress.step(failure is None)

    pool = ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="demo-vote")
    try:
        futures: set[Future[None]] = set()
        for _ in range(votes):
            category = rng.choices(CATEGORIES, weights=WEIGHTS)[0]
            futures.add(pool.submit(cast, rng.choice(clients), category))
        while futures:
            _done, futures = wait(futures, return_when=FIRST_COMPLETED)
    except BaseException:
        interrupted.set()
        raise
    finally:
        # On Ctrl-C do not wait for votes in flight: stopping the peers ends them.
        pool.shutdown(wait=False, cancel_futures=True)
    return voting


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt



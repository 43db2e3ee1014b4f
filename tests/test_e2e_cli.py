"""End to end through the real `votechain` command: an organizer's network, a
tracker and three admitted peers, each its own process on loopback, votes cast
on different peers at once, every peer's tally equal and complete; `verify` on
an honest and on a tampered store; a wrong cookie.

Nothing here sleeps to synchronise: conditions are awaited under a deadline.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from framework.members import Organizer
from framework.processes import ChildProcess, Processes, run
from framework.waiting import wait_until
from votechain.app.demo import child_env
from votechain.core.block import Block
from votechain.errors import ControlError
from votechain.net.control_client import ControlClient

pytestmark = pytest.mark.slow

PEERS = 3
DIFFICULTY = 3
VOTES = ["alice", "bob", "alice", "carol", "alice", "bob"]
# Generous: forks from concurrent votes resolve within a sync interval or two
# (about 3 s here natively, a little more mining pure); 60 s is for a loaded machine.
CONVERGE_TIMEOUT = 60.0


@dataclass
class Network:
    tracker: ChildProcess
    peers: list[ChildProcess]
    dirs: list[Path]
    processes: Processes
    organizer: Organizer


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("e2e")
    processes = Processes(root)
    # The organizer's part, done once: the network, and each station admitted.
    organizer = Organizer(root / "organizer", "e2e", difficulty=DIFFICULTY)
    dirs = [root / f"peer{i}" for i in range(PEERS)]
    for data_dir in dirs:
        organizer.admit(data_dir)
    try:
        tracker = processes.start("tracker", "tracker", "--port", "0")
        assert tracker.address is not None
        host, port = tracker.address
        peers = [
            processes.start(
                f"peer{i}",
                *("peer", "--tracker", f"{host}:{port}", "--data-dir", str(data_dir)),
                *("--network", str(organizer.network_path), "--workers", "1"),
            )
            for i, data_dir in enumerate(dirs)
        ]
        yield Network(tracker, peers, dirs, processes, organizer)
    finally:
        processes.stop_all()


def tally_of(data_dir: Path) -> dict[str, int] | None:
    try:
        return ControlClient.from_data_dir(data_dir).tally()
    except ControlError:
        return None


@pytest.fixture(scope="module")
def voted(network: Network) -> dict[str, int]:
    """Cast VOTES on different peers at once (so blocks race) and wait for agreement."""
    voters = [
        subprocess.Popen(
            [sys.executable, "-m", "votechain", "vote", "--data-dir", str(data_dir), category],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for category, data_dir in zip(
            VOTES, (network.dirs[i % PEERS] for i in range(len(VOTES))), strict=True
        )
    ]
    for voter in voters:
        out, err = voter.communicate(timeout=CONVERGE_TIMEOUT)
        assert voter.returncode == 0, err
        assert "mined in block" in out
    expected = dict(Counter(VOTES))
    wait_until(
        lambda: all(tally_of(d) == expected for d in network.dirs),
        CONVERGE_TIMEOUT,
        what="every peer to hold every vote",
    )
    return expected


def test_every_peer_tallies_every_vote(network: Network, voted: dict[str, int]) -> None:
    for data_dir in network.dirs:
        result = run("tally", "--data-dir", str(data_dir), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == voted
    statuses = []
    for data_dir in network.dirs:
        result = run("status", "--data-dir", str(data_dir), "--json")
        assert result.returncode == 0, result.stderr
        statuses.append(json.loads(result.stdout))
    wait_until(
        lambda: len({ControlClient.from_data_dir(d).status()["tip"] for d in network.dirs}) == 1,
        CONVERGE_TIMEOUT,
        what="one tip everywhere",
    )
    for status in statuses:
        assert {"height", "tip", "peers", "pending", "backend", "hashrate"} <= set(status)
        assert status["height"] >= len(VOTES)


def test_a_wrong_cookie_is_refused(network: Network, voted: dict[str, int]) -> None:
    real = ControlClient.from_data_dir(network.dirs[0])
    with pytest.raises(ControlError, match="bad cookie"):
        ControlClient(real.path, "00" * 32).vote("mallory")
    assert tally_of(network.dirs[0]) == voted


def test_verify_accepts_an_honest_store_and_rejects_an_altered_vote(
    network: Network, voted: dict[str, int]
) -> None:
    # Last in this module: it stops a peer to edit its store.
    data_dir = network.dirs[-1]
    assert network.processes.stop(network.peers[-1]) == 0

    honest = run("verify", "--data-dir", str(data_dir))
    assert honest.returncode == 0, honest.stderr
    assert "chain OK" in honest.stdout
    assert f"{len(VOTES)} votes" in honest.stdout
    # Checked against the network the directory belongs to, every author a
    # member: each peer mined the votes cast on it, so the store holds the
    # certificates of all three.
    network_id = network.organizer.network.id.hex()
    assert f"network 'e2e' id {network_id}, every author one of {PEERS} members," in honest.stdout

    with sqlite3.connect(data_dir / "chain.sqlite3") as db:
        (body,) = db.execute("SELECT body FROM blocks WHERE id = 2").fetchone()
        block = Block.decode(bytes(body))
        forged = replace(block, transaction=replace(block.transaction, data=b"mallory"))
        db.execute("UPDATE blocks SET body = ? WHERE id = 2", (forged.encode(),))

    tampered = run("verify", "--data-dir", str(data_dir))
    assert tampered.returncode == 1
    assert "Traceback" not in tampered.stderr
    line = tampered.stderr.strip()
    assert "\n" not in line
    assert "block 2 " in line
    assert "hash does not match" in line


def test_demo_runs_a_network_and_shows_the_tally(tmp_path: Path) -> None:
    result = run(
        *("demo", "--peers", "2", "--votes", "4", "--difficulty", "2", "--seed", "7"),
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["category", "votes"]
    assert "total" in result.stdout
    assert "█" in result.stdout
    assert sum(line.startswith("peer") and "/s" in line for line in lines) == 2
    assert "4/4" in result.stderr
    assert "2 members admitted" in result.stderr


def test_demo_exits_1_and_says_so_when_votes_fail(tmp_path: Path) -> None:
    # Difficulty 9 (16**9 = 6.9e10 hashes a block, minutes even for the AVX-512
    # kernel) and a 1 s deadline: no vote is mined in time, so each one fails.
    result = run(
        *("demo", "--peers", "2", "--votes", "2", "--difficulty", "9", "--deadline", "1"),
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("votechain demo: error")]
    assert len(errors) == 1, result.stderr
    assert "2 of 2 votes failed" in errors[0]
    assert "not mined within 1 s" in errors[0]


def test_demo_verdict_names_each_failure() -> None:
    from votechain.app.demo import Voting, verdict

    fine = Voting(cast=5, mined=5)
    assert verdict(fine, agreed=True, held=5, deadline=9) is None
    assert verdict(fine, agreed=True, held=7, deadline=9) is None  # late votes mined since
    failed = Voting(cast=5, mined=3, first_failure="vote for bob: not mined within 9 s")
    assert verdict(failed, agreed=True, held=3, deadline=9) == (
        "2 of 5 votes failed (the first: vote for bob: not mined within 9 s)")
    assert verdict(fine, agreed=False, held=5, deadline=9) == "the peers disagree after 9 s"
    assert verdict(failed, agreed=False, held=3, deadline=9) == (
        "2 of 5 votes failed (the first: vote for bob: not mined within 9 s); "
        "the peers disagree after 9 s")
    assert verdict(fine, agreed=True, held=4, deadline=9) == (
        "the chain holds 4 of the 5 votes mined")

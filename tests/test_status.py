"""`votechain status` and `votechain peer --metrics --log-file` as an operator
runs them: a real tracker and peer process (tests/framework/processes.py's
Cluster), the CLI in a subprocess, the endpoint scraped over HTTP."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from framework.processes import Cluster, run, wait_for
from votechain import __version__

pytestmark = pytest.mark.slow

DIFFICULTY = 3
DEADLINE = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, DIFFICULTY) as c:
        yield c


def test_status_metrics_and_log_file_of_a_real_peer(cluster: Cluster, tmp_path: Path) -> None:
    tracker = cluster.tracker()
    assert tracker.address is not None
    log_file = tmp_path / "a.log"
    (peer,) = cluster.add_peers(["a"], tracker.address, "--metrics", ":0",
                                "--log-file", str(log_file), "--log-level", "debug")
    peer.vote("alice", timeout=DEADLINE)
    wait_for(lambda: peer.status()["tracker_up"], DEADLINE, "the tracker to be up")

    result = run("status", "--data-dir", str(peer.data_dir), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["network"] == "cluster"
    assert status["difficulty"] == DIFFICULTY
    assert status["version"] == __version__
    assert status["tracker"] == f"{tracker.address[0]}:{tracker.address[1]}"
    assert status["tracker_up"] is True
    assert status["uptime"] > 0
    assert status["height"] == 1
    assert status["votes_per_second"] >= 0
    assert status["live_hashrate"] >= 0

    text = run("status", "--data-dir", str(peer.data_dir)).stdout
    assert "network         cluster, difficulty 3" in text
    assert "(up)" in text and "now," in text

    # The log went to the file, at debug level; the endpoint's address is in it.
    log = log_file.read_text()
    assert "registered with tracker" in log
    match = re.search(r"metrics on (http://[\d.]+:\d+/metrics)", log)
    assert match, log
    with urllib.request.urlopen(match.group(1), timeout=5) as reply:
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    assert families["votechain_height"].samples[0].value == 1
    assert families["votechain_votes_committed"].samples[0].value == 1
    assert families["votechain_tracker_up"].samples[0].value == 1


def test_a_peer_logs_losing_its_tracker_once(cluster: Cluster) -> None:
    tracker = cluster.tracker()
    assert tracker.address is not None
    (peer,) = cluster.add_peers(["a"], tracker.address)
    wait_for(lambda: peer.status()["tracker_up"], DEADLINE, "the tracker to be up")
    cluster.kill9_tracker(tracker)
    wait_for(lambda: not peer.status()["tracker_up"], DEADLINE, "the tracker to be lost")
    time.sleep(3.0)  # three retries (one a second) later, still one line
    text = peer.log_text()
    host, port = tracker.address
    assert text.count(f"tracker {host}:{port} lost") == 1, text

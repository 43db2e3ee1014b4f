"""What an operator watches: the Prometheus endpoint (`peer --metrics`), the live
hash rate, the tracker lost/back lines and the periodic summary line.

In-process nodes (tests/framework/network.py) on 127.0.0.1, each with its own
metrics registry and port; scraped over HTTP and parsed with
prometheus_client's own exposition parser.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from blockkit import make_block, tx_for
from framework.network import Network, Target
from framework.waiting import wait_until
from votechain import mining
from votechain.mining.pool import LiveRate
from votechain.net.tracker_server import TrackerServer
from votechain.node.runtime import Node
from votechain.protocol.peer import AddResult

DIFFICULTY = 3
DEADLINE = 30.0
LOCAL_METRICS = ("127.0.0.1", 0)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path, difficulty=DIFFICULTY) as network:
        yield network


def scrape(node: Node) -> Samples:
    """Every sample the node's endpoint serves, by name and labels."""
    assert node.metrics is not None and node.metrics.address is not None
    host, port = node.metrics.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_a_vote_shows_in_height_votes_and_mine_time(net: Network) -> None:
    node = net.add_node("a", metrics=LOCAL_METRICS)
    before = scrape(node)
    assert value(before, "votechain_height") == 0
    assert value(before, "votechain_votes_committed") == 0
    assert value(before, "votechain_block_mine_seconds_count") == 0
    for status in ("added", "known", "fork", "rejected"):  # present from the start
        assert value(before, "votechain_blocks_received_total", status=status) == 0

    tx_id = node.submit_vote("alice")
    assert node.wait_for_tx(tx_id, DEADLINE) is not None
    wait_until(lambda: value(scrape(node), "votechain_tracker_up") == 1, DEADLINE,
               what="the tracker to be up")
    after = scrape(node)
    assert value(after, "votechain_height") == 1
    assert value(after, "votechain_votes_committed") == 1
    assert value(after, "votechain_pending_votes") == 0
    assert value(after, "votechain_block_mine_seconds_count") == 1
    assert value(after, "votechain_block_sign_seconds_count") == 1
    assert value(after, "votechain_block_mine_seconds_sum") > 0
    assert value(after, "votechain_forks_resolved_total") == 0
    # One worker slot (Network's nodes mine with one), and the total beside it.
    assert ("votechain_hashrate", ()) in after
    assert ("votechain_worker_hashrate", (("worker", "0"),)) in after


def test_received_blocks_count_by_status_and_rejections_by_rule(net: Network) -> None:
    node = net.add_node("a", metrics=LOCAL_METRICS)
    target = Target(node)
    good = make_block(target.tip, tx_for("bob"), difficulty=DIFFICULTY)
    bad = replace(make_block(target.tip, tx_for("carol"), difficulty=DIFFICULTY),
                  signature=bytes(len(good.signature)))
    rejected = target.add(bad)
    assert rejected.status == "rejected", rejected
    target.extend(good)
    assert target.add(good) == AddResult("known")

    samples = scrape(node)
    assert value(samples, "votechain_blocks_received_total", status="rejected") == 1
    assert value(samples, "votechain_blocks_received_total", status="added") == 1
    assert value(samples, "votechain_blocks_received_total", status="known") == 1
    assert value(samples, "votechain_blocks_rejected_total", reason="BadSignature") == 1
    # Verified twice (the known block stops at the cheap screen, before the RSA check).
    assert value(samples, "votechain_block_verify_seconds_count") == 2
    assert value(samples, "votechain_height") == 1
    assert value(samples, "votechain_inbound_connections") >= 0


def test_a_failed_handshake_is_counted(net: Network) -> None:
    node = net.add_node("a", metrics=LOCAL_METRICS)
    with Target(node).raw(hello=False) as raw:
        raw.send_obj({"type": "hello", "version": "one"})  # a malformed Hello
        raw.wait_closed()
    wait_until(lambda: value(scrape(node), "votechain_handshake_failures_total") == 1,
               DEADLINE, what="the handshake failure to be counted")


def test_without_metrics_nothing_is_served(net: Network) -> None:
    node = net.add_node("a")
    assert node.metrics is None
    tx_id = node.submit_vote("alice")
    assert node.wait_for_tx(tx_id, DEADLINE) is not None  # the uncounted paths still work


def test_each_node_has_its_own_registry(net: Network) -> None:
    a, b = net.add_nodes(["a", "b"], metrics=LOCAL_METRICS)
    assert a.metrics is not None and b.metrics is not None
    assert a.metrics.address != b.metrics.address
    tx_id = a.submit_vote("alice")
    assert a.wait_for_tx(tx_id, DEADLINE) is not None
    assert value(scrape(a), "votechain_block_mine_seconds_count") == 1
    assert value(scrape(b), "votechain_block_mine_seconds_count") == 0


def test_the_metrics_server_stops_with_the_node(net: Network) -> None:
    node = net.add_node("a", metrics=LOCAL_METRICS)
    assert node.metrics is not None and node.metrics.address is not None
    host, port = node.metrics.address
    net.stop_node(node)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


# ------------------------------------------------------------- live hash rate


def test_live_rate_spans_its_window_per_worker() -> None:
    rate = LiveRate(window=5.0)
    assert rate.sample(0.0, (0, 0)) == (0.0, 0.0)
    assert rate.sample(1.0, (100, 50)) == (100.0, 50.0)
    rate.sample(5.0, (500, 250))
    assert rate.rates == (100.0, 50.0)
    # Past the window the oldest samples go: the rate is the last 5 s's alone.
    assert rate.sample(10.0, (500, 1250)) == (0.0, 200.0)
    assert rate.total == 200.0


def test_pool_progress_grows_while_a_job_runs() -> None:
    with mining.MinerPool(1) as pool:
        assert pool.progress() == (0,)
        pool.submit(b"x" * 32, 16)  # never found: runs until aborted
        try:
            wait_until(lambda: pool.progress()[0] > 0, DEADLINE,
                       what="the worker to report progress before the job ends")
        finally:
            pool.abort()
            assert pool.wait(DEADLINE) is None


def test_a_mining_node_reports_a_live_hash_rate(net: Network) -> None:
    node = net.add_node("a", difficulty=9)  # ~69 G hashes a block: minutes of mining
    node.submit_vote("alice")
    wait_until(lambda: node.status().live_hashrate > 0, DEADLINE,
               what="a live hash rate while the first job runs")
    assert node.status().hashrate == 0  # the lifetime average knows no finished job yet


# ------------------------------------------------------------- log lines


def test_tracker_loss_and_return_are_one_line_each(
    net: Network, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="votechain.peer")
    node = net.add_node("a", tracker_interval=0.1)
    host, port = net.tracker.address
    net.tracker.stop()
    wait_until(lambda: node.directory.up is False, DEADLINE, what="the tracker to be lost")
    assert node.status().tracker_up is False
    time.sleep(1.0)  # ten retries: none of them may log again
    net.tracker = TrackerServer(host, port)
    net.tracker.start()
    wait_until(lambda: node.directory.up, DEADLINE, what="the tracker to be back")
    time.sleep(0.5)
    messages = [r.getMessage() for r in caplog.records if r.name == "votechain.peer"]
    lost = [m for m in messages if f"tracker {host}:{port} lost" in m]
    back = [m for m in messages if f"tracker {host}:{port} is back" in m]
    assert len(lost) == 1, messages
    assert len(back) == 1, messages
    assert node.status().tracker_up is True


def test_an_unreachable_tracker_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="votechain.peer")
    with Network(tmp_path, difficulty=DIFFICULTY) as net:
        host, port = net.tracker.address
        net.tracker.stop()  # a mistyped or down tracker from the start
        node = net.add_node("a", register=False, tracker_interval=0.1)
        wait_until(lambda: node.directory.up is False, DEADLINE, what="a failed attempt")
        time.sleep(0.5)
        unreachable = [r for r in caplog.records
                       if f"tracker {host}:{port} unreachable" in r.getMessage()]
        assert len(unreachable) == 1
        assert unreachable[0].levelno == logging.WARNING


def test_the_summary_line_is_logged_periodically(
    net: Network, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="votechain.peer")
    node = net.add_node("a", summary_interval=0.2)
    tx_id = node.submit_vote("alice")
    assert node.wait_for_tx(tx_id, DEADLINE) is not None

    def summaries() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary:")]

    wait_until(lambda: any("height 1," in line for line in summaries()), DEADLINE,
               what="a summary line at height 1")
    line = next(line for line in summaries() if "height 1," in line)
    for part in ("votes/s", "MH/s", "peers listed", "tracker"):
        assert part in line

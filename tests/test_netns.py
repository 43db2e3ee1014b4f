"""Convergence across network namespaces: a tracker and three peers, each in its own
namespace with its own address (10.200.0.1 for the tracker, .2 to .4 for the peers),
joined by veth pairs to a bridge that lives in a namespace of its own, so the host's
namespace is not touched and the tracker's NODES list carries distinct IPs, as it
would across machines.

Needs Linux, root and a working `ip netns`; skips with the reason otherwise. Every
namespace this test creates is deleted in a finalizer (which also removes the veths),
after every process in them is stopped.

The control channel binds 127.0.0.1 inside each peer's namespace, so votes, status
and tallies go through `ip netns exec NS votechain ...`, the CLI an operator uses.
The peers form a members-only network, set up beforehand with `votechain network
create` and `network admit` as an organizer would (files only: no namespace).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from faults import verify
from framework.processes import run, wait_for
from votechain.app.demo import START_TIMEOUT, ChildProcess, child_env, stop_all

pytestmark = pytest.mark.slow

SUBNET = "10.200.0"
TRACKER_PORT = 8000
PEER_PORT = 9000
PEERS = 3
DIFFICULTY = 3
# For each condition below: a tracker round trip, or three votes mined at
# difficulty 3 and agreed on (about 5 s in all here, pure or native); 30 s is
# for a loaded machine.
DEADLINE = 30.0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _unavailable() -> str | None:
    """Why this machine cannot run the test, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"vcprobe{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    veth = _ip("-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
    _ip("netns", "del", probe)
    if veth.returncode != 0:
        return f"cannot create veth pairs here: {veth.stderr.strip()}"
    return None


class NsChild(ChildProcess):
    """A `python -m votechain ARGS` child run inside network namespace `ns`."""

    def __init__(self, ns: str, name: str, args: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.args = ["ip", "netns", "exec", ns, sys.executable, "-m", "votechain", *args]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in finish()
        # `ip netns exec` execs the command, so this pid is votechain's own.
        self.popen = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=self._log, env=child_env())
        self.address = None


class Namespaces:
    """A bridge namespace and one namespace per host on it; `delete()` removes them all."""

    def __init__(self) -> None:
        self.prefix = f"vc{uuid.uuid4().hex[:6]}"
        self.bridge = f"{self.prefix}br"
        self.hosts: list[str] = []

    def _run(self, *args: str) -> None:
        result = _ip(*args)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def create_bridge(self) -> None:
        self._run("netns", "add", self.bridge)
        self.hosts.append(self.bridge)
        self._run("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        self._run("-n", self.bridge, "link", "set", "br0", "up")

    def add_host(self, index: int) -> tuple[str, str]:
        """Namespace with eth0 at SUBNET.index, its veth peer on the bridge; (ns, ip)."""
        ns, ip, port = f"{self.prefix}h{index}", f"{SUBNET}.{index}", f"p{index}"
        self._run("netns", "add", ns)
        self.hosts.append(ns)
        self._run("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
                  "netns", self.bridge)  # fmt: skip
        self._run("-n", ns, "link", "set", "lo", "up")
        self._run("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        self._run("-n", ns, "link", "set", "eth0", "up")
        self._run("-n", self.bridge, "link", "set", port, "master", "br0")
        self._run("-n", self.bridge, "link", "set", port, "up")
        return ns, ip

    def delete(self) -> None:
        for ns in reversed(self.hosts):
            _ip("netns", "del", ns)


def in_ns(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "votechain", *args],
                          capture_output=True, text=True, timeout=60, env=child_env(),
                          check=False)  # fmt: skip


def nodes_seen_from(ns: str, tracker: str) -> list[str]:
    code = ("from votechain.net.tracker_client import fetch_nodes; "
            f"print(' '.join(f'{{h}},{{p}}' for h, p in fetch_nodes('{tracker}', {TRACKER_PORT})))")
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=30, env=child_env(),
                            check=False)  # fmt: skip
    return result.stdout.split() if result.returncode == 0 else []


def organize(root: Path, data_dirs: Sequence[Path]) -> Path:
    """A network of `data_dirs`, made and admitted with the organizer's commands;
    its NAME.network, for `votechain peer --network`."""
    made = run("network", "create", "netns", "--difficulty", str(DIFFICULTY), "--out", str(root))
    assert made.returncode == 0, made.stderr
    network, authority = root / "netns.network", root / "netns.authority"
    for data_dir in data_dirs:
        admitted = run("network", "admit", str(network), "--authority", str(authority),
                       "--data-dir", str(data_dir))
        assert admitted.returncode == 0, admitted.stderr
    return network


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    spaces = Namespaces()
    try:
        spaces.create_bridge()
        yield spaces
    finally:
        spaces.delete()


def test_peers_in_separate_namespaces_converge(namespaces: Namespaces, tmp_path: Path) -> None:
    children: list[ChildProcess] = []
    try:
        tracker_ns, tracker_ip = namespaces.add_host(1)
        hosts = [namespaces.add_host(2 + i) for i in range(PEERS)]
        tracker = NsChild(tracker_ns, "tracker", ["tracker", "--host", tracker_ip, "--port",
                                                  str(TRACKER_PORT)], tmp_path / "tracker.log")
        children.append(tracker)
        assert tracker.wait_listening(START_TIMEOUT) == (tracker_ip, TRACKER_PORT)
        dirs = [tmp_path / f"peer{i}" for i in range(PEERS)]
        network = organize(tmp_path / "organizer", dirs)
        for i, ((ns, ip), data_dir) in enumerate(zip(hosts, dirs, strict=True)):
            args = ["peer", "--network", str(network), "--tracker", f"{tracker_ip}:{TRACKER_PORT}",
                    "--host", ip, "--port", str(PEER_PORT), "--data-dir", str(data_dir),
                    "--workers", "1"]  # fmt: skip
            children.append(NsChild(ns, f"peer{i}", args, tmp_path / f"peer{i}.log"))
        for child, (_ns, ip) in zip(children[1:], hosts, strict=True):
            assert child.wait_listening(START_TIMEOUT) == (ip, PEER_PORT)

        # The tracker lists every peer at its own address, the same port on each.
        wanted = sorted(f"{ip},{PEER_PORT}" for _ns, ip in hosts)
        wait_for(lambda: sorted(nodes_seen_from(hosts[0][0], tracker_ip)) == wanted, DEADLINE,
                 "the tracker to list the three peers by their own IPs")  # fmt: skip

        def status(i: int) -> dict[str, object]:
            result = in_ns(hosts[i][0], "status", "--data-dir", str(dirs[i]), "--json")
            assert result.returncode == 0, result.stderr
            loaded: dict[str, object] = json.loads(result.stdout)
            return loaded

        wait_for(lambda: all(status(i)["peers"] == PEERS - 1 for i in range(PEERS)), DEADLINE,
                 "every peer to see the two others")  # fmt: skip
        votes = [f"ns-{i}" for i in range(PEERS)]
        voters = [subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "votechain", "vote",
             "--data-dir", str(d), "--timeout", str(DEADLINE), v],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
            for (ns, _ip), d, v in zip(hosts, dirs, votes, strict=True)]  # fmt: skip
        for voter in voters:
            _out, err = voter.communicate(timeout=DEADLINE + 10)
            assert voter.returncode == 0, err

        expected = dict.fromkeys(votes, 1)

        def agreed() -> bool:
            tallies = [in_ns(ns, "tally", "--data-dir", str(d), "--json")
                       for (ns, _ip), d in zip(hosts, dirs, strict=True)]  # fmt: skip
            if any(t.returncode != 0 or json.loads(t.stdout) != expected for t in tallies):
                return False
            return len({status(i)["tip"] for i in range(PEERS)}) == 1

        wait_for(agreed, DEADLINE, "three peers on one chain holding the three votes")
    finally:
        stop_all(reversed(children))
    for data_dir in dirs:
        verify(data_dir)

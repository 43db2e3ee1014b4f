"""The in-process network harness: a tracker and the nodes a test starts, all in
this process on 127.0.0.1 ephemeral ports, with real sockets between them.

- `Network`: the tracker (`TrackerServer`) and N `Node`s, each on its own data
  directory under `root` with one miner worker; start, stop and restart a node
  or the tracker; wait for the nodes to see each other or to agree on a chain.
  A context manager: everything it started is stopped on the way out, so a
  fixture is `with Network(tmp_path) as net: yield net`.
- `tips`, `converged`: the convergence conditions, for `wait_until`.
- `Target`: one node under attack and the chain it must keep (the hostile-input
  tests): an honest connection, hand-driven raw ones (tests/hostile.py's
  `RawPeer`), and `assert_unharmed`.

The tests of tests/test_network.py and tests/test_hostile_peer.py and the network
benchmarks (benchmarks/bench_network.py) share this one harness. Nodes mine with
the default backend, so under VOTECHAIN_PURE_PYTHON=1 they mine pure.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from blockkit import key_for
from framework.waiting import wait_idle, wait_until
from votechain.core.block import Block
from votechain.core.keys import NodeKey
from votechain.net.connection import Connection, LocalIdentity
from votechain.net.tracker_server import TrackerServer
from votechain.node.runtime import Node, NodeConfig
from votechain.protocol.peer import (
    Add,
    AddResult,
    Auth,
    Blocks,
    GetBlocks,
    GetLatest,
    Hello,
    Latest,
)

if TYPE_CHECKING:
    from hostile import RawPeer

LOCAL = "127.0.0.1"

# Difficulty 3 is ~4,000 hashes a block: milliseconds even for the pure miner,
# yet enough for blocks mined at once on two nodes to fork now and then.
DIFFICULTY = 3

# For a node to register, or for nodes to see each other: one tracker round
# trip (each node polls every TRACKER_INTERVAL), generous for a loaded machine.
CONNECT_TIMEOUT = 15.0

# For votes to be mined and nodes to agree: a few blocks and a fork or two
# resolved (a SYNC_INTERVAL each), several times over.
CONVERGE_TIMEOUT = 60.0


def tips(nodes: Iterable[Node]) -> set[bytes]:
    """The distinct tip hashes of `nodes`: one element once they agree."""
    return {node.blocks()[-1].hash for node in nodes}


def converged(nodes: Iterable[Node], height: int | None = None) -> Callable[[], bool]:
    """A condition for `wait_until`: `nodes` share one tip (at `height`, if given)."""
    group = list(nodes)

    def agreed() -> bool:
        chains = [node.blocks() for node in group]
        if len({chain[-1].hash for chain in chains}) != 1:
            return False
        return height is None or chains[0][-1].id == height

    return agreed


def known_peers(node: Node) -> int:
    """How many other peers `node` knows of (from the tracker's last list)."""
    return node.status().peers


class Network:
    """A tracker and the nodes a test starts; `stop()` (or leaving the `with`) undoes all.

    `add_node(name, **overrides)` starts a node on `root / name` (the same name
    again means the same data directory: a restart from disk) and returns once
    the tracker lists it; `overrides` are NodeConfig fields (difficulty, miner,
    workers, port...).
    """

    def __init__(
        self,
        root: Path,
        *,
        difficulty: int = DIFFICULTY,
        workers: int = 1,
        miner: str | None = None,
    ) -> None:
        self.root = root
        self.difficulty = difficulty
        self.workers = workers
        self.miner = miner  # None: the default backend (pure under VOTECHAIN_PURE_PYTHON=1)
        self.nodes: list[Node] = []
        self.tracker = TrackerServer(LOCAL, 0)
        self.tracker.start()

    # ------------------------------------------------------------ nodes

    def config(self, name: str, **overrides: Any) -> NodeConfig:
        config = NodeConfig(
            data_dir=self.root / name,
            tracker=self.tracker.address,
            difficulty=self.difficulty,
            workers=self.workers,
        )
        if self.miner is not None:
            config.miner = self.miner
        return dataclasses.replace(config, **overrides)

    def add_node(self, name: str, *, register: bool = True, **overrides: Any) -> Node:
        """Start a node on `root / name`; with `register`, return once the tracker lists it."""
        return self.start_node(self.config(name, **overrides), register=register)

    def add_nodes(self, names: Iterable[str], **overrides: Any) -> list[Node]:
        return [self.add_node(name, **overrides) for name in names]

    def seeded(self, name: str, blocks: list[Block], **overrides: Any) -> Node:
        """A node holding `blocks` (genesis first), planted without the network
        and without the stand-alone checks (so a test can plant a block that
        breaks them): switched to in memory and written to the node's store,
        as an adopted branch is (the store holds the chain below the window)."""
        node = self.add_node(name, **overrides)
        with node._changed:
            switch = node.chain.switch(blocks[1:], difficulty=self.difficulty, now_ms=0,
                                       prechecked=True)
            node.store.replace_from(switch.fork_id + 1, switch.added, requeue=())
            node.chain.settled()
        return node

    def start_node(self, config: NodeConfig, *, register: bool = True) -> Node:
        node = Node(config)
        node.start()  # a start that fails leaves nothing running (Node.start's contract)
        self.nodes.append(node)
        if register:
            wait_until(lambda: node.address in self.tracker.peers(), CONNECT_TIMEOUT,
                       what=f"{config.data_dir.name} to register with the tracker")
        return node

    def stop_node(self, node: Node) -> None:
        node.stop()
        self.nodes.remove(node)

    def restart_node(self, node: Node) -> Node:
        """Stop `node` and start a new one on its data directory and config."""
        self.stop_node(node)
        return self.start_node(node.config)

    # ------------------------------------------------------------ tracker

    def restart_tracker(self) -> None:
        """Stop the tracker and start a new one on the same port (its list starts empty)."""
        host, port = self.tracker.address
        self.tracker.stop()
        self.tracker = TrackerServer(host, port)
        self.tracker.start()

    # ------------------------------------------------------------ conditions

    def wait_registered(self, nodes: Iterable[Node], timeout: float = CONNECT_TIMEOUT) -> None:
        wanted = {node.address for node in nodes}
        wait_until(lambda: wanted <= set(self.tracker.peers()), timeout,
                   what=f"{len(wanted)} nodes listed by the tracker")

    def wait_connected(self, nodes: Iterable[Node] | None = None,
                       timeout: float = CONNECT_TIMEOUT) -> None:
        """Wait until each of `nodes` (default: all) knows of every other one."""
        group = self.nodes if nodes is None else list(nodes)
        wait_until(lambda: all(known_peers(n) >= len(group) - 1 for n in group), timeout,
                   what=f"{len(group)} nodes to see each other")

    def wait_converged(self, nodes: Iterable[Node] | None = None, height: int | None = None,
                       timeout: float = CONVERGE_TIMEOUT) -> None:
        """Wait until `nodes` (default: all) share one tip, at `height` if given."""
        group = self.nodes if nodes is None else list(nodes)
        at = "" if height is None else f" at height {height}"
        wait_until(converged(group, height), timeout,
                   what=f"{len(group)} nodes to agree on one tip{at}")

    # ------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Stop every node, then the tracker (so nodes do not retry it on their way out).
        Each is stopped even if stopping another raised; errors are raised after."""
        with contextlib.ExitStack() as stack:
            stack.callback(self.tracker.stop)  # callbacks run last-in first-out
            for node in self.nodes:
                stack.callback(node.stop)
            self.nodes = []

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Target:
    """The node under attack, the chain it must keep, and how to check it is unharmed."""

    def __init__(self, node: Node, chain: list[Block] | None = None) -> None:
        self.node = node
        self.chain = node.blocks() if chain is None else chain

    @property
    def address(self) -> tuple[str, int]:
        return self.node.address

    @property
    def hello(self) -> Hello:
        return self.node.hello

    @property
    def tip(self) -> Block:
        return self.chain[-1]

    def connection(self, key: NodeKey | None = None) -> Connection:
        """An honest connection, handshake done: proving `key` (on the open
        network every proven key is a member, and may add the blocks it
        authored), or a keyless observer, which may only read."""
        conn = Connection.open(*self.address, timeout=5.0)
        try:
            conn.handshake(self.node.hello, initiator=True, identity=LocalIdentity(key))
        except BaseException:
            conn.close()
            raise
        return conn

    def raw(self, *, hello: bool = True, key: NodeKey | None = None) -> RawPeer:
        """A hand-driven connection, after a good handshake (Hellos and Auths, as
        `key` or a keyless observer) unless `hello=False`."""
        # Imported here: the attack toolkit is the hostile tests' own, and the
        # benchmarks and network tests using this module need none of it.
        from hostile import RawPeer

        raw = RawPeer(self.address)
        if hello:
            try:
                assert isinstance(raw.handshake(self.node.hello, LocalIdentity(key)), Auth)
            except BaseException:
                raw.close()
                raise
        return raw

    def add(self, block: Block, key: NodeKey | None = None) -> AddResult:
        """Offer `block` as an honest peer would, over a connection proving `key`
        (default: the test key that authored `block`); the node's verdict."""
        with self.connection(key or key_for(block.author)) as conn:
            reply = conn.request(Add(block))
        assert isinstance(reply, AddResult), reply
        return reply

    def extend(self, block: Block) -> None:
        """Add `block` on top of the chain; the node must take it."""
        assert self.add(block) == AddResult("added")
        self.chain.append(block)

    def assert_unharmed(self) -> None:
        """Answers a normal request, with the same chain; CPU back to idle."""
        with self.connection() as conn:
            assert conn.request(GetLatest()) == Latest(self.tip)
            assert conn.request(GetBlocks(0, 256)) == Blocks(tuple(self.chain))
        assert self.node.blocks() == self.chain
        wait_idle()

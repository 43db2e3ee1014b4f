"""Fetching a branch in batches (node/fetch.py fetch_branch): a late joiner
syncs a chain many batches long, and a fetch from a peer whose chain holds a bad
block stops at that block, requests nothing after it and adopts nothing.

The chains are blockkit's (difficulty 1, signed with the fixed test key), seeded
straight into a source node; the nodes fetch in batches of FETCH_BATCH blocks
so a few hundred blocks cross several batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import LOW_DIFFICULTY, make_chain
from framework.network import Network, converged
from framework.waiting import wait_until
from votechain.core.block import Block
from votechain.core.forkchoice import Tip
from votechain.errors import BadSignature
from votechain.node.runtime import Node
from votechain.protocol.peer import GetBlocks, Message

DEADLINE = 30.0
FETCH_BATCH = 32
LENGTH = 300  # ten batches of FETCH_BATCH blocks


@pytest.fixture(scope="module")
def chain() -> list[Block]:
    return make_chain(LENGTH)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(tmp_path, difficulty=LOW_DIFFICULTY) as network:
        yield network


def seeded(net: Network, name: str, blocks: list[Block]) -> Node:
    """A node holding `blocks` (genesis first), seeded without the stand-alone
    checks, so a test can plant a block that breaks them."""
    return net.seeded(name, blocks, fetch_batch_blocks=FETCH_BATCH)


def counting_get_blocks(node: Node, holder: tuple[str, int],
                        monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The from_id of every GetBlocks `node` sends to `holder`, in order."""
    link = node.resolver._outbound.link(holder)
    request = link.request
    asked: list[int] = []

    def recorded(msg: Message, timeout: float | None = None, *,
                 deadline: float | None = None) -> Message:
        if isinstance(msg, GetBlocks):
            asked.append(msg.from_id)
        return request(msg, timeout, deadline=deadline)

    monkeypatch.setattr(link, "request", recorded)
    return asked


def test_late_joiner_syncs_a_chain_of_many_batches(net: Network, chain: list[Block]) -> None:
    source = seeded(net, "source", chain)
    late = net.add_node("late", fetch_batch_blocks=FETCH_BATCH)
    wait_until(converged([source, late], LENGTH), DEADLINE, what="the late peer synced")
    assert late.blocks() == chain
    assert late.tally() == late.tally(recount=True) == source.tally()


def forged_at(chain: list[Block], bad_id: int) -> list[Block]:
    """`chain` with block `bad_id`'s signature zeroed: the one bad block in it."""
    forged = replace(chain[bad_id], signature=bytes(len(chain[bad_id].signature)))
    return [*chain[:bad_id], forged, *chain[bad_id + 1:]]


def test_fetch_stops_at_the_first_bad_block_and_adopts_nothing(
        net: Network, chain: list[Block], monkeypatch: pytest.MonkeyPatch) -> None:
    bad_id = 3 * FETCH_BATCH + 5  # in the fourth batch of ten
    source = seeded(net, "source", forged_at(chain, bad_id))
    # No backoff, so the round below asks the peer again (the next test shows
    # that, by default, a peer that sent a bad block is not asked again soon).
    late = net.add_node("late", fetch_batch_blocks=FETCH_BATCH, peer_backoff=0.0,
                        misbehaviour_backoff=0.0)
    # Waits out a background round already under way: only the fetches below run.
    late.set_network_active(False)
    assert late.chain.height == 0
    asked = counting_get_blocks(late, source.address, monkeypatch)

    with pytest.raises(BadSignature, match=f"^block {bad_id} "):
        late._fetch_branch(source.address, Tip(chain[-1].id, chain[-1].hash))

    # Requested: the batches up to the bad one, and at most the few the pipeline
    # fetches ahead (one in flight, config.fetch_ahead_batches waiting); nothing after.
    # How many of those went out depends on how fast the bad batch came back.
    bad_batch = bad_id // FETCH_BATCH
    at_most = bad_batch + 1 + 1 + late.config.fetch_ahead_batches
    assert asked[:bad_batch + 1] == list(range(1, bad_id + 1, FETCH_BATCH))
    assert len(asked) <= at_most < LENGTH // FETCH_BATCH + 1  # far from the whole chain
    requested = len(asked)
    # And one full round: the peer's branch is refused, and the fetch stops at
    # the bad block again. The round runs holding the round lock, so the
    # resolver thread's own (its sync_interval timer, a wake-up still pending)
    # waits and cannot add requests. (Not set_network_active either: it asks
    # the thread for a round.)
    with late._resolving:
        late.network_active = True
        assert late.resolve() is None
        late.network_active = False  # the thread's next round polls nobody
        second_round = asked[requested:]
    assert late.chain.height == 0
    assert second_round[:bad_batch + 1] == list(range(1, bad_id + 1, FETCH_BATCH))
    assert len(second_round) <= at_most

def test_a_peer_that_sent_a_bad_block_is_not_asked_again(
        net: Network, chain: list[Block], monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender of a bad block is reported (Outbound.misbehaved by default): its
    address is skipped for misbehaviour_backoff, so the next round neither polls
    it (its tip does not count) nor fetches from it."""
    source = seeded(net, "source", forged_at(chain, 5))
    late = net.add_node("late", fetch_batch_blocks=FETCH_BATCH)
    late.set_network_active(False)
    asked = counting_get_blocks(late, source.address, monkeypatch)
    with pytest.raises(BadSignature, match=r"^block 5 "):
        late._fetch_branch(source.address, Tip(chain[-1].id, chain[-1].hash))
    requested = len(asked)
    link = late.outbound.link(source.address)
    assert not link.ready(time.monotonic() + late.config.misbehaviour_backoff / 2)
    late.set_network_active(True)
    assert late.resolve() is None
    assert len(asked) == requested and late.chain.height == 0

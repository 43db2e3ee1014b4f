"""What membership costs (issue 9): the receive path with and without rule 6
(only members write), and the authenticated handshake, in one run.

Run with `make bench` (or `pytest benchmarks/bench_membership.py --benchmark-only`).
The 2,000 blocks are mined at difficulty 2 (the check's cost does not depend
on it) and signed by one member key; building them costs ~3 s of RSA signing.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from dataclasses import replace

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchkit import median, run
from votechain import mining
from votechain.core import rules
from votechain.core.block import Block
from votechain.core.keys import NodeKey
from votechain.core.membership import Certificate, Members, Network
from votechain.core.voting import vote_transaction
from votechain.net.connection import Connection, LocalIdentity
from votechain.protocol import peer

BLOCKS = 2000
DIFFICULTY = 2
HANDSHAKES = 50




@functools.cache
def setting() -> tuple[Network, NodeKey, NodeKey, list[Block]]:
    """A network, its authority, one member key and BLOCKS blocks it signed."""
    authority, member = NodeKey.generate(), NodeKey.generate()
    network = Network("bench", DIFFICULTY, authority.public_der)
    blocks = [network.genesis]
    for i in range(1, BLOCKS + 1):
        prev = blocks[-1]
        tx = vote_transaction(f"cat{i % 7}", int(time.time() * 1000))
        template = Block(i, tx, 0, prev.hash, b"", b"", member.public_der)
        nonce = mining.search(template.content(), DIFFICULTY, backend=mining.DEFAULT_BACKEND)
        assert nonce is not None
        mined = template.with_nonce(nonce)
        blocks.append(replace(mined, signature=member.sign(mined.hash)))
    return network, authority, member, blocks


def registry() -> Members:
    network, authority, member, _ = setting()
    members = Members(network)
    members.admit(Certificate.issue(authority, network, member.public_der, "station"))
    return members


@pytest.mark.parametrize("network_kind", ["open", "members"])
def test_receive_path_with_membership(benchmark: BenchmarkFixture, network_kind: str,
                                      bench_rates: dict[str, float]) -> None:
    """Decode an Add frame and run every stand-alone check, with rule 6 (the
    author's certificate, cached per key) or without (an open network)."""
    _, _, _, blocks = setting()
    members = registry() if network_kind == "members" else None
    frames = [peer.encode(peer.Add(b))[4:] for b in blocks[1:]]
    now = int(time.time() * 1000) + 10**9

    def validate_all() -> None:
        for payload in frames:
            msg = peer.decode_payload(payload)
            assert isinstance(msg, peer.Add)
            rules.check_block_alone(msg.block, difficulty=DIFFICULTY, now_ms=now,
                                    members=members)

    run(benchmark, validate_all, rounds=5, warmup_rounds=1)
    per_second = len(frames) / median(benchmark)
    benchmark.extra_info["blocks_per_s"] = round(per_second)
    bench_rates[f"receive_{network_kind}_per_s"] = per_second
    print(f"\nreceive path, {network_kind} network: {per_second:,.0f} blocks/s on one core "
          "(target >= 20,000)")
    if "receive_open_per_s" in bench_rates and "receive_members_per_s" in bench_rates:
        ratio = bench_rates["receive_members_per_s"] / bench_rates["receive_open_per_s"]
        print(f"members / open: {ratio:.3f}")


@pytest.mark.parametrize("who", ["observer", "member"])
def test_handshake(benchmark: BenchmarkFixture, who: str,
                   bench_rates: dict[str, float]) -> None:
    """One whole handshake over a socketpair: Hellos, then Auths. A member's costs
    two RSA signatures (one per side) and two verifications, plus a certificate
    check the first time a key is seen (cached after); an observer's side signs
    nothing."""
    network, authority, member, _ = setting()
    other = NodeKey.generate()
    cert = Certificate.issue(authority, network, other.public_der, "other").encode()
    ours = LocalIdentity(member, Certificate.issue(authority, network, member.public_der,
                                                   "station").encode())
    theirs = LocalIdentity(other, cert) if who == "member" else LocalIdentity()
    hello = peer.Hello(peer.PROTOCOL_VERSION, network.id, network.difficulty)
    members = registry()

    def handshakes() -> None:
        for _ in range(HANDSHAKES):
            a, b = socket.socketpair()
            with Connection(a, timeout=5) as left, Connection(b, timeout=5) as right:
                thread = threading.Thread(target=right.handshake, args=(hello, False),
                                          kwargs={"identity": ours, "members": members})
                thread.start()
                left.handshake(hello, True, identity=theirs, members=members)
                thread.join()

    run(benchmark, handshakes, rounds=3, warmup_rounds=1)
    per_handshake = median(benchmark) / HANDSHAKES
    bench_rates[f"handshake_{who}_ms"] = per_handshake * 1000
    side = "a member" if who == "member" else "an observer"
    print(f"\nhandshake, the other side {side}: {per_handshake * 1000:.2f} ms each")

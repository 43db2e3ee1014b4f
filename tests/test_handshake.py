"""The authenticated handshake (protocol/handshake.py, net/connection.py): who a peer
is, proven; replayed and reflected Auths; observers; refusals that say why.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from blockkit import fixed_key, other_key
from votechain.core.keys import NodeKey
from votechain.core.membership import Certificate, Members, Network
from votechain.errors import IncompatiblePeer, MalformedMessage
from votechain.net.connection import Connection, LocalIdentity, PeerIdentity
from votechain.protocol.handshake import ACCEPTOR, INITIATOR, authenticate, make_auth
from votechain.protocol.peer import PROTOCOL_VERSION, Auth, Hello


@functools.cache
def authority() -> NodeKey:
    return NodeKey.generate()


@functools.cache
def network() -> Network:
    return Network("hs", 1, authority().public_der)


def cert_of(key: NodeKey) -> bytes:
    return Certificate.issue(authority(), network(), key.public_der, "station").encode()


def hello(challenge: bytes = bytes(32)) -> Hello:
    return Hello(PROTOCOL_VERSION, network().id, network().difficulty, challenge)


def pair(left: dict[str, Any], right: dict[str, Any]) -> tuple[PeerIdentity, PeerIdentity]:
    """Both sides of a handshake over a socketpair: (what left saw, what right saw)."""
    a, b = socket.socketpair()
    with Connection(a, timeout=5) as initiator, Connection(b, timeout=5) as acceptor:
        seen: dict[str, Any] = {}

        def accept() -> None:
            try:
                seen["right"] = acceptor.handshake(hello(), initiator=False, **right)
            except Exception as exc:
                seen["right"] = exc

        thread = threading.Thread(target=accept)
        thread.start()
        try:
            left_saw = initiator.handshake(hello(), initiator=True, **left)
        finally:
            thread.join(10)
    if isinstance(seen["right"], Exception):
        raise seen["right"]
    return left_saw, seen["right"]


def side(key: NodeKey | None, cert: bytes = b"", members: Callable[[], Members] | None = None
         ) -> dict[str, Any]:
    return {"identity": LocalIdentity(key, cert),
            "members": members() if members is not None else None}


def registry() -> Members:
    return Members(network())


def test_two_members_learn_each_others_key_and_label() -> None:
    left, right = pair(side(fixed_key(), cert_of(fixed_key()), registry),
                       side(other_key(), cert_of(other_key()), registry))
    assert left.member and left.key == other_key().public_der and left.label == "station"
    assert right.member and right.key == fixed_key().public_der


def test_a_key_without_a_certificate_and_a_keyless_peer_are_observers() -> None:
    left, right = pair(side(None), side(other_key(), cert_of(other_key()), registry))
    assert left.member  # the acceptor is a member
    assert not right.member and right.key is None and right.label == "observer"
    _, right = pair(side(fixed_key()), side(other_key(), cert_of(other_key()), registry))
    assert not right.member and right.key == fixed_key().public_der


def test_on_an_open_network_any_proven_key_is_a_member() -> None:
    left, right = pair(side(fixed_key()), side(other_key()))
    assert left.member and right.member and right.key == fixed_key().public_der


def test_a_certificate_for_another_key_is_refused_on_both_sides() -> None:
    with pytest.raises(IncompatiblePeer, match="another key"):
        pair(side(fixed_key(), cert_of(other_key())), side(other_key(), b"", registry))


def test_an_auth_replayed_from_another_connection_is_refused() -> None:
    """An Auth signs the other side's fresh challenge: recorded on one connection,
    it proves nothing on the next, whose challenge differs."""
    first, second = hello(b"\x01" * 32), hello(b"\x02" * 32)
    theirs = hello(b"\x03" * 32)
    recorded = make_auth(LocalIdentity(fixed_key()), INITIATOR, theirs, first)
    assert authenticate(recorded, INITIATOR, first, theirs, None).member
    with pytest.raises(IncompatiblePeer, match="does not hold the key"):
        authenticate(recorded, INITIATOR, second, theirs, None)


def test_an_auth_reflected_back_as_the_other_role_is_refused() -> None:
    ours, theirs = hello(b"\x01" * 32), hello(b"\x01" * 32)
    auth = make_auth(LocalIdentity(fixed_key()), ACCEPTOR, theirs, ours)
    with pytest.raises(IncompatiblePeer, match="does not hold the key"):
        authenticate(auth, INITIATOR, ours, theirs, None)


def test_a_signature_by_another_key_is_refused() -> None:
    ours, theirs = hello(b"\x01" * 32), hello(b"\x02" * 32)
    auth = make_auth(LocalIdentity(fixed_key()), INITIATOR, theirs, ours)
    with pytest.raises(IncompatiblePeer, match="does not hold the key"):
        authenticate(replace(auth, public_key=other_key().public_der), INITIATOR, ours, theirs,
                     None)


def test_an_auth_with_a_certificate_but_no_key_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="without a public key"):
        authenticate(Auth(certificate=cert_of(fixed_key())), INITIATOR, hello(), hello(), None)


def test_each_connection_signs_a_fresh_challenge() -> None:
    """Connection.handshake makes the challenge itself, whatever Hello it is given."""
    challenges: list[bytes] = []
    for _ in range(2):
        left, right = pair(side(fixed_key()), side(other_key()))
        challenges += [left.hello.challenge, right.hello.challenge]
    assert len(set(challenges)) == 4 and bytes(32) not in challenges

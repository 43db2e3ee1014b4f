"""Membership in the pure core, event by event (no sockets): certificates and the
registry, rule 6 (only members write), one vote per member key in the majority,
observers, revocation heights, and vote ids bound to their content.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest

from blockkit import LOW_DIFFICULTY, NOW, T0, fixed_key, make_block, other_key, tx_for
from votechain.core.block import Block, Transaction
from votechain.core.forkchoice import Tip, Vote
from votechain.core.keys import NodeKey
from votechain.core.membership import (
    Certificate,
    Members,
    Network,
    Revocations,
    Revoked,
    fingerprint,
)
from votechain.core.node_state import NodeState
from votechain.core.rules import validate_chain
from votechain.errors import BadCertificate, NotAMember

P1, P2, P3 = ("10.0.0.1", 9001), ("10.0.0.2", 9002), ("10.0.0.3", 9003)


@functools.cache
def authority() -> NodeKey:
    return NodeKey.generate()


@functools.cache
def network() -> Network:
    return Network("unit", LOW_DIFFICULTY, authority().public_der)


def members(*keys: NodeKey, revocations: Revocations | None = None) -> Members:
    registry = Members(network(), revocations)
    for key in keys:
        registry.admit(Certificate.issue(authority(), network(), key.public_der, "m"))
    return registry


def chain_by(*keys: NodeKey) -> list[Block]:
    chain = [network().genesis]
    for i, key in enumerate(keys):
        chain.append(make_block(chain[-1], tx_for(f"v{i}"), key=key))
    return chain


# ================================================================ certificates


def test_certificate_round_trips_and_checks() -> None:
    cert = Certificate.issue(authority(), network(), fixed_key().public_der, "station 7")
    assert Certificate.decode(cert.encode()) == cert
    assert Certificate.from_json(cert.to_json()) == cert
    assert members().admit(cert.encode()) == cert


@pytest.mark.parametrize(("change", "why"), [
    ({"label": "station 8"}, "not signed by this network's authority"),
    ({"member": None}, "not signed by this network's authority"),
    ({"network": bytes(32)}, "another network"),
    ({"signature": b"\x00" * 256}, "not signed by this network's authority"),
])
def test_an_edited_certificate_is_refused(change: dict[str, object], why: str) -> None:
    cert = Certificate.issue(authority(), network(), fixed_key().public_der, "station 7")
    if change.get("member", 1) is None:
        change = {"member": other_key().public_der}
    with pytest.raises(BadCertificate, match=why):
        members().admit(replace(cert, **change))  # type: ignore[arg-type]


def test_a_network_file_edit_is_caught_by_its_id() -> None:
    text = network().to_json().replace('"difficulty": 1', '"difficulty": 2')
    with pytest.raises(BadCertificate, match="id does not match"):
        Network.from_json(text)


def test_a_forged_revocation_list_is_refused() -> None:
    forged = Revocations.issue(NodeKey.generate(), network(), 9,
                               (Revoked(fingerprint(fixed_key().public_der)),))
    with pytest.raises(BadCertificate, match="not signed by this network's authority"):
        members(revocations=forged)


def test_a_newer_revocation_list_replaces_an_older_one_never_the_reverse() -> None:
    key = fixed_key().public_der
    older = Revocations.issue(authority(), network(), 1, ())
    newer = Revocations.issue(authority(), network(), 2, (Revoked(fingerprint(key)),))
    registry = members(fixed_key(), revocations=newer)
    registry.revoke(older)
    assert not registry.is_member(key)


# ================================================================ rule 6


def test_only_members_write() -> None:
    chain = chain_by(fixed_key(), other_key())
    with pytest.raises(NotAMember, match=f"block 2 {chain[2].hash.hex()[:16]}"):
        validate_chain(chain, difficulty=LOW_DIFFICULTY, now_ms=NOW, members=members(fixed_key()),
                       genesis=network().genesis)
    assert validate_chain(chain, difficulty=LOW_DIFFICULTY, now_ms=NOW,
                          members=members(fixed_key(), other_key()),
                          genesis=network().genesis) == 2


def test_a_revocation_applies_from_its_height() -> None:
    chain = chain_by(other_key(), fixed_key(), other_key())
    revoked = Revocations.issue(authority(), network(), 1,
                                (Revoked(fingerprint(other_key().public_der), 3),))
    registry = members(fixed_key(), other_key(), revocations=revoked)
    genesis = network().genesis
    validate_chain(chain[:3], difficulty=LOW_DIFFICULTY, now_ms=NOW, members=registry,
                   genesis=genesis)
    with pytest.raises(NotAMember, match="revoked from height 3"):
        validate_chain(chain, difficulty=LOW_DIFFICULTY, now_ms=NOW, members=registry,
                       genesis=genesis)


def test_restore_drops_what_a_new_revocation_invalidates() -> None:
    chain = chain_by(fixed_key(), other_key(), fixed_key())
    revoked = Revocations.issue(authority(), network(), 1,
                                (Revoked(fingerprint(other_key().public_der), 2),))
    state, restored = NodeState.restore(
        fixed_key().public_der, LOW_DIFFICULTY, chain, (), now_ms=NOW,
        members=members(fixed_key(), other_key(), revocations=revoked))
    assert restored.bad is not None and restored.bad.block.id == 2
    assert state.chain.height == 1
    # Our own vote at height 3 was above the cut: it is queued to be mined again.
    assert [t.tx_id for t in state.pending] == [chain[3].transaction.tx_id]


def test_a_received_block_by_a_non_member_is_rejected_with_the_reason() -> None:
    chain = chain_by(fixed_key())
    state, _ = NodeState.restore(fixed_key().public_der, LOW_DIFFICULTY, chain, (), now_ms=NOW,
                                 members=members(fixed_key()))
    block = make_block(chain[-1], tx_for("stuffed"), key=other_key())
    decision = state.block_received(block, other_key().public_der, NOW)
    assert decision.status == "rejected" and "not a member" in decision.reason
    assert state.chain.height == 1


# ================================================================ the majority of members


def test_each_member_key_counts_once_and_observers_not_at_all() -> None:
    chain = chain_by(fixed_key())
    state, _ = NodeState.restore(fixed_key().public_der, LOW_DIFFICULTY, chain[:1], (),
                                 now_ms=NOW, members=members(fixed_key()))
    ours, forged = Tip(0, chain[0].hash), Tip(1, chain[1].hash)
    insider, honest = b"insider-key", b"honest-key"
    votes = [Vote(forged, ("10.9.9.9", port), insider) for port in range(9000, 9006)]
    votes += [Vote(forged, ("10.9.9.8", port), None) for port in range(9000, 9010)]  # observers
    votes += [Vote(forged, P3, fixed_key().public_der)]  # our own key, heard from elsewhere
    votes += [Vote(ours, P1, honest)]
    plan = state.tips_collected(votes)
    # Counted: us, honest (our tip) and the insider once (its tip): 2 to 1.
    assert sorted((v.tip, v.voter or b"") for v in plan.votes) == [
        (ours, b""), (ours, honest), (forged, insider)]
    assert plan.winner == ours


def test_an_observer_does_not_vote_for_itself_nor_mine() -> None:
    chain = chain_by(fixed_key())
    state, _ = NodeState.restore(other_key().public_der, LOW_DIFFICULTY, chain[:1], (),
                                 now_ms=NOW, members=members(fixed_key()), member=False)
    plan = state.tips_collected([Vote(Tip(1, chain[1].hash), P1, b"member")])
    assert [v.voter for v in plan.votes] == [b"member"]
    assert plan.winner == Tip(1, chain[1].hash)
    decision = state.vote_submitted(tx_for("mine"))
    assert not decision.queued and "observer" in decision.reason
    assert state.next_job() is None


# ================================================================ vote ids


def test_the_vote_id_names_the_content() -> None:
    tx = tx_for("alice", T0)
    assert len(tx.tx_id) == 32
    for edited in (replace(tx, data=b"mallory"), replace(tx, timestamp=T0 + 1),
                   replace(tx, salt=bytes(16))):
        assert edited.tx_id != tx.tx_id
    assert Transaction(tx.timestamp, tx.data, tx.salt).tx_id == tx.tx_id


def test_a_switch_that_rewrites_our_vote_re_queues_the_original() -> None:
    """A branch carrying our vote's salt and timestamp with another category is a
    different vote (another id): ours counts as dropped and is mined again."""
    base = chain_by(fixed_key())
    mine = tx_for("alice", T0)
    ours = make_block(base[-1], mine, key=fixed_key())
    state, restored = NodeState.restore(fixed_key().public_der, LOW_DIFFICULTY,
                                        [*base, ours], (), now_ms=NOW,
                                        members=members(fixed_key(), other_key()))
    assert restored.bad is None
    rewritten = replace(mine, data=b"mallory")
    branch = [make_block(base[-1], rewritten, key=other_key())]
    branch.append(make_block(branch[-1], tx_for("other"), key=other_key()))
    decision = state.adopt(branch)
    assert decision.status == "switched"
    assert [t.tx_id for t in decision.requeued] == [mine.tx_id]
    assert state.chain.block_with_tx(mine.tx_id) is None
    assert state.next_job() is not None and state.next_job().tx == mine  # type: ignore[union-attr]

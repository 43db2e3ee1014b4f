"""Fixed vectors (tests/vectors/blocks.json and membership.json, made by
tests/vectors/make_vectors.py): any change to an encoding, a hash layout, a
signed digest or the signature scheme fails here.

Each vector is rebuilt from its fields and must reproduce, byte for byte, the
stored encodings, digests and PKCS#1 v1.5 signatures (deterministic, so equal,
not merely valid); each stored encoding must decode back to the same object.

docs/protocol.md quotes vector values; the last tests check every quoted value
against these files (the wire frames' dumps are tests/test_wire.py's).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from votechain.core import keys
from votechain.core.block import (
    Block,
    Transaction,
    genesis_block,
    meets_difficulty,
)
from votechain.core.codec import pack
from votechain.core.keys import NodeKey
from votechain.core.membership import (
    Certificate,
    Members,
    Network,
    Revocations,
    Revoked,
    fingerprint,
)
from votechain.core.rules import validate_chain
from votechain.errors import IncompatiblePeer, NotAMember
from votechain.mining import pure
from votechain.protocol.handshake import (
    ACCEPTOR,
    INITIATOR,
    LocalIdentity,
    authenticate,
    handshake_digest,
    make_auth,
)
from votechain.protocol.peer import PROTOCOL_VERSION, Auth, Hello, decode_payload, encode

VECTORS = Path(__file__).resolve().parent / "vectors"
PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return document


def key(name: str) -> NodeKey:
    return NodeKey.from_pem((VECTORS / name).read_bytes())


DOC = load("blocks.json")
KEY = key(DOC["key_file"])
ENTRIES: list[dict[str, Any]] = DOC["blocks"]

MEMBERSHIP = load("membership.json")
AUTHORITY = key(MEMBERSHIP["authority_key_file"])
NET: dict[str, Any] = MEMBERSHIP["network"]
CERTS: list[dict[str, Any]] = MEMBERSHIP["certificates"]
REVOKED: dict[str, Any] = MEMBERSHIP["revocations"]
HANDSHAKE: dict[str, Any] = MEMBERSHIP["handshake"]
CHAIN: list[dict[str, Any]] = MEMBERSHIP["chain"]["blocks"]


def h(value: str) -> bytes:
    return bytes.fromhex(value)


# ================================================================ blocks


def build(entry: dict[str, Any]) -> Block:
    return Block(
        id=entry["id"],
        transaction=Transaction(
            timestamp=entry["timestamp"],
            data=h(entry["data"]),
            salt=h(entry["salt"]),
        ),
        nonce=entry["nonce"],
        prev_hash=h(entry["prev_hash"]),
        hash=h(entry["hash"]),
        signature=h(entry["signature"]),
        author=h(entry["author"]),
    )


def check_block(entry: dict[str, Any], difficulty: int, genesis: Block) -> Block:
    """Everything one block vector fixes; returns the block."""
    block = build(entry)
    tx = block.transaction
    # tx_id = SHA-256(msgpack [timestamp, data, salt])
    assert pack([tx.timestamp, tx.data, tx.salt]) == h(entry["tx_id_encoding"])
    assert tx.tx_id == h(entry["tx_id"]) == hashlib.sha256(h(entry["tx_id_encoding"])).digest()
    # content = SHA-256(msgpack [id, [timestamp, data, salt], prev_hash, author])
    assert pack([block.id, [tx.timestamp, tx.data, tx.salt], block.prev_hash, block.author]) == h(
        entry["content_encoding"]
    )
    assert block.content() == h(entry["content"])
    assert block.content() == hashlib.sha256(h(entry["content_encoding"])).digest()
    # hash = SHA-256(content || u64be(nonce))
    assert block.computed_hash() == block.hash
    assert block.hash == hashlib.sha256(block.content() + block.nonce.to_bytes(8, "big")).digest()
    encoded = h(entry["encoded"])
    assert block.encode() == encoded
    assert Block.decode(encoded) == block
    assert Block.decode(encoded).transaction.tx_id == tx.tx_id
    if block.id == 0:
        assert block == genesis
        assert genesis.signature == genesis.author == b""
        return block
    signer = keys.public_key(block.author)
    assert signer.key_size == keys.KEY_BITS
    keys.verify(block.author, block.signature, block.hash)
    assert meets_difficulty(block.hash, difficulty)
    # The stored nonce is the first one from 0 that meets the difficulty.
    assert pure.search(block.content(), difficulty, 0, block.nonce + 1) == block.nonce
    return block


def test_vector_file_shape() -> None:
    assert DOC["difficulty"] == 4
    assert len(ENTRIES) >= 4
    assert ENTRIES[0]["id"] == 0
    assert len(CHAIN) == 4 and len(CERTS) == 2


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["note"][:30])
def test_vector(entry: dict[str, Any]) -> None:
    block = check_block(entry, DOC["difficulty"], genesis_block())
    if block.id:
        assert block.author == KEY.public_der
        assert KEY.sign(block.hash) == block.signature  # PKCS#1 v1.5 is deterministic


def test_vector_chain_validates() -> None:
    chain = [build(e) for e in ENTRIES[: DOC["chain_length"]]]
    now = max(b.transaction.timestamp for b in chain)
    assert validate_chain(chain, difficulty=DOC["difficulty"], now_ms=now) == len(chain) - 1


# ================================================================ the network


def network() -> Network:
    return Network(NET["name"], NET["difficulty"], h(NET["authority"]))


def test_network_descriptor_and_id() -> None:
    net = network()
    assert net.authority == AUTHORITY.public_der
    # descriptor = msgpack ["votechain network", name, difficulty, authority]
    assert net.descriptor() == h(NET["descriptor"])
    assert net.descriptor() == pack(["votechain network", NET["name"], NET["difficulty"],
                                     AUTHORITY.public_der])
    # The genesis block carries it as data; the network id is the genesis hash.
    assert net.genesis == genesis_block(h(NET["descriptor"]))
    assert pack([0, [0, net.descriptor(), bytes(16)], bytes(32), b""]) == h(
        NET["genesis_content_encoding"])
    assert net.genesis.content() == h(NET["genesis_content"])
    assert net.id == net.genesis.hash == h(NET["id"])
    assert net.id == hashlib.sha256(h(NET["genesis_content"]) + bytes(8)).digest()
    assert net.id != genesis_block().hash


def test_network_file() -> None:
    assert network().to_json() == NET["file"]
    assert Network.from_json(NET["file"]) == network()


# ================================================================ certificates


def certificate(entry: dict[str, Any]) -> Certificate:
    return Certificate(h(entry["network"]), h(entry["member"]), entry["label"],
                       h(entry["signature"]))


@pytest.mark.parametrize("entry", CERTS, ids=lambda e: e["label"])
def test_certificate(entry: dict[str, Any]) -> None:
    cert = certificate(entry)
    member = key(entry["key_file"])
    assert cert.network == network().id
    assert cert.member == member.public_der
    assert fingerprint(cert.member) == h(entry["fingerprint"])
    assert fingerprint(cert.member) == hashlib.sha256(member.public_der).digest()
    # signed digest = SHA-256(msgpack ["votechain certificate", network, member, label])
    assert pack(["votechain certificate", cert.network, cert.member, cert.label]) == h(
        entry["signed_encoding"])
    assert cert.signed_digest() == h(entry["signed_digest"])
    assert cert.signed_digest() == hashlib.sha256(h(entry["signed_encoding"])).digest()
    assert AUTHORITY.sign(cert.signed_digest()) == cert.signature
    keys.verify(AUTHORITY.public_der, cert.signature, cert.signed_digest())
    assert Certificate.issue(AUTHORITY, network(), member.public_der, cert.label) == cert
    # wire encoding = msgpack [network, member, label, signature]
    assert cert.encode() == h(entry["encoded"])
    assert cert.encode() == pack([cert.network, cert.member, cert.label, cert.signature])
    assert Certificate.decode(h(entry["encoded"])) == cert
    assert Members(network()).admit(h(entry["encoded"])) == cert


# ================================================================ revocations


def revocations() -> Revocations:
    return Revocations(
        h(REVOKED["network"]),
        REVOKED["serial"],
        tuple(Revoked(h(r["fingerprint"]), r["from_height"]) for r in REVOKED["revoked"]),
        h(REVOKED["signature"]),
    )


def test_revocations() -> None:
    rev = revocations()
    assert rev.network == network().id
    assert list(rev.revoked) == sorted(rev.revoked)  # entries sorted, as signed
    entries = [[r.fingerprint, r.from_height] for r in rev.revoked]
    # signed digest = SHA-256(msgpack ["votechain revocations", network, serial,
    #                                  [[fingerprint, from_height], ...]])
    assert pack(["votechain revocations", rev.network, rev.serial, entries]) == h(
        REVOKED["signed_encoding"])
    assert rev.signed_digest() == h(REVOKED["signed_digest"])
    assert rev.signed_digest() == hashlib.sha256(h(REVOKED["signed_encoding"])).digest()
    assert AUTHORITY.sign(rev.signed_digest()) == rev.signature
    keys.verify(AUTHORITY.public_der, rev.signature, rev.signed_digest())
    # issue() sorts whatever order it is given.
    assert Revocations.issue(AUTHORITY, network(), rev.serial, rev.revoked[::-1]) == rev
    assert rev.to_json() == REVOKED["file"]
    assert Revocations.from_json(REVOKED["file"]) == rev
    members = Members(network(), rev)
    assert members.revocations == rev


# ================================================================ the handshake


def hellos() -> dict[str, Hello]:
    return {
        role: Hello(PROTOCOL_VERSION, h(HANDSHAKE["network"]), NET["difficulty"],
                    h(HANDSHAKE[role]["challenge"]))
        for role in (INITIATOR, ACCEPTOR)
    }


OTHER = {INITIATOR: ACCEPTOR, ACCEPTOR: INITIATOR}


@pytest.mark.parametrize("role", [INITIATOR, ACCEPTOR])
def test_handshake(role: str) -> None:
    side = HANDSHAKE[role]
    ours, theirs = hellos()[role], hellos()[OTHER[role]]
    assert ours.genesis == network().id
    assert encode(ours) == h(side["hello"])
    assert decode_payload(h(side["hello"])[4:]) == ours
    # signed digest = SHA-256(msgpack ["votechain handshake", role, network id,
    #                                  the other side's challenge, own challenge])
    assert pack(["votechain handshake", role, ours.genesis, theirs.challenge,
                 ours.challenge]) == h(side["signed_encoding"])
    digest = handshake_digest(role, ours.genesis, theirs.challenge, ours.challenge)
    assert digest == h(side["signed_digest"])
    assert digest == hashlib.sha256(h(side["signed_encoding"])).digest()
    member = key(side["key_file"])
    assert member.sign(digest) == h(side["signature"])
    cert = next(c for c in CERTS if c["key_file"] == side["key_file"])
    auth = Auth(member.public_der, h(cert["encoded"]), h(side["signature"]))
    assert make_auth(LocalIdentity(member, h(cert["encoded"])), role, ours, theirs) == auth
    assert encode(auth) == h(side["auth"])
    assert decode_payload(h(side["auth"])[4:]) == auth
    # The other side accepts it (it checks with its own Hello as `ours`)...
    peer = authenticate(auth, role, theirs, ours, Members(network()))
    assert peer.member and peer.key == member.public_der and peer.label == cert["label"]
    # ...but not as the other role's: a signature is never reflected.
    with pytest.raises(IncompatiblePeer):
        authenticate(auth, OTHER[role], theirs, ours, Members(network()))


def test_handshake_refuses_a_revoked_member() -> None:
    """Member 1 is revoked from height 3: its old blocks stay valid, but it is no
    member now, so its handshake as one is refused."""
    side = HANDSHAKE[INITIATOR]
    auth = decode_payload(h(side["auth"])[4:])
    assert isinstance(auth, Auth)
    members = Members(network(), revocations())
    with pytest.raises(IncompatiblePeer, match="revoked from height 3"):
        authenticate(auth, INITIATOR, hellos()[ACCEPTOR], hellos()[INITIATOR], members)


# ================================================================ rule 6


def members_chain() -> list[Block]:
    return [check_block(e, NET["difficulty"], network().genesis) for e in CHAIN]


def admitted(revoked: Revocations | None = None) -> Members:
    members = Members(network(), revoked)
    for entry in CERTS:
        members.admit(h(entry["encoded"]))
    return members


def test_members_chain() -> None:
    chain = members_chain()
    assert chain[0].transaction.data == h(NET["descriptor"])
    assert [b.author for b in chain[1:]] == [
        key(name).public_der for name in MEMBERSHIP["chain"]["authors"]]
    now = max(b.transaction.timestamp for b in chain)
    genesis = network().genesis
    assert validate_chain(chain, difficulty=NET["difficulty"], now_ms=now,
                          members=admitted(), genesis=genesis) == 3
    # Without the certificates, rule 6 refuses the first block.
    with pytest.raises(NotAMember) as refused:
        validate_chain(chain, difficulty=NET["difficulty"], now_ms=now,
                       members=Members(network()), genesis=genesis)
    assert refused.value.block.id == 1


def test_revocation_height_applies() -> None:
    """Member 1 revoked from height 3: its block 1 stays valid, its block 3 does not."""
    chain = members_chain()
    now = max(b.transaction.timestamp for b in chain)
    members, genesis = admitted(revocations()), network().genesis
    assert validate_chain(chain[:3], difficulty=NET["difficulty"], now_ms=now,
                          members=members, genesis=genesis) == 2
    with pytest.raises(NotAMember) as refused:
        validate_chain(chain, difficulty=NET["difficulty"], now_ms=now, members=members,
                       genesis=genesis)
    assert refused.value.block.id == 3 == REVOKED["revoked"][0]["from_height"]


# ================================================================ the document

# docs/protocol.md marks each quoted value with the vector it shows:
#
#   <!-- value: FILE PATH -->   the ```text block after it is that value's hex,
#                               whole (whitespace ignored);
#   <!-- layout: FILE PATH -->  the ```text block after it is an annotated
#                               dump: on each line, the leading tokens of hex
#                               digits, read in order, spell the value's hex;
#                               "A...B" or "A..B" stands for hex starting A
#                               and ending B. The rest of a line is annotation.
#
# PATH is dotted (blocks.0.hash). Files are tests/vectors/*.json.
MARKER = re.compile(r"<!-- (value|layout): (\S+) (\S+) -->\s*```text\n(.*?)```", re.S)
HEX_TOKEN = re.compile(r"[0-9a-f]+(?:\.{2,3}[0-9a-f]+)?")
# Values the document must show (the rest it may).
MUST_QUOTE = {
    ("blocks.json", "blocks.0.content_encoding"),
    ("blocks.json", "blocks.0.hash"),
    ("membership.json", "network.descriptor"),
    ("membership.json", "network.id"),
    ("membership.json", "certificates.0.signed_digest"),
    ("membership.json", "certificates.0.encoded"),
    ("membership.json", "revocations.signed_digest"),
    ("membership.json", "handshake.initiator.signed_digest"),
    ("membership.json", "handshake.acceptor.signed_digest"),
}


def lookup(file_name: str, path: str) -> Any:
    value: Any = load(file_name)
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def layout_pattern(text: str) -> str:
    """The regex the hex tokens of an annotated dump spell (see above)."""
    pieces = []
    for line in text.splitlines():
        for token in line.split():
            if not HEX_TOKEN.fullmatch(token):
                break
            head, _, tail = token.replace("...", "..").partition("..")
            pieces.append(f"{head}[0-9a-f]*{tail}" if tail else head)
    return "".join(pieces)


def doc_markers() -> list[tuple[str, str, str, str]]:
    return MARKER.findall(PROTOCOL_DOC.read_text(encoding="utf-8"))


def test_docs_quote_the_vectors() -> None:
    markers = doc_markers()
    assert {(f, p) for _, f, p, _ in markers} >= MUST_QUOTE
    for kind, file_name, path, text in markers:
        value = lookup(file_name, path)
        assert isinstance(value, str) and re.fullmatch(r"([0-9a-f]{2})+", value), (file_name, path)
        where = f"docs/protocol.md's {kind} of {file_name} {path}"
        if kind == "value":
            assert re.sub(r"\s", "", text) == value, f"{where} is stale"
        else:
            pattern = layout_pattern(text)
            assert pattern, f"{where} shows no hex"
            assert re.fullmatch(pattern, value), f"{where} is stale"


def test_every_long_hex_in_docs_is_a_vector() -> None:
    """A hash or key quoted in prose (not under a marker) must still be one of
    the vectors' values (or part of one), so no stale digest survives anywhere."""
    corpus = "\n".join((VECTORS / name).read_text(encoding="utf-8")
                       for name in ("blocks.json", "membership.json", "wire_vectors.json"))
    doc = PROTOCOL_DOC.read_text(encoding="utf-8")
    for run in re.findall(r"(?<![0-9a-fA-F])[0-9a-f]{32,}(?![0-9a-fA-F])", doc):
        assert run in corpus, f"docs/protocol.md quotes {run[:16]}…, which no vector holds"

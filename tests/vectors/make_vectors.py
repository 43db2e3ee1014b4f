"""Generate the fixed vectors of tests/vectors/: bytes that must never change.

Run by hand, from the repository root, only after a deliberate protocol change
(and say so in the commit)::

    PYTHONPATH=src .venv/bin/python tests/vectors/make_vectors.py

It writes two files, both checked field by field by tests/test_vectors.py:

- ``blocks.json``: the open network's genesis block and a chain of three
  blocks on it, plus one block with the largest data field, each with its
  transaction-id and content encodings (the bytes that are hashed), content
  digest, hash, signature and whole encoding. Signed with ``block_key.pem``.
- ``membership.json``: a members-only network (its descriptor, genesis block,
  network id and network file), two member certificates (encoding, signed
  encoding, digest, signature), a revocation list (signed encoding, digest,
  signature), the handshake of those two members (fixed challenges: both
  Hellos, both signed digests, both Auth frames) and a short chain on that
  network, which the revocation list cuts at a height. The authority key is
  ``authority_key.pem``; the members are ``block_key.pem`` and ``wire_key.pem``.

The keys are fixed files (each created only if it is missing); blocks are
mined at the stated difficulty with the pure-Python miner (the first
qualifying nonce from 0, so the nonce is fixed too). PKCS#1 v1.5 signatures
are deterministic, so rerunning the script reproduces both files byte for
byte unless an encoding, a hash layout or the signing changed: exactly the
case in which tests/test_vectors.py fails.

docs/protocol.md quotes some of these values; tests/test_vectors.py checks
each quoted value against these files. Two helpers for keeping it in step:

- ``--dump FILE PATH`` prints one value as the document shows it (hex, 64
  digits a line), e.g. ``--dump membership.json network.id``;
- ``--sync-docs`` rewrites, in docs/protocol.md, every whole-value dump: the
  ``<!-- value: FILE PATH -->`` blocks from these files, and the message
  frames under ``<!-- vector: NAME -->`` from wire_vectors.json (which
  ``tests/test_wire.py --regen`` makes), and names the frames that have no
  dump yet. Annotated dumps (``<!-- layout: ... -->``) are edited by hand;
  tests/test_vectors.py says which one is stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from votechain.core.block import Block, Transaction, block_hash, content_digest, genesis_block
from votechain.core.codec import pack
from votechain.core.keys import NodeKey
from votechain.core.membership import (
    CERTIFICATE_TAG,
    DESCRIPTOR_TAG,
    REVOCATIONS_TAG,
    Certificate,
    Network,
    Revocations,
    Revoked,
    fingerprint,
)
from votechain.mining import pure
from votechain.protocol.handshake import ACCEPTOR, HANDSHAKE_TAG, INITIATOR, handshake_digest
from votechain.protocol.peer import PROTOCOL_VERSION, Auth, Hello, encode

HERE = Path(__file__).resolve().parent
BLOCK_KEY_FILE = "block_key.pem"
SECOND_MEMBER_KEY_FILE = "wire_key.pem"
AUTHORITY_KEY_FILE = "authority_key.pem"
BLOCKS_FILE = HERE / "blocks.json"
MEMBERSHIP_FILE = HERE / "membership.json"
WIRE_FILE = HERE / "wire_vectors.json"
PROTOCOL_DOC = HERE.parent.parent / "docs" / "protocol.md"
DIFFICULTY = 4

NETWORK_NAME = "Springfield referendum"
NETWORK_DIFFICULTY = 4
LABELS = ("polling station 1", "Mairie de Sèvres")
# The challenges of the handshake vector: in real use, 32 fresh random bytes each.
INITIATOR_CHALLENGE = bytes(range(32))
ACCEPTOR_CHALLENGE = bytes(range(0xA0, 0xC0))
# The revocation list: member 1 revoked from this height, and a key never
# admitted revoked from height 0 (so the list shows two entries, sorted).
REVOKED_FROM = 3
STRANGER_FINGERPRINT = b"\xee" * 32
REVOCATION_SERIAL = 7


def load_key(name: str) -> NodeKey:
    path = HERE / name
    if not path.exists():
        path.write_bytes(NodeKey.generate().to_pem())
    return NodeKey.from_pem(path.read_bytes())


def mine(prev: Block, tx: Transaction, key: NodeKey, difficulty: int) -> Block:
    content = content_digest(prev.id + 1, tx, prev.hash, key.public_der)
    nonce = pure.search(content, difficulty, 0, 2**64)
    assert nonce is not None
    digest = block_hash(content, nonce)
    return Block(
        id=prev.id + 1,
        transaction=tx,
        nonce=nonce,
        prev_hash=prev.hash,
        hash=digest,
        signature=key.sign(digest),
        author=key.public_der,
    )


def describe(block: Block, note: str) -> dict[str, Any]:
    tx = block.transaction
    return {
        "note": note,
        "id": block.id,
        "timestamp": tx.timestamp,
        "data": tx.data.hex(),
        "salt": tx.salt.hex(),
        "tx_id_encoding": pack([tx.timestamp, tx.data, tx.salt]).hex(),
        "tx_id": tx.tx_id.hex(),
        "nonce": block.nonce,
        "prev_hash": block.prev_hash.hex(),
        "author": block.author.hex(),
        "content_encoding": pack(
            [block.id, [tx.timestamp, tx.data, tx.salt], block.prev_hash, block.author]
        ).hex(),
        "content": block.content().hex(),
        "hash": block.hash.hex(),
        "signature": block.signature.hex(),
        "encoded": block.encode().hex(),
    }


def blocks_document() -> dict[str, Any]:
    key = load_key(BLOCK_KEY_FILE)
    genesis = genesis_block()
    # A chain of three: an ordinary vote, a non-ASCII category, an empty data field.
    txs = [
        (Transaction(1_700_000_000_000, b"alice",
                     bytes.fromhex("00112233445566778899aabbccddeeff")), "a vote for 'alice'"),
        (Transaction(1_700_000_060_123, "Émile Zola".encode(), bytes(range(16))),
         "non-ASCII category"),
        (Transaction(1_700_000_120_000, b"", b"\xff" * 16), "empty data"),
    ]
    chain = [genesis]
    entries = [describe(genesis, "genesis of the open network (unsigned, unmined)")]
    for tx, note in txs:
        chain.append(mine(chain[-1], tx, key, DIFFICULTY))
        entries.append(describe(chain[-1], note))
    # One stand-alone block with the largest data field the decoder accepts.
    big = mine(genesis, Transaction(2**40, bytes(range(256)) * 4, b"\x5a" * 16), key, DIFFICULTY)
    entries.append(describe(big, "data at MAX_DATA_BYTES, off genesis (not part of the chain)"))
    return {
        "difficulty": DIFFICULTY,
        "key_file": BLOCK_KEY_FILE,
        "chain_length": 1 + len(txs),
        "blocks": entries,
    }


def describe_certificate(cert: Certificate, key_file: str) -> dict[str, Any]:
    return {
        "key_file": key_file,
        "network": cert.network.hex(),
        "member": cert.member.hex(),
        "fingerprint": fingerprint(cert.member).hex(),
        "label": cert.label,
        "signed_encoding": pack([CERTIFICATE_TAG, cert.network, cert.member, cert.label]).hex(),
        "signed_digest": cert.signed_digest().hex(),
        "signature": cert.signature.hex(),
        "encoded": cert.encode().hex(),
    }


def membership_document() -> dict[str, Any]:
    authority = load_key(AUTHORITY_KEY_FILE)
    members = [load_key(BLOCK_KEY_FILE), load_key(SECOND_MEMBER_KEY_FILE)]
    key_files = [BLOCK_KEY_FILE, SECOND_MEMBER_KEY_FILE]
    network = Network(NETWORK_NAME, NETWORK_DIFFICULTY, authority.public_der)
    genesis = network.genesis
    assert network.descriptor() == pack(
        [DESCRIPTOR_TAG, network.name, network.difficulty, network.authority])

    certs = [Certificate.issue(authority, network, key.public_der, label)
             for key, label in zip(members, LABELS, strict=True)]

    revocations = Revocations.issue(authority, network, REVOCATION_SERIAL, (
        Revoked(fingerprint(members[0].public_der), REVOKED_FROM),
        Revoked(STRANGER_FINGERPRINT, 0),
    ))
    entries = [[r.fingerprint, r.from_height] for r in revocations.revoked]

    # The handshake: member 1 connects to member 2.
    hellos = {
        INITIATOR: Hello(PROTOCOL_VERSION, network.id, network.difficulty, INITIATOR_CHALLENGE),
        ACCEPTOR: Hello(PROTOCOL_VERSION, network.id, network.difficulty, ACCEPTOR_CHALLENGE),
    }
    sides: dict[str, Any] = {}
    for role, other, key, cert, key_file in (
        (INITIATOR, ACCEPTOR, members[0], certs[0], key_files[0]),
        (ACCEPTOR, INITIATOR, members[1], certs[1], key_files[1]),
    ):
        ours, theirs = hellos[role], hellos[other]
        digest = handshake_digest(role, network.id, theirs.challenge, ours.challenge)
        auth = Auth(key.public_der, cert.encode(), key.sign(digest))
        sides[role] = {
            "key_file": key_file,
            "challenge": ours.challenge.hex(),
            "hello": encode(ours).hex(),
            "signed_encoding": pack(
                [HANDSHAKE_TAG, role, network.id, theirs.challenge, ours.challenge]).hex(),
            "signed_digest": digest.hex(),
            "signature": auth.signature.hex(),
            "auth": encode(auth).hex(),
        }

    # A chain on the network: member 1, member 2, member 1 again. The
    # revocation list makes the last block invalid (member 1 from height 3).
    chain = [genesis]
    authors = [0, 1, 0]
    for i, who in enumerate(authors):
        tx = Transaction(1_700_000_000_000 + 60_000 * i, f"option {'ABA'[i]}".encode(),
                         bytes([0x10 + i]) * 16)
        chain.append(mine(chain[-1], tx, members[who], network.difficulty))
    chain_entries = [describe(genesis, "the network's genesis: its data is the descriptor")]
    chain_entries += [describe(b, f"by member {who + 1}")
                      for b, who in zip(chain[1:], authors, strict=True)]

    return {
        "authority_key_file": AUTHORITY_KEY_FILE,
        "network": {
            "name": network.name,
            "difficulty": network.difficulty,
            "authority": network.authority.hex(),
            "descriptor": network.descriptor().hex(),
            "genesis_content_encoding": pack(
                [0, [0, network.descriptor(), bytes(16)], bytes(32), b""]).hex(),
            "genesis_content": genesis.content().hex(),
            "id": network.id.hex(),
            "file": network.to_json(),
        },
        "certificates": [describe_certificate(c, f) for c, f in zip(certs, key_files, strict=True)],
        "revocations": {
            "network": revocations.network.hex(),
            "serial": revocations.serial,
            "revoked": [{"fingerprint": r.fingerprint.hex(), "from_height": r.from_height}
                        for r in revocations.revoked],
            "signed_encoding": pack(
                [REVOCATIONS_TAG, revocations.network, revocations.serial, entries]).hex(),
            "signed_digest": revocations.signed_digest().hex(),
            "signature": revocations.signature.hex(),
            "file": revocations.to_json(),
        },
        "handshake": {
            "network": network.id.hex(),
            "initiator": sides[INITIATOR],
            "acceptor": sides[ACCEPTOR],
        },
        "chain": {
            "authors": [key_files[who] for who in authors],
            "blocks": chain_entries,
        },
    }


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted path (`blocks.0.hash`) of a vector document."""
    for part in path.split("."):
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def wrap(hex_value: str) -> str:
    return "\n".join(hex_value[i : i + 64] for i in range(0, len(hex_value), 64))


def dump(file_name: str, path: str) -> str:
    return wrap(lookup(json.loads((HERE / file_name).read_text(encoding="utf-8")), path))


def sync_docs() -> None:
    doc = PROTOCOL_DOC.read_text(encoding="utf-8")
    frames: dict[str, str] = json.loads(WIRE_FILE.read_text(encoding="utf-8"))

    def value(match: re.Match[str]) -> str:
        head = match.group(1)
        return f"{head}\n```text\n{dump(match.group(2), match.group(3))}\n```"

    def frame(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in frames:
            return match.group(0)
        return f"{match.group(1)}\n```text\n{wrap(frames[name])}\n```"

    doc = re.sub(r"(<!-- value: (\S+) (\S+) -->)\s*```text\n.*?```", value, doc, flags=re.S)
    doc = re.sub(r"(<!-- vector: (\w+) -->)\s*```text\n.*?```", frame, doc, flags=re.S)
    PROTOCOL_DOC.write_text(doc, encoding="utf-8")
    print(f"rewrote the value and frame dumps of {PROTOCOL_DOC}")
    missing = sorted(set(frames) - set(re.findall(r"<!-- vector: (\w+) -->", doc)))
    if missing:
        print(f"frames with no dump in it yet (add a heading and a marker): {missing}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--dump"] and len(argv) == 3:
        print(dump(argv[1], argv[2]))
        return
    if argv == ["--sync-docs"]:
        sync_docs()
        return
    for path, document in ((BLOCKS_FILE, blocks_document()),
                           (MEMBERSHIP_FILE, membership_document())):
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])

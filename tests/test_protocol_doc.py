"""A client written from docs/protocol.md alone, against a real node.

Everything this client sends it builds by hand, from the document's words:
frames (section 1), message maps (section 2) packed with plain msgpack, the
block hash layout (4.2), the handshake digest (6.2), RSA PKCS#1 v1.5
signatures (5.1) made with `cryptography`. It imports nothing of votechain's
wire code (no votechain.protocol, no Block). It talks to a real in-process node
(framework.network.Network: the open network, difficulty 3) over a socket and
checks that every reply is what the document says, and that every reason
the node sends is one the document quotes.

The last tests check the document's numbers against the code: the largest
frame (section 7), the key rules of 5.1 (exponent 65537, 2048 bits) for block
authors and certificates, and every timeout and cap it quotes with its value.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from framework.network import Network

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
DOC_TEXT = DOC.read_text(encoding="utf-8")
# The document wraps quoted reasons across lines and in backticks: compare
# with its whitespace collapsed.
DOC_FLAT = re.sub(r"\s+", " ", DOC_TEXT)

VERSION = 3  # section 2.1
DIFFICULTY = 3  # the harness's
MAX_FRAME_BYTES = 4_194_304  # section 1
MAX_BATCH_BLOCKS = 256  # section 2.7
BLOCK_KEYS = {"id", "transaction", "nonce", "prev_hash", "hash", "signature", "author"}
TX_KEYS = {"timestamp", "data", "salt"}
TIMEOUT = 10.0


def documented(reason: str, template: str | None = None) -> None:
    """docs/protocol.md quotes `template` (default: `reason` itself), and `reason`
    is what the template says, each `<...>` in it standing for any text."""
    template = reason if template is None else template
    flat = re.sub(r"\s+", " ", template)
    assert flat in DOC_FLAT, f"docs/protocol.md does not quote {flat!r}"
    pattern = ".+".join(re.escape(part) for part in re.split(r"<[^<>]*>", flat))
    assert re.fullmatch(pattern, re.sub(r"\s+", " ", reason)), (reason, template)


# ================================================================ keys and signatures (5.1)


def new_key(exponent: int = 65537, bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=exponent, key_size=bits)


def der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 with SHA-256, the 32-byte digest as the message."""
    return key.sign(digest, padding.PKCS1v15(), hashes.SHA256())


def verify(public_der: bytes, signature: bytes, digest: bytes) -> None:
    public = serialization.load_der_public_key(public_der)
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, digest, padding.PKCS1v15(), hashes.SHA256())


# ================================================================ blocks (4.1 to 4.4)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def pack(obj: object) -> bytes:
    """msgpack, bin for bytes and str for text (the notation section)."""
    packed = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def content_of(block: dict[str, Any]) -> bytes:
    tx = block["transaction"]
    return sha256(pack([block["id"], [tx["timestamp"], tx["data"], tx["salt"]],
                        block["prev_hash"], block["author"]]))


def hash_of(block: dict[str, Any]) -> bytes:
    return sha256(content_of(block) + struct.pack(">Q", block["nonce"]))


def tx_id(tx: dict[str, Any]) -> bytes:
    return sha256(pack([tx["timestamp"], tx["data"], tx["salt"]]))


def meets(digest: bytes, difficulty: int) -> bool:
    return digest.hex().startswith("0" * difficulty)


def genesis() -> dict[str, Any]:
    """The open network's block 0 (4.4)."""
    block = {"id": 0, "transaction": {"timestamp": 0, "data": b"votechain genesis",
                                      "salt": bytes(16)},
             "nonce": 0, "prev_hash": bytes(32), "hash": b"", "signature": b"", "author": b""}
    block["hash"] = hash_of(block)
    return block


OPEN_NETWORK_ID = genesis()["hash"]


def mine(key: rsa.RSAPrivateKey, block_id: int, prev_hash: bytes, data: bytes,
         *, author: bytes | None = None,
         transaction: dict[str, Any] | None = None) -> dict[str, Any]:
    """A block as section 4 describes it: mined at DIFFICULTY, signed by `key`
    (carrying `data` in a new transaction, or `transaction` as given)."""
    if transaction is None:
        transaction = {"timestamp": time.time_ns() // 1_000_000, "data": data,
                       "salt": secrets.token_bytes(16)}
    block: dict[str, Any] = {"id": block_id, "transaction": transaction,
                             "nonce": 0, "prev_hash": prev_hash, "hash": b"",
                             "signature": b"", "author": der(key) if author is None else author}
    content = content_of(block)
    nonce = 0
    while not meets(sha256(content + struct.pack(">Q", nonce)), DIFFICULTY):
        nonce += 1
    block["nonce"] = nonce
    block["hash"] = hash_of(block)
    block["signature"] = sign(key, block["hash"])
    return block


def check_block(block: dict[str, Any]) -> None:
    """A block map as a node sends it: exactly the keys of 4.1, a hash that is the
    layout of 4.2 and meets the difficulty, signed by its author (5.1)."""
    assert set(block) == BLOCK_KEYS and set(block["transaction"]) == TX_KEYS
    assert len(block["prev_hash"]) == len(block["hash"]) == 32
    assert len(block["transaction"]["salt"]) == 16
    assert block["hash"] == hash_of(block)
    if block["id"] == 0:
        assert block == genesis()
        return
    assert meets(block["hash"], DIFFICULTY)
    verify(block["author"], block["signature"], block["hash"])


# ================================================================ frames and the client (1, 2, 6)


def handshake_digest(role: str, network: bytes, theirs: bytes, own: bytes) -> bytes:
    return sha256(pack(["votechain handshake", role, network, theirs, own]))


class DocClient:
    """One TCP connection speaking the protocol as the document describes it."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.challenge = secrets.token_bytes(32)
        self.their_hello: dict[str, Any] = {}
        self.their_auth: dict[str, Any] = {}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DocClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: dict[str, Any]) -> None:
        payload = pack(message)
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} of {count} bytes")
            data += chunk
        return data

    def recv(self) -> dict[str, Any]:
        (length,) = struct.unpack(">I", self._exactly(4))
        assert 1 <= length <= MAX_FRAME_BYTES
        message = msgpack.unpackb(self._exactly(length), raw=False)
        assert isinstance(message, dict) and isinstance(message.get("type"), str)
        return message

    def closed(self) -> bool:
        """Whether the node closed the connection (nothing more arrives)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.recv()

    def hello(self, **changes: Any) -> dict[str, Any]:
        """Send our Hello (2.1) and read the node's."""
        self.send({"type": "hello", "version": VERSION, "genesis": OPEN_NETWORK_ID,
                   "difficulty": DIFFICULTY, "challenge": self.challenge, **changes})
        self.their_hello = self.recv()
        return self.their_hello

    def auth(self, key: rsa.RSAPrivateKey | None) -> dict[str, Any]:
        """Send our Auth (2.2, 6.2) as the initiator; the node's reply."""
        if key is None:
            self.send({"type": "auth", "public_key": b"", "certificate": b"", "signature": b""})
        else:
            digest = handshake_digest("initiator", OPEN_NETWORK_ID,
                                      self.their_hello["challenge"], self.challenge)
            self.send({"type": "auth", "public_key": der(key), "certificate": b"",
                       "signature": sign(key, digest)})
        self.their_auth = self.recv()
        return self.their_auth

    def handshake(self, key: rsa.RSAPrivateKey | None) -> None:
        assert self.hello()["type"] == "hello"
        assert self.auth(key)["type"] == "auth"

    def add(self, block: dict[str, Any]) -> tuple[str, str]:
        reply = self.request({"type": "add", "block": block, "locked": 0})
        assert set(reply) == {"type", "status", "reason", "locked"}
        assert reply["type"] == "add_result"
        assert reply["status"] in ("added", "known", "fork", "rejected")
        assert (reply["reason"] != "") == (reply["status"] == "rejected")
        return reply["status"], reply["reason"]

    def latest(self) -> dict[str, Any]:
        reply = self.request({"type": "get_latest"})
        assert set(reply) == {"type", "block"} and reply["type"] == "latest"
        block: dict[str, Any] = reply["block"]
        check_block(block)
        return block

    def blocks(self, from_id: int, limit: int = MAX_BATCH_BLOCKS) -> list[dict[str, Any]]:
        reply = self.request({"type": "get_blocks", "from_id": from_id, "limit": limit})
        assert set(reply) == {"type", "blocks", "certificates"} and reply["type"] == "blocks"
        assert reply["certificates"] == []  # the open network (2.8)
        blocks = reply["blocks"]
        assert len(blocks) <= limit
        for index, block in enumerate(blocks):
            assert block["id"] == from_id + index
            check_block(block)
            if index:
                assert block["prev_hash"] == blocks[index - 1]["hash"]
        return list(blocks)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture
def node_address(tmp_path: Path) -> Iterator[tuple[str, int]]:
    with Network(tmp_path, difficulty=DIFFICULTY) as net:
        yield net.add_node("a").address


@pytest.fixture
def client(node_address: tuple[str, int], key: rsa.RSAPrivateKey) -> Iterator[DocClient]:
    with DocClient(node_address) as c:
        c.handshake(key)
        yield c


# ================================================================ the handshake (6)


def test_the_handshake_is_as_documented(node_address: tuple[str, int],
                                        key: rsa.RSAPrivateKey) -> None:
    with DocClient(node_address) as c:
        hello = c.hello()
        assert set(hello) == {"type", "version", "genesis", "difficulty", "challenge"}
        assert hello["type"] == "hello" and hello["version"] == VERSION
        assert hello["genesis"] == OPEN_NETWORK_ID
        # The document quotes the open network's id (4.4).
        documented(OPEN_NETWORK_ID.hex())
        assert hello["difficulty"] == DIFFICULTY
        assert len(hello["challenge"]) == 32 and hello["challenge"] != c.challenge
        auth = c.auth(key)
        assert set(auth) == {"type", "public_key", "certificate", "signature"}
        assert auth["certificate"] == b""  # the open network: no certificate
        # The acceptor signed ["votechain handshake", "acceptor", id, our challenge, its own].
        verify(auth["public_key"], auth["signature"],
               handshake_digest("acceptor", OPEN_NETWORK_ID, c.challenge, hello["challenge"]))
        public = serialization.load_der_public_key(auth["public_key"])
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size >= 2048 and public.public_numbers().e == 65537
        assert len(auth["public_key"]) == 294  # "294 bytes for RSA-2048"


def test_a_keyless_observer_is_accepted(node_address: tuple[str, int]) -> None:
    with DocClient(node_address) as c:
        c.hello()
        auth = c.auth(None)
        assert auth["type"] == "auth" and auth["public_key"]  # the node still proves its key
        assert c.latest() == genesis()


# ================================================================ reads (2.3, 2.4, 2.7, 2.8)


def test_get_latest_and_get_blocks(client: DocClient, key: rsa.RSAPrivateKey) -> None:
    assert client.latest() == genesis()
    assert client.blocks(0) == [genesis()]
    assert client.blocks(1) == []  # caught up: an empty array
    block = mine(key, 1, genesis()["hash"], b"Alice")
    assert client.add(block) == ("added", "")
    assert client.latest() == block
    assert client.blocks(0) == [genesis(), block]
    assert client.blocks(1, 1) == [block]


# ================================================================ Add and its answers (2.5, 2.6)


def test_add_answers_added_known_fork_and_rejected(client: DocClient,
                                                   key: rsa.RSAPrivateKey) -> None:
    tip = genesis()
    first = mine(key, 1, tip["hash"], b"first")
    assert client.add(first) == ("added", "")
    assert client.add(first) == ("known", "")

    # The next id on another parent: the node cannot tell a bad link from a
    # branch it has not seen, and answers fork (2.6), not rejected.
    unlinked = mine(key, 2, bytes(32), b"unlinked")
    assert client.add(unlinked) == ("fork", "")
    # Another block at an id the node holds, and one leaving a gap: fork too.
    assert client.add(mine(key, 1, tip["hash"], b"rival"))[0] == "fork"
    assert client.add(mine(key, 5, first["hash"], b"gap"))[0] == "fork"

    # Check 2: a block by another author than the key this connection proved.
    other = new_key()
    status, reason = client.add(mine(other, 2, first["hash"], b"not mine"))
    assert (status, reason) == ("rejected", "author does not match the public key sent")
    documented(reason)

    # Check 4: a rule of 5.5, with "block <id> <hash>: <rule>: <detail>".
    bad = mine(key, 2, first["hash"], b"edited")
    bad["transaction"]["data"] = b"edited later"
    status, reason = client.add(bad)
    assert status == "rejected"
    assert reason.startswith(f"block 2 {bad['hash'].hex()[:16]}: hash does not match its contents")
    documented(reason, "block <id> <hash, 16 hex digits>: <rule>: <detail>")
    documented("hash does not match its contents")
    forged = mine(key, 2, first["hash"], b"forged")
    forged["signature"] = sign(other, forged["hash"])
    status, reason = client.add(forged)
    assert status == "rejected" and reason.endswith(
        "bad signature: the signature does not verify under that key")
    documented(reason, "block <id> <hash, 16 hex digits>: <rule>: <detail>")
    documented("bad signature: the signature does not verify under that key")

    # Check 6 (rule 7): the vote of block 1 again, in a block that extends the tip.
    again = mine(key, 2, first["hash"], b"", transaction=first["transaction"])
    status, reason = client.add(again)
    assert status == "rejected"
    assert reason.endswith("transaction already in the chain: tx "
                           f"{tx_id(first['transaction']).hex()} is in block 1")
    documented(reason, "block <id> <hash>: transaction already in the chain: tx <tx_id> "
                       "is in block <k>")

    assert client.latest() == first  # nothing of the above was taken


def test_an_observer_may_read_but_not_add(node_address: tuple[str, int],
                                          key: rsa.RSAPrivateKey) -> None:
    with DocClient(node_address) as c:
        c.hello()
        c.auth(None)
        status, reason = c.add(mine(key, 1, genesis()["hash"], b"x"))
        assert status == "rejected"
        assert reason == ("not a member of this open network (no key proven): an observer may "
                          "read the chain but not add blocks")
        documented(reason)
        assert c.latest() == genesis()


# ================================================================ the tally (4.5)


def test_the_tally_counts_only_canonical_nfc_votes(tmp_path: Path,
                                                   key: rsa.RSAPrivateKey) -> None:
    # The two encodings of "café" the document quotes.
    documented("63 61 66 c3 a9")
    documented("63 61 66 65 cc 81")
    nfc, nfd = bytes.fromhex("63 61 66 c3 a9"), bytes.fromhex("63 61 66 65 cc 81")
    assert nfc.decode() == "caf\u00e9" and nfd.decode() == "cafe\u0301"
    with Network(tmp_path, difficulty=DIFFICULTY) as net:
        node = net.add_node("a")
        with DocClient(node.address) as c:
            c.handshake(key)
            prev = genesis()
            for data in (nfc, nfd, b" padded ", b"Alice"):
                block = mine(key, prev["id"] + 1, prev["hash"], data)
                assert c.add(block) == ("added", "")  # valid blocks, whatever their data
                prev = block
        assert node.tally() == node.tally(recount=True) == {"Alice": 1, "caf\u00e9": 1}
        # A vote cast through the node with the NFD spelling is the same category.
        assert node.wait_for_tx(node.submit_vote("cafe\u0301"), 30) is not None
        assert node.tally() == {"caf\u00e9": 2, "Alice": 1}


# ================================================================ refusals (2.9, 6.1, 6.3, 6.4)


def test_a_malformed_request_is_answered_and_the_connection_reads_on(client: DocClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "nope"}, "bad request: unknown message type 'nope'"),
        ({"type": "get_blocks", "from_id": 1}, "bad request: get_blocks is missing limit"),
        ({"type": "get_latest", "x": 1}, "bad request: get_latest has unknown fields x"),
        ({"type": "get_blocks", "from_id": 1, "limit": 0},
         "bad request: get_blocks.limit=0 is out of range 1..256"),
        ({"type": "latest", "block": genesis()}, "unexpected Latest message"),
    ]
    for message, reason in cases:
        assert client.request(message) == {"type": "error", "reason": reason}
        documented(reason)
        assert client.latest() == genesis()  # still served


def test_a_first_message_that_is_no_hello(node_address: tuple[str, int]) -> None:
    with DocClient(node_address) as c:
        reply = c.request({"type": "get_latest"})
        assert reply == {"type": "error",
                         "reason": "expected hello in the handshake, got get_latest"}
        documented(reply["reason"], "expected hello in the handshake, got <type>")
        assert c.closed()


def test_a_second_message_that_is_no_auth(node_address: tuple[str, int]) -> None:
    with DocClient(node_address) as c:
        c.hello()
        reply = c.request({"type": "get_latest"})
        assert reply == {"type": "error",
                         "reason": "expected auth in the handshake, got get_latest"}
        documented(reply["reason"], "expected auth in the handshake, got <type>")
        assert c.closed()


@pytest.mark.parametrize(("change", "reason", "template"), [
    ({"version": 1}, "incompatible: protocol version 1, expected 3", None),
    ({"difficulty": 4}, "incompatible: difficulty 4, expected 3", None),
    ({"genesis": bytes(32)}, "incompatible: genesis block 0000000000000000…, expected "
                             f"{OPEN_NETWORK_ID.hex()[:16]}… (a different chain)",
     "incompatible: genesis block <16 hex digits>…, expected <16 hex digits>… "
     "(a different chain)"),
])
def test_an_incompatible_hello(node_address: tuple[str, int], change: dict[str, Any],
                               reason: str, template: str | None) -> None:
    with DocClient(node_address) as c:
        # The acceptor answers with its own Hello first, then refuses (6.1, step 3 and 4).
        assert c.hello(**change)["type"] == "hello"
        assert c.recv() == {"type": "error", "reason": reason}
        assert c.closed()
    documented(reason, template)


@pytest.mark.parametrize(("make", "detail"), [
    (lambda: new_key(exponent=3), "the key's public exponent is 3, not 65537"),
    (lambda: new_key(bits=1024), "the key is 1024 bits, below 2048"),
])
def test_a_key_votechain_does_not_accept_is_refused(node_address: tuple[str, int],
                                                    make: Any, detail: str) -> None:
    with DocClient(node_address) as c:
        c.hello()
        reply = c.auth(make())  # signed correctly, with a key of the wrong kind
        reason = f"incompatible: the peer does not hold the key it presented: {detail}"
        assert reply == {"type": "error", "reason": reason}
        assert c.closed()
    documented(reason, "incompatible: the peer does not hold the key it presented: <detail>")
    documented(detail)


def test_an_auth_whose_signature_does_not_verify(node_address: tuple[str, int],
                                                 key: rsa.RSAPrivateKey) -> None:
    with DocClient(node_address) as c:
        c.hello()
        c.send({"type": "auth", "public_key": der(key), "certificate": b"",
                "signature": sign(key, bytes(32))})  # not this connection's digest
        reason = c.recv()["reason"]
        assert reason == ("incompatible: the peer does not hold the key it presented: the "
                          "signature does not verify under that key")
        assert c.closed()
    documented(reason, "incompatible: the peer does not hold the key it presented: <detail>")
    documented("the signature does not verify under that key")


@pytest.mark.parametrize("length", [0, MAX_FRAME_BYTES + 1])
def test_a_bad_length_prefix_closes_the_connection(client: DocClient, length: int) -> None:
    # Refused from the 4 bytes alone: no payload is sent, none is waited for.
    client.sock.sendall(struct.pack(">I", length))
    assert client.closed()


# ================================================================ the numbers of section 7


def pack_longest(obj: object) -> bytes:
    """msgpack with the longest header for every value (map32, array32, str32,
    bin32, uint64): legal, since a receiver accepts any valid encoding
    (section 2), and the largest a message's values can be encoded."""
    if isinstance(obj, dict):
        return b"\xdf" + struct.pack(">I", len(obj)) + b"".join(
            pack_longest(k) + pack_longest(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return b"\xdd" + struct.pack(">I", len(obj)) + b"".join(pack_longest(v) for v in obj)
    if isinstance(obj, str):
        raw = obj.encode()
        return b"\xdb" + struct.pack(">I", len(raw)) + raw
    if isinstance(obj, bytes):
        return b"\xc6" + struct.pack(">I", len(obj)) + obj
    assert isinstance(obj, int) and 0 <= obj < 2**64
    return b"\xcf" + struct.pack(">Q", obj)


def largest_blocks() -> dict[str, Any]:
    """A Blocks of 256 blocks at every field's cap, with 256 certificates of 2 KiB."""
    top = 2**64 - 1
    blocks = [{"id": top - MAX_BATCH_BLOCKS + 1 + i,
               "transaction": {"timestamp": top, "data": b"d" * 1024, "salt": b"s" * 16},
               "nonce": top, "prev_hash": b"p" * 32, "hash": b"h" * 32,
               "signature": b"g" * 1024, "author": b"a" * 1024} for i in range(256)]
    return {"type": "blocks", "blocks": blocks,
            "certificates": [bytes([i]) * 2048 for i in range(256)]}


def quoted_bytes(words: str) -> int:
    """The number the document writes as e.g. "1 361 963 bytes" right after `words`."""
    match = re.search(re.escape(words) + r"\s*([\d ]+?) bytes", DOC_FLAT)
    assert match, f"docs/protocol.md quotes no size after {words!r}"
    return int(match.group(1).replace(" ", ""))


def test_the_largest_frames_are_the_sizes_the_document_quotes() -> None:
    from votechain.protocol.peer import Blocks, decode_payload, encode

    message = largest_blocks()
    shortest = 4 + len(pack(message))
    longest = 4 + len(pack_longest(message))
    assert quoted_bytes("as this implementation encodes it:") == shortest
    assert quoted_bytes("with the longest header for every value:") == longest
    assert longest <= 4 + MAX_FRAME_BYTES
    # The code agrees: it encodes the largest Blocks in `shortest` bytes, and
    # accepts the longest encoding of it.
    decoded = decode_payload(pack_longest(message))
    assert isinstance(decoded, Blocks) and len(decoded.blocks) == 256
    assert len(encode(decoded)) == shortest


# ================================================================ the key rules of 5.1, in the code


def test_a_block_by_an_exponent_3_author_is_rejected_saying_why() -> None:
    from votechain.core.block import Block
    from votechain.core.rules import check_block_alone
    from votechain.errors import BadSignature

    odd = new_key(exponent=3)
    block = Block.from_wire(mine(odd, 1, genesis()["hash"], b"Alice"))
    with pytest.raises(BadSignature, match="bad signature: the key's public exponent is 3, "
                                           "not 65537"):
        check_block_alone(block, difficulty=DIFFICULTY, now_ms=time.time_ns() // 1_000_000)


def test_a_certificate_for_an_exponent_3_key_is_not_admitted() -> None:
    from votechain.core.membership import Certificate, Members, Network
    from votechain.errors import BadCertificate

    authority = new_key()
    network = Network("doc", DIFFICULTY, der(authority))
    member = der(new_key(exponent=3))
    unsigned = Certificate(network.id, member, "odd", b"")
    cert = Certificate(network.id, member, "odd", sign(authority, unsigned.signed_digest()))
    with pytest.raises(BadCertificate, match="the certified key: the key's public exponent is "
                                             "3, not 65537"):
        Members(network).admit(cert.encode())
    with pytest.raises(BadCertificate, match="the authority key: the key's public exponent"):
        Network("doc", DIFFICULTY, der(new_key(exponent=3)))


# ================================================================ the constants the document quotes

UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "minutes": 60.0}
# Every `NAME` (value) the document gives for these must be the code's.
QUOTED_CONSTANTS = {
    "MAX_FRAME_BYTES", "MAX_BATCH_BLOCKS", "FETCH_AHEAD_BATCHES", "MAX_BRANCH_BLOCKS",
    "FETCH_DEADLINE", "OUTBOX_BLOCKS", "PEER_BACKOFF", "MAX_PEER_BACKOFF",
    "MISBEHAVIOUR_BACKOFF", "SYNC_INTERVAL", "MIN_RESOLVE_INTERVAL", "POLL_DEADLINE",
    "PEER_TIMEOUT", "HANDSHAKE_TIMEOUT", "FRAME_DEADLINE", "INBOUND_IDLE_TIMEOUT",
    "MAX_BAD_REQUESTS", "MAX_INBOUND", "MAX_INBOUND_PER_IP",
}


def test_every_constant_quoted_with_its_value_is_the_codes() -> None:
    from votechain.net import connection
    from votechain.node import config
    from votechain.protocol import peer

    modules = (config, peer, connection)
    found: set[str] = set()
    for name, number, unit in re.findall(r"`?([A-Z][A-Z_]+)`? \((\d[\d .]*?) ?(s|ms|minutes)?[);,]",
                                         DOC_FLAT):
        holder = next((m for m in modules if hasattr(m, name)), None)
        if holder is None:
            continue
        value = float(number.replace(" ", "")) * UNITS[unit]
        assert value == pytest.approx(float(getattr(holder, name))), (
            f"docs/protocol.md gives {name} as {number} {unit}, the code "
            f"{getattr(holder, name)}")
        found.add(name)
    assert found >= QUOTED_CONSTANTS, QUOTED_CONSTANTS - found

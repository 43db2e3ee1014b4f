"""The peer protocol's codec (protocol/peer.py, framing.py, messages.py), with no
sockets: fixed vectors, round trips, every rejection, fuzzing.

The vectors in tests/vectors/wire_vectors.json fix the bytes of one example of
each message; docs/protocol.md shows the same bytes. After a deliberate change
to the encoding, regenerate both from this file's examples with
``PYTHONPATH=src python tests/test_wire.py --regen`` and update the docs' dumps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

import msgpack
import msgpack.fallback
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from votechain import errors
from votechain.core import rules
from votechain.core.block import (
    HASH_BYTES,
    MAX_AUTHOR_BYTES,
    MAX_DATA_BYTES,
    MAX_NONCE,
    MAX_SIGNATURE_BYTES,
    SALT_BYTES,
    Block,
    Transaction,
    genesis_block,
)
from votechain.core.codec import pack
from votechain.core.keys import NodeKey
from votechain.errors import (
    MAX_REASON_CHARS,
    FrameTooLarge,
    IncompatiblePeer,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    UnknownMessageType,
)
from votechain.protocol.framing import FrameCap
from votechain.protocol.handshake import ACCEPTOR, INITIATOR, handshake_digest
from votechain.protocol.peer import (
    CHALLENGE_BYTES,
    MAX_BATCH_BLOCKS,
    MAX_CERTIFICATE_BYTES,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    PEER,
    PROTOCOL_VERSION,
    Add,
    AddResult,
    Announce,
    Auth,
    Blocks,
    Error,
    GetBlocks,
    GetLatest,
    Hello,
    Latest,
    Message,
    Relay,
    Relayed,
    check_hello,
    decode_payload,
    encode,
)

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS_FILE = VECTORS_DIR / "wire_vectors.json"
KEY_FILE = VECTORS_DIR / "wire_key.pem"
PROTOCOL_DOC = Path(__file__).parent.parent / "docs" / "protocol.md"

# The example block: block 1 on the genesis block, a vote for "Alice", signed
# with the stored key. The nonce was found once by mining at difficulty 4 (the
# first from 0); test_example_block_is_valid checks it still meets the difficulty.
EXAMPLE_DIFFICULTY = 4
EXAMPLE_NONCE = 65625
EXAMPLE_TIMESTAMP = 1_700_000_000_000
EXAMPLE_SALT = bytes(range(SALT_BYTES))
# The example handshake's challenges (in real use, fresh random bytes each):
# the Hello is the initiator's, the Auth the initiator's answer to the acceptor's.
INITIATOR_CHALLENGE = bytes(range(CHALLENGE_BYTES))
ACCEPTOR_CHALLENGE = bytes(range(0xA0, 0xA0 + CHALLENGE_BYTES))


# Cached: loading an RSA key checks it (tens of ms), and the examples are frozen values.
@functools.cache
def example_key() -> NodeKey:
    return NodeKey.from_pem(KEY_FILE.read_bytes())


@functools.cache
def example_block() -> Block:
    key = example_key()
    genesis = genesis_block()
    unsigned = Block(
        id=1,
        transaction=Transaction(timestamp=EXAMPLE_TIMESTAMP, data=b"Alice", salt=EXAMPLE_SALT),
        nonce=0,
        prev_hash=genesis.hash,
        hash=b"",
        signature=b"",
        author=key.public_der,
    ).with_nonce(EXAMPLE_NONCE)
    return Block(
        id=unsigned.id,
        transaction=unsigned.transaction,
        nonce=unsigned.nonce,
        prev_hash=unsigned.prev_hash,
        hash=unsigned.hash,
        signature=key.sign(unsigned.hash),
        author=unsigned.author,
    )


@functools.cache
def example_messages() -> dict[str, Message]:
    """One example of each message, in the order of a real conversation."""
    genesis = genesis_block()
    block = example_block()
    key = example_key()
    # On the open network a key needs no certificate: the initiator signs the
    # acceptor's challenge (protocol/handshake.py) and sends no certificate.
    digest = handshake_digest(INITIATOR, genesis.hash, ACCEPTOR_CHALLENGE, INITIATOR_CHALLENGE)
    return {
        "hello": Hello(version=PROTOCOL_VERSION, genesis=genesis.hash, difficulty=4,
                       challenge=INITIATOR_CHALLENGE),
        "auth": Auth(public_key=key.public_der, certificate=b"", signature=key.sign(digest)),
        "auth_observer": Auth(),
        "get_latest": GetLatest(),
        "latest": Latest(block=genesis),
        "add": Add(block=block),
        "add_result": AddResult(status="added"),
        "add_result_rejected": AddResult(status="rejected", reason="block 7: bad signature"),
        "get_blocks": GetBlocks(from_id=1, limit=MAX_BATCH_BLOCKS),
        "blocks": Blocks(blocks=(block,)),
        "blocks_empty": Blocks(blocks=()),
        "announce": Announce(tip_id=block.id, tip_hash=block.hash, locked=0),
        "relay": Relay(transaction=block.transaction),
        "relayed": Relayed(status="queued"),
        "error": Error(reason="expected hello in the handshake, got get_latest"),
    }


def load_vectors() -> dict[str, str]:
    vectors: dict[str, str] = json.loads(VECTORS_FILE.read_text())
    return vectors


# ---------------------------------------------------------------- vectors


@pytest.mark.parametrize("name", list(example_messages()))
def test_vector_encoding_is_fixed(name: str) -> None:
    msg = example_messages()[name]
    assert encode(msg).hex() == load_vectors()[name], f"the encoding of {name} changed"
    assert decode_payload(bytes.fromhex(load_vectors()[name])[4:]) == msg


def test_vectors_cover_every_message_type() -> None:
    tags = {msg.TYPE for msg in example_messages().values()}
    assert tags == set(MESSAGE_TYPES)
    assert set(load_vectors()) == set(example_messages())


def test_example_block_is_valid() -> None:
    rules.validate_block(
        example_block(),
        genesis_block(),
        difficulty=EXAMPLE_DIFFICULTY,
        now_ms=EXAMPLE_TIMESTAMP,
    )


def test_example_auth_proves_the_example_key() -> None:
    """The `auth` example is what the acceptor of the example handshake accepts."""
    from votechain.protocol.handshake import authenticate

    auth = example_messages()["auth"]
    initiator = example_messages()["hello"]
    assert isinstance(auth, Auth) and isinstance(initiator, Hello)
    acceptor = dataclasses.replace(initiator, challenge=ACCEPTOR_CHALLENGE)
    peer = authenticate(auth, INITIATOR, acceptor, initiator, None)
    assert (peer.key, peer.member) == (example_key().public_der, True)
    with pytest.raises(IncompatiblePeer, match="does not hold the key"):
        authenticate(auth, ACCEPTOR, acceptor, initiator, None)  # reflected: another digest


def test_docs_show_the_vectors() -> None:
    """Each vector appears in docs/protocol.md as a hex block after a `vector:` marker."""
    doc = PROTOCOL_DOC.read_text()
    dumps = dict(re.findall(r"<!-- vector: (\w+) -->\s*```text\n(.*?)```", doc, re.S))
    for name, hex_frame in load_vectors().items():
        assert name in dumps, f"docs/protocol.md has no dump of {name}"
        assert re.sub(r"\s", "", dumps[name]) == hex_frame, f"docs dump of {name} is stale"


def test_genesis_hash_in_docs() -> None:
    assert genesis_block().hash.hex() in PROTOCOL_DOC.read_text()


# ---------------------------------------------------------------- round trips


def _decode_frame(frame: bytes) -> Message:
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return decode_payload(frame[4:])


@pytest.mark.parametrize("name", list(example_messages()))
def test_round_trip(name: str) -> None:
    msg = example_messages()[name]
    assert _decode_frame(encode(msg)) == msg


def test_frame_decoder_one_byte_at_a_time() -> None:
    messages = list(example_messages().values())
    stream = b"".join(encode(m) for m in messages)
    decoder = PEER.decoder()
    got: list[Message] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (msg := decoder.next_message()) is not None:
            got.append(msg)
    assert got == messages
    assert decoder.buffered == 0


def test_frame_decoder_many_frames_in_one_feed() -> None:
    messages = list(example_messages().values())
    decoder = PEER.decoder()
    decoder.feed(b"".join(encode(m) for m in messages))
    got = []
    while (msg := decoder.next_message()) is not None:
        got.append(msg)
    assert got == messages


def test_frame_decoder_waits_for_a_whole_frame() -> None:
    frame = encode(Error(reason="x"))
    decoder = PEER.decoder()
    assert decoder.next_message() is None
    decoder.feed(frame[:3])
    assert decoder.next_message() is None
    decoder.feed(frame[3:-1])
    assert decoder.next_message() is None
    assert decoder.buffered == len(frame) - 1
    decoder.feed(frame[-1:])
    assert decoder.next_message() == Error(reason="x")


def test_blocks_accepts_a_list_and_holds_a_tuple() -> None:
    block = example_block()
    assert Blocks(blocks=[block]) == Blocks(blocks=(block,))  # type: ignore[arg-type]


def test_full_batch_of_largest_blocks_fits_in_a_frame() -> None:
    """The cap's reason: MAX_BATCH_BLOCKS blocks at every field's cap fit in one frame."""
    big = [
        Block(
            id=MAX_NONCE - MAX_BATCH_BLOCKS + 1 + i,
            transaction=Transaction(
                timestamp=MAX_NONCE, data=b"d" * MAX_DATA_BYTES, salt=b"\xff" * SALT_BYTES
            ),
            nonce=MAX_NONCE,
            prev_hash=b"p" * HASH_BYTES,
            hash=b"h" * HASH_BYTES,
            signature=b"s" * MAX_SIGNATURE_BYTES,
            author=b"a" * MAX_AUTHOR_BYTES,
        )
        for i in range(MAX_BATCH_BLOCKS)
    ]
    # With a certificate at its cap for every block (each author's, on a
    # members-only network).
    certificates = tuple(bytes([i]) * MAX_CERTIFICATE_BYTES for i in range(MAX_BATCH_BLOCKS))
    frame = encode(Blocks(blocks=tuple(big), certificates=certificates))
    assert len(frame) - 4 <= MAX_FRAME_BYTES
    assert _decode_frame(frame) == Blocks(blocks=tuple(big), certificates=certificates)


# ---------------------------------------------------------------- check_hello


def test_check_hello_accepts_a_match() -> None:
    hello = example_messages()["hello"]
    assert isinstance(hello, Hello)
    check_hello(hello, hello)
    # The challenges differ on every connection: no part of the match.
    check_hello(hello, dataclasses.replace(hello, challenge=ACCEPTOR_CHALLENGE))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("version", PROTOCOL_VERSION + 1,
         f"protocol version {PROTOCOL_VERSION + 1}, expected {PROTOCOL_VERSION}"),
        ("genesis", b"\x11" * 32, "genesis block 1111"),
        ("difficulty", 5, "difficulty 5, expected 4"),
    ],
)
def test_check_hello_names_the_mismatch(field: str, value: object, words: str) -> None:
    ours = Hello(version=PROTOCOL_VERSION, genesis=genesis_block().hash, difficulty=4)
    fields: dict[str, Any] = {"version": ours.version, "genesis": ours.genesis, "difficulty": 4}
    fields[field] = value
    with pytest.raises(IncompatiblePeer, match=words):
        check_hello(ours, Hello(**fields))


# ---------------------------------------------------------------- rejections


def _wire(name: str) -> dict[str, Any]:
    return example_messages()[name].to_wire()


def _reject(obj: object, error: type[RemoteProtocolError], words: str) -> None:
    with pytest.raises(error, match=words):
        decode_payload(pack(obj))


def test_unknown_type() -> None:
    _reject({"type": "ping"}, UnknownMessageType, "unknown message type 'ping'")


def test_unknown_type_is_quoted_short() -> None:
    with pytest.raises(UnknownMessageType) as info:
        decode_payload(pack({"type": "x" * 1000}))
    assert len(str(info.value)) < 100


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({}, "message type must be a string, got NoneType"),
        ({"type": 1}, "message type must be a string, got int"),
        ({b"type": "hello"}, "message type must be a string"),
        ([1, 2], "must be a map, got list"),
        ("hello", "must be a map, got str"),
    ],
)
def test_not_a_message(obj: object, words: str) -> None:
    _reject(obj, MalformedMessage, words)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("hello", "version"),
        ("hello", "genesis"),
        ("hello", "difficulty"),
        ("hello", "challenge"),
        ("auth", "public_key"),
        ("auth", "certificate"),
        ("auth", "signature"),
        ("latest", "block"),
        ("add", "block"),
        ("add_result", "status"),
        ("add_result", "reason"),
        ("get_blocks", "from_id"),
        ("get_blocks", "limit"),
        ("blocks", "blocks"),
        ("blocks", "certificates"),
        ("error", "reason"),
    ],
)
def test_missing_field(name: str, field: str) -> None:
    obj = _wire(name)
    del obj[field]
    _reject(obj, MalformedMessage, f"is missing {field}")


@pytest.mark.parametrize("name", list(example_messages()))
def test_extra_field(name: str) -> None:
    obj = _wire(name)
    obj["surprise"] = 1
    _reject(obj, MalformedMessage, "unknown fields surprise")


@pytest.mark.parametrize(
    ("name", "field", "value", "words"),
    [
        ("hello", "version", "1", "hello.version must be an integer, got str"),
        ("hello", "version", True, "must be an integer, got bool"),
        ("hello", "version", -1, r"out of range 0\.\."),
        ("hello", "version", 1.0, "must be an integer, got float"),
        ("hello", "genesis", "00" * 32, "hello.genesis must be bytes, got str"),
        ("hello", "genesis", b"\x00" * 31, "must be 32 bytes, got 31"),
        ("hello", "difficulty", None, "must be an integer, got NoneType"),
        ("latest", "block", b"", "latest.block: block must be a map, got bytes"),
        ("latest", "block", {"id": 1}, "latest.block: block is missing"),
        ("hello", "challenge", b"\x00" * 31, "hello.challenge must be 32 bytes, got 31"),
        ("hello", "challenge", None, "hello.challenge must be bytes, got NoneType"),
        ("auth", "public_key", b"k" * (MAX_AUTHOR_BYTES + 1), "over its cap of 1024"),
        ("auth", "public_key", [], "auth.public_key must be bytes, got list"),
        ("auth", "certificate", b"c" * (MAX_CERTIFICATE_BYTES + 1), "over its cap of 2048"),
        ("auth", "certificate", "cert", "auth.certificate must be bytes, got str"),
        ("auth", "signature", b"s" * (MAX_SIGNATURE_BYTES + 1), "over its cap of 1024"),
        # Version 1's Add carried the sender's key; version 2 takes the handshake's.
        ("add", "public_key", b"k", "unknown fields public_key"),
        ("add_result", "status", "maybe", "not one of added, known, fork, rejected"),
        ("add_result", "status", 0, "must be a string, got int"),
        ("add_result", "reason", b"", "must be a string, got bytes"),
        ("add_result", "reason", "why", "must be empty when status is added"),
        ("get_blocks", "from_id", -5, "out of range"),
        ("get_blocks", "limit", 0, r"limit=0 is out of range 1\.\.256"),
        ("get_blocks", "limit", MAX_BATCH_BLOCKS + 1, "limit=257 is out of range"),
        ("blocks", "blocks", {}, "must be an array, got dict"),
        ("blocks", "blocks", [None], r"blocks.blocks\[0\]: block must be a map"),
        ("blocks", "certificates", {}, "blocks.certificates must be an array"),
        ("blocks", "certificates", [None], r"blocks.certificates\[0\] must be bytes"),
        ("blocks", "certificates", [b"c" * (MAX_CERTIFICATE_BYTES + 1)],
         r"blocks.certificates\[0\] is 2049 bytes, over its cap of 2048"),
        ("error", "reason", "r" * (MAX_REASON_CHARS + 1), "501 characters, over 500"),
        ("error", "reason", None, "must be a string, got NoneType"),
    ],
)
def test_wrong_field(name: str, field: str, value: object, words: str) -> None:
    obj = _wire(name)
    obj[field] = value
    _reject(obj, MalformedMessage, words)


def test_bad_block_fields_are_malformed() -> None:
    obj = _wire("latest")
    obj["block"]["hash"] = b"short"
    _reject(obj, MalformedMessage, "latest.block: hash must be 32 bytes, got 5")
    obj = _wire("add")
    obj["block"]["transaction"]["data"] = b"x" * (MAX_DATA_BYTES + 1)
    _reject(obj, MalformedMessage, "add.block: transaction.data is 1025 bytes")


def test_blocks_must_be_consecutive() -> None:
    genesis = genesis_block().to_wire()
    block = example_block().to_wire()
    _reject({"type": "blocks", "blocks": [block, genesis], "certificates": []}, MalformedMessage,
            "not consecutive")
    _reject({"type": "blocks", "blocks": [block, block], "certificates": []}, MalformedMessage,
            "1 follows 1")


def test_too_many_blocks() -> None:
    block = genesis_block().to_wire()
    # msgpack refuses the declared array length before decoding any element.
    _reject({"type": "blocks", "blocks": [block] * 257, "certificates": []}, MalformedMessage,
            "max_array_len")
    _reject({"type": "blocks", "blocks": [], "certificates": [b""] * 257}, MalformedMessage,
            "max_array_len")


def test_trailing_bytes() -> None:
    payload = pack(_wire("get_latest")) + b"\xc0"
    with pytest.raises(MalformedMessage, match="trailing bytes"):
        decode_payload(payload)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "empty frame"),
        (b"\xc1", "malformed msgpack"),  # the one never-used msgpack byte
        (b"\x82\xa4type", "malformed msgpack"),  # truncated
        (b"\x91" * 100_000, "malformed msgpack"),  # 100k nested arrays
        (b"\x81\xa1a" * 100_000, "malformed msgpack"),  # 100k nested maps
        (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),  # declares 4G elements
        (b"\xdf\xff\xff\xff\xff", "exceeds max_map_len"),
        (b"\xdb\xff\xff\xff\xff", "malformed msgpack"),  # declares a 4 GB str
        (b"\xc6\xff\xff\xff\xff", "malformed msgpack"),  # and bin
        (b"\x81\x01\xa1x", "not allowed for map key"),  # int key
        (b"\x81\x90\xa1x", "not allowed for map key"),  # array key
        (b"\xd6\xff\x00\x00\x00\x00", "exceeds max_ext_len"),  # a msgpack Timestamp
        (b"\xc7\x01\x05a", "exceeds max_ext_len"),  # an application ext type
        (b"\x81\xa4type\xa2\xff\xfe", "malformed msgpack"),  # invalid UTF-8 in a str
    ],
)
@pytest.mark.parametrize("implementation", ["extension", "pure"])
def test_hostile_msgpack(
    payload: bytes, words: str, implementation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both msgpack twins (the C extension and msgpack.fallback) fail the same named way."""
    if implementation == "pure":
        monkeypatch.setattr(msgpack, "unpackb", msgpack.fallback.unpackb)
    with pytest.raises(MalformedMessage, match=words):
        decode_payload(payload)


@pytest.mark.parametrize("implementation", ["extension", "pure"])
@pytest.mark.parametrize("depth", [100, 1000, 1023, 1024, 5000])
def test_deep_nesting_inside_a_field(
    depth: int, implementation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nesting that msgpack accepts (under its 1024-deep stack) still ends as a named error."""
    if implementation == "pure":
        monkeypatch.setattr(msgpack, "unpackb", msgpack.fallback.unpackb)
    payload = b"\x82\xa4type\xa5error\xa6reason" + b"\x91" * depth + b"\xc0"
    with pytest.raises(MalformedMessage):
        decode_payload(payload)


def test_payload_over_cap() -> None:
    with pytest.raises(FrameTooLarge):
        decode_payload(b"\xc0" * (MAX_FRAME_BYTES + 1))


# ---------------------------------------------------------------- FrameDecoder limits


def test_oversized_prefix_refused_before_payload() -> None:
    decoder = PEER.decoder()
    decoder.feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    assert decoder.buffered == 0 and decoder.room == 0
    decoder.feed(b"x" * 1000)  # ignored: nothing after a bad prefix is kept
    assert decoder.buffered == 0
    for _ in range(2):  # the failure sticks
        with pytest.raises(FrameTooLarge, match="4194305 is over MAX_FRAME_BYTES"):
            decoder.next_message()


def test_zero_length_frame() -> None:
    decoder = PEER.decoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(MalformedMessage, match="zero-length frame"):
        decoder.next_message()
    with pytest.raises(MalformedMessage):
        decoder.next_message()


def test_messages_before_a_bad_prefix_come_out_first() -> None:
    decoder = PEER.decoder()
    decoder.feed(encode(GetLatest()) + b"\xff\xff\xff\xff")
    assert decoder.next_message() == GetLatest()
    with pytest.raises(FrameTooLarge):
        decoder.next_message()


def test_malformed_frame_is_consumed_and_reading_goes_on() -> None:
    bad = pack({"type": "ping"})
    decoder = PEER.decoder()
    decoder.feed(len(bad).to_bytes(4, "big") + bad + encode(GetLatest()))
    with pytest.raises(UnknownMessageType):
        decoder.next_message()
    assert decoder.next_message() == GetLatest()


def test_buffer_is_bounded_by_one_frame() -> None:
    decoder = PEER.decoder()
    assert decoder.room == MAX_FRAME_BYTES + 4
    decoder.feed(MAX_FRAME_BYTES.to_bytes(4, "big") + b"\xc0" * 100)
    assert decoder.room == MAX_FRAME_BYTES - 100
    with pytest.raises(LocalProtocolError, match="drain next_message"):
        decoder.feed(b"\xc0" * (MAX_FRAME_BYTES - 99))
    decoder.feed(b"\xc0" * (MAX_FRAME_BYTES - 100))
    assert decoder.buffered == MAX_FRAME_BYTES + 4 and decoder.room == 0
    with pytest.raises(MalformedMessage, match="trailing bytes"):
        decoder.next_message()  # a whole frame of nils: one nil, then trailing bytes
    assert decoder.buffered == 0


# ---------------------------------------------------------------- our own mistakes


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (Hello(version=1, genesis=b"\x00" * 31, difficulty=4), "hello.genesis must be 32 bytes"),
        (Hello(version=2**64, genesis=b"\x00" * 32, difficulty=4), "out of range"),
        (Hello(version=True, genesis=b"\x00" * 32, difficulty=4), "got bool"),
        (GetBlocks(from_id=0, limit=0), "limit=0"),
        (GetBlocks(from_id=-1), "from_id=-1"),
        (AddResult(status="ok"), "not one of"),
        (AddResult(status="known", reason="already have it"), "must be empty"),
        (Latest(block="genesis"), "latest.block must be a Block, got str"),  # type: ignore[arg-type]
        (Blocks(blocks=(genesis_block(), genesis_block())), "not consecutive"),
        (Auth(public_key="key"), "must be bytes"),  # type: ignore[arg-type]
        (Hello(version=2, genesis=b"\x00" * 32, difficulty=4, challenge=b""), "must be 32 bytes"),
        (Blocks(blocks=(), certificates=(b"c",) * (MAX_BATCH_BLOCKS + 1)), "more than one per"),
        (Error(reason="\ud800"), "cannot encode error"),  # a lone surrogate is not UTF-8
    ],
)
def test_encode_refuses_what_a_peer_would_refuse(msg: Message, words: str) -> None:
    with pytest.raises(LocalProtocolError, match=words):
        encode(msg)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(LocalProtocolError, match="not a wire message: dict"):
        encode({"type": "hello"})  # type: ignore[arg-type]


def test_encode_refuses_an_oversized_frame() -> None:
    small = dataclasses.replace(PEER, cap=FrameCap("MAX_FRAME_BYTES", 100))
    with pytest.raises(LocalProtocolError, match="over MAX_FRAME_BYTES=100"):
        small.encode(Latest(block=example_block()))


def test_long_reasons_are_cut_when_built() -> None:
    error = Error(reason="e" * 10_000)
    assert len(error.reason) == MAX_REASON_CHARS and error.reason.endswith("…")
    assert _decode_frame(encode(error)) == error
    result = AddResult(status="rejected", reason="r" * 501)
    assert len(result.reason) == MAX_REASON_CHARS


def test_error_classes_say_whose_fault() -> None:
    for remote in (FrameTooLarge, MalformedMessage, UnknownMessageType, IncompatiblePeer):
        assert issubclass(remote, RemoteProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert issubclass(LocalProtocolError, errors.OurBug)
    assert issubclass(RemoteProtocolError, errors.BadInput)
    assert not issubclass(LocalProtocolError, errors.BadInput)


# ---------------------------------------------------------------- properties and fuzzing

_uint64 = st.integers(min_value=0, max_value=MAX_NONCE)


@st.composite
def _blocks(draw: st.DrawFn, first_id: int | None = None) -> Block:
    return Block(
        id=draw(_uint64) if first_id is None else first_id,
        transaction=Transaction(
            timestamp=draw(_uint64),
            data=draw(st.binary(max_size=64)),
            salt=draw(st.binary(min_size=SALT_BYTES, max_size=SALT_BYTES)),
        ),
        nonce=draw(_uint64),
        prev_hash=draw(st.binary(min_size=HASH_BYTES, max_size=HASH_BYTES)),
        hash=draw(st.binary(min_size=HASH_BYTES, max_size=HASH_BYTES)),
        signature=draw(st.binary(max_size=64)),
        author=draw(st.binary(max_size=64)),
    )


@st.composite
def _batches(draw: st.DrawFn) -> Blocks:
    count = draw(st.integers(min_value=0, max_value=3))
    start = draw(st.integers(min_value=0, max_value=MAX_NONCE - 3))
    return Blocks(blocks=tuple(draw(_blocks(first_id=start + i)) for i in range(count)),
                  certificates=tuple(draw(st.lists(st.binary(max_size=64), max_size=count))))


_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello, version=_uint64, genesis=st.binary(min_size=32, max_size=32), difficulty=_uint64,
        challenge=st.binary(min_size=CHALLENGE_BYTES, max_size=CHALLENGE_BYTES),
    ),
    st.builds(
        Auth,
        public_key=st.binary(max_size=MAX_AUTHOR_BYTES),
        certificate=st.binary(max_size=MAX_CERTIFICATE_BYTES),
        signature=st.binary(max_size=MAX_SIGNATURE_BYTES),
    ),
    st.just(GetLatest()),
    st.builds(Latest, block=_blocks()),
    st.builds(Add, block=_blocks()),
    st.builds(AddResult, status=st.sampled_from(["added", "known", "fork"])),
    st.builds(AddResult, status=st.just("rejected"), reason=st.text(max_size=50)),
    st.builds(
        GetBlocks,
        from_id=_uint64,
        limit=st.integers(min_value=1, max_value=MAX_BATCH_BLOCKS),
    ),
    _batches(),
    st.builds(Error, reason=st.text(alphabet=st.characters(exclude_categories=["Cs"]))),
)

_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=MAX_NONCE)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.binary(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)

# Maps that look like messages (a real tag, some real field names, junk values),
# so the fuzzer gets past the tag lookup into every field check.
_FIELD_NAMES = sorted({key for msg in example_messages().values() for key in msg.to_wire()})
_message_like = st.builds(
    lambda tag, fields: {"type": tag, **fields},
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(st.sampled_from(_FIELD_NAMES), _msgpack_values, max_size=4),
)

_fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_refuses(payload: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_payload(payload)


@given(_messages)
@_fuzz
def test_round_trip_property(msg: Message) -> None:
    frame = encode(msg)
    assert _decode_frame(frame) == msg
    decoder = PEER.decoder()
    decoder.feed(frame)
    assert decoder.next_message() == msg


@given(st.binary(max_size=300))
@_fuzz
def test_fuzz_random_bytes(payload: bytes) -> None:
    _decodes_or_refuses(payload)


@given(_msgpack_values | _message_like)
@_fuzz
def test_fuzz_msgpack_values(obj: object) -> None:
    _decodes_or_refuses(pack(obj))


@given(
    st.sampled_from(sorted(example_messages())),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
)
@_fuzz
def test_fuzz_mutated_vectors(name: str, where: int, byte: int, how: str) -> None:
    payload = bytearray(bytes.fromhex(load_vectors()[name])[4:])
    i = where % len(payload)
    if how == "flip":
        payload[i] ^= byte or 1
    elif how == "insert":
        payload.insert(i, byte)
    elif how == "delete":
        del payload[i]
    else:
        del payload[i:]
    _decodes_or_refuses(bytes(payload))


@given(st.lists(st.binary(max_size=64), max_size=20))
@_fuzz
def test_fuzz_frame_decoder(chunks: list[bytes]) -> None:
    decoder = PEER.decoder()
    for chunk in chunks:
        decoder.feed(chunk)
        try:
            while decoder.next_message() is not None:
                pass
        except RemoteProtocolError:
            pass
        assert decoder.buffered <= MAX_FRAME_BYTES + 4


# ---------------------------------------------------------------- regenerating vectors


def _regenerate() -> None:
    vectors = {name: encode(msg).hex() for name, msg in example_messages().items()}
    VECTORS_FILE.write_text(json.dumps(vectors, indent=2) + "\n")
    for name, hex_frame in vectors.items():
        lines = [hex_frame[i : i + 64] for i in range(0, len(hex_frame), 64)]
        print(f"<!-- vector: {name} -->\n```text\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regen"]:
        _regenerate()
    else:
        print(__doc__)

"""Fixed blocks (tests/vectors/blocks.json, made by tests/vectors/make_vectors.py):
any change to the encoding, the hash layout or the signature scheme fails here.

Each vector is rebuilt from its fields and must reproduce, byte for byte, the
stored encoding, content digest, hash and PKCS#1 v1.5 signature.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from votechain.core import keys
from votechain.core.block import Block, Transaction, genesis_block, meets_difficulty
from votechain.core.keys import NodeKey
from votechain.core.rules import validate_chain
from votechain.mining import pure

VECTORS = Path(__file__).resolve().parent / "vectors"
DOC: dict[str, Any] = json.loads((VECTORS / "blocks.json").read_text())
KEY = NodeKey.from_pem((VECTORS / DOC["key_file"]).read_bytes())
ENTRIES: list[dict[str, Any]] = DOC["blocks"]


def build(entry: dict[str, Any]) -> Block:
    return Block(
        id=entry["id"],
        transaction=Transaction(
            tx_id=bytes.fromhex(entry["tx_id"]),
            timestamp=entry["timestamp"],
            data=bytes.fromhex(entry["data"]),
        ),
        nonce=entry["nonce"],
        prev_hash=bytes.fromhex(entry["prev_hash"]),
        hash=bytes.fromhex(entry["hash"]),
        signature=bytes.fromhex(entry["signature"]),
        author=bytes.fromhex(entry["author"]),
    )


def test_vector_file_shape() -> None:
    assert DOC["difficulty"] == 4
    assert len(ENTRIES) >= 4
    assert ENTRIES[0]["id"] == 0


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["note"][:30])
def test_vector(entry: dict[str, Any]) -> None:
    block = build(entry)
    encoded = bytes.fromhex(entry["encoded"])
    assert block.encode() == encoded
    assert Block.decode(encoded) == block
    assert block.content() == bytes.fromhex(entry["content"])
    assert block.computed_hash() == block.hash
    assert block.hash == hashlib.sha256(block.content() + block.nonce.to_bytes(8, "big")).digest()
    if block.id == 0:
        assert block == genesis_block()
        return
    assert block.author == KEY.public_der
    assert KEY.sign(block.hash) == block.signature  # PKCS#1 v1.5 is deterministic
    keys.verify(block.author, block.signature, block.hash)
    assert meets_difficulty(block.hash, DOC["difficulty"])
    # The stored nonce is the first one from 0 that meets the difficulty.
    assert pure.search(block.content(), DOC["difficulty"], 0, block.nonce + 1) == block.nonce


def test_vector_chain_validates() -> None:
    chain = [build(e) for e in ENTRIES[: DOC["chain_length"]]]
    now = max(b.transaction.timestamp for b in chain)
    assert validate_chain(chain, difficulty=DOC["difficulty"], now_ms=now) == len(chain) - 1

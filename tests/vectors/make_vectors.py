"""Generate tests/vectors/blocks.json: fixed blocks whose bytes must never change.

Run once, by hand, from the repository root::

    PYTHONPATH=src .venv/bin/python tests/vectors/make_vectors.py

It reuses tests/vectors/block_key.pem (creating it only if it is missing), mines
a few blocks at difficulty 4 with the pure-Python miner (the first qualifying
nonce from 0, so the nonce is fixed too) and signs them. PKCS#1 v1.5 signatures
are deterministic, so rerunning the script reproduces the file byte for byte
unless the encoding, the hash layout or the signing changed; tests/test_vectors.py
fails in exactly that case. Regenerate only for a deliberate protocol change,
and say so in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from votechain.core.block import Block, Transaction, block_hash, content_digest, genesis_block
from votechain.core.keys import NodeKey
from votechain.mining import pure

HERE = Path(__file__).resolve().parent
KEY_FILE = HERE / "block_key.pem"
OUT_FILE = HERE / "blocks.json"
DIFFICULTY = 4


def load_key() -> NodeKey:
    if not KEY_FILE.exists():
        KEY_FILE.write_bytes(NodeKey.generate().to_pem())
    return NodeKey.from_pem(KEY_FILE.read_bytes())


def mine(prev: Block, tx: Transaction, key: NodeKey) -> Block:
    content = content_digest(prev.id + 1, tx, prev.hash, key.public_der)
    nonce = pure.search(content, DIFFICULTY, 0, 2**64)
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
        "tx_id": tx.tx_id.hex(),
        "timestamp": tx.timestamp,
        "data": tx.data.hex(),
        "nonce": block.nonce,
        "prev_hash": block.prev_hash.hex(),
        "author": block.author.hex(),
        "content": block.content().hex(),
        "hash": block.hash.hex(),
        "signature": block.signature.hex(),
        "encoded": block.encode().hex(),
    }


def main() -> None:
    key = load_key()
    genesis = genesis_block()
    # A chain of three: an ordinary vote, a non-ASCII category, an empty data field.
    txs = [
        (Transaction(bytes.fromhex("00112233445566778899aabbccddeeff"), 1_700_000_000_000,
                     b"alice"), "a vote for 'alice'"),
        (Transaction(bytes(range(16)), 1_700_000_060_123, "Émile Zola".encode()),
         "non-ASCII category"),
        (Transaction(b"\xff" * 16, 1_700_000_120_000, b""), "empty data"),
    ]
    chain = [genesis]
    entries = [describe(genesis, "genesis (unsigned, unmined, derived by every node)")]
    for tx, note in txs:
        chain.append(mine(chain[-1], tx, key))
        entries.append(describe(chain[-1], note))
    # One stand-alone block with the largest data field the decoder accepts.
    big = mine(genesis, Transaction(b"\x5a" * 16, 2**40, bytes(range(256)) * 4), key)
    entries.append(describe(big, "data at MAX_DATA_BYTES, off genesis (not part of the chain)"))
    document = {
        "difficulty": DIFFICULTY,
        "key_file": KEY_FILE.name,
        "chain_length": 1 + len(txs),
        "blocks": entries,
    }
    OUT_FILE.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {len(entries)} blocks to {OUT_FILE}")


if __name__ == "__main__":
    main()

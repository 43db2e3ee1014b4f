"""The pure-Python miner: hashlib, one nonce at a time; the baseline of every benchmark.

It mirrors the native kernel's contract exactly (votechain._native.search): the
first nonce in [start, stop), in increasing order, whose hash meets the
difficulty; None when the range is exhausted or the abort flag is set.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

# The abort flag is read once per this many nonces: about 1.5 ms of hashlib work,
# so an abort is seen within the 10 ms budget without slowing the loop.
ABORT_CHECK_INTERVAL = 4096


def threshold(difficulty: int) -> bytes:
    """The smallest 32-byte digest with fewer than `difficulty` leading zero hex digits.

    Comparing digests as bytes is one C memcmp per nonce, cheaper than any
    integer conversion in the loop."""
    return (1 << (256 - 4 * difficulty)).to_bytes(33, "big")[1:] if difficulty else b""


def search(
    content: bytes,
    difficulty: int,
    start: int,
    stop: int,
    abort: Sequence[int] | None = None,
) -> int | None:
    if difficulty == 0:
        # Every hash qualifies; also the one case where threshold() is empty.
        return start if start < stop and not (abort is not None and abort[0]) else None
    bound = threshold(difficulty)
    # The content prefix is absorbed once; each nonce only copies that state.
    prefix = hashlib.sha256(content)
    copy = prefix.copy
    # A bound Struct.pack beats int.to_bytes by ~20% in this loop.
    pack_nonce = struct.Struct(">Q").pack
    chunk_start = start
    while chunk_start < stop:
        if abort is not None and abort[0]:
            return None
        chunk_stop = min(chunk_start + ABORT_CHECK_INTERVAL, stop)
        for nonce in range(chunk_start, chunk_stop):
            h = copy()
            h.update(pack_nonce(nonce))
            if h.digest() < bound:
                return nonce
        chunk_start = chunk_stop
    return None

"""Nonce search: one contract, three implementations.

- `search(..., backend="native")`: the Cython extension, SHA-NI where the CPU has
  it (several nonces in flight), a portable C path elsewhere ("portable" forces it).
- `search(..., backend="pure")`: hashlib, the baseline.
- `MinerPool`: persistent worker processes sharing one abort flag (pool.py).

All of them return the first nonce in [start, stop), in increasing order, whose
hash SHA-256(content || nonce_be64) has `difficulty` leading zero hex digits, or
None when the range is exhausted. Identical arguments give identical results.
"""

from __future__ import annotations

from votechain.core.rules import check_difficulty
from votechain.errors import BackendUnavailable
from votechain.mining.backend import (
    BACKENDS,
    DEFAULT_BACKEND,
    Backend,
    describe,
    kernel,
    pure_python_requested,
    sha_ni_available,
)
from votechain.mining.pool import MinerPool

NONCE_SPACE = 2**64

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "NONCE_SPACE",
    "Backend",
    "BackendUnavailable",
    "MinerPool",
    "check_search_args",
    "describe",
    "kernel",
    "pure_python_requested",
    "search",
    "sha_ni_available",
]


def check_search_args(content: bytes, difficulty: int, start: int, stop: int) -> None:
    if not isinstance(content, bytes):
        raise TypeError(f"content must be bytes, got {type(content).__name__}")
    if len(content) != 32:
        raise ValueError(f"content must be a 32-byte SHA-256 digest, got {len(content)} bytes")
    check_difficulty(difficulty)
    for name, value in (("start", start), ("stop", stop)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value <= NONCE_SPACE:
            raise ValueError(f"{name}={value} is outside the 64-bit nonce space")
    if start > stop:
        raise ValueError(f"start={start} is after stop={stop}")


def search(
    content: bytes,
    difficulty: int,
    start: int = 0,
    stop: int = NONCE_SPACE,
    *,
    backend: str = "native",
) -> int | None:
    """The first nonce in [start, stop) whose hash meets `difficulty`, or None."""
    check_search_args(content, difficulty, start, stop)
    return kernel(backend)(content, difficulty, start, stop, None)

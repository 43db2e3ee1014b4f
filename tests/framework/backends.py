"""The miner backends this run has, and the one way a test says it needs the extension.

`make test` runs the whole suite twice, as msgpack's does: with the native
extension, then pure (VOTECHAIN_PURE_PYTHON=1 hides it at import; see
votechain.mining.backend). A test that exercises the extension itself, and
only those, skips in the pure run, and its skip says why.
"""

from __future__ import annotations

import pytest

from votechain.mining import backend

BACKENDS: tuple[str, ...] = backend.BACKENDS  # native, portable, pure
NATIVE_MISSING = backend.native_module is None
WHY_NO_NATIVE = f"needs the native extension, unavailable here: {backend.native_unavailable_reason}"

needs_native = pytest.mark.skipif(NATIVE_MISSING, reason=WHY_NO_NATIVE)


def skip_unless_available(name: str) -> str:
    """`name` if this run has that backend; skip the test otherwise (only "pure" is
    always there: "native" and "portable" are both kernels of the extension)."""
    if name != "pure" and NATIVE_MISSING:
        pytest.skip(f"the {name} backend {WHY_NO_NATIVE}")
    return name

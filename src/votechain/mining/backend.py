"""Which miner kernels this install has, and the one explicit way to do without the native one.

As with msgpack's MSGPACK_PUREPYTHON, the native extension is required unless
VOTECHAIN_PURE_PYTHON=1 says otherwise: a missing or broken build is an error
with a message, never a silent fall-back to a miner twenty times slower.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Literal

from votechain.errors import BackendUnavailable
from votechain.mining import pure

Backend = Literal["native", "pure", "portable"]
BACKENDS: tuple[Backend, ...] = ("native", "portable", "pure")
PURE_ENV = "VOTECHAIN_PURE_PYTHON"

SearchFn = Callable[[bytes, int, int, int, "Sequence[int] | None"], "int | None"]


def pure_python_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def _load_native() -> tuple[ModuleType | None, str | None]:
    if pure_python_requested():
        return None, f"{PURE_ENV}=1 is set"
    try:
        from votechain import _native  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        return None, f"votechain._native is not built ({exc})"
    return _native, None


native_module, native_unavailable_reason = _load_native()

DEFAULT_BACKEND: Backend = "native" if native_module is not None else "pure"


def sha_ni_available() -> bool:
    return native_module is not None and bool(native_module.sha_ni_available())


def kernel(backend: str) -> SearchFn:
    """The search function of `backend`; raises BackendUnavailable with the reason."""
    if backend == "pure":
        return pure.search
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if native_module is None:
        raise BackendUnavailable(
            f"the native miner is unavailable: {native_unavailable_reason}; rebuild with "
            f"'pip install -e .', or set {PURE_ENV}=1 to use the pure-Python miner"
        )
    native_search = native_module.search
    if backend == "portable":

        def portable_search(
            content: bytes, difficulty: int, start: int, stop: int, abort: Sequence[int] | None
        ) -> int | None:
            result: int | None = native_search(content, difficulty, start, stop, abort, True)
            return result

        return portable_search
    return native_search  # type: ignore[no-any-return]


def describe() -> str:
    if native_module is None:
        return f"pure (hashlib): {native_unavailable_reason}"
    path = native_module.kernel_name()
    return f"native ({path})"

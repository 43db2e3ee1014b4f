"""The miner contract, one suite for every backend (native SHA-NI, portable C, pure).

Every backend must return exactly what a plain hashlib loop returns: the first
nonce in [start, stop), in increasing order, whose SHA-256(content || nonce_be64)
has `difficulty` leading zero hex digits, or None. Ranges start unaligned, cross
2**32 (a 32-bit counter would wrap there) and reach the top of the 64-bit space.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.backends import BACKENDS, NATIVE_MISSING, needs_native, skip_unless_available
from votechain import mining
from votechain.mining import backend as backend_mod
from votechain.mining import pure

NONCE_SPACE = 2**64


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    return skip_unless_available(request.param)


def reference(content: bytes, difficulty: int, start: int, stop: int) -> int | None:
    """The contract in its plainest form: hashlib, one nonce at a time."""
    for nonce in range(start, stop):
        digest = hashlib.sha256(content + nonce.to_bytes(8, "big")).digest()
        if int.from_bytes(digest, "big") >> (256 - 4 * difficulty) == 0:
            return nonce
    return None


def content_of(seed: int) -> bytes:
    return hashlib.sha256(b"votechain test content %d" % seed).digest()


@functools.cache
def hit_after_2_32() -> tuple[bytes, int, int]:
    """(content, start, nonce): a range starting just below 2**32 whose first
    difficulty-3 nonce lies just above it."""
    start = 2**32 - 7
    for seed in range(1000):
        content = content_of(seed)
        nonce = reference(content, 3, start, start + 40_000)
        if nonce is not None and nonce > 2**32:
            return content, start, nonce
    raise AssertionError("no suitable content found")


@functools.cache
def hits(content: bytes, difficulty: int, start: int, stop: int) -> list[int]:
    out: list[int] = []
    lo = start
    while (nonce := reference(content, difficulty, lo, stop)) is not None:
        out.append(nonce)
        lo = nonce + 1
    return out


# --- agreement with the reference --------------------------------------------------------

starts = st.one_of(
    st.integers(0, 5000),
    st.integers(2**32 - 5000, 2**32 + 100),  # crossing the 32-bit boundary
    st.integers(0, 2**64 - 5000),  # anywhere, unaligned
    st.integers(2**64 - 5000, 2**64),  # up to the very top
)


@settings(max_examples=80, derandomize=True, deadline=None)
@given(
    content=st.binary(min_size=32, max_size=32),
    difficulty=st.integers(0, 8),
    start=starts,
    length=st.one_of(st.integers(0, 9), st.integers(0, 5000)),
)
def test_agrees_with_hashlib(
    backend: str, content: bytes, difficulty: int, start: int, length: int
) -> None:
    stop = min(start + length, NONCE_SPACE)
    assert mining.search(content, difficulty, start, stop, backend=backend) == reference(
        content, difficulty, start, stop
    )


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_every_hit_in_order(backend: str, difficulty: int) -> None:
    """Stepping from one hit to the next finds exactly the reference's hits."""
    content, start, stop = content_of(difficulty), 2**32 - 3001, 2**32 + 17_003
    expected = hits(content, difficulty, start, stop)
    assert expected, "the fixture range should contain hits"
    found: list[int] = []
    lo = start
    while (nonce := mining.search(content, difficulty, lo, stop, backend=backend)) is not None:
        found.append(nonce)
        lo = nonce + 1
    assert found == expected
    first = expected[0]
    assert mining.search(content, difficulty, start, first, backend=backend) is None
    assert mining.search(content, difficulty, first, first + 1, backend=backend) == first


def test_first_hit_just_past_2_32(backend: str) -> None:
    content, start, nonce = hit_after_2_32()
    assert mining.search(content, 3, start, nonce + 1, backend=backend) == nonce
    assert mining.search(content, 3, start, nonce, backend=backend) is None
    assert mining.search(content, 3, nonce, nonce + 1, backend=backend) == nonce


def test_top_of_the_nonce_space(backend: str) -> None:
    content = content_of(99)
    start = NONCE_SPACE - 4000
    assert mining.search(content, 2, start, NONCE_SPACE, backend=backend) == reference(
        content, 2, start, NONCE_SPACE
    )
    assert mining.search(content, 0, NONCE_SPACE - 1, NONCE_SPACE, backend=backend) == (
        NONCE_SPACE - 1
    )
    assert mining.search(content, 16, NONCE_SPACE - 9, NONCE_SPACE, backend=backend) is None


def test_empty_and_tiny_ranges(backend: str) -> None:
    content = content_of(1)
    for start in (0, 5, 2**32, NONCE_SPACE):
        assert mining.search(content, 0, start, start, backend=backend) is None
    assert mining.search(content, 0, 7, 8, backend=backend) == 7
    for length in range(1, 10):  # shorter than any batch of nonces in flight
        assert mining.search(content, 1, 3, 3 + length, backend=backend) == reference(
            content, 1, 3, 3 + length
        )


def test_deterministic(backend: str) -> None:
    content = content_of(5)
    results = {mining.search(content, 3, 1000, 30_000, backend=backend) for _ in range(3)}
    assert len(results) == 1


def test_none_when_exhausted(backend: str) -> None:
    assert mining.search(content_of(2), 16, 0, 10_000, backend=backend) is None


_KERNELS = ("KERNEL_PORTABLE", "KERNEL_SHANI_SSE")


@needs_native
@pytest.mark.parametrize("kernel", _KERNELS)
def test_each_native_kernel_agrees(kernel: str) -> None:
    """"native" runs whichever kernel the CPU supports best; the others must agree too."""
    native = backend_mod.native_module
    assert native is not None
    if not hasattr(native, "_search_kernel") or not hasattr(native, kernel):
        pytest.skip(f"no explicit {kernel} selector in this build")
    code = getattr(native, kernel)
    content, start, stop = content_of(11), 2**32 - 2001, 2**32 + 9_001
    try:
        native._search_kernel(content, 0, 0, 1, code)
    except ValueError:
        pytest.skip(f"{kernel} is not available on this CPU")
    for difficulty in (1, 2, 3):
        found: list[int] = []
        lo = start
        while (nonce := native._search_kernel(content, difficulty, lo, stop, code)) is not None:
            found.append(nonce)
            lo = nonce + 1
        assert found == hits(content, difficulty, start, stop)
    for length in range(0, 10):
        assert native._search_kernel(content, 1, 7, 7 + length, code) == reference(
            content, 1, 7, 7 + length
        )


# --- abort -------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_preset_abort_returns_none(backend: str) -> None:
    search = mining.kernel(backend)
    flag = bytearray(b"\x01")
    started = time.perf_counter()
    assert search(content_of(3), 16, 0, NONCE_SPACE, flag) is None
    # Returns before the first hash: microseconds. 1 s is generous for a loaded
    # machine, and the failure it catches (a flag never read) never returns at all.
    assert time.perf_counter() - started < 1.0


@pytest.mark.timeout(10)  # a kernel that holds the GIL would never see the flag
def test_abort_from_another_thread(backend: str) -> None:
    search = mining.kernel(backend)
    flag = bytearray(1)

    def stop_soon() -> None:
        # Not a synchronisation: the result is None whether the flag is set before
        # or during the search; the delay only makes "during" the likely case.
        time.sleep(0.05)
        flag[0] = 1

    thread = threading.Thread(target=stop_soon)
    thread.start()
    started = time.perf_counter()
    assert search(content_of(4), 16, 0, NONCE_SPACE, flag) is None
    elapsed = time.perf_counter() - started
    thread.join()
    # Expected: the 50 ms delay plus one flag check (~1.5 ms of hashing, see
    # mining/pure.py). 1 s is over 15x that, for a loaded machine; the failure it
    # catches (the flag unseen) runs until the test's 10 s timeout.
    assert elapsed < 1.0


def test_clear_abort_flag_does_not_stop(backend: str) -> None:
    content = content_of(6)
    assert mining.kernel(backend)(content, 3, 0, 100_000, bytearray(1)) == reference(
        content, 3, 0, 100_000
    )


# --- bad arguments -----------------------------------------------------------------------

C = content_of(0)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((C[:31], 1, 0, 10), ValueError),
        ((C + b"\x00", 1, 0, 10), ValueError),
        ((b"", 1, 0, 10), ValueError),
        ((C.hex()[:32], 1, 0, 10), TypeError),
        ((bytearray(C), 1, 0, 10), TypeError),
        ((memoryview(C), 1, 0, 10), TypeError),
        ((None, 1, 0, 10), TypeError),
        ((C, -1, 0, 10), ValueError),
        ((C, 17, 0, 10), ValueError),
        ((C, True, 0, 10), TypeError),
        ((C, 1.0, 0, 10), TypeError),
        ((C, 1, 10, 9), ValueError),
        ((C, 1, 0, NONCE_SPACE + 1), ValueError),
        ((C, 1, -1, 10), ValueError),
        ((C, 1, NONCE_SPACE + 1, NONCE_SPACE + 2), ValueError),
        ((C, 1, "0", 10), TypeError),
        ((C, 1, 0, 10.0), TypeError),
        ((C, 1, False, 10), TypeError),
    ],
    ids=lambda v: repr(v)[:24] if isinstance(v, tuple) else v.__name__,
)
def test_bad_arguments(backend: str, args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        mining.search(*args, backend=backend)  # type: ignore[arg-type]


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        mining.search(C, 1, 0, 10, backend="gpu")


@needs_native
@pytest.mark.parametrize(
    "args",
    [
        (C[:31], 1, 0, 10),
        (C, 17, 0, 10),
        (C, -1, 0, 10),
        (C, 1, 10, 9),
        (C, 1, 0, NONCE_SPACE + 1),
        (C, 1, -1, 10),
    ],
    ids=["short-content", "difficulty-17", "difficulty--1", "start>stop", "stop>2**64",
         "start<0"],
)
def test_native_module_checks_its_own_arguments(args: tuple[object, ...]) -> None:
    """The extension is callable directly: it must refuse what would read out of
    bounds or wrap around, not rely on mining.search having checked."""
    native = backend_mod.native_module
    assert native is not None
    with pytest.raises((ValueError, TypeError, OverflowError)):
        native.search(*args)


# --- describe ----------------------------------------------------------------------------


def test_describe() -> None:
    text = mining.describe()
    if NATIVE_MISSING:
        assert text.startswith("pure (hashlib)")
        assert mining.DEFAULT_BACKEND == "pure"
    else:
        native = mining.backend.native_module
        assert native is not None
        assert text == f"native ({native.kernel_name()})"
        assert native.kernel_name() in ("avx512x16", "sha-ni", "portable")
        assert mining.DEFAULT_BACKEND == "native"


def test_pure_threshold() -> None:
    assert pure.threshold(0) == b""
    assert pure.threshold(1) == b"\x10" + bytes(31)
    assert pure.threshold(2) == b"\x01" + bytes(31)
    assert pure.threshold(16) == bytes(7) + b"\x01" + bytes(24)

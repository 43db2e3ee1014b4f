"""The native nonce search agrees with hashlib, down to which nonce comes first.

Every kernel the CPU offers (portable C, SHA-NI, 16-lane AVX-512) is checked
against a direct hashlib loop over the same range. Ranges are kept short and
difficulties low so the whole file runs in a few seconds; the interesting
places are the ones the kernels special-case: starts that are not a multiple
of the stream or lane count, ranges ending mid-pass, the 2**32 boundary (where
W8, and so every per-segment precomputation, changes) and the very top of the
nonce space.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.backends import WHY_NO_NATIVE
from votechain.mining import backend

# This file tests the extension itself, so it skips whenever the miner runs
# without it: in `make test`'s pure pass (VOTECHAIN_PURE_PYTHON=1 hides the
# extension even though it is built) and in an install that failed to build it.
if backend.native_module is None:
    pytest.skip(f"tests the native kernels: {WHY_NO_NATIVE}", allow_module_level=True)
_native = backend.native_module

TOP = 1 << 64

requires_sha_ni = pytest.mark.skipif(
    not _native.sha_ni_available(), reason="CPU has no SHA-NI; only the portable kernel runs"
)


def _kernel_available(kernel: int) -> bool:
    try:
        _native._search_kernel(bytes(32), 0, 0, 1, kernel)
    except ValueError:
        return False
    return True


KERNELS = [
    pytest.param(_native.KERNEL_PORTABLE, id="portable"),
    pytest.param(_native.KERNEL_SHANI_SSE, id="sha-ni", marks=requires_sha_ni),
    pytest.param(
        _native.KERNEL_AVX512,
        id="avx512x16",
        marks=pytest.mark.skipif(
            not _kernel_available(_native.KERNEL_AVX512), reason="CPU lacks AVX-512F/VL"
        ),
    ),
]


def reference_search(content: bytes, difficulty: int, start: int, stop: int) -> int | None:
    """The definition, spelled out with hashlib."""
    shift = 64 - 4 * difficulty
    for nonce in range(start, stop):
        digest = hashlib.sha256(content + nonce.to_bytes(8, "big")).digest()
        if int.from_bytes(digest[:8], "big") >> shift == 0:
            return nonce
    return None


# Starts near the places the kernels treat specially; the offset makes most
# of them unaligned to the stream count.
ANCHORS = [0, 1 << 20, (1 << 32) - 300, 1 << 32, (1 << 40) + 3, TOP - 400]


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int]:
    anchor = draw(st.sampled_from(ANCHORS))
    start = min(anchor + draw(st.integers(0, 200)), TOP)
    stop = min(start + draw(st.integers(0, 400)), TOP)
    return start, stop


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=60, deadline=None)
@given(content=st.binary(min_size=32, max_size=32), span=ranges(), difficulty=st.integers(0, 3))
def test_first_hit_matches_hashlib(
    kernel: int, content: bytes, span: tuple[int, int], difficulty: int
) -> None:
    start, stop = span
    expected = reference_search(content, difficulty, start, stop)
    assert _native._search_kernel(content, difficulty, start, stop, kernel) == expected


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=40, deadline=None)
@given(
    content=st.binary(min_size=32, max_size=32),
    start=st.one_of(
        st.integers((1 << 32) - 600, (1 << 32) + 100),  # crosses the W8 change
        st.integers(TOP - 600, TOP),  # runs up to 2**64
        st.integers(0, TOP),
    ),
    length=st.integers(0, 600),
    difficulty=st.integers(0, 8),
)
def test_lanes_and_boundaries_match_hashlib(
    kernel: int, content: bytes, start: int, length: int, difficulty: int
) -> None:
    # Starts at any lane offset, stops mid-pass, up to difficulty 8 (the most
    # that H0 alone decides); higher difficulties mostly find nothing here,
    # which must also agree.
    stop = min(start + length, TOP)
    expected = reference_search(content, difficulty, start, stop)
    assert _native._search_kernel(content, difficulty, start, stop, kernel) == expected


@pytest.mark.parametrize("kernel", KERNELS)
def test_hit_in_every_lane_position(kernel: int) -> None:
    # Difficulty 1 hits ~1 nonce in 16; sliding the start over 33 offsets puts
    # the first hit in every lane of a 16-lane pass, and in a pass's last lane
    # with the range ending right after it.
    content = hashlib.sha256(b"lanes").digest()
    for offset in range(33):
        start = (1 << 32) - 40 + offset
        for stop in (start + 1, start + 17, start + 80):
            expected = reference_search(content, 1, start, stop)
            assert _native._search_kernel(content, 1, start, stop, kernel) == expected


@pytest.mark.parametrize("kernel", KERNELS)
def test_abort_flag_per_kernel(kernel: int) -> None:
    flag = bytearray(1)
    assert _native._search_kernel(bytes(32), 0, 3, 10, kernel, flag) == 3
    flag[0] = 1
    assert _native._search_kernel(bytes(32), 0, 3, 10, kernel, flag) is None


@pytest.mark.parametrize("kernel", KERNELS)
def test_abort_stops_a_running_search(kernel: int) -> None:
    # Difficulty 16 over the whole space would run for centuries; setting the
    # flag from another thread (the GIL is released) must end it promptly.
    flag = bytearray(1)
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(_native._search_kernel(bytes(32), 16, 0, TOP, kernel, flag))
    )
    worker.start()
    time.sleep(0.05)
    assert worker.is_alive()
    flag[0] = 1
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert result == [None]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("difficulty", [4, 5])
def test_higher_difficulty_across_2_32(kernel: int, difficulty: int) -> None:
    # ~16**d nonces per hit: the range spans the W8 change and several chunks
    # of CHECK_INTERVAL, and must still give hashlib's first answer.
    content = hashlib.sha256(b"votechain %d" % difficulty).digest()
    start = (1 << 32) - 3 * 16**difficulty + 5
    stop = start + 6 * 16**difficulty
    expected = reference_search(content, difficulty, start, stop)
    assert expected is not None
    assert _native._search_kernel(content, difficulty, start, stop, kernel) == expected


def test_search_uses_same_answer_both_ways() -> None:
    content = bytes(range(32))
    start, stop = (1 << 32) - 20_000, (1 << 32) + 20_000
    expected = reference_search(content, 4, start, stop)
    assert _native.search(content, 4, start, stop) == expected
    assert _native.search(content, 4, start, stop, portable=True) == expected


@requires_sha_ni
def test_difficulty_6_matches_portable() -> None:
    # ~16M hashes: too many for a hashlib loop here, so the digest of the
    # answer is checked and the portable kernel confirms nothing came just
    # before it (a bounded window keeps the test fast).
    content = hashlib.sha256(b"d6").digest()
    fast = _native.search(content, 6, 0, 1 << 40)
    assert fast is not None
    digest = hashlib.sha256(content + fast.to_bytes(8, "big")).hexdigest()
    assert digest.startswith("0" * 6)
    window = max(0, fast - 1_000_000)
    assert _native.search(content, 6, window, fast + 1, portable=True) == fast


def test_top_of_nonce_space() -> None:
    content = bytes(32)
    assert _native.search(content, 0, TOP - 1, TOP) == TOP - 1
    assert _native.search(content, 0, TOP, TOP) is None
    expected = reference_search(content, 2, TOP - 1000, TOP)
    assert _native.search(content, 2, TOP - 1000, TOP) == expected


def test_difficulty_zero_returns_start_and_empty_range_none() -> None:
    assert _native.search(bytes(32), 0, 12345, 12346) == 12345
    assert _native.search(bytes(32), 0, 7, 7) is None


@pytest.mark.parametrize("portable", [False, True])
def test_abort_set_before_call_returns_none(portable: bool) -> None:
    flag = bytearray(1)
    flag[0] = 1
    # Difficulty 0 would succeed on the first nonce; the flag wins.
    assert _native.search(bytes(32), 0, 0, TOP, flag, portable) is None
    assert _native.search(bytes(32), 16, 0, TOP, flag, portable) is None


def test_abort_accepts_shared_rawarray() -> None:
    flag = multiprocessing.RawArray("B", 1)
    assert _native.search(bytes(32), 0, 5, 10, flag) == 5
    flag[0] = 1
    assert _native.search(bytes(32), 0, 5, 10, flag) is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((bytearray(32), 1, 0, 10), TypeError),
        (("x" * 32, 1, 0, 10), TypeError),
        ((bytes(31), 1, 0, 10), ValueError),
        ((bytes(33), 1, 0, 10), ValueError),
        ((bytes(32), -1, 0, 10), ValueError),
        ((bytes(32), 17, 0, 10), ValueError),
        ((bytes(32), 1.0, 0, 10), TypeError),
        ((bytes(32), 1, -1, 10), ValueError),
        ((bytes(32), 1, 0, TOP + 1), ValueError),
        ((bytes(32), 1, 11, 10), ValueError),
        ((bytes(32), 1, 0, 10.0), TypeError),
    ],
)
def test_bad_arguments(args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        _native.search(*args)


def test_empty_abort_buffer_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        _native.search(bytes(32), 1, 0, 10, bytearray())
    with pytest.raises(TypeError):
        _native.search(bytes(32), 1, 0, 10, object())


def test_sha_ni_available_is_bool() -> None:
    assert isinstance(_native.sha_ni_available(), bool)


def test_kernel_name() -> None:
    name = _native.kernel_name()
    assert name in {"avx512x16", "sha-ni", "portable"}
    # The dispatch picks the 16-lane AVX-512 kernel wherever it runs, else
    # SHA-NI, else portable C.
    if _kernel_available(_native.KERNEL_AVX512):
        assert name == "avx512x16"
    elif _native.sha_ni_available():
        assert name == "sha-ni"
    else:
        assert name == "portable"
    assert _native.kernel_name(_native.KERNEL_AUTO) == name
    assert _native.kernel_name(_native.KERNEL_PORTABLE) == "portable"
    assert _native.kernel_name(_native.KERNEL_AVX512) == "avx512x16"
    assert _native.kernel_name(99) == "unknown"

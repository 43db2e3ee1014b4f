# cython: language_level=3, annotation_typing=False
"""Native nonce search for votechain (built as ``votechain._native``).

The hash is ``SHA-256(content || nonce.to_bytes(8, "big"))`` with a 32-byte
``content``; the work is done by the C kernels beside this file (16-lane
AVX-512 when the CPU has it, else SHA-NI, else plain C, chosen at run time by
dispatch.c; see `kernel_name`).
This module only validates arguments, holds the abort buffer and releases the
GIL around the C loop.

Public contract (the annotations are documentation only; annotation_typing is
off so that, e.g., a float difficulty is rejected rather than truncated)::

    search(content, difficulty, start, stop, abort=None, portable=False) -> int | None
    sha_ni_available() -> bool
    kernel_name() -> str
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint64_t

cdef extern from "sha256_search.h":
    enum:
        VC_EXHAUSTED
        VC_FOUND
        VC_ABORTED
        VC_BAD_ARGUMENT
        VC_KERNEL_AUTO
        VC_KERNEL_PORTABLE
        VC_KERNEL_SHANI_SSE
        VC_KERNEL_AVX512
        VC_AVX512_LANES
        VC_MAX_DIFFICULTY
        VC_CHECK_INTERVAL
        VC_SHANI_STREAMS
    int vc_sha_ni_available() nogil
    const char *vc_kernel_name(int kernel) nogil
    # The C side takes `const volatile uint8_t *`: adding volatile is implicit.
    int vc_search(const uint8_t *content, unsigned difficulty, uint64_t first,
                  uint64_t last, const uint8_t *abort_flag, int kernel,
                  uint64_t *found) nogil

CONTENT_SIZE = 32
MAX_DIFFICULTY = VC_MAX_DIFFICULTY
#: Nonces hashed between two reads of the abort flag (see sha256_search.h).
CHECK_INTERVAL = VC_CHECK_INTERVAL
#: Nonces the SHA-NI kernel keeps in flight.
SHANI_STREAMS = VC_SHANI_STREAMS
#: Nonces the AVX-512 kernel hashes per pass (one per 32-bit lane).
AVX512_LANES = VC_AVX512_LANES
NONCE_LIMIT = 1 << 64

# Kernel selectors for _search_kernel (tests and benchmarks only).
KERNEL_AUTO = VC_KERNEL_AUTO
KERNEL_PORTABLE = VC_KERNEL_PORTABLE
KERNEL_SHANI_SSE = VC_KERNEL_SHANI_SSE
KERNEL_AVX512 = VC_KERNEL_AVX512


def sha_ni_available() -> bool:
    """True when this CPU has SHA-NI (detected at run time, not build time)."""
    return vc_sha_ni_available() != 0


def kernel_name(kernel: int = VC_KERNEL_AUTO) -> str:
    """Name of the kernel `search` runs on this CPU ("avx512x16", "sha-ni",
    "portable", ...); with a KERNEL_* argument, that kernel's name."""
    if isinstance(kernel, bool) or not isinstance(kernel, int):
        raise TypeError(f"kernel must be an int, not {type(kernel).__name__}")
    if not 0 <= kernel <= 255:
        return "unknown"
    return vc_kernel_name(kernel).decode("ascii")


cdef object _run(object content, object difficulty, object start, object stop,
                 object abort, int kernel):
    if not isinstance(content, bytes):
        raise TypeError(f"content must be bytes, not {type(content).__name__}")
    if len(content) != CONTENT_SIZE:
        raise ValueError(f"content must be exactly {CONTENT_SIZE} bytes, got {len(content)}")
    for name, value in (("difficulty", difficulty), ("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= difficulty <= VC_MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in 0..{VC_MAX_DIFFICULTY}, got {difficulty}")
    if not 0 <= start <= NONCE_LIMIT:
        raise ValueError(f"start must be in 0..2**64, got {start}")
    if not 0 <= stop <= NONCE_LIMIT:
        raise ValueError(f"stop must be in 0..2**64, got {stop}")
    if start > stop:
        raise ValueError(f"start ({start}) must not exceed stop ({stop})")

    cdef Py_buffer view
    cdef const uint8_t *flag = NULL
    cdef bint have_view = False
    if abort is not None:
        # Any buffer works (a multiprocessing.RawArray('B', 1) in production, a
        # bytearray in tests); it stays acquired, so it cannot be resized or
        # freed, while the GIL-free loop reads it.
        PyObject_GetBuffer(abort, &view, PyBUF_SIMPLE)
        have_view = True
        if view.len < 1:
            PyBuffer_Release(&view)
            raise ValueError("abort buffer must hold at least 1 byte")
        flag = <const uint8_t *>view.buf

    cdef const uint8_t *data = content
    cdef unsigned d = difficulty
    cdef uint64_t first = 0
    cdef uint64_t last = 0
    cdef uint64_t found = 0
    cdef int rc = VC_EXHAUSTED
    try:
        if start == stop:
            return None
        first = start
        # Inclusive end: stop may be exactly 2**64, which uint64 cannot hold.
        last = stop - 1
        with nogil:
            rc = vc_search(data, d, first, last, flag, kernel, &found)
    finally:
        if have_view:
            PyBuffer_Release(&view)
    if rc == VC_FOUND:
        return found
    if rc == VC_EXHAUSTED or rc == VC_ABORTED:
        return None
    raise ValueError(f"kernel {kernel} is not available on this CPU")


def search(content: bytes, difficulty: int, start: int, stop: int,
           abort: object = None, portable: bool = False) -> int | None:
    """Return the first nonce in [start, stop) whose hash meets `difficulty`.

    The digest of ``content || nonce.to_bytes(8, "big")`` must begin with
    `difficulty` zero hex digits. Returns None when the range holds no such
    nonce, or when byte 0 of `abort` is (or becomes) nonzero; the flag is
    re-read every CHECK_INTERVAL nonces, with the GIL released throughout.
    `portable` forces the plain C kernel even where a faster one exists.
    """
    return _run(content, difficulty, start, stop, abort,
                VC_KERNEL_PORTABLE if portable else VC_KERNEL_AUTO)


def _search_kernel(content: bytes, difficulty: int, start: int, stop: int,
                   kernel: int, abort: object = None) -> int | None:
    """`search` with an explicit KERNEL_* choice; ValueError if the CPU lacks it."""
    return _run(content, difficulty, start, stop, abort, kernel)

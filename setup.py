"""Build the native nonce search (votechain._native).

The extension is required: a compiler error fails the install loudly. The only
way to install without it is the explicit opt-out VOTECHAIN_PURE_PYTHON=1, in
which case the package runs the pure-Python (hashlib) miner and says so.

No -march flag is passed: the SHA-NI and AVX-512 kernels are compiled with
function-level target attributes and chosen at run time (native/dispatch.c),
so one build runs on any x86-64 CPU. Each kernel is one native/kernel_*.c.

Every source named here must also be in the sdist, which MANIFEST.in sees to
(it grafts native/); tests/test_packaging.py builds the wheel from the sdist
alone, so a file the sdist forgets fails that test, not a user's install.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

PURE = os.environ.get("VOTECHAIN_PURE_PYTHON", "") not in ("", "0")


def native_extensions() -> list[Extension]:
    from Cython.Build import cythonize

    ext = Extension(
        "votechain._native",
        sources=[
            "native/_native.pyx",
            "native/dispatch.c",
            "native/kernel_portable.c",
            "native/kernel_shani.c",
            "native/kernel_avx512.c",
        ],
        include_dirs=["native"],
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
    )
    return cythonize([ext], language_level=3, compiler_directives={"boundscheck": False})


setup(ext_modules=[] if PURE else native_extensions())

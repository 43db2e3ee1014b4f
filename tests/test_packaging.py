"""What a user installing votechain from PyPI would get: `python -m build --sdist`
on this tree, then the wheel built from that sdist alone (the way PyPI users
and distributions build it), installed into a fresh venv, then the installed
`votechain` run from outside the tree with the native miner.

Why from the sdist: a file the build needs but the sdist forgets (the issue
that started this was `native/_native.pyx`) breaks only that path; building
the wheel straight from the tree would not notice.

The wheel is built with the native extension whatever run this is: the pure
run (VOTECHAIN_PURE_PYTHON=1) would build a wheel without it, which tests
nothing new, so that run skips this test. It needs the package registry (the
build environment's setuptools and Cython, the venv's dependencies), as `make`
does; pip's cache keeps it to ~30-40 s on a 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from framework.backends import NATIVE_MISSING, WHY_NO_NATIVE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NATIVE_MISSING, reason=f"builds the native wheel; {WHY_NO_NATIVE} "
                       "(the native run builds and installs it)"),
]

ROOT = Path(__file__).resolve().parent.parent
# What building the wheel needs from the sdist; each missing one breaks it.
NEEDED_IN_SDIST = (
    "native/_native.pyx",
    "native/dispatch.c",
    "native/kernel.h",
    "native/kernel_avx512.c",
    "native/kernel_portable.c",
    "native/kernel_shani.c",
    "native/sha256_search.h",
    "setup.py",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "src/votechain/__init__.py",
    "src/votechain/py.typed",
)
BUILD_TIMEOUT = 300.0


def _env() -> dict[str, str]:
    """Ours without the pure opt-out (setup.py reads it) and without PYTHONPATH,
    so the installed package, not this tree, is what runs."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VOTECHAIN_PURE_PYTHON", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def test_sdist_builds_a_wheel_that_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--sdist", "--outdir", dist, ROOT, cwd=tmp_path)
    (sdist,) = dist.glob("votechain-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    top = names[0].split("/")[0]
    inside = {name.removeprefix(top + "/") for name in names}
    missing = [name for name in NEEDED_IN_SDIST if name not in inside]
    assert not missing, f"the sdist lacks {missing}"
    built = [name for name in inside
             if name.endswith((".so", ".pyc")) or name == "native/_native.c"]
    assert not built, f"build products in the sdist: {built}"

    # The wheel from the unpacked sdist alone: nothing of this tree is reachable.
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, tmp_path / "unpacked" / top,
         cwd=tmp_path)
    (wheel,) = dist.glob("votechain-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)

    info = _run(venv / "bin" / "votechain", "info", cwd=tmp_path).stdout
    assert "votechain 0.1.0" in info
    assert "miner backend: native (" in info, info
    # The installed extension, not this tree's, mines: a nonce at difficulty 2
    # through the native kernel, checked against the pure one.
    probe = (
        "import votechain, hashlib; from votechain import mining\n"
        "c = hashlib.sha256(b'packaging').digest()\n"
        "n = mining.search(c, 2, backend='native')\n"
        "assert n == mining.search(c, 2, backend='pure'), n\n"
        "print(votechain.__file__, n)\n"
    )
    where = _run(venv / "bin" / "python", "-c", probe, cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where
    licence = list(venv.glob("lib/python*/site-packages/votechain-*.dist-info/licenses/LICENSE"))
    assert licence, "the wheel installs no LICENSE"

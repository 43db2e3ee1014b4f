"""VOTECHAIN_PURE_PYTHON=1, the one explicit opt-out of the native miner: the pure
backend becomes the default, asking for the native one is a clear error that
names the variable, and describe() says so. Run in a fresh interpreter because
the backend is chosen once, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import votechain

_PROBE = """
import json
from votechain import mining
from votechain.mining import MinerPool
from votechain.errors import BackendUnavailable

report = {"default": mining.DEFAULT_BACKEND, "describe": mining.describe(),
          "sha_ni": mining.sha_ni_available()}
for backend in ("native", "portable"):
    try:
        mining.search(bytes(32), 1, 0, 10, backend=backend)
        report[backend] = None
    except BackendUnavailable as exc:
        report[backend] = str(exc)
try:
    MinerPool(1, backend="native")
    report["pool"] = None
except BackendUnavailable as exc:
    report["pool"] = str(exc)
report["pure"] = mining.search(bytes(32), 1, 0, 1000, backend="pure")
print(json.dumps(report))
"""


def test_pure_python_opt_out() -> None:
    src = Path(votechain.__file__).resolve().parent.parent
    env = {**os.environ, "VOTECHAIN_PURE_PYTHON": "1",
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    report = json.loads(done.stdout)
    assert report["default"] == "pure"
    assert report["describe"].startswith("pure (hashlib)")
    assert "VOTECHAIN_PURE_PYTHON=1" in report["describe"]
    assert report["sha_ni"] is False
    for key in ("native", "portable", "pool"):
        assert report[key] is not None, f"{key} should be unavailable"
        assert "VOTECHAIN_PURE_PYTHON" in report[key]
    assert isinstance(report["pure"], int)


def test_zero_means_not_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    from votechain.mining import backend

    for value, expected in (("", False), ("0", False), ("1", True), ("yes", True)):
        monkeypatch.setenv(backend.PURE_ENV, value)
        assert backend.pure_python_requested() is expected
    monkeypatch.delenv(backend.PURE_ENV)
    assert backend.pure_python_requested() is False

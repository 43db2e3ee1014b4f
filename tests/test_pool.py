"""MinerPool with two real worker processes, once per available backend: it mines,
aborts from another thread and restarts, replaces a SIGKILLed worker, refuses a
second job, and leaves no process behind after close()."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.backends import BACKENDS, skip_unless_available
from framework.waiting import wait_until
from votechain import errors
from votechain.errors import MinerPoolError
from votechain.mining import MinerPool
from votechain.mining import backend as backend_mod

WORKERS = 2
# An impossible job: 16 zero hex digits over the whole nonce space never ends by itself.
IMPOSSIBLE = 16
# For an aborted job to end: milliseconds, or a worker respawn (a new Python
# process, up to a second or two on a loaded machine) after a kill. A deadline,
# not a speed: wait() returns as soon as the job ends.
DEADLINE = 10.0


def alive(pid: int) -> bool:
    """Whether `pid` is a running process; a zombie (killed, not yet reaped) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def valid(content: bytes, difficulty: int, nonce: int) -> bool:
    digest = hashlib.sha256(content + nonce.to_bytes(8, "big")).digest()
    return digest.hex().startswith("0" * difficulty)


def content_of(seed: int) -> bytes:
    return hashlib.sha256(b"pool test %d" % seed).digest()


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    return skip_unless_available(request.param)


@pytest.fixture(scope="module")
def pool(backend: str) -> Iterator[MinerPool]:
    """One pool per backend, shared by the tests that leave it idle and healthy."""
    with MinerPool(WORKERS, backend=backend) as p:
        yield p


def test_mines_a_valid_nonce(pool: MinerPool) -> None:
    assert pool.size == WORKERS and len(pool.pids) == WORKERS
    content = content_of(1)
    nonce = pool.mine(content, 3)
    assert nonce is not None and valid(content, 3, nonce)
    # Within a range that starts unaligned and crosses the 2**32 boundary.
    start, stop = 2**32 - 123_457, 2**32 + 3_000_000
    nonce = pool.mine(content, 2, start, stop)
    assert nonce is not None and start <= nonce < stop and valid(content, 2, nonce)
    assert not pool.running
    assert pool.hashrate > 0


def test_exhausted_range_returns_none(pool: MinerPool) -> None:
    assert pool.mine(content_of(2), IMPOSSIBLE, 5, 20_000) is None
    assert pool.mine(content_of(2), IMPOSSIBLE, 7, 7) is None


def test_abort_from_another_thread_then_restart(pool: MinerPool) -> None:
    content = content_of(3)
    pool.submit(content, IMPOSSIBLE)
    assert pool.running
    with pytest.raises(TimeoutError):
        pool.wait(timeout=0.05)  # it really is running
    threading.Thread(target=pool.abort).start()
    assert pool.wait(timeout=DEADLINE) is None
    assert not pool.running
    # The next job runs normally: the abort flag was reset by submit().
    nonce = pool.mine(content, 2)
    assert nonce is not None and valid(content, 2, nonce)


def test_submit_while_running_is_refused(pool: MinerPool) -> None:
    pool.submit(content_of(4), IMPOSSIBLE)
    try:
        with pytest.raises(MinerPoolError, match="already running"):
            pool.submit(content_of(5), 1)
    finally:
        pool.abort()
        assert pool.wait(timeout=DEADLINE) is None


def test_bad_arguments_are_refused_before_any_worker_sees_them(pool: MinerPool) -> None:
    with pytest.raises(ValueError):
        pool.submit(b"short", 1)
    with pytest.raises(ValueError):
        pool.submit(content_of(6), 17)
    with pytest.raises(ValueError):
        pool.submit(content_of(6), 1, 10, 5)
    assert not pool.running
    assert pool.mine(content_of(6), 1) is not None


def test_killed_worker_is_replaced(backend: str) -> None:
    with MinerPool(WORKERS, backend=backend) as p:
        victim = p.pids[0]
        p.submit(content_of(7), IMPOSSIBLE)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), what="the killed worker to die")
        p.abort()
        assert p.wait(timeout=DEADLINE) is None
        assert victim not in p.pids and len(p.pids) == WORKERS
        assert all(alive(pid) for pid in p.pids)
        content = content_of(8)
        nonce = p.mine(content, 2)
        assert nonce is not None and valid(content, 2, nonce)


def test_worker_killed_while_idle_is_replaced(backend: str) -> None:
    with MinerPool(WORKERS, backend=backend) as p:
        victim = p.pids[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), what="the killed worker to die")
        content = content_of(9)
        nonce = p.mine(content, 2)
        assert nonce is not None and valid(content, 2, nonce)
        assert victim not in p.pids and len(p.pids) == WORKERS


def test_close_leaves_no_process_and_is_idempotent(backend: str) -> None:
    p = MinerPool(WORKERS, backend=backend)
    pids = p.pids
    assert len(pids) == WORKERS and all(alive(pid) for pid in pids)
    p.submit(content_of(10), IMPOSSIBLE)  # close() also stops a running job
    p.close()
    assert not any(alive(pid) for pid in pids)
    p.close()
    with pytest.raises(MinerPoolError, match="closed"):
        p.submit(content_of(10), 1)


def test_unavailable_backend_fails_in_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the extension were missing (it is, in the pure run): the backend is
    # looked up in the caller, before any worker is spawned.
    monkeypatch.setattr(backend_mod, "native_module", None)
    with pytest.raises(errors.BackendUnavailable, match="native miner is unavailable"):
        MinerPool(1, backend="native")


def sigint_ignored(pid: int) -> bool:
    """Whether `pid` ignores SIGINT: bit SIGINT-1 of SigIgn in /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    raise AssertionError(f"no SigIgn line for {pid}")


def test_workers_ignore_sigint_the_parent_decides(pool: MinerPool) -> None:
    # Ctrl-C reaches every process of the terminal's group: a worker must not
    # die of it mid-job (the parent stops the pool when it chooses to).
    assert all(sigint_ignored(pid) for pid in pool.pids)
    pids = pool.pids
    pool.submit(content_of(11), IMPOSSIBLE)
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    with pytest.raises(TimeoutError):
        pool.wait(timeout=0.2)  # still mining
    pool.abort()
    assert pool.wait(timeout=DEADLINE) is None
    assert pool.pids == pids and all(alive(pid) for pid in pids)


def test_a_real_death_is_logged_with_its_cause(backend: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="votechain.mining"), \
            MinerPool(WORKERS, backend=backend) as p:
        p.submit(content_of(12), IMPOSSIBLE)
        victim = p.pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), what="the killed worker to die")
        p.abort()
        assert p.wait(timeout=DEADLINE) is None
    assert "miner worker 0 died (killed by SIGKILL); restarting it" in caplog.text


def test_closing_a_busy_pool_reports_no_death(backend: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="votechain.mining"):
        p = MinerPool(WORKERS, backend=backend)
        p.submit(content_of(13), IMPOSSIBLE)
        p.close()
        assert p.wait(timeout=DEADLINE) is None
    assert "died" not in caplog.text

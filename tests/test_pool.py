"""MinerPool with two real worker processes, once per available backend: it mines,
aborts from another thread and restarts, replaces a SIGKILLed worker, refuses a
second job, and leaves no process behind after close(). First, the records its
pipes carry (records.py), without any process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.backends import BACKENDS, skip_unless_available
from framework.waiting import IDLE_LIMIT, IDLE_WINDOW, wait_until
from votechain import errors, mining
from votechain.errors import MinerPoolError
from votechain.mining import NONCE_SPACE, MinerPool
from votechain.mining import backend as backend_mod
from votechain.mining.records import (
    CONTENT_BYTES,
    HELLO_JOB_ID,
    JOB_BYTES,
    RESULT_BYTES,
    Job,
    Result,
)

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


# --- records ---------------------------------------------------------------------------


def test_records_round_trip_at_their_limits() -> None:
    # Content at the cap, every byte set (padding or truncation would show), and
    # bounds at the very top of the nonce space (stop = 2**64 needs the 65th bit).
    content = b"\xff" * CONTENT_BYTES
    for job in (Job(1, 16, content, NONCE_SPACE - 1, NONCE_SPACE),
                Job(2**64 - 1, 0, content, NONCE_SPACE, NONCE_SPACE),
                Job(3, 4, bytes(CONTENT_BYTES), 0, 0)):
        record = job.pack()
        assert len(record) == JOB_BYTES and Job.unpack(record) == job
    for result in (Result(7, NONCE_SPACE - 1, 2**64 - 1, 12.5), Result(7, 0, 1, 0.0),
                   Result(HELLO_JOB_ID, None, 0, 1.0)):
        record = result.pack()
        assert len(record) == RESULT_BYTES and Result.unpack(record) == result
    # Written whole by the kernel, so one read returns one record.
    assert max(JOB_BYTES, RESULT_BYTES) <= select.PIPE_BUF


def test_records_refuse_what_they_cannot_carry() -> None:
    for size in (CONTENT_BYTES - 1, CONTENT_BYTES + 1, 8192):
        with pytest.raises(ValueError, match=f"content must be {CONTENT_BYTES} bytes"):
            Job(1, 1, bytes(size), 0, 1).pack()
    record = Job(1, 1, bytes(CONTENT_BYTES), 0, 1).pack()
    for bad in (record[:-1], record + b"\0", b""):
        with pytest.raises(ValueError, match=f"a job record is {JOB_BYTES} bytes"):
            Job.unpack(bad)
    with pytest.raises(ValueError, match=f"a result record is {RESULT_BYTES} bytes"):
        Result.unpack(Result(1, None, 0, 0.0).pack()[1:])


# --- the pool ----------------------------------------------------------------------------


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


def test_content_at_the_cap_at_the_top_of_the_nonce_space(pool: MinerPool) -> None:
    # The whole range is worker 0's first chunk, searched in order: the pool must
    # find exactly what an in-process search finds, so content and bounds crossed
    # the pipe intact.
    content = b"\xff" * CONTENT_BYTES
    start = NONCE_SPACE - 50_000
    expected = mining.search(content, 2, start, NONCE_SPACE, backend=pool.backend)
    assert expected is not None
    assert pool.mine(content, 2, start) == expected
    assert pool.mine(content, 2, start, NONCE_SPACE) == expected
    assert pool.mine(content, 2, NONCE_SPACE, NONCE_SPACE) is None


def test_back_to_back_jobs_never_return_an_earlier_jobs_nonce(pool: MinerPool) -> None:
    # Job A is met by the first nonce any worker tries, so its workers report a
    # nonce whenever they start before the abort: plenty of chances for one to be
    # taken for job B's. A's and B's ranges are disjoint.
    a_content, b_content = content_of(20), content_of(21)
    a_start, b_start, span = 10**9, 2 * 10**9, 10**6

    def of_job_a(nonce: int | None) -> bool:
        return nonce is None or (a_start <= nonce < a_start + span
                                 and valid(a_content, 0, nonce))

    for round_ in range(50):
        pool.submit(a_content, 0, a_start, a_start + span)
        if round_ % 2:
            # A wait() that may give up with some of A's answers read, some not.
            with contextlib.suppress(TimeoutError):
                assert of_job_a(pool.wait(timeout=0))
        pool.abort()
        assert of_job_a(pool.wait(timeout=DEADLINE))
        pool.submit(b_content, 1, b_start, b_start + span)
        nonce = pool.wait(timeout=DEADLINE)
        assert nonce is not None and b_start <= nonce < b_start + span
        assert valid(b_content, 1, nonce)


def test_abort_while_wait_blocks(pool: MinerPool) -> None:
    before = pool.progress()

    def abort_once_every_worker_hashes() -> None:
        try:
            wait_until(lambda: all(now > then for now, then in
                                   zip(pool.progress(), before, strict=True)),
                       what="every worker to hash")
        finally:
            pool.abort()  # even on failure, so wait() below does not hang

    pool.submit(content_of(22), IMPOSSIBLE)
    aborter = threading.Thread(target=abort_once_every_worker_hashes)
    aborter.start()
    assert pool.wait(timeout=DEADLINE) is None
    aborter.join()
    assert pool.last_stop_latency is not None and pool.last_stop_latency >= 0
    assert not pool.running


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


def test_worker_killed_while_wait_blocks_is_replaced_at_once(backend: str) -> None:
    with MinerPool(WORKERS, backend=backend) as p:
        victim = p.pids[0]
        p.submit(content_of(14), IMPOSSIBLE)
        outcome: list[int | None] = []
        waiter = threading.Thread(target=lambda: outcome.append(p.wait(timeout=DEADLINE)))
        waiter.start()
        os.kill(victim, signal.SIGKILL)
        # Only the blocked wait() can replace it: nothing else touches the pool.
        wait_until(lambda: victim not in p.pids, what="wait() to replace the killed worker")
        assert p.running  # the job goes on, on the surviving worker
        p.abort()
        waiter.join()
        assert outcome == [None]
        assert len(p.pids) == WORKERS and all(alive(pid) for pid in p.pids)
        # A range inside worker 0's first chunk: only the replacement can find it.
        content = content_of(15)
        nonce = p.mine(content, 2, 0, 100_000)
        assert nonce == mining.search(content, 2, 0, 100_000, backend=backend)


def worker_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes `pids` have used, from /proc/PID/stat."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def test_idle_workers_use_no_cpu(pool: MinerPool) -> None:
    # Between jobs a worker blocks in read(): no spinning while the node is idle.
    assert pool.mine(content_of(16), 1) is not None
    pids = pool.pids

    def idle() -> bool:
        used = worker_cpu_seconds(pids)
        threading.Event().wait(IDLE_WINDOW)  # the measuring window itself
        return worker_cpu_seconds(pids) - used < IDLE_LIMIT * IDLE_WINDOW

    wait_until(idle, what=f"the idle workers to use under {IDLE_LIMIT:.0%} of a core")


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

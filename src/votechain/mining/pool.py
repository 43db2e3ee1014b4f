"""MinerPool: persistent worker processes that split the nonce space and share one abort flag.

Workers are started once per node, not once per block: a spawned interpreter
costs ~100 ms, longer than mining a difficulty-4 block takes.

The nonce range is cut into CHUNK-sized pieces dealt round-robin (worker i takes
chunks i, i+N, i+2N, ...), so the workers cover the range together without
talking to each other. The first worker to find a nonce sets the shared abort
byte; every other worker sees it within one STEP and reports back. A node that
receives a new tip calls abort() the same way, and submits the next job.

The abort byte lives in a multiprocessing RawArray: anonymous shared memory,
unlinked at creation, so no segment can outlive the pool whatever kills it.

Signals: a worker ignores SIGINT. Ctrl-C in a terminal signals the whole
foreground process group, workers included; the parent alone decides what it
means and stops its workers through the pipe (close()), so a Ctrl-C costs no
worker a traceback and the pool never mistakes it for a death. SIGINT is
blocked in the thread that spawns a worker, so the new interpreter starts with
it blocked (the mask survives fork and exec) and cannot be interrupted while
it imports, before `_worker_main` ignores it for good. Any other way a worker
ends outside close() (SIGKILL, SIGTERM, a crash) is a real death: it is logged
with the worker's exit status, and the worker is replaced unless the pool is
closing.

Protocol between the pool and a worker (one Pipe each):
  pool -> worker: (job_id, content, difficulty, start, stop, backend) or None (exit)
  worker -> pool: ("ready", pid) once at start, then
                  (job_id, nonce | None, hashes, stopped_at) per job, where stopped_at
                  is time.monotonic() (one clock for every process on Linux) when
                  the worker's search loop ended: the abort latency is measured
                  from the flag to the last worker stopping, not to the pool
                  hearing about it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from votechain.errors import MinerPoolError
from votechain.mining.backend import DEFAULT_BACKEND, kernel

log = logging.getLogger("votechain.mining")

# Round-robin unit of the nonce space: big enough that dealing chunks costs nothing.
CHUNK = 1 << 20
# Nonces per kernel call inside a chunk: ~1 ms of native work, so progress (and
# the hash-rate figure) is known to within a millisecond, and an abort that
# arrives between calls is seen at once.
STEP = 1 << 16
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while a worker is spawned (see the top comment).
    Per thread, so safe from any thread; a SIGINT meanwhile is delivered to
    another thread, or to this one when the block ends, never lost."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _describe_exit(code: int | None) -> str:
    """A worker's exit status in words: 'killed by SIGKILL', 'exit status 1'."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


def _worker_main(conn: Connection, abort: Any, progress: Any) -> None:
    """Worker process: wait for a job, search its share of the range, report, repeat."""
    # Ctrl-C is the parent's to handle (see the top comment). Ignore first, then
    # unblock: a SIGINT that came while we started is discarded, not delivered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        job_id, content, difficulty, start, stop, backend, index, workers = job
        search = kernel(backend)
        step = STEP if backend != "pure" else STEP // 16
        found: int | None = None
        hashes = 0
        chunk_start = start + index * CHUNK
        while found is None and chunk_start < stop and not abort[0]:
            chunk_stop = min(chunk_start + CHUNK, stop)
            lo = chunk_start
            while lo < chunk_stop and not abort[0]:
                hi = min(lo + step, chunk_stop)
                found = search(content, difficulty, lo, hi, abort)
                if found is not None:
                    hashes += found - lo + 1
                    break
                if not abort[0]:
                    hashes += hi - lo
                    # One shared-memory store per step (~1 ms): the live rate's source.
                    progress[index] += hi - lo
                lo = hi
            chunk_start += workers * CHUNK
        stopped_at = time.monotonic()
        if found is not None:
            abort[0] = 1  # tell the others: this job is done
        conn.send((job_id, found, hashes, stopped_at))


class LiveRate:
    """The hash rate of the last `window` seconds, per worker, from samples of
    MinerPool.progress(). Pure: the caller passes `now` (time.monotonic()) and
    samples as often as it likes (the node does each second); not thread-safe
    (one sampling thread; readers get a tuple built at once)."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()
        self._rates: tuple[float, ...] = ()

    def sample(self, now: float, progress: tuple[int, ...]) -> tuple[float, ...]:
        """Record `progress` at `now`; the per-worker rates over the window."""
        samples = self._samples
        samples.append((now, progress))
        # Keep one sample at or before the window's start, so the rate spans it.
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        first_at, first = samples[0]
        elapsed = now - first_at
        if elapsed <= 0 or len(first) != len(progress):
            self._rates = tuple(0.0 for _ in progress)
        else:
            self._rates = tuple(max(0, b - a) / elapsed for a, b in zip(first, progress,
                                                                         strict=True))
        return self._rates

    @property
    def rates(self) -> tuple[float, ...]:
        """Per worker, as of the last sample."""
        return self._rates

    @property
    def total(self) -> float:
        return sum(self._rates)


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection


class MinerPool:
    """One mining job at a time across `workers` processes. Thread-safe.

    submit() starts a job and returns at once; wait() blocks for its result;
    abort(), from any thread, stops the job (wait() then returns None).
    """

    def __init__(self, workers: int | None = None, backend: str = DEFAULT_BACKEND) -> None:
        kernel(backend)  # fail here, in the caller, if the backend is unavailable
        self.backend = backend
        self.size = workers or os.cpu_count() or 1
        self._ctx = mp.get_context("spawn")
        self._abort = self._ctx.RawArray("B", 1)
        # Hashes each worker slot has done, ever: worker i alone adds to slot i
        # after each STEP, so a reader in the parent sees live progress without
        # a lock (an aligned 64-bit load is never torn on the platforms we build
        # for). A replaced worker takes over its slot.
        self._progress = self._ctx.RawArray("Q", self.size)
        self._lock = threading.Lock()
        self._job_id = 0
        self._pending: set[int] = set()
        self._workers: list[_Worker] = []
        self._closed = False
        self._hashes = 0
        self._busy_seconds = 0.0
        self._job_started = 0.0
        self._job_started_mono = 0.0
        self._aborted_at = 0.0
        # Seconds from abort() to the last worker's search loop ending, for the
        # last job that abort() stopped (None if the last job ended by itself).
        self.last_stop_latency: float | None = None
        for _ in range(self.size):
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        ours, theirs = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(theirs, self._abort, self._progress), daemon=True,
            name="votechain-miner",
        )
        with _sigint_blocked():
            process.start()
        theirs.close()
        if not ours.poll(START_TIMEOUT):
            process.kill()
            raise MinerPoolError("a miner worker did not start")
        try:
            tag, _pid = ours.recv()
        except EOFError:
            process.join(timeout=1)
            raise MinerPoolError(
                f"a miner worker exited at start (status {process.exitcode}); a script that "
                "starts a MinerPool or a Node must guard its entry point with "
                "`if __name__ == '__main__':` (workers are spawned, and re-import it)"
            ) from None
        if tag != "ready":
            raise MinerPoolError(f"unexpected first message from a miner worker: {tag!r}")
        return _Worker(process, ours)

    def _worker_lost(self, index: int) -> bool:
        """Worker `index`'s pipe broke. Unless close() is under way (its workers
        leave on purpose), the worker really died: say how, and start another
        in its place. Whether it was replaced."""
        dead = self._workers[index]
        dead.conn.close()
        dead.process.join(timeout=1)
        if self._closed:
            return False
        log.warning("miner worker %d died (%s); restarting it",
                    index, _describe_exit(dead.process.exitcode))
        self._workers[index] = self._spawn()
        return True

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    @property
    def running(self) -> bool:
        return bool(self._pending)

    def submit(self, content: bytes, difficulty: int, start: int = 0, stop: int = 2**64) -> None:
        """Start searching [start, stop) on every worker; returns immediately."""
        from votechain.mining import check_search_args

        check_search_args(content, difficulty, start, stop)
        with self._lock:
            if self._closed:
                raise MinerPoolError("the pool is closed")
            if self._pending:
                raise MinerPoolError("a job is already running; wait() or abort() it first")
            self._job_id += 1
            self._abort[0] = 0
            self._job_started = time.perf_counter()
            self._job_started_mono = time.monotonic()
            for index in range(self.size):
                job = (self._job_id, content, difficulty, start, stop, self.backend, index,
                       self.size)
                try:
                    self._workers[index].conn.send(job)
                except OSError:
                    # The worker died while idle (killed from outside): replace it
                    # before this job, so no share of the range goes unsearched.
                    # (`_closed` cannot be set here: close() takes the lock first.)
                    self._worker_lost(index)
                    self._workers[index].conn.send(job)
                self._pending.add(index)

    def abort(self) -> None:
        """Stop the current job, if any, from any thread. wait() then returns None."""
        self._aborted_at = time.monotonic()
        self._abort[0] = 1

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the current job ends; its nonce, or None if aborted or exhausted.

        Raises TimeoutError if `timeout` passes first (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        best: int | None = None
        hashes = 0
        last_stop = 0.0
        while self._pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            conns = {self._workers[i].conn: i for i in self._pending}
            ready: list[Any] = wait(list(conns), remaining)
            if not ready:
                raise TimeoutError("the mining job is still running")
            for conn in ready:
                index = conns[conn]
                self._pending.discard(index)
                try:
                    job_id, nonce, worker_hashes, stopped_at = conn.recv()
                except (EOFError, OSError):
                    # A killed worker loses its share of this job only; replace it so
                    # the next job runs at full strength. If close() ran meanwhile
                    # (another thread stopping the pool), the job ends with it.
                    if not self._worker_lost(index):
                        self._pending.clear()
                        break
                    continue
                if job_id != self._job_id:
                    continue
                hashes += worker_hashes
                last_stop = max(last_stop, stopped_at)
                if nonce is not None and (best is None or nonce < best):
                    best = nonce
        aborted_at = self._aborted_at
        self.last_stop_latency = (
            last_stop - aborted_at if best is None and aborted_at > self._job_started_mono else None
        )
        elapsed = time.perf_counter() - self._job_started
        self._hashes += hashes
        self._busy_seconds += elapsed
        return best

    def mine(
        self, content: bytes, difficulty: int, start: int = 0, stop: int = 2**64
    ) -> int | None:
        self.submit(content, difficulty, start, stop)
        return self.wait()

    def progress(self) -> tuple[int, ...]:
        """Hashes done so far by each worker slot, counting jobs still running
        (unlike `hashrate`); feed these to a LiveRate for a rate of the moment."""
        return tuple(self._progress)

    @property
    def hashrate(self) -> float:
        """Hashes per second over every job so far (a slight undercount: an aborted
        worker's last partial step is not counted)."""
        return self._hashes / self._busy_seconds if self._busy_seconds else 0.0

    def close(self) -> None:
        """Stop every worker and wait for it; idempotent. No process survives it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._abort[0] = 1
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._pending.clear()

    def __enter__(self) -> MinerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
means and stops its workers through their pipes (close()), so a Ctrl-C costs no
worker a traceback and the pool never mistakes it for a death. SIGINT is
blocked in the thread that spawns a worker, so the new interpreter starts with
it blocked (the mask survives fork and exec) and cannot be interrupted while
it imports, before `_worker_main` ignores it for good. Any other way a worker
ends outside close() (SIGKILL, SIGTERM, a crash) is a real death: it is logged
with the worker's exit status, and the worker is replaced unless the pool is
closing.

Protocol between the pool and a worker: two os.pipe()s, carrying the
fixed-size binary records of records.py (no pickling; records.py says what
that saves per job).
  job pipe, pool -> worker: one Job record per job; end of file means exit.
  result pipe, worker -> pool: a hello Result (job id 0) once started, then one
      Result per job, tagged with the job's id.
Each worker's index in the pool, the pool's size and the backend are fixed
when it is spawned, so one packed Job serves every worker. A worker blocks in
read() between jobs (an idle pool costs no CPU); wait() blocks in poll() on
the result pipes and the process sentinels of the workers still searching, so
it wakes as soon as one reports or dies. A dead worker's result pipe reads as
end of file (only the worker holds its write end: the parent closes its copy,
and the pipes are close-on-exec), and writing a job to a dead worker's pipe
fails with EPIPE: either way the pool notices at its next read or write.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from votechain.errors import MinerPoolError
from votechain.mining.backend import DEFAULT_BACKEND, SearchFn, kernel
from votechain.mining.records import HELLO_JOB_ID, JOB_BYTES, RESULT_BYTES, Job, Result

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


def read_record(fd: int, size: int) -> bytes | None:
    """One whole `size`-byte record from pipe `fd`; None at end of file (the
    writer is gone). Records are written whole (records.py), so the loop is a
    safeguard that never runs."""
    record = os.read(fd, size)
    while record and len(record) < size:
        more = os.read(fd, size - len(record))
        if not more:
            return None
        record += more
    return record or None


def _search_share(search: SearchFn, job: Job, index: int, workers: int, step: int,
                  abort: Any, progress: Any) -> tuple[int | None, int]:
    """Worker `index`'s chunks of the job's range, in order: (nonce | None, hashes)."""
    content, difficulty, stop = job.content, job.difficulty, job.stop
    found: int | None = None
    hashes = 0
    chunk_start = job.start + index * CHUNK
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
    return found, hashes


def _worker_main(jobs: Connection, results: Connection, abort: Any, progress: Any,
                 backend: str, index: int, workers: int) -> None:
    """Worker process: wait for a job, search its share of the range, report, repeat.
    `jobs` and `results` only carry the pipes' fds here (multiprocessing passes a
    Connection's fd to a spawned child); the records go through os.read/os.write."""
    # Ctrl-C is the parent's to handle (see the top comment). Ignore first, then
    # unblock: a SIGINT that came while we started is discarded, not delivered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    search = kernel(backend)
    step = STEP if backend != "pure" else STEP // 16
    job_fd, result_fd = jobs.fileno(), results.fileno()
    try:
        os.write(result_fd, Result(HELLO_JOB_ID, None, 0, time.monotonic()).pack())
        while (record := read_record(job_fd, JOB_BYTES)) is not None:
            job = Job.unpack(record)
            found, hashes = _search_share(search, job, index, workers, step, abort, progress)
            stopped_at = time.monotonic()
            if found is not None:
                abort[0] = 1  # tell the others: this job is done
            os.write(result_fd, Result(job.job_id, found, hashes, stopped_at).pack())
    except OSError:
        return  # the pool's end of a pipe is gone: so is the pool


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
    jobs: Connection  # our end of the job pipe (write), owned here: closed with the worker
    results: Connection  # our end of the result pipe (read)
    job_fd: int
    result_fd: int

    def close_pipes(self) -> None:
        self.jobs.close()
        self.results.close()


def _readable(fds: list[int], timeout: float | None) -> list[int]:
    """Those of `fds` that are readable (or at end of file, or closed) within
    `timeout` seconds: one poll(), whose setup costs well under a microsecond
    (multiprocessing.connection.wait builds a selector per call, ~5 us)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    # poll() counts milliseconds; rounding up keeps a last sub-millisecond wait
    # from becoming poll(0) calls spinning until the deadline.
    ms = None if timeout is None else math.ceil(timeout * 1000)
    return [fd for fd, _events in poller.poll(ms)]


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
        # Reentrant: submit() holds it when it finds a dead worker to replace, and
        # replacing one takes it too, so that close() (which sets `_closed` under
        # it) never races a replacement: either the new worker is in `_workers`
        # before close() stops them all, or no replacement starts.
        self._lock = threading.RLock()
        self._job_id = 0
        self._pending: set[int] = set()
        self._workers: list[_Worker] = []
        self._closed = False
        self._hashes = 0
        self._busy_seconds = 0.0
        self._job_started = 0.0
        self._job_started_mono = 0.0
        self._aborted_at = 0.0
        # What the current job's workers have reported so far: kept here, not in
        # wait(), so that a wait() that times out loses none of it (a nonce found
        # meanwhile is still the next wait()'s answer). Reset when it is returned.
        self._best: int | None = None
        self._job_hashes = 0
        self._last_stop = 0.0
        # Seconds from abort() to the last worker's search loop ending, for the
        # last job that abort() stopped (None if the last job ended by itself).
        self.last_stop_latency: float | None = None
        try:
            for index in range(self.size):
                self._workers.append(self._spawn(index))
        except BaseException:
            self.close()  # the workers already started must not outlive the error
            raise

    def _spawn(self, index: int) -> _Worker:
        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        # Connections only to hand the child its ends (multiprocessing passes a
        # Connection's fd to a spawned process) and to own ours; no message goes
        # through their send/recv.
        theirs = (Connection(job_r, writable=False), Connection(result_w, readable=False))
        worker = _Worker(
            self._ctx.Process(
                target=_worker_main,
                args=(*theirs, self._abort, self._progress, self.backend, index, self.size),
                daemon=True, name="votechain-miner",
            ),
            Connection(job_w, readable=False), Connection(result_r, writable=False),
            job_w, result_r,
        )
        process = worker.process
        try:
            with _sigint_blocked():
                process.start()
        except BaseException:
            worker.close_pipes()
            raise
        finally:
            for conn in theirs:  # the child has its copies; ours would hide its death
                conn.close()
        if not _readable([result_r, process.sentinel], START_TIMEOUT):
            process.kill()
            process.join()
            worker.close_pipes()
            raise MinerPoolError("a miner worker did not start")
        record = read_record(result_r, RESULT_BYTES)  # end of file if the sentinel fired
        if record is None:
            process.join(timeout=1)
            worker.close_pipes()
            raise MinerPoolError(
                f"a miner worker exited at start (status {process.exitcode}); a script that "
                "starts a MinerPool or a Node must guard its entry point with "
                "`if __name__ == '__main__':` (workers are spawned, and re-import it)"
            )
        hello = Result.unpack(record)
        if hello.job_id != HELLO_JOB_ID:
            process.kill()
            process.join()
            worker.close_pipes()
            raise MinerPoolError(f"unexpected first record from a miner worker: {hello!r}")
        return worker

    def _worker_lost(self, index: int) -> bool:
        """Worker `index`'s pipe broke or its process ended. Unless close() is under
        way (its workers leave on purpose, and it reaps them), the worker really
        died: say how, and start another in its place. Whether it was replaced."""
        with self._lock:
            if self._closed:
                return False
            dead = self._workers[index]
            dead.close_pipes()
            dead.process.join(timeout=1)
            if dead.process.is_alive():  # a broken pipe but a live process: never reuse it
                dead.process.kill()
                dead.process.join()
            log.warning("miner worker %d died (%s); restarting it",
                        index, _describe_exit(dead.process.exitcode))
            self._workers[index] = self._spawn(index)
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
            record = Job(self._job_id, difficulty, content, start, stop).pack()
            self._abort[0] = 0
            self._job_started = time.perf_counter()
            self._job_started_mono = time.monotonic()
            self._best, self._job_hashes, self._last_stop = None, 0, 0.0
            for index in range(self.size):
                try:
                    os.write(self._workers[index].job_fd, record)
                except OSError:
                    # The worker died while idle (killed from outside): replace it
                    # before this job, so no share of the range goes unsearched.
                    # (`_closed` cannot be set here: close() takes the lock first.)
                    self._worker_lost(index)
                    os.write(self._workers[index].job_fd, record)
                self._pending.add(index)

    def abort(self) -> None:
        """Stop the current job, if any, from any thread. wait() then returns None."""
        self._aborted_at = time.monotonic()
        self._abort[0] = 1

    def _receive(self, index: int) -> Result | None:
        """Worker `index`'s next record, known to be there; None if it died instead."""
        try:
            record = read_record(self._workers[index].result_fd, RESULT_BYTES)
        except OSError:
            return None  # our end was closed under us: close() ran in another thread
        return None if record is None else Result.unpack(record)

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the current job ends; its nonce, or None if aborted or exhausted.

        Raises TimeoutError if `timeout` passes first (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job_id = self._job_id
        while self._pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            by_result = {self._workers[i].result_fd: i for i in self._pending}
            # A worker that dies says nothing; its process sentinel tells.
            by_sentinel = {self._workers[i].process.sentinel: i for i in self._pending}
            ready = _readable([*by_result, *by_sentinel], remaining)
            if not ready:
                raise TimeoutError("the mining job is still running")
            reported = {by_result[fd] for fd in ready if fd in by_result}
            ended = {by_sentinel[fd] for fd in ready if fd in by_sentinel}
            for index in reported | ended:
                self._pending.discard(index)
                result = self._receive(index) if index in reported else None
                if result is None:
                    # A killed worker loses its share of this job only; replace it so
                    # the next job runs at full strength. If close() ran meanwhile
                    # (another thread stopping the pool), the job ends with it.
                    if not self._worker_lost(index):
                        self._pending.clear()
                        break
                    continue
                if result.job_id != job_id:
                    # An earlier job's answer left unread (a wait() interrupted
                    # between poll and read): never this job's nonce, and this job's
                    # answer is still to come.
                    self._pending.add(index)
                    continue
                self._job_hashes += result.hashes
                self._last_stop = max(self._last_stop, result.stopped_at)
                nonce = result.nonce
                if nonce is not None and (self._best is None or nonce < self._best):
                    self._best = nonce
        best, hashes, last_stop = self._best, self._job_hashes, self._last_stop
        # Handed out once: a second wait() for a job already over returns None.
        self._best, self._job_hashes, self._last_stop = None, 0, 0.0
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
            # End of file on its job pipe: the worker exits once it has reported
            # the job it is on, which the abort flag has just stopped.
            worker.jobs.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.results.close()
        self._pending.clear()

    def __enter__(self) -> MinerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""MinerPool: persistent worker processes that split the nonce space, share abort
flags, and chain one block's search onto the next without the parent.

Workers are started once per node, not once per block: a spawned interpreter
costs ~100 ms, longer than mining a difficulty-4 block takes.

The nonce range is cut into CHUNK-sized pieces dealt round-robin (worker i takes
chunks i, i+N, i+2N, ...), so the workers cover the range together without
talking to each other. The first worker to find a nonce claims it and sets the
job's abort byte; every other worker sees it within one STEP and reports back.
A node that receives a new tip calls abort() the same way, and submits the
next job.

Follow-on jobs (follow()): the next block's content is SHA-256(head || H ||
tail), H being the hash of the block the current job finds, so the workers
can start the next block the moment they find this one. Waiting for the
parent instead cost 0.55 ms per block at 1 peer under load (its miner thread
waking and getting the GIL), against 1.15 ms of hashing: the workers idled a
third of the time. So up to MAX_OUTSTANDING jobs are outstanding: the running
one and its follow-ons, each chained to the one before it, whose records
already sit in each worker's job pipe and are read the moment the job before
ends. Every worker must chain from
the same nonce, or their shares of the next block would belong to different
blocks; hence the claim:
  - job j uses slot j % RING of a ring of abort bytes and of winner records
    (job id, nonce) in shared memory. The parent clears a slot (abort byte 0)
    before it writes the job's record, and never reuses a slot while a job
    using it is outstanding (RING > MAX_OUTSTANDING + 1: ids of outstanding
    jobs are consecutive, and a worker reads job j's slot only before it
    reports j, so j is outstanding then).
  - a worker that finds a nonce takes the claim lock; if no winner is recorded
    for the job, it records its nonce and sets the job's abort byte, else it
    lost (a simultaneous find) and reports no nonce. After its search ends,
    whatever ended it, every worker reads the job's winner under the lock and
    chains the follow-on from that; with no winner (aborted, exhausted, or its
    share exhausted before another worker found one) it ends the follow-on at
    once with no nonce. A worker so left out of a chain rejoins at the next
    submit(); the node's ranges are the whole nonce space, so only abort()
    leaves it out there, and then the follow-on is aborted too.
  - wait() returns the recorded winner, not a minimum over the reports: it is
    what the follow-on was chained from, and it survives a winner killed
    before it reported.
  - a worker killed while holding the claim lock would block every claim after
    it: each worker marks itself the lock's owner while it holds it, and the
    pool releases the lock for a dead owner when it replaces it (or, if the
    lock stays taken with no owner marked, the worker died in the instant
    between taking it and marking it, and the pool releases it after
    CLAIM_STUCK seconds).
The abort bytes, winners and progress counters live in multiprocessing
RawArrays: anonymous shared memory, unlinked at creation, so no segment can
outlive the pool whatever kills it.

Signals: a worker ignores SIGINT. Ctrl-C in a terminal signals the whole
foreground process group, workers included; the parent alone decides what it
means and stops its workers through their pipes (close()), so a Ctrl-C costs no
worker a traceback and the pool never mistakes it for a death. SIGINT is
blocked in the thread that spawns a worker, so the new interpreter starts with
it blocked (the mask survives fork and exec) and cannot be interrupted while
it imports, before `worker_main` (mining/worker.py) ignores it for good. Any other way a worker
ends outside close() (SIGKILL, SIGTERM, a crash) is a real death: it is logged
with the worker's exit status, and the worker is replaced unless the pool is
closing. The dead worker's share of every outstanding job is lost (a nonce it
had claimed is not: it is in the winner record); its replacement takes part
from the next submit().

Protocol between the pool and a worker: two os.pipe()s, carrying the binary
records of records.py (no pickling; records.py says what that saves per job).
  job pipe, pool -> worker: one Job record per job (a fixed job or a
      follow-on); end of file means exit.
  result pipe, worker -> pool: a hello Result (job id 0) once started, then one
      Result per job, in job order, tagged with the job's id: wait() for the
      oldest job reads exactly its result from each worker.
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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from votechain.errors import MinerPoolError
from votechain.mining.backend import DEFAULT_BACKEND, kernel
from votechain.mining.records import (
    CONTENT_BYTES,
    HELLO_JOB_ID,
    RESULT_BYTES,
    Job,
    Result,
    check_follow_bytes,
)
from votechain.mining.worker import RING, Shared, read_record, worker_main

log = logging.getLogger("votechain.mining")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
# The running job and up to three follow-ons: ~3 ms of hashing queued at
# difficulty 4, which rides out the parent's miner thread waking late (GIL
# waits under load: p99 ~1-2 ms at 1 peer). With one follow-on, a single
# late wake-up idled the workers.
MAX_OUTSTANDING = 4
# A claim lock still taken this long after a worker died, with no owner
# marked, was taken by the dead worker (a claim holds it for microseconds).
# The one way this is wrong: a live worker stalled that long inside its
# few-bytecode claim at that very moment; its own release then fails
# ("released too many times"), it dies and is replaced like any other.
CLAIM_STUCK = 0.2


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


@dataclass
class _Outstanding:
    """The parent's view of a job submitted or followed whose wait() has not
    returned yet."""

    job_id: int
    participants: set[int]  # the workers it was sent to, less those that died since
    pending: set[int] = field(default_factory=set)  # those whose result is still to come
    started: float = 0.0  # time.perf_counter() when it was submitted or followed
    started_mono: float = 0.0  # the same, time.monotonic()
    # What its workers have reported so far: kept here, not in wait(), so that a
    # wait() that times out loses none of it.
    hashes: int = 0
    last_stop: float = 0.0

    @property
    def slot(self) -> int:
        return self.job_id % RING


class MinerPool:
    """Mining jobs across `workers` processes: one running, and follow-ons
    queued behind it (MAX_OUTSTANDING in all). Thread-safe.

    submit() starts a job and returns at once; follow() queues the next block's
    job behind the last one, for the workers to start as soon as it finds its
    nonce; wait() blocks for the oldest job's result; abort(), from any thread,
    stops every outstanding job (each wait() then returns None).
    """

    def __init__(self, workers: int | None = None, backend: str = DEFAULT_BACKEND) -> None:
        kernel(backend)  # fail here, in the caller, if the backend is unavailable
        self.backend = backend
        self.size = workers or os.cpu_count() or 1
        self._ctx = mp.get_context("spawn")
        self._shared = Shared(
            abort=self._ctx.RawArray("B", RING),
            winners=self._ctx.RawArray("Q", 2 * RING),
            claim=self._ctx.Lock(),
            owner=self._ctx.RawArray("Q", 1),
        )
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
        # Oldest first; ids consecutive (follow() takes the next id, wait() pops
        # the oldest), which is what makes RING slots enough.
        self._jobs: deque[_Outstanding] = deque()
        self._workers: list[_Worker] = []
        self._closed = False
        self._hashes = 0
        self._busy_seconds = 0.0
        # Where the busy time counted so far ends: jobs overlap (a follow-on is
        # queued while its predecessor runs), so each wait() counts from here.
        self._busy_mark = 0.0
        self._aborted_at = 0.0
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
                target=worker_main,
                args=(*theirs, self._shared, self._progress, self.backend, index, self.size),
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
        died: say how, free the claim lock if it held it, drop it from every
        outstanding job (its results for them will never come), and start another
        in its place. Whether it was replaced."""
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
            self._free_claim(index)
            for job in self._jobs:
                job.participants.discard(index)
                job.pending.discard(index)
            self._workers[index] = self._spawn(index)
            return True

    def _free_claim(self, index: int) -> None:
        """Release the claim lock if dead worker `index` held it (see the top comment)."""
        claim, owner = self._shared.claim, self._shared.owner
        if owner[0] == index + 1:
            owner[0] = 0
            claim.release()
        elif claim.acquire(timeout=CLAIM_STUCK):
            claim.release()  # free: it did not hold it
        else:
            log.warning("the miner claim lock is still held %.1f s after worker %d died: "
                        "releasing it", CLAIM_STUCK, index)
            claim.release()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    @property
    def running(self) -> bool:
        """Whether any job is outstanding (submitted or followed, not yet waited for)."""
        return bool(self._jobs)

    @property
    def outstanding(self) -> int:
        """Jobs submitted or followed whose wait() has not returned yet."""
        return len(self._jobs)

    def _new_job(self, participants: set[int]) -> _Outstanding:
        """The next job id, its slot cleared for it. Before its record is written:
        a worker must never see the abort byte or winner of the slot's last job."""
        self._job_id += 1
        now = time.perf_counter()
        job = _Outstanding(self._job_id, participants, started=now,
                           started_mono=time.monotonic())
        self._shared.winners[2 * job.slot] = 0  # no winner (job ids start at 1)
        self._shared.abort[job.slot] = 0
        return job

    def submit(self, content: bytes, difficulty: int, start: int = 0, stop: int = 2**64) -> None:
        """Start searching [start, stop) on every worker; returns immediately."""
        from votechain.mining import check_search_args

        check_search_args(content, difficulty, start, stop)
        with self._lock:
            if self._closed:
                raise MinerPoolError("the pool is closed")
            if self._jobs:
                raise MinerPoolError("a job is already running; wait() or abort() it first")
            job = self._new_job(set())
            record = Job(job.job_id, difficulty, content, start, stop).pack()
            for index in range(self.size):
                try:
                    os.write(self._workers[index].job_fd, record)
                except OSError:
                    # The worker died while idle (killed from outside): replace it
                    # before this job, so no share of the range goes unsearched.
                    # (`_closed` cannot be set here: close() takes the lock first.)
                    self._worker_lost(index)
                    os.write(self._workers[index].job_fd, record)
                job.participants.add(index)
                job.pending.add(index)
            self._jobs.append(job)

    def follow(self, head: bytes, tail: bytes, difficulty: int, start: int = 0,
               stop: int = 2**64) -> None:
        """Queue the job for the block after the last one submitted or followed:
        its content is SHA-256(head || H || tail), H the hash that job's nonce
        gives. The workers start it the moment that job finds its nonce, with no
        word from us; if it ends without one, so does this one (wait() -> None).
        Returns immediately."""
        from votechain.mining import check_search_args

        check_follow_bytes(head, tail)
        check_search_args(bytes(CONTENT_BYTES), difficulty, start, stop)
        with self._lock:
            if self._closed:
                raise MinerPoolError("the pool is closed")
            if not self._jobs:
                raise MinerPoolError("no job to follow: submit() one first")
            if len(self._jobs) >= MAX_OUTSTANDING:
                raise MinerPoolError(f"{len(self._jobs)} jobs are already outstanding "
                                     f"(at most {MAX_OUTSTANDING}); wait() for one first")
            # Only the workers that run the job before it can chain from its nonce.
            previous = self._jobs[-1]
            job = self._new_job(set())
            record = Job(job.job_id, difficulty, bytes(CONTENT_BYTES), start, stop,
                         "follow", head, tail).pack()
            for index in sorted(previous.participants):
                try:
                    os.write(self._workers[index].job_fd, record)
                except OSError:
                    # Dead, with its share of the job before: its replacement
                    # knows nothing to chain from, and joins at the next submit().
                    self._worker_lost(index)
                    continue
                job.participants.add(index)
                job.pending.add(index)
            self._jobs.append(job)

    def abort(self) -> None:
        """Stop every outstanding job, from any thread: each wait() then returns None
        (or the nonce a worker claimed in the same instant, which its follow-on, if
        any, then builds on)."""
        self._aborted_at = time.monotonic()
        # Every slot, not just the outstanding jobs' ones: no lock needed, and a
        # slot with no outstanding job is cleared before its next job's record.
        abort = self._shared.abort
        for slot in range(RING):
            abort[slot] = 1

    def _receive(self, index: int) -> Result | None:
        """Worker `index`'s next record, known to be there; None if it died instead."""
        try:
            record = read_record(self._workers[index].result_fd, RESULT_BYTES)
        except OSError:
            return None  # our end was closed under us: close() ran in another thread
        return None if record is None else Result.unpack(record)

    def _winner(self, job: _Outstanding) -> int | None:
        """The nonce a worker claimed for `job`, once none of its workers is left
        to write it. The nonce is written before the id, so a worker killed
        between the two leaves no id: no winner, and nobody chained from it."""
        winners = self._shared.winners
        slot = job.slot
        return int(winners[2 * slot + 1]) if winners[2 * slot] == job.job_id else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the oldest outstanding job ends; its nonce, or None if it was
        aborted or exhausted (or no job is outstanding). A follow-on queued behind
        it keeps running.

        Raises TimeoutError if `timeout` passes first (the job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._jobs:
            return None  # handed out once: a second wait() for a job over returns None
        job = self._jobs[0]
        while job.pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            by_result = {self._workers[i].result_fd: i for i in job.pending}
            # A worker that dies says nothing; its process sentinel tells.
            by_sentinel = {self._workers[i].process.sentinel: i for i in job.pending}
            ready = _readable([*by_result, *by_sentinel], remaining)
            if not ready:
                raise TimeoutError("the mining job is still running")
            reported = {by_result[fd] for fd in ready if fd in by_result}
            ended = {by_sentinel[fd] for fd in ready if fd in by_sentinel}
            for index in reported | ended:
                result = self._receive(index) if index in reported else None
                if result is None:
                    # A killed worker loses its share of the outstanding jobs only;
                    # replace it so the next submit runs at full strength. If close()
                    # ran meanwhile (another thread stopping the pool), the job ends
                    # with it.
                    if not self._worker_lost(index):
                        job.pending.clear()
                        break
                    continue
                if result.job_id < job.job_id:
                    # An earlier job's answer left unread (a wait() interrupted
                    # between poll and read): never this job's nonce, and this job's
                    # answer is still to come.
                    continue
                if result.job_id != job.job_id:
                    raise MinerPoolError(f"worker {index} answered job {result.job_id} "
                                         f"before job {job.job_id}: a pool bug")
                job.pending.discard(index)
                job.hashes += result.hashes
                job.last_stop = max(job.last_stop, result.stopped_at)
        with self._lock:
            if self._jobs and self._jobs[0] is job:
                self._jobs.popleft()
        # The claimed winner, not the reports' minimum: what a follow-on chained from.
        nonce = self._winner(job)
        aborted_at = self._aborted_at
        self.last_stop_latency = (
            job.last_stop - aborted_at
            if nonce is None and aborted_at > job.started_mono and job.last_stop else None
        )
        now = time.perf_counter()
        self._busy_seconds += now - max(self._busy_mark, job.started)
        self._busy_mark = now
        self._hashes += job.hashes
        return nonce

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
        self.abort()
        for worker in self._workers:
            # End of file on its job pipe: the worker exits once it has reported
            # the jobs in its pipe, which the abort flags have just stopped.
            worker.jobs.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.results.close()
        self._jobs.clear()

    def __enter__(self) -> MinerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A MinerPool worker process (mining/pool.py spawns them and says how they
work together): it reads jobs from its pipe, searches its share of each
job's nonce range with the kernel, claims what it finds, reports, and starts
a follow-on job the moment the job before it has a winner. Runs in a process
of its own: nothing here touches the parent's state but the shared arrays
and the pipes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from votechain.core.block import block_hash
from votechain.mining.backend import SearchFn, kernel
from votechain.mining.records import HELLO_JOB_ID, JOB_BYTES, Job, Result

# Round-robin unit of the nonce space: big enough that dealing chunks costs nothing.
CHUNK = 1 << 20
# Nonces per kernel call inside a chunk: ~1 ms of native work, so progress (and
# the hash-rate figure) is known to within a millisecond, and an abort that
# arrives between calls is seen at once.
STEP = 1 << 16
# Slots of abort bytes and winner records, used round-robin by job id; more
# than pool.MAX_OUTSTANDING + 1 so a slot is never reused while a job on it
# is outstanding (pool.py's top comment).
RING = 8


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


def read_job(fd: int) -> bytes | None:
    """One whole Job record from pipe `fd`: its header, then exactly the head and
    tail it announces (never a byte of the next record); None at end of file."""
    header = read_record(fd, JOB_BYTES)
    if header is None:
        return None
    body = Job.body_bytes(header)
    if not body:
        return header
    rest = read_record(fd, body)
    return None if rest is None else header + rest


class Shared(NamedTuple):
    """What the workers share, beyond their pipes (pool.py's top comment)."""

    abort: Any  # RawArray("B", RING): job j's abort byte is abort[j % RING]
    winners: Any  # RawArray("Q", 2 * RING): job id, nonce of job j's claim at 2 * (j % RING)
    claim: Any  # multiprocessing Lock, held to read or write a winner
    owner: Any  # RawArray("Q", 1): 1 + index of the worker holding `claim`, else 0


def claim(shared: Shared, index: int, job_id: int, found: int | None
           ) -> tuple[int | None, int | None]:
    """Claim `found` (if any) as job `job_id`'s nonce: (what this worker found and
    won, the job's winner if it has one). Setting the abort byte under the lock,
    after the record, means a worker that stops for it finds the winner there."""
    slot = job_id % RING
    winners = shared.winners
    with shared.claim:
        shared.owner[0] = index + 1
        if winners[2 * slot] != job_id:
            if found is not None:
                winners[2 * slot + 1] = found  # the nonce before the id: see MinerPool._winner
                winners[2 * slot] = job_id
                shared.abort[slot] = 1  # tell the others: this job is done
        elif found is not None:
            found = None  # another worker found one at the same time and claimed it first
        winner = int(winners[2 * slot + 1]) if winners[2 * slot] == job_id else None
        shared.owner[0] = 0
    return found, winner


def search_share(search: SearchFn, content: bytes, job: Job, index: int, workers: int,
                  step: int, abort: Any, progress: Any) -> tuple[int | None, int]:
    """Worker `index`'s chunks of the job's range, in order: (nonce | None, hashes)."""
    difficulty, stop = job.difficulty, job.stop
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


def worker_main(jobs: Connection, results: Connection, shared: Shared, progress: Any,
                 backend: str, index: int, workers: int) -> None:
    """Worker process: read a job, search its share of the range, claim what it
    found, report, chain, repeat. `jobs` and `results` only carry the pipes' fds
    here (multiprocessing passes a Connection's fd to a spawned child); the
    records go through os.read/os.write."""
    # Ctrl-C is the parent's to handle (pool.py's top comment). Ignore first, then
    # unblock: a SIGINT that came while we started is discarded, not delivered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    search = kernel(backend)
    step = STEP if backend != "pure" else STEP // 16
    job_fd, result_fd = jobs.fileno(), results.fileno()
    # The kernels read byte 0 of the buffer they are given: one 1-byte view per slot.
    flags = memoryview(shared.abort).cast("B")
    abort_of = [flags[slot:slot + 1] for slot in range(RING)]
    # The hash of the block the last job found, which a follow-on builds on; None
    # if it found none (or this worker does not know which).
    chain: bytes | None = None
    try:
        os.write(result_fd, Result(HELLO_JOB_ID, None, 0, time.monotonic()).pack())
        while (record := read_job(job_fd)) is not None:
            job = Job.unpack(record)
            if job.kind == "fixed":
                content: bytes | None = job.content
            elif chain is not None:
                content = hashlib.sha256(job.head + chain + job.tail).digest()
            else:
                content = None  # nothing to build on: the follow-on ends at once
            found, hashes = (None, 0) if content is None else search_share(
                search, content, job, index, workers, step, abort_of[job.job_id % RING],
                progress)
            stopped_at = time.monotonic()
            found, winner = claim(shared, index, job.job_id, found)
            os.write(result_fd, Result(job.job_id, found, hashes, stopped_at).pack())
            chain = None if content is None or winner is None else block_hash(content, winner)
    except OSError:
        return  # the pool's end of a pipe is gone: so is the pool

"""The MinerPool's messages to and from its workers: fixed-size binary records, no pickling.

A job goes to each worker as one JOB record on that worker's job pipe; the
worker answers on its result pipe with one RESULT record per job. Its very first
record, sent once it has started, is a RESULT whose job id is HELLO_JOB_ID (job
ids start at 1).

Why records and not pickled tuples on a multiprocessing Connection: a round trip
(submit, a worker finds the nonce at once, wait() returns it, one worker) cost
45-90 us that way on a loaded 2-core VM, mostly pickling, the Connection's
length header (two reads per message), its socketpair (a pipe wakes its reader
faster) and multiprocessing.connection.wait building a selector per call. Plain
pipes carrying a struct-packed record, read with one os.read, cost 18-27 us
there, of which the pool's own work is ~8 us; the rest is the kernel waking a
sleeping process, which any wake-up that does not spin pays
(benchmarks/bench_mining.py, test_pool_dispatch_round_trip).

Why one os.read is enough: every record is far under PIPE_BUF (4096 bytes on
Linux, 512 by POSIX), so the kernel writes it whole, never interleaved or split,
and a read asking for one record's size gets exactly one when one is there.

Sizes are fixed, and decoding refuses any other length: a record is never
shorter because of what it carries. Both ends are our own processes, so a bad
record is our bug (ValueError), never a peer's input to tolerate.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# The content a job carries is what check_search_args admits: exactly a SHA-256
# digest (a block's fields are hashed to this first, so each nonce costs one
# compression). It is the record's only variable-looking field, and its cap.
CONTENT_BYTES = 32
# A bound of the nonce range lies in 0..2**64 inclusive (stop=2**64 means "to the
# end of the space"): 65 bits, so 9 bytes.
BOUND_BYTES = 9
HELLO_JOB_ID = 0

# job id, difficulty, content, start, stop.
_JOB = struct.Struct(f"<QB{CONTENT_BYTES}s{BOUND_BYTES}s{BOUND_BYTES}s")
# job id, found, nonce (0 unless found), hashes, stopped_at.
_RESULT = struct.Struct("<Q?QQd")
JOB_BYTES = _JOB.size
RESULT_BYTES = _RESULT.size


class Job(NamedTuple):
    """Search [start, stop) for content's first nonce at difficulty; each worker
    takes its own chunks of the range (its index is fixed when it is spawned)."""

    job_id: int
    difficulty: int
    content: bytes
    start: int
    stop: int

    def pack(self) -> bytes:
        if len(self.content) != CONTENT_BYTES:
            # struct's "32s" would pad or truncate without a word.
            raise ValueError(f"job content must be {CONTENT_BYTES} bytes, got {len(self.content)}")
        return _JOB.pack(self.job_id, self.difficulty, self.content,
                         self.start.to_bytes(BOUND_BYTES, "little"),
                         self.stop.to_bytes(BOUND_BYTES, "little"))

    @classmethod
    def unpack(cls, record: bytes) -> Job:
        if len(record) != JOB_BYTES:
            raise ValueError(f"a job record is {JOB_BYTES} bytes, got {len(record)}")
        job_id, difficulty, content, start, stop = _JOB.unpack(record)
        return cls(job_id, difficulty, content, int.from_bytes(start, "little"),
                   int.from_bytes(stop, "little"))


class Result(NamedTuple):
    """One worker's answer to job `job_id`: the nonce it found, if any, the hashes
    it did, and when its search loop ended (time.monotonic(), one clock for every
    process on Linux): the abort latency runs from the flag to the last worker
    stopping, not to the pool hearing about it."""

    job_id: int
    nonce: int | None
    hashes: int
    stopped_at: float

    def pack(self) -> bytes:
        nonce = self.nonce
        return _RESULT.pack(self.job_id, nonce is not None, nonce or 0, self.hashes,
                            self.stopped_at)

    @classmethod
    def unpack(cls, record: bytes) -> Result:
        if len(record) != RESULT_BYTES:
            raise ValueError(f"a result record is {RESULT_BYTES} bytes, got {len(record)}")
        job_id, found, nonce, hashes, stopped_at = _RESULT.unpack(record)
        return cls(job_id, nonce if found else None, hashes, stopped_at)

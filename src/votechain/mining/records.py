"""The MinerPool's messages to and from its workers: binary records, no pickling.

A job goes to each worker as one JOB record on that worker's job pipe; the
worker answers on its result pipe with one RESULT record per job, in job
order. Its very first record, sent once it has started, is a RESULT whose job
id is HELLO_JOB_ID (job ids start at 1).

Two kinds of job. A FIXED job carries the 32-byte content to search. A FOLLOW
job carries no content but the bytes around one: its content is
SHA-256(head || H || tail), where H = SHA-256(c || n as 8 bytes big-endian) is
the hash of the block the job just before it found (c its content, n the
nonce the workers agreed on; pool.py says how). That is the next block's
content (core/block.py), so the workers can start the next block the moment
they find this one, without a message from the parent: at 1 peer under load
the parent's wake-up (mostly waiting for the GIL) cost 0.55 ms per block
against 1.15 ms of hashing.

A JOB record is a fixed header (job id, difficulty, kind, content, start,
stop, the lengths of head and tail), then head, then tail: JOB_BYTES for a
fixed job, up to MAX_JOB_BYTES for a follow job. The reader reads the header,
then exactly the body it announces, so it never consumes a byte of the next
record. RESULT records are fixed-size.

Why records and not pickled tuples on a multiprocessing Connection: a round trip
(submit, a worker finds the nonce at once, wait() returns it, one worker) cost
45-90 us that way on a loaded 2-core VM, mostly pickling, the Connection's
length header (two reads per message), its socketpair (a pipe wakes its reader
faster) and multiprocessing.connection.wait building a selector per call. Plain
pipes carrying a struct-packed record, read with one os.read, cost 18-27 us
there, of which the pool's own work is ~8 us; the rest is the kernel waking a
sleeping process, which any wake-up that does not spin pays
(benchmarks/bench_mining.py, test_pool_dispatch_round_trip).

Why a record is read whole once its first byte is there: every record is under
PIPE_BUF (4096 bytes on Linux; MAX_JOB_BYTES is checked against it below), so
the kernel writes it whole, never interleaved or split, and a read asking for
no more than what is left of it gets exactly that.

Lengths are checked on both ends, and decoding refuses any other length: both
ends are our own processes, so a bad record is our bug (ValueError), never a
peer's input to tolerate.
"""

from __future__ import annotations

import struct
from typing import Literal, NamedTuple

# The content a job carries is what check_search_args admits: exactly a SHA-256
# digest (a block's fields are hashed to this first, so each nonce costs one
# compression). The next block's H is one too.
CONTENT_BYTES = 32
# A bound of the nonce range lies in 0..2**64 inclusive (stop=2**64 means "to the
# end of the space"): 65 bits, so 9 bytes.
BOUND_BYTES = 9
HELLO_JOB_ID = 0
# What the parent puts around the previous block's hash to make the next one's
# content (core/block.py): its fields before prev_hash, and after it. Caps so
# that a follow record stays one atomic pipe write (see above).
MAX_HEAD_BYTES = 1200
MAX_TAIL_BYTES = 1100
PIPE_BUF = 4096  # Linux's; a write of at most this many bytes to a pipe is atomic

JobKind = Literal["fixed", "follow"]
_KINDS: tuple[JobKind, ...] = ("fixed", "follow")

# job id, difficulty, kind, content, start, stop, len(head), len(tail).
_JOB = struct.Struct(f"<QBB{CONTENT_BYTES}s{BOUND_BYTES}s{BOUND_BYTES}sHH")
# job id, found, nonce (0 unless found), hashes, stopped_at.
_RESULT = struct.Struct("<Q?QQd")
JOB_BYTES = _JOB.size  # a fixed job's whole record; a follow job's header
MAX_JOB_BYTES = JOB_BYTES + MAX_HEAD_BYTES + MAX_TAIL_BYTES
RESULT_BYTES = _RESULT.size
assert max(MAX_JOB_BYTES, RESULT_BYTES) <= PIPE_BUF, "a record must be one atomic write"


def check_follow_bytes(head: bytes, tail: bytes) -> None:
    """Refuse a head or tail a follow record cannot carry (ValueError)."""
    for name, value, cap in (("head", head, MAX_HEAD_BYTES), ("tail", tail, MAX_TAIL_BYTES)):
        if not isinstance(value, bytes):
            raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
        if len(value) > cap:
            raise ValueError(f"{name} is {len(value)} bytes, over the cap of {cap}")


class Job(NamedTuple):
    """Search [start, stop) for the job's content's first nonce at difficulty;
    each worker takes its own chunks of the range (its index is fixed when it is
    spawned). A "fixed" job's content is `content`; a "follow" job's is
    SHA-256(head || H || tail), H being the hash the job before it found, and
    its `content` field is unused (zeros)."""

    job_id: int
    difficulty: int
    content: bytes
    start: int
    stop: int
    kind: JobKind = "fixed"
    head: bytes = b""
    tail: bytes = b""

    def pack(self) -> bytes:
        if len(self.content) != CONTENT_BYTES:
            # struct's "32s" would pad or truncate without a word.
            raise ValueError(f"job content must be {CONTENT_BYTES} bytes, got {len(self.content)}")
        check_follow_bytes(self.head, self.tail)
        if self.kind == "fixed" and (self.head or self.tail):
            raise ValueError("a fixed job carries no head or tail")
        header = _JOB.pack(self.job_id, self.difficulty, _KINDS.index(self.kind), self.content,
                           self.start.to_bytes(BOUND_BYTES, "little"),
                           self.stop.to_bytes(BOUND_BYTES, "little"),
                           len(self.head), len(self.tail))
        return header + self.head + self.tail

    @staticmethod
    def body_bytes(header: bytes) -> int:
        """How many bytes follow this JOB_BYTES header: len(head) + len(tail)."""
        if len(header) != JOB_BYTES:
            raise ValueError(f"a job record is {JOB_BYTES} bytes plus its head and tail, "
                             f"got a {len(header)}-byte header")
        *_, head_len, tail_len = _JOB.unpack(header)
        if head_len > MAX_HEAD_BYTES or tail_len > MAX_TAIL_BYTES:
            raise ValueError(f"a job record announces a {head_len}-byte head and a "
                             f"{tail_len}-byte tail, over the caps")
        return int(head_len + tail_len)

    @classmethod
    def unpack(cls, record: bytes) -> Job:
        # Short of a header: say what a header-only (fixed) record would need.
        expected = JOB_BYTES + (cls.body_bytes(record[:JOB_BYTES])
                                if len(record) >= JOB_BYTES else 0)
        if len(record) != expected:
            raise ValueError(f"a job record is {expected} bytes (header, head and tail), "
                             f"got {len(record)}")
        job_id, difficulty, kind, content, start, stop, head_len, _ = _JOB.unpack(
            record[:JOB_BYTES])
        if kind >= len(_KINDS):
            raise ValueError(f"unknown job kind {kind}")
        head = record[JOB_BYTES:JOB_BYTES + head_len]
        tail = record[JOB_BYTES + head_len:]
        if _KINDS[kind] == "fixed" and (head or tail):
            raise ValueError("a fixed job carries no head or tail")
        return cls(job_id, difficulty, content, int.from_bytes(start, "little"),
                   int.from_bytes(stop, "little"), _KINDS[kind], head, tail)


class Result(NamedTuple):
    """One worker's answer to job `job_id`: the nonce it found and claimed, if
    any, the hashes it did, and when its search loop ended (time.monotonic(),
    one clock for every process on Linux): the abort latency runs from the flag
    to the last worker stopping, not to the pool hearing about it."""

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

"""MinerPool.follow(): the workers start the next block's search the moment they
find the current block's nonce, with no message from the parent. Real worker
processes, once per available backend, on 1 and 2 workers: a chain of blocks
mined the node's way (submit, follow, then wait and follow again), every nonce
checked with hashlib against the content the parent derives from the nonce
before it; abort() voiding both outstanding jobs; a follow-on of an exhausted
job; the limits of follow(); a worker killed mid-chain; and two workers finding
nonces at once and still agreeing on one. First, the follow records themselves."""

from __future__ import annotations

import hashlib
import os
import select
import signal
from collections.abc import Iterator

import pytest

from framework.backends import BACKENDS, skip_unless_available
from votechain.errors import MinerPoolError
from votechain.mining import NONCE_SPACE, MinerPool
from votechain.mining.pool import MAX_OUTSTANDING
from votechain.mining.records import (
    CONTENT_BYTES,
    JOB_BYTES,
    MAX_HEAD_BYTES,
    MAX_JOB_BYTES,
    MAX_TAIL_BYTES,
    Job,
)
from votechain.mining.worker import RING, read_job

# An impossible job: 16 zero hex digits over the whole nonce space never ends by itself.
IMPOSSIBLE = 16
# For a job to end: milliseconds, or a worker respawn after a kill. A deadline,
# not a speed: wait() returns as soon as the job ends.
DEADLINE = 10.0
CHAIN = 20
TAIL = b" tail " + bytes(64)


def block_hash(content: bytes, nonce: int) -> bytes:
    return hashlib.sha256(content + nonce.to_bytes(8, "big")).digest()


def valid(content: bytes, difficulty: int, nonce: int) -> bool:
    return block_hash(content, nonce).hex().startswith("0" * difficulty)


def head_of(height: int) -> bytes:
    return b"block %d " % height


def next_content(content: bytes, nonce: int, height: int) -> bytes:
    """What the workers mine after `content` found `nonce`: SHA-256(head || H || tail)."""
    return hashlib.sha256(head_of(height) + block_hash(content, nonce) + TAIL).digest()


def content_of(seed: int) -> bytes:
    return hashlib.sha256(b"follow test %d" % seed).digest()


# --- records ---------------------------------------------------------------------------


def test_follow_records_round_trip_at_their_caps() -> None:
    head, tail = b"\xff" * MAX_HEAD_BYTES, b"\xfe" * MAX_TAIL_BYTES
    for job in (Job(5, 4, bytes(CONTENT_BYTES), 0, NONCE_SPACE, "follow", head, tail),
                Job(6, 1, bytes(CONTENT_BYTES), 3, 9, "follow", b"", b""),
                Job(7, 2, b"\x01" * CONTENT_BYTES, 0, 1)):
        record = job.pack()
        assert len(record) == JOB_BYTES + len(job.head) + len(job.tail)
        assert Job.unpack(record) == job
    assert MAX_JOB_BYTES <= select.PIPE_BUF  # one write, never split or interleaved


def test_follow_records_refuse_what_they_cannot_carry() -> None:
    content = bytes(CONTENT_BYTES)
    with pytest.raises(ValueError, match="head is"):
        Job(1, 1, content, 0, 1, "follow", bytes(MAX_HEAD_BYTES + 1), b"").pack()
    with pytest.raises(ValueError, match="tail is"):
        Job(1, 1, content, 0, 1, "follow", b"", bytes(MAX_TAIL_BYTES + 1)).pack()
    with pytest.raises(ValueError, match="no head or tail"):
        Job(1, 1, content, 0, 1, "fixed", b"x", b"").pack()
    record = Job(1, 1, content, 0, 1, "follow", b"head", b"tail").pack()
    for bad in (record[:-1], record + b"\0"):
        with pytest.raises(ValueError, match=f"a job record is {len(record)} bytes"):
            Job.unpack(bad)


def test_a_reader_takes_one_record_at_a_time() -> None:
    jobs = [Job(1, 3, content_of(1), 0, 10),
            Job(2, 3, bytes(CONTENT_BYTES), 0, 10, "follow", b"h" * 700, b"t" * 900),
            Job(3, 3, bytes(CONTENT_BYTES), 0, 10, "follow", b"", b"")]
    r, w = os.pipe()
    try:
        for job in jobs:
            os.write(w, job.pack())
        os.close(w)
        got = []
        while (record := read_job(r)) is not None:
            got.append(Job.unpack(record))
        assert got == jobs
    finally:
        os.close(r)


# --- the pool ----------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    return skip_unless_available(request.param)


@pytest.fixture(params=[1, 2], scope="module", ids=["1worker", "2workers"])
def pool(request: pytest.FixtureRequest, backend: str) -> Iterator[MinerPool]:
    """One pool per backend and size, shared by the tests that leave it idle and healthy."""
    with MinerPool(request.param, backend=backend) as p:
        yield p


def difficulty_for(backend: str) -> int:
    # The pure kernel is ~20 times slower: 256 hashes a block keeps it quick.
    return 2 if backend == "pure" else 3


def mine_chain(pool: MinerPool, first: bytes, difficulty: int, blocks: int,
               kill_at: int | None = None) -> list[int | None]:
    """The node's pattern: submit, follow, then wait and follow again, keeping one
    follow-on queued. Every nonce is checked against the content derived from
    the nonce before it. After a job ends with None, its follow-on must end
    with None too (nothing to build on), and the chain restarts with a fresh
    submit, as the node does on a new tip. SIGKILLs worker 0 just before the
    wait() for block `kill_at`. The nonces (or None), block by block."""
    nonces: list[int | None] = []

    def start(content: bytes) -> None:
        pool.submit(content, difficulty)
        pool.follow(head_of(len(nonces) + 1), TAIL, difficulty)

    current = first  # the content of the oldest outstanding job
    start(current)
    while len(nonces) < blocks:
        assert pool.outstanding == 2 and pool.running
        if len(nonces) == kill_at:
            os.kill(pool.pids[0], signal.SIGKILL)
        nonce = pool.wait(timeout=DEADLINE)
        nonces.append(nonce)
        if nonce is None:
            assert pool.wait(timeout=DEADLINE) is None, "a follow-on of no nonce searched"
            assert pool.outstanding == 0
            current = content_of(1000 + len(nonces))
            start(current)
            continue
        assert valid(current, difficulty, nonce), f"block {len(nonces) - 1}: bad nonce"
        current = next_content(current, nonce, len(nonces))
        assert pool.outstanding == 1
        pool.follow(head_of(len(nonces) + 1), TAIL, difficulty)
    pool.abort()
    while pool.outstanding:
        pool.wait(timeout=DEADLINE)
    return nonces


def test_a_chain_of_follow_ons_is_valid_block_after_block(pool: MinerPool) -> None:
    nonces = mine_chain(pool, content_of(1), difficulty_for(pool.backend), CHAIN)
    assert len(nonces) == CHAIN and all(n is not None for n in nonces)
    assert not pool.running and pool.outstanding == 0
    assert pool.hashrate > 0


def test_abort_voids_both_outstanding_jobs(pool: MinerPool) -> None:
    pool.submit(content_of(2), IMPOSSIBLE)
    # Difficulty 1: found at once if it ever searched, so None means it never did.
    pool.follow(head_of(1), TAIL, 1)
    assert pool.outstanding == 2
    with pytest.raises(TimeoutError):
        pool.wait(timeout=0.05)  # really running
    pool.abort()
    assert pool.wait(timeout=DEADLINE) is None
    assert pool.outstanding == 1 and pool.running
    assert pool.wait(timeout=DEADLINE) is None
    assert pool.outstanding == 0 and not pool.running
    assert pool.wait(timeout=0) is None  # nothing outstanding: None at once
    # The next job runs normally: submit() cleared its slot's abort byte.
    content = content_of(3)
    nonce = pool.mine(content, 2)
    assert nonce is not None and valid(content, 2, nonce)


def test_follow_on_of_an_exhausted_job_ends_at_once_with_none(pool: MinerPool) -> None:
    pool.submit(content_of(4), IMPOSSIBLE, 5, 20_000)
    pool.follow(head_of(1), TAIL, 1)
    assert pool.wait(timeout=DEADLINE) is None
    assert pool.wait(timeout=DEADLINE) is None
    # An empty range: the same.
    pool.submit(content_of(4), 1, 7, 7)
    pool.follow(head_of(1), TAIL, 1)
    assert pool.wait(timeout=DEADLINE) is None
    assert pool.wait(timeout=DEADLINE) is None
    assert not pool.running


def test_follow_in_a_range_and_after_the_job_already_ended(pool: MinerPool) -> None:
    content = content_of(5)
    pool.submit(content, 1)
    # By the time follow() writes its record, the job may well be over: the
    # workers chain from its winner all the same.
    start, stop = 2**32 - 1000, 2**32 + 5_000_000
    pool.follow(head_of(1), TAIL, 2, start, stop)
    first = pool.wait(timeout=DEADLINE)
    assert first is not None and valid(content, 1, first)
    second = pool.wait(timeout=DEADLINE)
    assert second is not None and start <= second < stop
    assert valid(next_content(content, first, 1), 2, second)


def test_follow_refuses_what_it_cannot_do(pool: MinerPool) -> None:
    with pytest.raises(MinerPoolError, match="no job to follow"):
        pool.follow(head_of(1), TAIL, 1)
    pool.submit(content_of(6), IMPOSSIBLE)
    try:
        with pytest.raises(ValueError, match="head is"):
            pool.follow(bytes(MAX_HEAD_BYTES + 1), TAIL, 1)
        with pytest.raises(ValueError, match="tail is"):
            pool.follow(head_of(1), bytes(MAX_TAIL_BYTES + 1), 1)
        with pytest.raises(ValueError):
            pool.follow(head_of(1), TAIL, 17)
        with pytest.raises(ValueError):
            pool.follow(head_of(1), TAIL, 1, 10, 5)
        assert pool.outstanding == 1
        for depth in range(2, MAX_OUTSTANDING + 1):
            pool.follow(head_of(depth - 1), TAIL, IMPOSSIBLE)
            assert pool.outstanding == depth
        with pytest.raises(MinerPoolError, match="already outstanding"):
            pool.follow(head_of(MAX_OUTSTANDING), TAIL, 1)
        with pytest.raises(MinerPoolError, match="already running"):
            pool.submit(content_of(7), 1)
    finally:
        pool.abort()
        while pool.outstanding:
            assert pool.wait(timeout=DEADLINE) is None


def test_follow_on_a_closed_pool_is_refused(backend: str) -> None:
    p = MinerPool(1, backend=backend)
    p.submit(content_of(8), IMPOSSIBLE)
    p.close()
    with pytest.raises(MinerPoolError, match="closed"):
        p.follow(head_of(1), TAIL, 1)
    assert p.wait(timeout=DEADLINE) is None


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_killed_mid_chain(backend: str, workers: int) -> None:
    # mine_chain checks that every nonce returned is valid for the content built
    # on the nonce before it, that a job whose nonce was lost returns None and
    # its follow-on then None too, and restarts the chain after a break.
    difficulty = difficulty_for(backend) + 1  # long enough for the kill to land mid-search
    with MinerPool(workers, backend=backend) as p:
        victim = p.pids[0]
        mine_chain(p, content_of(9), difficulty, 12, kill_at=4)
        content = content_of(10)
        nonce = p.mine(content, 2)  # replaces the victim, if nothing noticed its death yet
        assert nonce is not None and valid(content, 2, nonce)
        assert victim not in p.pids and len(p.pids) == workers
        # The replacement takes part again: a range inside worker 0's first chunk.
        nonce = p.mine(content, 2, 0, 100_000)
        assert nonce is not None and valid(content, 2, nonce)


def test_two_workers_finding_at_once_agree_on_one_nonce(backend: str) -> None:
    # At difficulty 1 both workers find a nonce within ~16 hashes of starting,
    # so claims collide all the time. A worker that chained from a nonce other
    # than the one wait() returns would search another content: its nonce, if
    # it won the next claim, would fail the check 15 times in 16 (255 in 256
    # at difficulty 2).
    with MinerPool(2, backend=backend) as p:
        for difficulty in (1, 2):
            nonces = mine_chain(p, content_of(11 + difficulty), difficulty, 150)
            assert all(n is not None for n in nonces)


def test_a_slot_is_never_reused_while_a_job_on_it_is_outstanding() -> None:
    # Outstanding jobs have consecutive ids, and a worker may still read the
    # slot of the job just before the oldest one (pool.py's top comment).
    assert RING > MAX_OUTSTANDING + 1

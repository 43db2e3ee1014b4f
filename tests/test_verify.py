"""`votechain verify` over worker processes (app/verify.py): the same verdict as
`Chain.verified`, block for block, whatever order the workers answer in.

The chains are short (tens of blocks), so each test lowers the chunk size and
the "worth a pool" threshold to push them through real spawned workers in
several chunks. Every test checks that no worker outlives the call.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import NOW, extend, make_block, make_chain, other_key, resign
from votechain.app import cli, verify
from votechain.core.block import Block
from votechain.core.chain import Chain
from votechain.core.membership import Members
from votechain.errors import BadSignature, CliError, InvalidBlock
from votechain.node.store import ChainStore

D = 1
CHUNK = 8
LENGTH = 48  # blocks after the genesis: six chunks
K = 13  # the bad block, mid-way through the second chunk
LATER = 41  # a second bad block, in the sixth chunk
GOOD = make_chain(LENGTH)


@pytest.fixture(autouse=True)
def no_worker_left() -> Iterator[None]:
    yield
    assert multiprocessing.active_children() == []


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's defaults, lowered so that a 49-block chain goes through the pool."""
    monkeypatch.setattr(verify, "CHUNK_BLOCKS", CHUNK)
    monkeypatch.setattr(verify, "MIN_PARALLEL_BLOCKS", 0)


def store_chain(data_dir: Path, blocks: Sequence[Block]) -> Path:
    store = ChainStore.open(data_dir, D)
    try:
        for block in blocks[1:]:  # the store writes the genesis itself
            store.append(block)
    finally:
        store.close()
    return data_dir


def rebuild_after(blocks: list[Block], k: int, bad: Block) -> list[Block]:
    """`blocks` with block k replaced by `bad` and everything after re-mined on top
    of it, so that block k is the only fault."""
    tail = extend(bad, [f"after-{k}-{i}" for i in range(len(blocks) - k - 1)], timestamp=NOW // 2)
    return [*blocks[:k], bad, *tail]


# Each fault, applied to block k of a chain: (name, chain -> chain).
def bad_signature(blocks: list[Block], k: int) -> list[Block]:
    forged = replace(blocks[k], signature=other_key().sign(blocks[k].hash))
    return [*blocks[:k], forged, *blocks[k + 1 :]]


def bad_hash(blocks: list[Block], k: int) -> list[Block]:
    block = blocks[k]
    edited = replace(block, transaction=replace(block.transaction, data=b"mallory"))
    return [*blocks[:k], edited, *blocks[k + 1 :]]


def broken_link(blocks: list[Block], k: int) -> list[Block]:
    return rebuild_after(blocks, k, resign(replace(blocks[k], prev_hash=bytes(32))))


def duplicate_tx(blocks: list[Block], k: int) -> list[Block]:
    return rebuild_after(blocks, k, make_block(blocks[k - 1], blocks[3].transaction))


FAULTS: dict[str, Callable[[list[Block], int], list[Block]]] = {
    "signature": bad_signature,
    "hash": bad_hash,
    "link": broken_link,
    "duplicate": duplicate_tx,
}


def sequential_verdict(blocks: Sequence[Block]) -> str:
    with pytest.raises(InvalidBlock) as info:
        Chain.verified(blocks, difficulty=D, now_ms=NOW)
    return str(info.value)


def parallel_verdict(blocks: Sequence[Block], workers: int = 2) -> InvalidBlock:
    with pytest.raises(InvalidBlock) as info:
        verify.verify_blocks(blocks, difficulty=D, now_ms=NOW, workers=workers,
                             chunk=CHUNK, min_parallel=0)
    return info.value


# ================================================================ verify_blocks


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_good_chain_verifies_with_any_number_of_workers(workers: int) -> None:
    used = verify.verify_blocks(GOOD, difficulty=D, now_ms=NOW, workers=workers,
                                chunk=CHUNK, min_parallel=0)
    assert used == workers


def test_a_short_chain_is_verified_in_process() -> None:
    used = verify.verify_blocks(GOOD, difficulty=D, now_ms=NOW, workers=2, chunk=CHUNK,
                                min_parallel=len(GOOD) + 1)
    assert used == 1


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_block_is_reported_as_chain_verified_reports_it(fault: str, workers: int) -> None:
    blocks = FAULTS[fault](list(GOOD), K)
    expected = sequential_verdict(blocks)
    assert expected.startswith(f"block {K} ")
    assert str(parallel_verdict(blocks, workers)) == expected


@pytest.mark.parametrize("later", FAULTS)
@pytest.mark.parametrize("first", FAULTS)
def test_the_lowest_bad_block_wins_when_a_later_chunk_is_bad_too(first: str, later: str) -> None:
    # The later fault goes in last: link and duplicate faults re-mine what follows.
    blocks = FAULTS[later](FAULTS[first](list(GOOD), K), LATER)
    expected = sequential_verdict(blocks)
    assert expected.startswith(f"block {K} ")
    assert str(parallel_verdict(blocks)) == expected


def test_the_lowest_bad_signature_wins_when_the_last_chunk_answers_first() -> None:
    # A bad signature at the end of the first chunk and at the start of the last:
    # the last chunk may well finish first; the verdict must not change.
    blocks = bad_signature(bad_signature(list(GOOD), LENGTH - CHUNK + 1), CHUNK)
    error = parallel_verdict(blocks, workers=3)
    assert isinstance(error, BadSignature)
    assert error.block.id == CHUNK


def test_a_bad_signature_below_a_block_the_parent_refuses_wins() -> None:
    blocks = bad_hash(bad_signature(list(GOOD), K), K + 1)
    error = parallel_verdict(blocks)
    assert isinstance(error, BadSignature)
    assert str(error) == sequential_verdict(blocks)


def test_a_foreign_genesis_is_refused() -> None:
    blocks = [replace(GOOD[0], nonce=1), *GOOD[1:]]
    assert str(parallel_verdict(blocks)) == sequential_verdict(blocks)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        verify.verify_blocks(GOOD, difficulty=D, now_ms=NOW, workers=0)


# ================================================================ the store and the CLI


@pytest.mark.usefixtures("small_chunks")
def test_the_store_verifies_identically_with_one_and_two_workers(tmp_path: Path) -> None:
    data_dir = store_chain(tmp_path, GOOD)
    one = verify.verify_store(data_dir, workers=1, now_ms=NOW)
    two = verify.verify_store(data_dir, workers=2, now_ms=NOW)
    assert (one.blocks, one.difficulty, one.workers) == (GOOD, D, 1)
    assert (two.blocks, two.difficulty, two.workers) == (GOOD, D, 2)
    assert one.rate > 0 and two.rate > 0


@pytest.mark.usefixtures("small_chunks")
def test_a_bad_store_is_one_cli_error_naming_the_block(tmp_path: Path) -> None:
    blocks = bad_signature(list(GOOD), K)
    data_dir = store_chain(tmp_path, blocks)
    with pytest.raises(CliError) as info:
        verify.verify_store(data_dir, workers=2, now_ms=NOW)
    assert str(info.value) == f"{data_dir}: bad chain: {sequential_verdict(blocks)}"
    assert str(info.value).startswith(f"{data_dir}: bad chain: block {K} ")


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("fault", FAULTS)
def test_cli_verify_with_workers_exits_1_naming_the_first_bad_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    blocks = bad_signature(FAULTS[fault](list(GOOD), K), LATER)
    data_dir = store_chain(tmp_path, blocks)
    status = cli.main(["verify", "--data-dir", str(data_dir), "--workers", "2"])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err == (
        f"votechain verify: error: {data_dir}: bad chain: {sequential_verdict(blocks)}\n"
    )


@pytest.mark.usefixtures("small_chunks")
def test_cli_verify_reports_the_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = store_chain(tmp_path, GOOD)
    assert cli.main(["verify", "--data-dir", str(data_dir), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"chain OK: {len(GOOD)} blocks (height {LENGTH}), difficulty {D}, ")
    assert f"; verified {len(GOOD)} blocks in " in out
    assert out.rstrip().endswith("blocks/s, 2 workers)")


def test_cli_verify_refuses_zero_workers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["verify", "--workers", "0"])
    assert info.value.code == 2


class _InterruptedChain(Chain):
    """Ctrl-C arriving while the parent checks block K, with chunks already queued."""

    def append(self, block: Block, *, difficulty: int, now_ms: int,
               signature: bool = True, members: Members | None = None) -> None:
        if block.id == K + CHUNK:
            raise KeyboardInterrupt
        super().append(block, difficulty=difficulty, now_ms=now_ms, signature=signature,
                       members=members)


@pytest.mark.usefixtures("small_chunks")
def test_ctrl_c_mid_verify_exits_130_and_leaves_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = store_chain(tmp_path, GOOD)
    monkeypatch.setattr(verify, "Chain", _InterruptedChain)
    assert cli.main(["verify", "--data-dir", str(data_dir), "--workers", "2"]) == 130

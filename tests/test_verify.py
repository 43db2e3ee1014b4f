"""`votechain verify` over worker processes (app/verify.py): the same verdict as
`Chain.verified`, block for block, whatever order the workers answer in.

The chains are short (tens of blocks), so each test lowers the chunk size and
the "worth a pool" threshold to push them through real spawned workers in
several chunks. Every test checks that no worker outlives the call.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from blockkit import NOW, T0, extend, make_block, make_chain, other_key, resign
from votechain.app import cli, verify
from votechain.core.block import Block
from votechain.core.chain import Chain
from votechain.core.node_state import UnreadableRow
from votechain.core.voting import tally
from votechain.errors import BadSignature, CliError, DamagedRow, InvalidBlock
from votechain.node.store import DB_FILE, ChainStore

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


def duplicate_in_chunk(blocks: list[Block], k: int) -> list[Block]:
    """A vote of three blocks before: in the same chunk, for both K and LATER."""
    return rebuild_after(blocks, k, make_block(blocks[k - 1], blocks[k - 3].transaction))


FAULTS: dict[str, Callable[[list[Block], int], list[Block]]] = {
    "signature": bad_signature,
    "hash": bad_hash,
    "link": broken_link,
    "duplicate": duplicate_tx,
    "duplicate in chunk": duplicate_in_chunk,
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


@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_block_a_helper_finds_is_reported_as_chain_verified_reports_it(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first chunk always goes to the pool (this process takes a chunk only
    # when the pool has enough, and steals only later ones at the end): a fault
    # in it travels back from a real worker as (position, type, detail).
    k = 5
    blocks = FAULTS[fault](list(GOOD), k)
    checked_here: list[int] = []
    check_here = verify._check_chunk

    def recording(prev: Block, items: Sequence[Block], rules: verify._Rules) -> verify._Checked:
        checked_here.extend(block.id for block in items)
        return check_here(prev, items, rules)

    monkeypatch.setattr(verify, "_check_chunk", recording)
    expected = sequential_verdict(blocks)
    assert expected.startswith(f"block {k} ")
    assert str(parallel_verdict(blocks)) == expected
    assert k not in checked_here


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
    # What the chain holds, counted while streaming: no block list is kept.
    expected = (len(GOOD), GOOD[-1].id, GOOD[-1].hash, tally(GOOD), D)
    assert (one.count, one.tip_id, one.tip_hash, one.tally, one.difficulty) == expected
    assert (two.count, two.tip_id, two.tip_hash, two.tally, two.difficulty) == expected
    assert (one.workers, two.workers) == (1, 2)
    assert list(one.tally.values()) == sorted(one.tally.values(), reverse=True)
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


# ================================================================ streaming the store's rows


def sql(data_dir: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        conn.execute(statement, args)
    conn.close()


def body_of(data_dir: Path, block_id: int) -> bytes:
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        (body,) = conn.execute("SELECT body FROM blocks WHERE id = ?", (block_id,)).fetchone()
    conn.close()
    assert isinstance(body, bytes)
    return body


def first_damaged_row(data_dir: Path) -> DamagedRow:
    """What ChainStore.rows says of the first row that holds no block."""
    store = ChainStore.open_readonly(data_dir)
    try:
        row = next(row for row in store.rows() if isinstance(row, UnreadableRow))
    finally:
        store.close()
    return DamagedRow(row)


# Damage to stored row `at` (CHUNK rows a batch: row 8 starts the second one).
DAMAGE: dict[str, Callable[[Path, int], None]] = {
    "junk body": lambda d, at: sql(d, "UPDATE blocks SET body = ? WHERE id = ?",
                                   b"\x81\xa1x\x01", at),
    "another block": lambda d, at: sql(d, "UPDATE blocks SET body = ? WHERE id = ?",
                                       body_of(d, at + 1), at),
    "hash column": lambda d, at: sql(d, "UPDATE blocks SET hash = ? WHERE id = ?",
                                     bytes(32), at),
    "deleted": lambda d, at: sql(d, "DELETE FROM blocks WHERE id = ?", at),
}


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize(("damage", "at"), [
    (damage, at) for damage in DAMAGE for at in (0, CHUNK, 20, LENGTH)
    # The tip has no next block to copy, and a chain without its tip is whole.
    if at < LENGTH or damage not in ("another block", "deleted")
])
@pytest.mark.parametrize("workers", [1, 2])
def test_the_first_damaged_row_is_named_as_the_store_names_it(
    tmp_path: Path, damage: str, at: int, workers: int
) -> None:
    data_dir = store_chain(tmp_path, GOOD)
    DAMAGE[damage](data_dir, at)
    if at + 2 * CHUNK < LENGTH:  # and a second one, two chunks higher
        DAMAGE[damage](data_dir, at + 2 * CHUNK)
    with pytest.raises(CliError) as info:
        verify.verify_store(data_dir, workers=workers, now_ms=NOW)
    assert str(info.value) == f"{data_dir}: bad chain: {first_damaged_row(data_dir)}"
    assert f"stored row {at} " in str(info.value)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_block_below_a_damaged_row_is_the_verdict(
    tmp_path: Path, damage: str, workers: int
) -> None:
    blocks = bad_hash(list(GOOD), K)
    data_dir = store_chain(tmp_path, blocks)
    DAMAGE[damage](data_dir, LATER)
    with pytest.raises(CliError) as info:
        verify.verify_store(data_dir, workers=workers, now_ms=NOW)
    assert str(info.value) == f"{data_dir}: bad chain: {sequential_verdict(blocks)}"


@pytest.mark.usefixtures("small_chunks")
def test_the_store_is_streamed_never_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = store_chain(tmp_path, GOOD)

    def whole(*args: object) -> object:
        raise AssertionError("verify read the whole chain at once")

    for method in ("rows", "blocks", "walk"):
        monkeypatch.setattr(ChainStore, method, whole)
    assert verify.verify_store(data_dir, workers=2, now_ms=NOW).count == len(GOOD)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("workers", [1, 3])
def test_the_tally_and_tip_are_counted_while_streaming(tmp_path: Path, workers: int) -> None:
    # Votes for three categories, and a block whose data is no vote.
    blocks = [GOOD[0]]
    for i, label in enumerate(["red", "blue", "red", " red", "green", "red", "blue"] * 3):
        blocks += extend(blocks[-1], [label], timestamp=T0 + i)
    data_dir = store_chain(tmp_path, blocks)
    verified = verify.verify_store(data_dir, workers=workers, now_ms=NOW)
    assert verified.tally == tally(blocks) == {"red": 9, "blue": 6, "green": 3}
    assert list(verified.tally) == ["red", "blue", "green"]
    assert (verified.count, verified.tip_id, verified.tip_hash) == (
        len(blocks), blocks[-1].id, blocks[-1].hash)
    assert verified.workers == workers


def test_an_empty_store_is_one_cli_error(tmp_path: Path) -> None:
    data_dir = store_chain(tmp_path, GOOD[:1])
    sql(data_dir, "DELETE FROM blocks")
    with pytest.raises(CliError, match="the store holds no block"):
        verify.verify_store(data_dir, workers=1, now_ms=NOW)


def test_cli_verify_refuses_zero_workers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["verify", "--workers", "0"])
    assert info.value.code == 2


@pytest.mark.usefixtures("small_chunks")
def test_ctrl_c_mid_verify_exits_130_and_leaves_no_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C arriving while the parent checks a chunk of its own, with chunks
    # queued in the pool (the helper is still starting: the pool is full).
    data_dir = store_chain(tmp_path, GOOD)

    def interrupted(*args: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "_check_chunk", interrupted)
    assert cli.main(["verify", "--data-dir", str(data_dir), "--workers", "2"]) == 130

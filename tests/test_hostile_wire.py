"""Hostile bytes against the peer decoder, with no sockets: what tests/test_wire.py's
fuzzing does not already cover.

The contract under test, for any bytes at all:
- `decode_payload` and the FrameDecoder (`PEER.decoder()`) raise nothing but
  `errors.RemoteProtocolError` (the peer's fault), with a reason no longer than
  MAX_REASON_CHARS;
- whatever they accept, our own encoder can send back unchanged (a decoder that
  accepted what the encoder refuses would let a peer make us fail loudly);
- a stream of frames, cut anywhere, decodes to the same messages, and a bad frame
  costs exactly that frame (or, for a bad length prefix, the rest of the stream).

Fuzzed with hypothesis here, and with atheris (coverage-guided, libFuzzer) when it
is installed: ``python tests/hostile.py --atheris [libFuzzer options] [corpus dir]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
from hostile import check_payload
from votechain.errors import MAX_REASON_CHARS, RemoteProtocolError
from votechain.protocol.framing import PREFIX_BYTES
from votechain.protocol.peer import MAX_FRAME_BYTES, PEER, Message, decode_payload

VECTORS_FILE = Path(__file__).parent / "vectors" / "wire_vectors.json"
# One valid payload (frame minus prefix) of every message type, from the fixed vectors.
PAYLOADS: dict[str, bytes] = {
    name: bytes.fromhex(frame_hex)[PREFIX_BYTES:]
    for name, frame_hex in json.loads(VECTORS_FILE.read_text()).items()
}

_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- nested field mutations

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=40)
    | st.sampled_from([b"\x00" * 16, b"\x00" * 32, 0, 2**64 - 1, "", b""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=8,
)


def _containers(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every map and array inside `obj`, itself included."""
    found: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        found.append(path)
        for key, value in obj.items():
            found += _containers(value, (*path, key))
    elif isinstance(obj, list):
        found.append(path)
        for i, value in enumerate(obj):
            found += _containers(value, (*path, i))
    return found


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def _retyped(value: object) -> object:
    """`value` as another msgpack type: bin as str, str as bin, int as float, ..."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return float(value)  # 2**64 - 1 and the like lose precision: still a float
    return [value]


@given(
    st.sampled_from(sorted(PAYLOADS)),
    st.data(),
    st.sampled_from(["replace", "delete", "add", "retype"]),
    _values,
)
@_fuzz
def test_fuzz_nested_field_mutations(name: str, data: st.DataObject, how: str,
                                     value: object) -> None:
    """Missing, extra and mistyped fields at any depth (inside blocks and batches too)."""
    obj = msgpack.unpackb(PAYLOADS[name], raw=False)
    container = _at(obj, data.draw(st.sampled_from(_containers(obj))))
    keys = list(container) if isinstance(container, dict) else list(range(len(container)))
    if how == "add":
        if isinstance(container, dict):
            container[data.draw(st.text(max_size=12))] = value
        else:
            container.append(value)
    elif not keys:
        return
    else:
        key = data.draw(st.sampled_from(keys))
        if how == "delete":
            del container[key]
        elif how == "replace":
            container[key] = value
        else:  # the same content under another msgpack type
            container[key] = _retyped(container[key])
    check_payload(msgpack.packb(obj, use_bin_type=True))


# Headers that declare more than follows, or nest deeply, or are never valid.
_HOSTILE_HEADERS = [
    b"\xc1",  # never used by msgpack
    b"\xdc\xff\xff",  # array16 of 65535
    b"\xdd\xff\xff\xff\xff",  # array32 of 4G
    b"\xde\xff\xff",  # map16
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xda\xff\xff",  # str16
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GB
    b"\xc5\xff\xff",  # bin16
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\xd6\xff\x00\x00\x00\x00",  # the Timestamp ext
    b"\x91" * 2000,  # nested arrays past the C decoder's 1024-deep stack
    b"\x81\xa1a" * 2000,  # nested maps
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # a NaN float
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # the most negative int64
]


@given(
    st.sampled_from(sorted(PAYLOADS)),
    st.integers(min_value=0),
    st.sampled_from(_HOSTILE_HEADERS),
    st.booleans(),
)
@_fuzz
def test_fuzz_hostile_headers_spliced_anywhere(name: str, where: int, header: bytes,
                                               overwrite: bool) -> None:
    payload = PAYLOADS[name]
    i = where % (len(payload) + 1)
    tail = payload[i + len(header):] if overwrite else payload[i:]
    check_payload(payload[:i] + header + tail)


@given(st.binary(min_size=1, max_size=4000))
@_fuzz
def test_fuzz_accepted_payloads_are_sendable(payload: bytes) -> None:
    # Random bytes behind a valid map header reach the field checks more often.
    check_payload(payload)
    check_payload(b"\x82\xa4type" + payload)


# ---------------------------------------------------------------- streams of frames


_segments = st.lists(
    st.one_of(
        st.tuples(st.just("good"), st.sampled_from(sorted(PAYLOADS))),
        st.tuples(st.just("junk"), st.binary(min_size=1, max_size=200)),
    ),
    max_size=8,
)


@given(
    _segments,
    st.sampled_from(["end", "bad prefix", "zero prefix", "cut"]),
    st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40),
)
@_fuzz
def test_fuzz_frame_streams_cut_anywhere(
    segments: list[tuple[str, Any]], ending: str, cuts: list[int]
) -> None:
    stream = b""
    expected: list[Message | None] = []  # None: a junk frame, which may go either way
    for kind, item in segments:
        payload = PAYLOADS[item] if kind == "good" else item
        stream += len(payload).to_bytes(PREFIX_BYTES, "big") + payload
        expected.append(decode_payload(payload) if kind == "good" else None)
    stream += {
        "end": b"",
        "bad prefix": (MAX_FRAME_BYTES + 1).to_bytes(PREFIX_BYTES, "big") + b"\xc0" * 10,
        "zero prefix": bytes(PREFIX_BYTES) + b"\xc0",
        "cut": (1000).to_bytes(PREFIX_BYTES, "big") + b"\xc0" * 10,
    }[ending]

    decoder = PEER.decoder()
    got: list[Message | None] = []
    stopped = False
    position, step = 0, 0
    while position < len(stream) and not stopped:
        size = min(cuts[step % len(cuts)], decoder.room) or 1
        decoder.feed(stream[position : position + size])
        position, step = position + size, step + 1
        while True:
            try:
                msg = decoder.next_message()
            except RemoteProtocolError as exc:
                assert len(exc.reason) <= MAX_REASON_CHARS
                if decoder.failed:
                    # A bad prefix right behind a junk frame fails the decoder as the
                    # junk frame's own error comes out; the sticky error is the other.
                    with pytest.raises(RemoteProtocolError) as sticky:
                        decoder.next_message()
                    if sticky.value is not exc:
                        got.append(None)
                    stopped = True
                    break
                got.append(None)
                continue
            if msg is None:
                break
            got.append(msg)
        assert decoder.buffered <= PREFIX_BYTES + MAX_FRAME_BYTES

    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        if want is not None:
            assert have == want
    assert stopped == (ending in ("bad prefix", "zero prefix"))
    if ending == "cut":
        assert decoder.buffered > 0  # half a frame, waiting: the transport's deadline ends it


# ---------------------------------------------------------------- atheris


def _has_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


@pytest.mark.skipif(not _has_atheris(), reason="atheris is not installed (pip install atheris)")
def test_atheris_short_run(tmp_path: Path) -> None:
    """A bounded coverage-guided run, seeded with one valid payload of every message."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, payload in PAYLOADS.items():
        (corpus / name).write_bytes(payload)
    result = subprocess.run(
        [sys.executable, hostile.__file__, "--atheris", "-runs=50000", "-max_total_time=10",
         "-max_len=4096", "-rss_limit_mb=1024", str(corpus)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr


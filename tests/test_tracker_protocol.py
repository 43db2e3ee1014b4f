"""The tracker's text protocol, pure: bytes in, values out, no sockets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from votechain.errors import LineTooLongError, TrackerProtocolError, TrackerReplyError
from votechain.protocol.tracker_lines import (
    MAX_LINE_BYTES,
    ErrorReply,
    LineBuffer,
    Nodes,
    NodesReply,
    Ok,
    Register,
    ResponseDecoder,
    encode_nodes,
    encode_request,
    encode_response,
    parse_nodes_line,
    parse_nodes_response,
    parse_request,
)

# ---------------------------------------------------------------- LineBuffer


def drain(buffer: LineBuffer) -> list[bytes]:
    lines = []
    while (line := buffer.next_line()) is not None:
        lines.append(line)
    return lines


def test_line_buffer_joins_chunks_and_splits_lines() -> None:
    buffer = LineBuffer()
    buffer.feed(b"REGI")
    assert drain(buffer) == []
    assert buffer.has_pending_bytes
    buffer.feed(b"STER 5\nNODES\r\nNO")
    assert drain(buffer) == [b"REGISTER 5", b"NODES"]
    buffer.feed(b"DES\n")
    assert drain(buffer) == [b"NODES"]
    assert not buffer.has_pending_bytes


def test_line_buffer_accepts_a_line_exactly_at_the_cap() -> None:
    buffer = LineBuffer(8)
    buffer.feed(b"x" * 8 + b"\n")
    assert drain(buffer) == [b"x" * 8]


def test_line_buffer_rejects_a_complete_line_over_the_cap() -> None:
    buffer = LineBuffer(8)
    buffer.feed(b"x" * 9 + b"\n")
    with pytest.raises(LineTooLongError):
        buffer.next_line()


def test_line_buffer_rejects_a_partial_line_over_the_cap() -> None:
    # The peer never sends "\n": we must not keep buffering.
    buffer = LineBuffer()
    buffer.feed(b"A" * MAX_LINE_BYTES)
    assert buffer.next_line() is None
    buffer.feed(b"A")
    with pytest.raises(LineTooLongError):
        buffer.next_line()


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=20), st.data())
def test_line_buffer_any_chunking_gives_the_same_lines(
    lines: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buffer = LineBuffer()
    got: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buffer.feed(stream[start:end])
        got += drain(buffer)
    expected = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    assert got == expected


# ---------------------------------------------------------------- requests


def test_parse_request_valid() -> None:
    assert parse_request(b"REGISTER 5000") == Register(5000)
    assert parse_request(b"REGISTER 1") == Register(1)
    assert parse_request(b"REGISTER 65535") == Register(65535)
    assert parse_request(b"NODES") == Nodes()


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"", "empty"),
        (b"HELLO", "unknown command"),
        (b"nodes", "unknown command"),
        (b"NODES please", "usage"),
        (b"REGISTER", "usage"),
        (b"REGISTER 1 2", "usage"),
        (b"REGISTER  5", "usage"),
        (b"REGISTER 0", "1..65535"),
        (b"REGISTER 70000", "1..65535"),
        (b"REGISTER abc", "decimal"),
        (b"REGISTER +5", "decimal"),
        (b"REGISTER -5", "decimal"),
        (b"REGISTER 5_0", "decimal"),
        (b"REGISTER \xc2\xb2", "ASCII"),
        (b"\xff\xfe\x00", "ASCII"),
    ],
)
def test_parse_request_rejects(line: bytes, fragment: str) -> None:
    with pytest.raises(TrackerProtocolError) as info:
        parse_request(line)
    assert fragment in info.value.reason


def test_unknown_command_is_echoed_short_and_printable() -> None:
    with pytest.raises(TrackerProtocolError) as info:
        parse_request(b"\x1b[31m" + b"X" * 200)
    reason = info.value.reason
    assert len(reason) < 80
    assert reason.isprintable()


@given(st.integers(1, 65535))
def test_register_round_trips(port: int) -> None:
    line = encode_request(Register(port))
    assert line.endswith(b"\n")
    assert parse_request(line[:-1]) == Register(port)


def test_encode_request_rejects_our_own_bad_port() -> None:
    with pytest.raises(ValueError):
        encode_request(Register(0))


# ---------------------------------------------------------------- responses


def test_nodes_reply_is_the_seed_format_byte_for_byte() -> None:
    assert encode_nodes([]) == b"NODES\n\n"
    assert encode_nodes([("10.0.0.1", 5000)]) == b"NODES\n10.0.0.1,5000\n"
    assert (
        encode_nodes([("10.0.0.1", 5000), ("10.0.0.2", 6001)])
        == b"NODES\n10.0.0.1,5000 10.0.0.2,6001\n"
    )


def test_simple_replies() -> None:
    assert encode_response(Ok()) == b"OK\n"
    assert encode_response(ErrorReply("bad port")) == b"ERROR bad port\n"
    # A reason can never break the framing.
    assert encode_response(ErrorReply("a\nb\xe9")) == b"ERROR a\\nb\\xe9\n"


def test_decoder_reads_replies_fed_one_byte_at_a_time() -> None:
    stream = b"OK\nERROR no such thing\nNODES\n\nNODES\n1.2.3.4,5 ::1,65535\n"
    decoder = ResponseDecoder()
    got = []
    for byte in stream:
        decoder.feed(bytes([byte]))
        while (reply := decoder.next_response()) is not None:
            got.append(reply)
    assert got == [
        Ok(),
        ErrorReply("no such thing"),
        NodesReply(()),
        NodesReply((("1.2.3.4", 5), ("::1", 65535))),
    ]
    assert decoder.idle


@given(st.lists(st.tuples(st.ip_addresses(), st.integers(1, 65535)), max_size=50))
def test_nodes_round_trips(
    peers: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]],
) -> None:
    as_text = [(str(ip), port) for ip, port in peers]
    assert parse_nodes_response(encode_nodes(as_text)) == as_text


@pytest.mark.parametrize(
    "line",
    [
        b"1.2.3.4",
        b"1.2.3.4,",
        b"1.2.3.4,0",
        b"1.2.3.4,70000",
        b"host,80",
        b",80",
        b"1.2.3.4,5 ",
        b"\xff,1",
    ],
)
def test_parse_nodes_line_rejects(line: bytes) -> None:
    with pytest.raises(TrackerReplyError):
        parse_nodes_line(line)


@pytest.mark.parametrize(
    "data", [b"OK\n", b"NODES\n", b"NODES\n1.2.3.4,5", b"NODES\n\nOK\n", b"HELLO\n"]
)
def test_parse_nodes_response_rejects_incomplete_trailing_or_foreign(data: bytes) -> None:
    with pytest.raises(TrackerReplyError):
        parse_nodes_response(data)


def test_decoder_caps_what_it_buffers() -> None:
    decoder = ResponseDecoder(max_response_bytes=64)
    decoder.feed(b"NODES\n" + b"1.2.3.4,5 " * 10)
    with pytest.raises(TrackerReplyError):
        decoder.next_response()


def test_parse_nodes_line_takes_ipv6_with_a_zone() -> None:
    # getpeername() reports link-local IPv6 peers with their interface.
    assert parse_nodes_line(b"fe80::1%eth0,5000") == [("fe80::1%eth0", 5000)]
    with pytest.raises(TrackerReplyError):
        parse_nodes_line(b"fe80::1%,5000")

"""Deprecated: the old home of the peer protocol, kept only until every import
names the new modules (protocol/peer.py for messages, protocol/framing.py for
frames). Delete it once nothing imports it."""

from __future__ import annotations

from votechain.protocol.framing import PREFIX_BYTES
from votechain.protocol.peer import (
    MAX_BATCH_BLOCKS,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Add,
    AddResult,
    Blocks,
    Error,
    GetBlocks,
    GetLatest,
    Hello,
    Latest,
    Message,
    check_hello,
    decode_payload,
    encode,
)

__all__ = [
    "MAX_BATCH_BLOCKS",
    "MAX_FRAME_BYTES",
    "MESSAGE_TYPES",
    "PREFIX_BYTES",
    "PROTOCOL_VERSION",
    "Add",
    "AddResult",
    "Blocks",
    "Error",
    "GetBlocks",
    "GetLatest",
    "Hello",
    "Latest",
    "Message",
    "check_hello",
    "decode_payload",
    "encode",
]

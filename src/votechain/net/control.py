"""Deprecated: the old home of the control channel, kept only until every import
names the new modules (net/control_server.py, net/control_client.py, and
protocol/control.py for the messages). Delete it once nothing imports it."""

from __future__ import annotations

from votechain.core.codec import pack
from votechain.net.control_client import ControlClient
from votechain.net.control_server import (
    COOKIE_FILE,
    MAX_CONTROL_CONNECTIONS,
    PORT_FILE,
    ControlHandler,
    ControlServer,
)
from votechain.protocol.control import CONTROL_REQUESTS
from votechain.protocol.framing import encode_frame as _encode_frame

__all__ = [
    "COOKIE_FILE",
    "MAX_CONTROL_CONNECTIONS",
    "PORT_FILE",
    "ControlClient",
    "ControlHandler",
    "ControlServer",
    "encode_frame",
]


def encode_frame(obj: object) -> bytes:
    """A request frame carrying `obj` unchecked (tests/hostile.py's raw_frame does the same)."""
    return _encode_frame(pack(obj), CONTROL_REQUESTS.cap)

"""The control channel: how the node's owner (the `votechain` command) talks to a running node.

Only the owner may use it, and a remote peer can never cast a vote as this node:
- the server binds 127.0.0.1 and nothing else, so it is not reachable off the machine;
- every connection must first prove it can read the node's data directory, by
  sending the cookie the server wrote there with mode 0600 (as Bitcoin Core's
  RPC `.cookie`): 32 random bytes, hex, fresh at every start, compared in
  constant time. Other local users cannot read it; a stale copy stops working
  at the next start.

Files in the data directory while the server runs (both removed by `stop()`):
  control.cookie   the cookie, mode 0600
  control.port     the TCP port on 127.0.0.1, decimal

Framing: a 4-byte big-endian length, then that many bytes holding one msgpack map.
The client opens one connection per call: auth, one request, one reply, close.

  client -> server   {"type": "auth", "cookie": hex}          first frame, always
  server -> client   {"ok": true} | {"ok": false, "error": "bad cookie"} (and close)
  client -> server   {"type": "vote", "category": str, "timeout": float}
                     {"type": "status"} | {"type": "tally"}
  server -> client   {"ok": true, ...fields} | {"ok": false, "error": reason}

  vote   -> block_id (int), hash (hex), tx_id (hex), once the vote is in the node's chain
  status -> status: {height, tip, peers, pending, backend, hashrate}
  tally  -> tally: {category: count}

A malformed request gets an error reply and the connection stays usable (the
frame boundary is intact); an oversized or truncated frame, or a failed auth,
gets an error reply and a closed connection. Nothing a client sends can crash
the node: a handler bug is logged and answered with "internal error".
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack

from votechain.core.block import Block
from votechain.errors import (
    ControlError,
    ControlProtocolError,
    InvalidVote,
    NodeNotRunning,
    NodeStopping,
)
from votechain.net.sockets import stop_listener, wake

log = logging.getLogger("votechain.control")

COOKIE_FILE = "control.cookie"
PORT_FILE = "control.port"
COOKIE_BYTES = 32
HOST = "127.0.0.1"

# Why 64 KiB: the largest request is a vote, whose category is at most 256
# bytes of UTF-8; anyone on this machine can connect and send a length prefix
# before authenticating, so the server must never allocate more than a small
# fixed amount per connection on the word of a stranger.
MAX_CONTROL_FRAME_BYTES = 64 * 1024
# Why 16 MiB for replies: a tally has one entry per distinct category, up to
# ~270 bytes each, and the chain decides how many there are, not the client;
# 64 KiB would cap a tally at ~240 categories. The client only reads replies
# from the node whose port its owner's data directory names, so a bigger
# (still finite) cap is safe there.
MAX_CONTROL_REPLY_BYTES = 16 * 1024 * 1024
# Why 64: one owner runs a handful of commands at a time; a cap keeps a local
# flood of connections from exhausting the node's threads and descriptors.
MAX_CONTROL_CONNECTIONS = 64
# Why 5 s: the real client sends its cookie immediately; a connection that has
# not authenticated by then is not the owner, and holds a thread slot. A
# deadline for the whole auth frame, not a read timeout: one byte every few
# seconds would otherwise hold the slot for as long as the sender likes.
AUTH_TIMEOUT = 5.0
# An authenticated client that goes silent this long between requests is gone.
IDLE_TIMEOUT = 300.0
# A vote may wait at most an hour for its block; a longer wait is a mistake.
MAX_VOTE_TIMEOUT = 3600.0
DEFAULT_VOTE_TIMEOUT = 120.0
# How long stop() waits, in all, for connection threads (a vote may be waiting in the handler).
STOP_JOIN_TIMEOUT = 5.0

_HEADER_BYTES = 4


class ControlHandler(Protocol):
    """What the node offers the control channel."""

    def submit_vote(self, category: str) -> bytes:
        """Validate (raising voting.InvalidVote), queue for mining, return the tx_id."""
        ...

    def wait_for_tx(self, tx_id: bytes, timeout: float) -> Block | None:
        """The block holding `tx_id` once it is in this node's chain; None on timeout.
        Raises NodeStopping if the node shuts down first."""
        ...

    def status(self) -> dict[str, object]:
        """Keys height, tip (hex), peers (int), pending (int), backend (str), hashrate (float)."""
        ...

    def tally(self) -> dict[str, int]: ...


# ================================================================ messages (pure)


@dataclass(frozen=True, slots=True)
class Auth:
    cookie: str


@dataclass(frozen=True, slots=True)
class VoteRequest:
    category: str
    timeout: float


@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


@dataclass(frozen=True, slots=True)
class TallyRequest:
    pass


Request = Auth | VoteRequest | StatusRequest | TallyRequest


def _parse_auth(fields: Mapping[str, Any]) -> Request:
    cookie = fields["cookie"]
    if not isinstance(cookie, str):
        raise ControlProtocolError("auth.cookie must be a string")
    return Auth(cookie)


def _parse_vote(fields: Mapping[str, Any]) -> Request:
    category, timeout = fields["category"], fields["timeout"]
    if not isinstance(category, str):
        raise ControlProtocolError("vote.category must be a string")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise ControlProtocolError("vote.timeout must be a number")
    if not 0 < timeout <= MAX_VOTE_TIMEOUT:
        raise ControlProtocolError(f"vote.timeout must be in (0, {MAX_VOTE_TIMEOUT:g}] seconds")
    return VoteRequest(category, float(timeout))


# type tag -> (the fields it must have, beside "type"; its parser)
_REQUESTS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any]], Request]]] = {
    "auth": (("cookie",), _parse_auth),
    "vote": (("category", "timeout"), _parse_vote),
    "status": ((), lambda _fields: StatusRequest()),
    "tally": ((), lambda _fields: TallyRequest()),
}


def encode_request(request: Request) -> dict[str, Any]:
    match request:
        case Auth(cookie=cookie):
            return {"type": "auth", "cookie": cookie}
        case VoteRequest(category=category, timeout=timeout):
            return {"type": "vote", "category": category, "timeout": timeout}
        case StatusRequest():
            return {"type": "status"}
        case TallyRequest():
            return {"type": "tally"}


def parse_request(obj: object) -> Request:
    """A request from a decoded frame; rejects unknown types, missing and extra fields."""
    if not isinstance(obj, dict):
        raise ControlProtocolError(f"a request must be a map, got {type(obj).__name__}")
    tag = obj.get("type")
    if not isinstance(tag, str) or tag not in _REQUESTS:
        raise ControlProtocolError(f"unknown request type {tag!r}")
    keys, parser = _REQUESTS[tag]
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ControlProtocolError(f"{tag} request is missing {', '.join(missing)}")
    extra = sorted(str(k) for k in obj if k != "type" and k not in keys)
    if extra:
        raise ControlProtocolError(f"{tag} request has unknown fields {', '.join(extra)}")
    return parser(obj)


def encode_frame(obj: object) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(_HEADER_BYTES, "big") + body


def decode_body(body: bytes, max_map_len: int) -> object:
    """Exactly one msgpack object; trailing bytes and junk are ControlProtocolError."""
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_map_len=max_map_len,
            max_array_len=max_map_len,
        )
    except msgpack.ExtraData as exc:
        raise ControlProtocolError("trailing bytes after the msgpack map") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ControlProtocolError(f"malformed msgpack: {exc}") from exc


class _Closed(Exception):
    """The other side closed the connection (cleanly between frames, or mid-frame)."""


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """`n` bytes; with a `deadline` (time.monotonic()), TimeoutError once it passes."""
    chunks: list[bytes] = []
    while n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            sock.settimeout(remaining)
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise _Closed("connection closed mid-frame" if chunks else "connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(sock: socket.socket, cap: int, deadline: float | None = None) -> bytes:
    """One frame's body. Raises _Closed, ControlProtocolError (over `cap`) or OSError
    (TimeoutError if `deadline`, a time.monotonic() value, passes)."""
    header = _recv_exact(sock, _HEADER_BYTES, deadline)
    length = int.from_bytes(header, "big")
    # Checked before reading a byte of the body: the length is the sender's word.
    if length > cap:
        raise ControlProtocolError(f"frame of {length} bytes is over the cap of {cap}")
    try:
        return _recv_exact(sock, length, deadline)
    except _Closed as exc:
        raise ControlProtocolError("connection closed mid-frame") from exc


def _error(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": reason}


# ================================================================ server


class ControlServer:
    """Serves `handler` on 127.0.0.1 (a free port) to whoever holds the cookie in `data_dir`."""

    def __init__(
        self, handler: ControlHandler, data_dir: Path, *, auth_timeout: float = AUTH_TIMEOUT
    ) -> None:
        self._handler = handler
        self._data_dir = Path(data_dir)
        self._auth_timeout = auth_timeout
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None
        self._cookie = ""
        self._stopping = False

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("ControlServer.address read before start()")
        return self._address

    @property
    def cookie_path(self) -> Path:
        return self._data_dir / COOKIE_FILE

    @property
    def port_path(self) -> Path:
        return self._data_dir / PORT_FILE

    def start(self) -> None:
        """Listen on 127.0.0.1, then write the cookie and the port (in that order)."""
        with self._lock:
            if self._listener is not None or self._stopping:
                raise RuntimeError("a ControlServer can be started only once")
            self._data_dir.mkdir(parents=True, exist_ok=True)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # Loopback only, by construction: there is no host parameter to get wrong.
                listener.bind((HOST, 0))
                # A backlog as deep as the connection cap: a burst of connections
                # queues rather than having SYNs dropped (1 s retry each).
                listener.listen(MAX_CONTROL_CONNECTIONS)
                self._cookie = secrets.token_bytes(COOKIE_BYTES).hex()
                _write_private(self.cookie_path, self._cookie + "\n")
                # The port file last: a client that finds it also finds the cookie.
                port = listener.getsockname()[1]
                _write_private(self.port_path, f"{port}\n")
            except OSError:
                listener.close()
                self._remove_files()
                raise
            self._listener = listener
            self._address = (HOST, port)
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener,), name="control-accept", daemon=True
            )
            self._accept_thread.start()
        log.info("control channel on %s:%d", HOST, port)

    def stop(self) -> None:
        """Remove the files, stop accepting, close every connection. Idempotent."""
        with self._lock:
            self._stopping = True
            listener, accept_thread = self._listener, self._accept_thread
            started = listener is not None
        if started:
            # Files first: from now on a client sees "no running node", not a hang.
            self._remove_files()
        stop_listener(listener, accept_thread)
        with self._lock:
            connections = list(self._connections.items())
            for conn, _thread in connections:
                wake(conn)
        # A thread inside handler.wait_for_tx wakes only when the handler lets
        # it; the threads are daemons, so do not let one hold up the node's exit.
        deadline = time.monotonic() + STOP_JOIN_TIMEOUT
        for _conn, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("control connection thread %s still busy at stop", thread.name)

    def _remove_files(self) -> None:
        for path in (self.port_path, self.cookie_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _addr = listener.accept()
            except OSError:
                if self._stopping:
                    return
                log.exception("control channel: accept failed; no longer accepting")
                return
            with self._lock:
                refuse = self._stopping or len(self._connections) >= MAX_CONTROL_CONNECTIONS
                if not refuse:
                    thread = threading.Thread(
                        target=self._serve, args=(conn,), name="control-conn", daemon=True
                    )
                    self._connections[conn] = thread
                    thread.start()
            if refuse:
                log.warning("control channel: refusing a connection (too many)")
                with contextlib.suppress(OSError):
                    conn.settimeout(0.5)
                    conn.sendall(encode_frame(_error("too many connections")))
                conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if not self._authenticate(conn, time.monotonic() + self._auth_timeout):
                return
            conn.settimeout(IDLE_TIMEOUT)
            while True:
                try:
                    body = _read_frame(conn, MAX_CONTROL_FRAME_BYTES)
                except ControlProtocolError as exc:
                    self._send(conn, _error(str(exc)))
                    return  # the stream cannot be re-synchronised
                self._send(conn, self._dispatch(body))
        except (_Closed, OSError) as exc:
            log.debug("control connection ended: %s", exc)
        except Exception:
            # Our bug, not the client's: loud in the log, but the node keeps running.
            log.exception("control channel bug while serving a connection")
        finally:
            with self._lock:
                self._connections.pop(conn, None)
                conn.close()

    def _authenticate(self, conn: socket.socket, deadline: float) -> bool:
        try:
            body = _read_frame(conn, MAX_CONTROL_FRAME_BYTES, deadline)
            request = parse_request(decode_body(body, 4))
        except TimeoutError:
            log.info("control channel: dropped a connection that did not authenticate in time")
            return False
        except ControlProtocolError as exc:
            conn.settimeout(self._auth_timeout)  # the reading left what remained of the deadline
            self._send(conn, _error(f"expected auth: {exc}"))
            return False
        conn.settimeout(self._auth_timeout)  # for the reply
        if not isinstance(request, Auth):
            self._send(conn, _error("expected auth first"))
            return False
        # Constant time, so the reply latency says nothing about how much of a guess matched.
        if not hmac.compare_digest(request.cookie.encode(), self._cookie.encode()):
            log.warning("control channel: refused a connection with a bad cookie")
            self._send(conn, _error("bad cookie"))
            return False
        self._send(conn, {"ok": True})
        return True

    def _dispatch(self, body: bytes) -> dict[str, Any]:
        try:
            request = parse_request(decode_body(body, 8))
        except ControlProtocolError as exc:
            return _error(str(exc))
        try:
            match request:
                case VoteRequest(category=category, timeout=timeout):
                    return self._vote(category, timeout)
                case StatusRequest():
                    return {"ok": True, "status": self._handler.status()}
                case TallyRequest():
                    return {"ok": True, "tally": self._handler.tally()}
                case Auth():
                    return _error("already authenticated")
        except InvalidVote as exc:
            return _error(str(exc))
        except NodeStopping as exc:
            return _error(str(exc))
        except Exception as exc:
            log.exception("control channel: handler failed on %r", request)
            return _error(f"internal error: {exc}")

    def _vote(self, category: str, timeout: float) -> dict[str, Any]:
        tx_id = self._handler.submit_vote(category)
        block = self._handler.wait_for_tx(tx_id, timeout)
        if block is None:
            return _error(
                f"vote {tx_id.hex()} not mined within {timeout:g} s "
                "(it stays queued; the node will still mine it)"
            )
        return {"ok": True, "block_id": block.id, "hash": block.hash.hex(), "tx_id": tx_id.hex()}

    def _send(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        conn.sendall(encode_frame(reply))


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only from the first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    # O_EXCL | O_NOFOLLOW: never write through a file or symlink someone else planted.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# ================================================================ client


class ControlClient:
    """Talks to one node's control channel: one connection per call."""

    def __init__(
        self, port: int, cookie: str, *, timeout: float = 10.0, where: str | None = None
    ) -> None:
        self.port = port
        self._cookie = cookie
        self.timeout = timeout
        self._where = where or f"{HOST}:{port}"

    @classmethod
    def from_data_dir(cls, data_dir: Path, timeout: float = 10.0) -> ControlClient:
        """A client for the node running on `data_dir`; NodeNotRunning if there is none."""
        data_dir = Path(data_dir)
        try:
            port_text = (data_dir / PORT_FILE).read_text(encoding="ascii").strip()
            cookie = (data_dir / COOKIE_FILE).read_text(encoding="ascii").strip()
        except FileNotFoundError as exc:
            missing = Path(str(exc.filename)).name
            raise NodeNotRunning(f"no running node at {data_dir}: no {missing}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeNotRunning(f"no running node at {data_dir}: {exc}") from exc
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise NodeNotRunning(f"no running node at {data_dir}: bad {PORT_FILE} {port_text!r}")
        client = cls(int(port_text), cookie, timeout=timeout, where=str(data_dir))
        # Probe now, so a stale port file (a node that was killed) is reported
        # here as "no running node", not later as an obscure socket error.
        client._call(None)
        return client

    def vote(self, category: str, timeout: float = DEFAULT_VOTE_TIMEOUT) -> tuple[int, str]:
        """Cast a vote and wait until it is mined into the node's chain: (block id, hash hex)."""
        # The node may wait `timeout` before it answers; give the socket more.
        reply = self._call(
            encode_request(VoteRequest(category, float(timeout))),
            read_timeout=timeout + self.timeout,
        )
        block_id, block_hash = reply.get("block_id"), reply.get("hash")
        if not isinstance(block_id, int) or not isinstance(block_hash, str):
            raise ControlError(f"malformed vote reply from {self._where}")
        return block_id, block_hash

    def status(self) -> dict[str, object]:
        status = self._call(encode_request(StatusRequest())).get("status")
        if not isinstance(status, dict):
            raise ControlError(f"malformed status reply from {self._where}")
        return status

    def tally(self) -> dict[str, int]:
        counts = self._call(encode_request(TallyRequest())).get("tally")
        if not isinstance(counts, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in counts.items()
        ):
            raise ControlError(f"malformed tally reply from {self._where}")
        return counts

    def _call(
        self, request: dict[str, Any] | None, read_timeout: float | None = None
    ) -> dict[str, Any]:
        """Connect, authenticate, then send `request` (None: authenticate only) and
        return its reply."""
        try:
            sock = socket.create_connection((HOST, self.port), timeout=self.timeout)
        except ConnectionRefusedError as exc:
            raise NodeNotRunning(
                f"no running node at {self._where}: port {self.port} refuses connections"
            ) from exc
        except OSError as exc:
            raise ControlError(f"cannot reach the node at {self._where}: {exc}") from exc
        with sock:
            try:
                authenticated = self._exchange(sock, encode_request(Auth(self._cookie)))
                if request is None:
                    return authenticated
                if read_timeout is not None:
                    sock.settimeout(read_timeout)
                return self._exchange(sock, request)
            except TimeoutError as exc:
                raise ControlError(f"the node at {self._where} did not answer in time") from exc
            except (_Closed, ConnectionError) as exc:
                raise ControlError(f"the node at {self._where} closed the connection") from exc
            except OSError as exc:
                raise ControlError(f"talking to the node at {self._where}: {exc}") from exc

    def _exchange(self, sock: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
        sock.sendall(encode_frame(request))
        try:
            # A tally map has one entry per category, so no small map cap here.
            reply = decode_body(_read_frame(sock, MAX_CONTROL_REPLY_BYTES), 1 << 20)
        except ControlProtocolError as exc:
            raise ControlError(f"bad reply from the node at {self._where}: {exc}") from exc
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise ControlError(f"malformed reply from the node at {self._where}")
        if not reply["ok"]:
            raise ControlError(str(reply.get("error", "unknown error")))
        return reply

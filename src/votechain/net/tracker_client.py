"""The tracker client: a peer's persistent connection to the tracker
(net/tracker_server.py), and a one-shot NODES query. A thin shell around
protocol/tracker_lines.py, which holds the protocol; this module only moves bytes.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import NoReturn

from votechain.errors import TrackerError, TrackerReplyError
from votechain.net.sockets import wake
from votechain.protocol.tracker_lines import (
    ErrorReply,
    Nodes,
    NodesReply,
    Ok,
    Register,
    Request,
    Response,
    ResponseDecoder,
    encode_request,
)


class TrackerClient:
    """A peer's persistent connection to the tracker (the connection is its registration).

    Thread-safe: each request/reply exchange holds a lock. No call blocks
    longer than ``timeout`` seconds.
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self._host = host
        self._port = port
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._decoder = ResponseDecoder()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def local_ip(self) -> str | None:
        """This end's address as the tracker sees it (barring NAT): how a peer
        recognises itself in a NODES list."""
        sock = self._sock
        if sock is None:
            return None
        try:
            return str(sock.getsockname()[0])
        except OSError:
            return None

    def connect(self) -> None:
        with self._lock:
            self._connect(time.monotonic() + self.timeout)

    def register(self, listen_port: int) -> None:
        """Tell the tracker we accept peers on ``listen_port``; raises TrackerError."""
        reply = self._exchange(Register(listen_port), time.monotonic() + self.timeout)
        if not isinstance(reply, Ok):
            self._fail(f"expected OK to REGISTER, got {reply!r}")

    def nodes(self) -> list[tuple[str, int]]:
        """Every registered peer, ourselves included; raises TrackerError."""
        return self._nodes(time.monotonic() + self.timeout)

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            # Wake any exchange blocked in recv() first, so we need not wait
            # its whole timeout for the lock.
            wake(sock)
        with self._lock:
            self._close()

    def __enter__(self) -> TrackerClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _where(self) -> str:
        return f"tracker {self._host}:{self._port}"

    def _connect(self, deadline: float) -> None:
        if self._sock is not None:
            return
        try:
            self._sock = socket.create_connection(
                (self._host, self._port), timeout=max(deadline - time.monotonic(), 0.001)
            )
        except OSError as exc:
            raise TrackerError(f"{self._where()} unreachable: {exc}") from exc
        self._decoder = ResponseDecoder()

    def _nodes(self, deadline: float) -> list[tuple[str, int]]:
        reply = self._exchange(Nodes(), deadline)
        if not isinstance(reply, NodesReply):
            self._fail(f"expected NODES, got {reply!r}")
        return list(reply.peers)

    def _exchange(self, request: Request, deadline: float) -> Response:
        data = encode_request(request)  # ValueError here is the caller's bug
        with self._lock:
            sock = self._sock
            if sock is None:
                raise TrackerError(f"not connected to {self._where()}")
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(data)
                reply = self._decoder.next_response()
                while reply is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    sock.settimeout(remaining)
                    chunk = sock.recv(65536)
                    if not chunk:
                        self._close()
                        raise TrackerError(f"{self._where()} closed the connection")
                    self._decoder.feed(chunk)
                    reply = self._decoder.next_response()
            except TimeoutError:
                # A late reply would be read as the answer to the next request;
                # the stream is out of step, so drop it.
                self._close()
                raise TrackerError(
                    f"no reply from {self._where()} within {self.timeout} s"
                ) from None
            except TrackerReplyError as exc:
                self._close()
                raise TrackerError(f"malformed reply from {self._where()}: {exc.reason}") from exc
            except OSError as exc:
                self._close()
                raise TrackerError(f"connection to {self._where()} lost: {exc}") from exc
        if isinstance(reply, ErrorReply):
            raise TrackerError(f"{self._where()} replied ERROR: {reply.reason}")
        return reply

    def _fail(self, message: str) -> NoReturn:
        with self._lock:
            self._close()
        raise TrackerError(f"malformed reply from {self._where()}: {message}")

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def fetch_nodes(host: str, port: int, timeout: float = 5.0) -> list[tuple[str, int]]:
    """One-shot: connect, ask NODES, close. Raises TrackerError; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    client = TrackerClient(host, port, timeout)
    try:
        with client._lock:
            client._connect(deadline)
        return client._nodes(deadline)
    finally:
        client.close()

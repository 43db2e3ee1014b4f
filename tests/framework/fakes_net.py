"""Fake network parties, on real 127.0.0.1 sockets: what an honest node or client
meets when the other side misbehaves without meaning to.

- `scripted_tracker(behaviour)`: a one-connection "tracker" that reads one
  request and then does whatever `behaviour(conn)` does (say nothing, hang up,
  answer garbage), for the tracker client's error paths.
- `SilentPeer`: a "peer" the real tracker lists, which accepts connections and
  never says a word, for the node's timeouts and its stop().

Every thread and socket they open is closed on the way out of their `with`.
(The fake control-channel node, for the control tests, is in `framework.fakes`.)
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

from votechain.net.tracker_client import TrackerClient

LOCAL = "127.0.0.1"

# How long a fake waits for the client under test, so that a client that never
# comes cannot hang the suite; far above anything a working client needs.
FAKE_TIMEOUT = 10.0


@contextlib.contextmanager
def scripted_tracker(behaviour: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    """A one-connection server at the yielded address: it reads one request, then runs
    `behaviour(conn)`, then holds the connection open until the `with` ends."""
    done = threading.Event()
    with socket.create_server((LOCAL, 0)) as listener:
        listener.settimeout(FAKE_TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:  # nobody came (the test failed before connecting)
                return
            with conn:
                conn.recv(4096)
                # The client under test may hang up mid-send (that is the point of
                # some behaviours): a broken pipe here is expected, not a failure.
                with contextlib.suppress(OSError):
                    behaviour(conn)
                done.wait(FAKE_TIMEOUT)  # hold the connection open until the test ends

        thread = threading.Thread(target=serve, name="scripted-tracker")
        thread.start()
        try:
            host, port = listener.getsockname()[:2]
            yield host, port
        finally:
            done.set()
            thread.join()


class SilentPeer:
    """A peer that registers with `tracker`, accepts connections and never answers.

    Connections are left waiting in the listen backlog until `accept()` takes one
    (and keeps it open, silent, until `close()`): a node's request to this peer
    hangs in its handshake until the node's own timeout or stop() ends it."""

    def __init__(self, tracker: tuple[str, int]) -> None:
        self._listener = socket.create_server((LOCAL, 0))
        self._listener.settimeout(FAKE_TIMEOUT)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._accepted: list[socket.socket] = []
        # Registered as long as this connection stays open (the tracker's rule).
        self._registration = TrackerClient(*tracker)
        try:
            self._registration.connect()
            self._registration.register(self.address[1])
        except BaseException:
            self.close()
            raise

    def accept(self) -> socket.socket:
        """The next connection a node opened to us (waits for it); closed by `close()`."""
        conn, _ = self._listener.accept()
        self._accepted.append(conn)
        return conn

    def close(self) -> None:
        """Unregister (the tracker drops us with the connection) and close every socket."""
        self._registration.close()
        for conn in self._accepted:
            conn.close()
        self._listener.close()

    def __enter__(self) -> SilentPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

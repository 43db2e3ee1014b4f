"""Socket helpers shared by every server and connection (tracker, peer, control, transport)."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Callable


def wake(sock: socket.socket) -> None:
    """shutdown(SHUT_RDWR): on Linux this wakes a thread blocked in accept(),
    recv() or send() on `sock`, which close() alone would not. A socket already
    reset by its peer, or never connected, raises OSError here: nothing to wake."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def stop_listener(listener: socket.socket | None, accept_thread: threading.Thread | None) -> None:
    """Wake the accept thread, wait for it to return, then close the listening socket."""
    if listener is not None:
        wake(listener)
    if accept_thread is not None:
        accept_thread.join()
    if listener is not None:
        listener.close()


# accept() errors that mean "out of resources right now" (a connection flood can
# run a process out of descriptors), not "listener gone". Retrying at once would
# spin, so accept_next() backs off this long and goes on.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF = 0.1


def accept_next(
    listener: socket.socket,
    stopping: Callable[[], bool],
    pause: Callable[[float], object],
    log: logging.Logger,
) -> tuple[socket.socket, tuple[str, int]] | None:
    """The next connection, riding out transient failures; None when the listener
    was shut down (`stopping()` is true) or broke, and the accept loop must end."""
    while True:
        try:
            sock, address = listener.accept()
            return sock, (str(address[0]), int(address[1]))
        except OSError as exc:
            if stopping():
                return None
            if exc.errno in ACCEPT_RESOURCE_ERRORS:
                log.warning("accept failed (%s); backing off", exc)
                pause(ACCEPT_BACKOFF)
                continue
            if isinstance(exc, ConnectionAbortedError):
                continue  # the client gave up before we got to it
            log.exception("accept failed; no longer accepting connections")
            return None

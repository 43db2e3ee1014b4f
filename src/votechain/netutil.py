"""Socket helpers shared by every server and connection (tracker, peer, control, transport)."""

from __future__ import annotations

import contextlib
import socket
import threading


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

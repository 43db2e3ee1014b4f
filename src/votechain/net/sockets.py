"""Socket helpers shared by every server and connection (tracker, peer, control, transport):
waking blocked threads, the one accept loop every server runs (`accept_next`), and
Unix sockets: names for paths too long for `sun_path` (`unix_address`) and a
connect that waits for room in a full listen queue (`connect_unix`)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


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
# run a process out of descriptors; the kernel can run short of buffers), not
# "listener gone". The pending connection stays queued, so retrying at once
# would spin: accept_next() backs off, doubling from ACCEPT_BACKOFF up to
# ACCEPT_BACKOFF_MAX, and goes on. Why 1 s at most: once descriptors are free
# again, a waiting client is served within a second, and a listener that stays
# starved costs one accept() a second.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF = 0.05
ACCEPT_BACKOFF_MAX = 1.0
# accept() errors that cost one connection, not the listener: the client gave
# up before we took it (ECONNABORTED), or, on Linux, the new connection's
# pending network error, which accept(2) says to retry like EAGAIN; EPERM is a
# firewall rule refusing that one connection. Retried at once: each failure
# used up the connection it was about, so there is nothing to spin on.
ACCEPT_CONNECTION_ERRORS = frozenset(
    getattr(errno, name) for name in (
        "ECONNABORTED", "EPROTO", "EPERM", "EAGAIN", "EWOULDBLOCK", "EINTR", "ENETDOWN",
        "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH",
        "ETIMEDOUT",
    ) if hasattr(errno, name)
)

Accepted = tuple[socket.socket, tuple[str, int]]


def accept_next(
    listener: socket.socket,
    stopping: Callable[[], bool],
    pause: Callable[[float], object],
    log: logging.Logger,
    *,
    accept: Callable[[], tuple[socket.socket, object]] | None = None,
) -> Accepted | None:
    """The next connection, riding out transient failures; None when the listener
    was shut down (`stopping()` is true) or broke, and the accept loop must end.

    Every server's accept thread is `while (accepted := accept_next(...))`:
    the tracker's, the peer listener's and the control channel's. A run of
    resource errors (EMFILE, ...) is one episode: one warning when it begins,
    one line when accepting works again, and in between a back-off that
    `pause` (an Event's wait, so stop() cuts it short) bounds at
    ACCEPT_BACKOFF_MAX. `accept` stands in for `listener.accept` (tests inject
    failures through it). The address is ("", 0) for a Unix socket's client,
    which has no name.
    """
    take = accept if accept is not None else listener.accept
    failures = 0
    began = 0.0
    backoff = ACCEPT_BACKOFF
    while True:
        try:
            sock, address = take()
        except OSError as exc:
            if stopping():
                return None
            if exc.errno in ACCEPT_RESOURCE_ERRORS:
                if failures == 0:
                    began = time.monotonic()
                    log.warning("accept failed (%s); backing off, up to %g s between tries, "
                                "until it passes", exc, ACCEPT_BACKOFF_MAX)
                failures += 1
                pause(backoff)
                backoff = min(2 * backoff, ACCEPT_BACKOFF_MAX)
                continue
            if exc.errno in ACCEPT_CONNECTION_ERRORS or isinstance(
                exc, ConnectionError | TimeoutError
            ):
                log.debug("accept: one connection failed before it was taken: %s", exc)
                continue
            log.exception("accept failed; no longer accepting connections")
            return None
        if failures:
            log.warning("accepting again after %d failed accepts over %.1f s",
                        failures, time.monotonic() - began)
            failures, backoff = 0, ACCEPT_BACKOFF
        if isinstance(address, tuple) and len(address) >= 2:
            return sock, (str(address[0]), int(address[1]))
        return sock, ("", 0)


# sun_path, where a Unix socket's path is stored, holds 108 bytes on Linux
# (104 on macOS and the BSDs) with the terminating NUL; a longer path cannot be
# bound or connected to by name.
MAX_UNIX_PATH_BYTES = 107
_PROC_FD = Path("/proc/self/fd")


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """A name under which bind() and connect() reach the Unix socket at `path`:
    `path` itself when it fits in sun_path; otherwise, on Linux,
    /proc/self/fd/N/NAME, where N is a descriptor of `path`'s directory, open for
    the `with` block only (the same file in the same directory, so no weaker than
    the path). Where neither works, OSError(ENAMETOOLONG) that says what to do:
    never another, hijackable, kind of socket."""
    size = len(os.fsencode(path))
    if size <= MAX_UNIX_PATH_BYTES:
        yield str(path)
        return
    if not _PROC_FD.is_dir():
        raise OSError(
            errno.ENAMETOOLONG,
            f"{path} is {size} bytes, over the {MAX_UNIX_PATH_BYTES} a Unix socket's path "
            "may have here: use a data directory with a shorter path",
        )
    directory = os.open(path.parent, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY)
    try:
        yield f"{_PROC_FD}/{directory}/{path.name}"
    finally:
        os.close(directory)


# How long connect_unix waits between tries while a listen queue is full: from
# 5 ms, doubling, up to 100 ms (a queue drains as fast as the server accepts).
_CONNECT_RETRY = 0.005
_CONNECT_RETRY_MAX = 0.1


def connect_unix(path: Path, timeout: float) -> socket.socket:
    """A stream connection to the Unix socket at `path`, with `timeout` set on it.

    Where a TCP connect to a full listen queue retries its SYN, a Unix connect
    with a timeout fails at once with EAGAIN; this one tries again until
    `timeout` has passed, then raises TimeoutError. FileNotFoundError (no
    socket) and ConnectionRefusedError (a socket no one listens on) are raised
    as they come."""
    deadline = time.monotonic() + timeout
    delay = _CONNECT_RETRY
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            with unix_address(path) as address:
                sock.connect(address)
            return sock
        except BlockingIOError:
            sock.close()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{path}: its listen queue stayed full for {timeout:g} s") from None
            time.sleep(min(delay, left))
            delay = min(2 * delay, _CONNECT_RETRY_MAX)
        except BaseException:
            sock.close()
            raise

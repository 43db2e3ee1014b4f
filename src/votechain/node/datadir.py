"""The data directory as one node's own: private, and held by one node at a time.

`DataDirLock.acquire(dir)` is the first thing `Node.start` does, before it opens
the key or the store:

- **Private.** The directory is created mode 0700; an existing one owned by
  this user but open to others (0755 is what `mkdir` gives under the usual
  umask) is made 0700 with one warning line, since it holds the node's key and
  its control socket (net/control_server.py explains why the socket's safety
  rests on that). One owned by another user is refused: chmod would fail, and
  its owner could replace anything in it.
- **Held.** An exclusive `flock` on DATA_DIR/node.lock, kept for the node's
  whole life and released by `release()` at stop. A second node on the same
  directory refuses to start, with a StoreError that says which process holds
  it (the CLI prints it as one line, exit 1), before it has written or removed
  anything. The kernel drops the lock when the holder dies, even by `kill -9`,
  so a crash never leaves the directory locked.

Why flock and not a pid file: a pid file outlives a crash and must be guessed
stale (and a reused pid makes the guess wrong); a flock is exactly as long as
the process. The lock file itself is never removed: unlinking it while another
process waits on it would let two holders lock two different files. Its
contents (the holder's pid) are only for the refusal message. The descriptor
is close-on-exec, so the miner's spawned workers never hold the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

from votechain.errors import StoreError

log = logging.getLogger("votechain.node")

LOCK_FILE = "node.lock"
# Everything for group and others: a data directory keeps none of it.
PRIVATE_MASK = 0o077
# The holder's pid, in decimal: a few bytes are all a refusal message needs.
_MAX_PID_BYTES = 32


def make_private(data_dir: Path) -> None:
    """Create `data_dir` mode 0700, or make an existing one of ours 0700 (with a
    warning); StoreError if it is not a directory or not this user's."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(data_dir)
    except OSError as exc:
        raise StoreError(f"cannot use {data_dir} as a data directory: {exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"cannot use {data_dir} as a data directory: not a directory")
    if info.st_uid != os.geteuid():
        raise StoreError(
            f"{data_dir} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}): "
            "run the node as the directory's owner"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & PRIVATE_MASK:
        try:
            os.chmod(data_dir, mode & ~PRIVATE_MASK)
        except OSError as exc:
            raise StoreError(f"{data_dir} is open to other users (mode {mode:04o}) and cannot "
                             f"be made private: {exc}") from exc
        log.warning("data directory %s was open to other users (mode %04o); made it %04o: it "
                    "holds the node's key and its control socket", data_dir, mode,
                    mode & ~PRIVATE_MASK)


class DataDirLock:
    """An exclusive hold on one data directory for as long as a node runs on it."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        return self.data_dir / LOCK_FILE

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Make `data_dir` private and lock it; StoreError (one line, naming the
        lock) if another process holds it."""
        data_dir = Path(data_dir)
        make_private(data_dir)
        path = data_dir / LOCK_FILE
        try:
            # O_NOFOLLOW: never lock (or create) through a symlink planted in its place.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                by = f" (pid {holder})" if holder else ""
                raise StoreError(
                    f"{data_dir} is in use by another node{by}: it holds the lock {path}; "
                    "stop that node first, or give this one its own --data-dir"
                ) from exc
            raise StoreError(f"cannot lock {path}: {exc}") from exc
        # Ours now: say who holds it, for the next one that is refused.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(data_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (closing the descriptor does it) and leave the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_holder(fd: int) -> str:
    """The pid the holder wrote, if it looks like one; "" otherwise."""
    try:
        text = os.pread(fd, _MAX_PID_BYTES, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""

"""One process owns a data directory at a time: an exclusive ``flock`` on a lock file in it.

The single-node server (``--local-shard DIR``) and the embedded shape (``server/embedded.py``,
``vectorsearch_client.open``) both take ``LOCK`` in the shard's directory before opening it, so
neither can open a shard another process (or another client of the same process) has open. The
kernel releases the lock when its holder dies, however it dies; the file names the holder's pid
for the next one's error message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = "LOCK"


class DirectoryLocked(RuntimeError):
    """Another process, or another open of this one, holds the directory."""


class DirectoryLock:
    """An exclusive ``flock`` on ``directory / LOCK_FILE`` (created if missing), held until
    :meth:`release` or the process ends. ``name``: what the error message calls the directory."""

    def __init__(self, directory: Path, name: str | os.PathLike[str] | None = None) -> None:
        self.path = directory / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = ""
            with contextlib.suppress(OSError):
                holder = self.path.read_text().strip()
            raise DirectoryLocked(
                f"{name or directory} is open in another vectorsearch process or client"
                f"{f' (pid {holder})' if holder else ''}: one process owns a directory at a time; "
                "close the other one first (or connect to the server that has it open)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

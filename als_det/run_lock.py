"""One run at a time per output folder: `output_lock(folder)` holds `folder/.lock` for a run's
duration, so a second run into a folder in use (pretraining, fine-tuning, the experiment runner's
`out`) is refused with one line naming the holder (host, pid, since when).

The lock is the kernel's (`flock` on the file, NFS included): it goes with the process that held
it, so a run that was killed blocks nobody, and its leftover `.lock` is taken over by the next.
The file's text only names the holder for the message. Multi-process runs lock on rank 0.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class FolderInUseError(ValueError):
    """Another live process holds the output folder's lock."""


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {who['pid']} on {who['host']} since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet recorded itself"


def _acquire(path: Path) -> int:
    """An open descriptor of `path` holding its exclusive lock, or FolderInUseError."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise ValueError(
                f"{path} is a folder: remove it, it is where the run lock goes"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(
                f"{path.parent} is in use by another run: {holder} (lock {path}); wait for it to "
                "end or choose another output folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder we waited on may have removed the file: lock the one that is there now
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def output_lock(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold `folder`'s lock while the block runs (creating the folder if needed; a folder created
    here that stays empty is removed again). `enabled=False` (ranks other than 0) does nothing.
    Raises FolderInUseError naming the holder if a live process holds it."""
    if not enabled:
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = None
    try:
        fd = _acquire(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        logger.warning(
            "cannot lock %s (%s): this file system has no file locks, so a second run into this "
            "folder would not be refused",
            folder,
            exc.strerror,
        )
    try:
        if fd is not None:
            since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)
        if created:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote into it
                pass

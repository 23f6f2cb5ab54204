"""Atomic writes: a result file is either the old one or the complete new one, never half.

The new file gets the permissions of a plainly created one (0666 minus the umask). Its temporary
name, `.NAME.HOST.PID.XXXXXXXX.tmp` beside the target, says who is writing it, so the next save of
the same target removes the leftovers of a save that was killed.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import pickle
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

# A temporary file whose writer cannot be checked (another host) is stale after this long.
STALE_TEMP_AGE_S = 24 * 3600


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove temporary files of earlier, interrupted atomic writes of `path`: those written by a
    process of this host that no longer runs, and any older than STALE_TEMP_AGE_S."""
    host = socket.gethostname()
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:(.+)\.(\d+)\.)?[^.]+\.tmp$")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(candidate.name)
        if not match:
            continue
        writer_host, pid = match.group(1), match.group(2)
        try:
            dead = writer_host == host and not _pid_alive(int(pid))
            if dead or time.time() - candidate.stat().st_mtime > STALE_TEMP_AGE_S:
                candidate.unlink()
                removed.append(candidate)
        except FileNotFoundError:  # removed by its writer or another cleaner meanwhile
            continue
    if removed:
        logger.info(
            "removed %d stale temporary file(s) of interrupted writes of %s: %s",
            len(removed),
            path,
            ", ".join(p.name for p in removed),
        )
    return removed


class DiskFullError(ValueError):
    """No space left (or quota exceeded) while writing a result file; the file was left as it was.
    A ValueError: entry points end with one line naming the file."""


def _disk_full(exc: BaseException | None) -> OSError | None:
    """The ENOSPC / EDQUOT error behind `exc`, if any (torch.save reports it as a RuntimeError
    raised while handling it)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{socket.gethostname()}.{os.getpid()}.",
            suffix=".tmp",
            dir=path.parent,
        )
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except Exception as exc:
        full = _disk_full(exc)
        if full is None:
            raise
        raise DiskFullError(f"{os.strerror(full.errno).lower()} writing {path}") from exc
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_pickle_dump(path: str | os.PathLike, obj: Any) -> Path:
    return _atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> Path:
    """numpy arrays in one `.npz` (readable with `np.load(path, allow_pickle=False)`)."""
    import numpy as np

    return _atomic_write(path, lambda f: np.savez(f, **arrays))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

"""Listing data folders whose entries may be symbolic links: what an entry is once its links are
followed, and the two ways a link can fail, a loop (`symlink_loop`: it resolves through itself,
ELOOP) or a missing target (`broken_symlink`). Recursive walks (`annotations.scan_xml_dir`,
`index_cache.fingerprint`) track the real paths of the folders they have entered, so a link back
to one of them is a loop, reported or marked rather than followed 40-80 levels deep."""

from __future__ import annotations

import errno
import os
from collections.abc import Collection

LINK_PROBLEMS = ("symlink_loop", "broken_symlink")


def entry_kind(entry: os.DirEntry) -> str:
    """'dir' or 'file' (links followed), 'symlink_loop', 'broken_symlink', or 'other' (a socket,
    a fifo, a device)."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink_loop"
        raise
    return "broken_symlink" if entry.is_symlink() else "other"


def link_problem(kind: str, path: str) -> str:
    """The detail of a `LINK_PROBLEMS` kind, for a skip or an error naming `path`."""
    if kind == "symlink_loop":
        return "a symbolic link that loops (it resolves through itself)"
    return f"a symbolic link to {os.readlink(path)!r}, which does not exist"


def visible_entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    """The entries of `folder` not hidden (no leading dot), sorted by name."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def leads_back(real: str, here: str, entered: Collection[str]) -> bool:
    """Whether a folder link resolving to `real`, met in the folder whose real path is `here`,
    leads to a folder already `entered` or to one enclosing `here`: following it would loop."""
    return real in entered or here == real or here.startswith(real.rstrip(os.sep) + os.sep)

"""The box index cache: one `.npz` per index, checked against every file it was built from.

The file holds arrays only (labels, sizes, box offsets, boxes, and a JSON record as bytes) and is
read with `np.load(..., allow_pickle=False)`, so a cache that someone else wrote or tampered with
cannot run code: at worst it is refused and the index rebuilt. It is valid while the arguments
match and every indexed folder holds the same entries with the same sizes and mtimes (one
`os.scandir` pass with a `stat` per entry; per-folder digests say which folders changed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from als_det.data.listing import LINK_PROBLEMS, entry_kind, leads_back, visible_entries
from als_det.io import atomic_savez

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 3: sizes and boxes in the displayed (EXIF-applied) orientation


def fingerprint(paths: Iterable[Path | None]) -> dict[str, str]:
    """{folder or file: digest}: for a file its size and mtime, for a folder (and every visible
    subfolder, links followed, each real folder once) a digest of each entry's name, size and
    mtime (subfolders: name, or name and real path for a link to a folder already visited or
    enclosing it; links that loop or lead nowhere: name and problem)."""
    out: dict[str, str] = {}
    visited: set[str] = set()
    for path in paths:
        if path is None or not path.exists():
            continue
        if path.is_dir():
            _fingerprint_folder(str(path), out, visited)
        else:
            st = path.stat()
            out[str(path)] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def _fingerprint_folder(folder: str, out: dict[str, str], visited: set[str]) -> None:
    here = os.path.realpath(folder)
    visited.add(here)
    lines, subfolders = [], []
    for e in visible_entries(folder):
        kind = entry_kind(e)
        if kind == "dir":
            real = os.path.realpath(e.path)
            if leads_back(real, here, visited):
                lines.append(f"{e.name}/ -> {real}")
            else:
                visited.add(real)
                subfolders.append(e.path)
                lines.append(f"{e.name}/")
        elif kind in LINK_PROBLEMS:
            lines.append(f"{e.name}\t{kind}")
        else:
            st = e.stat()
            lines.append(f"{e.name}\t{st.st_size}\t{st.st_mtime_ns}")
    out[folder] = hashlib.sha1("\n".join(sorted(lines)).encode()).hexdigest()
    for sub in subfolders:
        _fingerprint_folder(sub, out, visited)


def save(
    path: Path,
    key: dict[str, Any],
    files: dict[str, str],
    classes: list[str],
    report: dict[str, Any],
    records: list,
    root: Path,
) -> None:
    """Write the index (records of `als_det.data.boxes.ImageRecord`) atomically."""
    counts = np.array([len(r.boxes) for r in records], dtype=np.int64)
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "files": files,
        "classes": classes,
        "report": report,
        "paths": [os.path.relpath(r.path, root) for r in records],
    }
    atomic_savez(
        path,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        labels=np.array([r.label for r in records], dtype=np.int64),
        sizes=np.array([(r.width, r.height) for r in records], dtype=np.int64).reshape(-1, 2),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=(
            np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), np.float32)
        ).astype(np.float32),
    )


def load(path: Path, key: dict[str, Any], files: dict[str, str]) -> dict[str, Any] | None:
    """The cached arrays and record (`meta`), or None with the reason logged: no cache yet,
    unreadable, other arguments, or files changed since it was built."""
    if not path.is_file():
        logger.info("no box index cache at %s: building the index", path)
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in ("meta", "labels", "sizes", "offsets", "boxes")}
        meta = json.loads(data.pop("meta").tobytes())
        n = len(meta["paths"])
        if len(data["labels"]) != n or len(data["sizes"]) != n or len(data["offsets"]) != n + 1:
            raise ValueError("record count mismatch")
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        logger.warning(
            "ignoring unreadable box index cache %s (%s: %s); rebuilding",
            path,
            type(exc).__name__,
            exc,
        )
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        logger.warning("box index cache %s was built with other arguments; rebuilding", path)
        return None
    built_from = meta["files"]
    changed = sorted(k for k in set(files) | set(built_from) if files.get(k) != built_from.get(k))
    if changed:
        shown = ", ".join(changed[:3]) + (
            f", ... ({len(changed) - 3} more)" if len(changed) > 3 else ""
        )
        logger.warning(
            "box index cache %s is stale: %d folder(s)/file(s) changed since it was "
            "built (%s); rebuilding",
            path,
            len(changed),
            shown,
        )
        return None
    return {**data, "meta": meta}

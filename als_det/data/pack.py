"""One packed file per split (`tools/prepare_imagenet.py --pack`): a split's image files end to
end in one file, with an index of arrays, in place of many small files on a network file system.

    ROOT/<split>.pack            the split's image files, byte for byte, one after another
    ROOT/<split>.pack.index.npz  arrays only (read with allow_pickle=False, so it cannot run
                                 code): per image its name (path relative to the split folder),
                                 class, offset and length in the pack, SHA-1, displayed width and
                                 height, and boxes; a JSON record with the class list, the box
                                 index's report and the pack's size in bytes

The index is the box index (`als_det.data.boxes.build_index`) of the split folder it was packed
from, so `build_index` on the packed root (`read_index`) gives the same samples, labels, sizes and
boxes, in the same order, as on the folder; a record's `path` is `ROOT/<split>.pack/<name>`
(named in messages), its bytes come from `PackReader`. A pack whose size differs from its
index's record (truncated, appended to) is refused when indexed; an entry whose bytes fail its
SHA-1 is a `DataError` when read: never a wrong image.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from als_det.data.annotations import DataError, IndexReport
from als_det.io import atomic_savez

PACK_SUFFIX = ".pack"
INDEX_SUFFIX = ".pack.index.npz"
PACK_FORMAT = 1


def pack_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}{PACK_SUFFIX}"


def index_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}{INDEX_SUFFIX}"


def is_packed(root: str | os.PathLike, split: str) -> bool:
    return index_path(root, split).is_file()


def write_pack(
    root: Path,
    split: str,
    records: list,
    classes: list[str],
    report: IndexReport,
) -> dict[str, int]:
    """Pack `records` (`ImageRecord`s: the box index of `root/split`) into `root/<split>.pack` and
    its index; returns {"images": n, "bytes": pack size}."""
    split_dir = root / split
    names, extents, digests = [], [], []
    offset = 0
    with open(pack_path(root, split), "wb") as out:
        for r in records:
            data = Path(r.path).read_bytes()
            out.write(data)
            names.append(os.path.relpath(r.path, split_dir))
            extents.append((offset, len(data)))
            digests.append(hashlib.sha1(data).digest())
            offset += len(data)
    counts = np.array([len(r.boxes) for r in records], dtype=np.int64)
    meta = {
        "format": PACK_FORMAT,
        "split": split,
        "classes": classes,
        "report": asdict(report),
        "pack_bytes": offset,
    }
    atomic_savez(
        index_path(root, split),
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        names=np.frombuffer("\n".join(names).encode(), dtype=np.uint8),
        labels=np.array([r.label for r in records], dtype=np.int64),
        extents=np.array(extents, dtype=np.int64).reshape(-1, 2),
        sha1=np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 20),
        sizes=np.array([(r.width, r.height) for r in records], dtype=np.int64).reshape(-1, 2),
        box_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=(np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4))).astype(
            np.float32
        ),
    )
    return {"images": len(records), "bytes": offset}


def read_index(root: str | os.PathLike, split: str) -> dict[str, Any]:
    """A packed split's index, checked against its pack: `names` (list), `meta` (dict), and the
    arrays `labels`, `extents` (offset, length), `sha1`, `sizes`, `box_offsets`, `boxes`."""
    index, pack = index_path(root, split), pack_path(root, split)
    try:
        with np.load(index, allow_pickle=False) as npz:
            data: dict[str, Any] = {k: npz[k] for k in npz.files}
        data["meta"] = json.loads(data["meta"].tobytes())
        raw = data["names"].tobytes().decode("utf-8")
        data["names"] = raw.split("\n") if raw else []
        n = len(data["names"])
        if data["meta"].get("format") != PACK_FORMAT or any(
            len(data[k]) != n for k in ("labels", "extents", "sha1", "sizes")
        ):
            raise ValueError("not a pack index of this format, or its arrays disagree")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{index}: unreadable pack index ({exc})") from exc
    size = pack.stat().st_size if pack.is_file() else None
    if size != data["meta"]["pack_bytes"]:
        found = "missing" if size is None else f"{size} bytes"
        raise DataError(
            f"{pack}: {found}, but its index {index.name} records {data['meta']['pack_bytes']} "
            "bytes (truncated or altered); prepare the copy again"
        )
    return data


class PackReader:
    """Reads packed entries, one open file per pack and process (`os.pread`: no shared offset)."""

    def __init__(self) -> None:
        self._files: dict[str, int] = {}
        self._pid = os.getpid()

    def read(self, pack: str, offset: int, length: int, sha1: bytes, name: str) -> bytes:
        if self._pid != os.getpid():  # a forked worker opens its own
            self._files, self._pid = {}, os.getpid()
        fd = self._files.get(pack)
        if fd is None:
            fd = self._files[pack] = os.open(pack, os.O_RDONLY)
        data = os.pread(fd, length, offset)
        if len(data) != length or hashlib.sha1(data).digest() != sha1:
            raise DataError(
                f"{name}: the packed bytes fail their SHA-1 in the pack index (the pack was "
                "altered after it was written); prepare the copy again"
            )
        return data

    def __getstate__(self) -> dict:
        return {"_files": {}, "_pid": -1}

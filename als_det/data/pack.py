"""One packed file per split (`tools/prepare_imagenet.py --pack`): a split's image files end to
end in one file, with an index of arrays, in place of many small files on a network file system.

    ROOT/<split>.pack            the split's image files, byte for byte, one after another
    ROOT/<split>.pack.index.npz  arrays only (read with allow_pickle=False, so it cannot run
                                 code): per image its name (path relative to the split folder),
                                 class, offset and length in the pack, SHA-1, displayed width and
                                 height, and boxes; a JSON record with the class list, the box
                                 index's report and the pack's size in bytes

The index is the box index (`als_det.data.boxes.build_index`) of the split folder it was packed
from, so `build_index` on the packed root gives the same samples, labels, sizes and boxes, in the
same order, as on the folder; a record's `path` is `ROOT/<split>.pack/<name>` (named in
messages), its bytes come from `PackReader`. A pack whose size differs from its index's record
(truncated, appended to) is refused when indexed; an entry whose bytes fail its SHA-1 is a
`DataError` when read: never a wrong image.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from als_det.data.annotations import DataError, IndexReport
from als_det.io import atomic_savez

if TYPE_CHECKING:
    from als_det.data.boxes import ImageRecord

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
    records: list[ImageRecord],
    classes: list[str],
    report: IndexReport,
) -> dict[str, int]:
    """Pack `records` (the box index of `root/split`) into `root/<split>.pack` and its index;
    returns {"images": n, "bytes": pack size}."""
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


def load_pack(
    root: str | os.PathLike,
    split: str,
    strict: bool = False,
    max_per_class: int = 0,
    classes: list[str] | None = None,
) -> tuple[list[ImageRecord], list[str], IndexReport]:
    """`build_index`'s answer for a packed split: its records (the first `max_per_class` of each
    class, if set), class list (`classes` fixes it: labels are mapped by name, images of other
    classes skipped as `unknown_class_folder`) and report."""
    from als_det.data.boxes import ImageRecord  # boxes.build_index calls this module

    index, pack = index_path(root, split), pack_path(root, split)
    try:
        with np.load(index, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        meta = json.loads(data["meta"].tobytes())
        names = data["names"].tobytes().decode("utf-8").split("\n") if len(data["names"]) else []
        n = len(names)
        if meta.get("format") != PACK_FORMAT or any(
            len(data[k]) != n for k in ("labels", "extents", "sha1", "sizes")
        ):
            raise ValueError("not a pack index of this format, or its arrays disagree")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{index}: unreadable pack index ({exc})") from exc
    size = pack.stat().st_size if pack.is_file() else None
    if size != meta["pack_bytes"]:
        found = "missing" if size is None else f"{size} bytes"
        raise DataError(
            f"{pack}: {found}, but its index {index.name} records {meta['pack_bytes']} bytes "
            "(truncated or altered); prepare the copy again"
        )
    report = IndexReport(**meta["report"])
    report.box_source = f"pack index: {index}"
    if strict and report.skipped:
        reason, files = sorted(report.skipped.items())[0]
        raise DataError(f"{files[0]}: {reason.replace('_', ' ')} (skipped when {pack} was packed)")
    own = list(meta["classes"])
    classes = own if classes is None else list(classes)
    position = {c: i for i, c in enumerate(classes)}
    records: list[ImageRecord] = []
    per_class: dict[int, int] = {}
    off = data["box_offsets"]
    for i, name in enumerate(names):
        wnid = own[int(data["labels"][i])]
        path = f"{pack}/{name}"
        if wnid not in position:
            report.skip("unknown_class_folder", path, strict, "not in the class list")
            continue
        label = position[wnid]
        per_class[label] = per_class.get(label, 0) + 1
        if max_per_class and per_class[label] > max_per_class:
            continue
        offset, length = (int(v) for v in data["extents"][i])
        width, height = (int(v) for v in data["sizes"][i])
        records.append(
            ImageRecord(
                path,
                label,
                data["boxes"][off[i] : off[i + 1]],
                width,
                height,
                pack=str(pack),
                offset=offset,
                length=length,
                sha1=data["sha1"][i].tobytes(),
            )
        )
    report.images = len(records)
    report.with_boxes = sum(bool(len(r.boxes)) for r in records)
    report.boxes = sum(len(r.boxes) for r in records)
    return records, classes, report


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

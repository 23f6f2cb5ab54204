"""The box index: one `ImageRecord` per image with the labelled class's boxes, built once and
cached.

Layouts (ILSVRC2012 as users have it):
  images  `ROOT/<split>/<wnid>/<stem>.JPEG` (class folders), or flat `ROOT/<split>/<stem>.JPEG`
          with `val_labels`: a text file with one wnid or 0-based class index (into the sorted wnid
          list) per line in sorted filename order, or Kaggle's `LOC_val_solution.csv`.
  boxes   "" = Pascal-VOC XML under `ROOT/Annotation/<split>` (none if that folder is absent);
          a folder of XMLs, `<dir>/<wnid>/<stem>.xml` or flat `<dir>/<stem>.xml`
          (ILSVRC2012_bbox_train_v2 / _val_v3); or a Kaggle `LOC_*_solution.csv`
          (`ImageId,PredictionString` with `wnid x0 y0 x1 y1 ...`).
  packed  `ROOT/<split>.pack` with `ROOT/<split>.pack.index.npz` (`tools/prepare_imagenet.py
          --pack`, `als_det.data.pack`): images, labels and boxes as indexed from the class
          folders it was packed from.
VOC corners are inclusive pixels and are read as (xmin, ymin, xmax + 1, ymax + 1); boxes are scaled
when the XML `<size>` differs from the image's size, clipped to the image, and empty ones are
dropped. Images without a box file keep `N == 0` boxes (the no-box policy applies in training).
Sizes and boxes are in the image's displayed orientation, its EXIF orientation applied, as
detectron2 reads images and `als_det.data.images` decodes them; a box file whose `<size>` is the
stored size of an image that EXIF turns a quarter is not rescaled but skipped (below).

Bad input. With `strict=False` each case below is skipped, counted under its reason in
`IndexReport.skipped` (with the files) and listed by `IndexReport.summary()`; with `strict=True` the
first one raises (`BadImageError` for images, `DataError` otherwise) naming the file.

  reason                   what is dropped
  corrupt_image            the image (header unreadable; data truncated later is caught at load
                           time by `ImageNetBoxes`, which returns label -1)
  not_an_image             nothing indexed: a non-image file in an image folder
  symlink_loop             nothing indexed: a link (image, box file or folder) that loops, or a
                           folder link back to a folder it is in (never followed)
  broken_symlink           nothing indexed: a link to a path that does not exist
  empty_class_folder       nothing: a class folder without images (the class keeps its index)
  unknown_class_folder     the folder's images (a folder whose name is not in `classes`)
  unlabelled_image         the image (flat layout: no entry in the labels file)
  bad_label                the image (labels file names an unknown wnid or an index out of range)
  box_file_without_image   nothing: a box file (or CSV row) whose image is absent
  malformed_box_file       the image's boxes: the image stays, with N == 0 (no-box policy)
  box_file_before_exif     the image's boxes, as above: the box file's <size> is the image's
                           stored size, which its EXIF orientation turns a quarter
  unknown_wnid             that box (object name not in `classes`); boxes of other known classes
                           are ignored silently, as the index keeps only the labelled class's
  inverted_box             that box (x1 < x0 or y1 < y0 in the file)
  box_outside_image        that box (nothing left after clipping; also `empty_boxes_dropped`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from als_det.data import index_cache, pack
from als_det.data.annotations import (
    BoxFile,
    DataError,
    IndexReport,
    boxes_for,
    parse_voc_xml,
    read_loc_csv,
    read_val_labels,
    scan_xml_dir,
)
from als_det.data.images import (
    TRANSPOSING_ORIENTATIONS,
    BadImageError,
    exif_orientation,
    image_size,
    size_mismatch,
)
from als_det.data.listing import (
    LINK_PROBLEMS,
    entry_kind,
    leads_back,
    link_problem,
    visible_entries,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
CACHE_SUBDIR = ".als_det_cache"


@dataclass
class ImageRecord:
    """One image: its path, class index, labelled-class boxes (float32 (N, 4), x0 y0 x1 y1 in the
    decoded image's pixels) and its displayed size (EXIF orientation applied, `image_size`); for
    a packed split (`als_det.data.pack`) its pack file, extent there and SHA-1."""

    path: str
    label: int
    boxes: np.ndarray
    width: int
    height: int
    pack: str = ""
    offset: int = 0
    length: int = 0
    sha1: bytes = b""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _kinds(
    folder: str | os.PathLike, report: IndexReport, strict: bool
) -> list[tuple[os.DirEntry, str]]:
    """(entry, kind) of `folder`'s visible entries; links that loop (a folder link back to
    `folder` or above it included) or lead nowhere are skipped and counted under their reason."""
    here = os.path.realpath(folder)
    out = []
    for e in visible_entries(folder):
        kind = entry_kind(e)
        if kind == "dir" and leads_back(os.path.realpath(e.path), here, ()):
            report.skip("symlink_loop", e.path, strict, f"links back to {os.path.realpath(e.path)}")
        elif kind in LINK_PROBLEMS:
            report.skip(kind, e.path, strict, link_problem(kind, e.path))
        else:
            out.append((e, kind))
    return out


# ----------------------------------------------------------------------------------- listing
def _list_images(
    split_dir: Path,
    val_labels: str,
    classes: list[str] | None,
    max_per_class: int,
    report: IndexReport,
    strict: bool,
) -> tuple[list[tuple[str, int]], list[str]]:
    """(image path, label) pairs in a stable order, and the class list."""
    entries = _kinds(split_dir, report, strict)
    items: list[tuple[str, int]] = []
    if val_labels:
        files = []
        for e, kind in entries:
            if kind == "file" and _is_image(e.name):
                files.append(e.name)
            elif kind == "file":
                report.skip("not_an_image", e.path, strict)
        labels, classes = read_val_labels(Path(val_labels), files, classes)
        index = {c: i for i, c in enumerate(classes)}
        per_class: dict[int, int] = {}
        for name, lb in zip(files, labels):
            path = os.path.join(split_dir, name)
            if lb is None:
                report.skip("unlabelled_image", path, strict, f"no row in {val_labels}")
                continue
            label = lb if isinstance(lb, int) else index.get(lb, -1)
            if not 0 <= label < len(classes):
                hint = (
                    " (1-based devkit ILSVRC2012_IDs must be converted to wnids)"
                    if isinstance(lb, int)
                    else ""
                )
                report.skip("bad_label", path, strict, f"label {lb!r} in {val_labels}{hint}")
                continue
            per_class[label] = per_class.get(label, 0) + 1
            if max_per_class and per_class[label] > max_per_class:
                continue
            items.append((path, label))
        return items, classes

    folders = {e.name: e.path for e, kind in entries if kind == "dir"}
    for e, kind in entries:
        if kind == "file":
            report.skip("not_an_image", e.path, strict, "file beside the class folders")
    if classes is None:
        classes = sorted(folders)
    for name in sorted(set(folders) - set(classes)):
        report.skip("unknown_class_folder", folders[name], strict, "not in the class list")
    for label, wnid in enumerate(classes):
        folder = folders.get(wnid)
        names = []
        if folder is not None:
            for e, kind in _kinds(folder, report, strict):
                if kind == "file" and _is_image(e.name):
                    names.append(e.name)
                else:
                    report.skip("not_an_image", e.path, strict)
        if not names:
            report.skip("empty_class_folder", folder or split_dir / wnid, strict, "no images")
            continue
        if max_per_class:
            names = names[:max_per_class]
        items.extend((os.path.join(folder, n), label) for n in names)
    return items, classes


# ----------------------------------------------------------------------------------- index
def _box_source(root: Path, split: str, boxes: str) -> tuple[str, Path | None]:
    """("xml" | "csv" | "none", path)."""
    if not boxes:
        default = root / "Annotation" / split
        return ("xml", default) if default.is_dir() else ("none", None)
    path = Path(boxes)
    if not path.exists():
        raise FileNotFoundError(f"box source {path} does not exist")
    return ("csv" if path.suffix.lower() == ".csv" else "xml"), path


def layout_problems(
    root: str | os.PathLike, split: str, boxes: str = "", val_labels: str = ""
) -> list[str]:
    """What `build_index(root, split, boxes, val_labels)` would find missing, seen without indexing
    (a pre-flight check): the image folder with its class folders (or a flat folder and its
    labels file), and a box source (without one every image follows the no-box policy)."""
    root = Path(root)
    split_dir = root / split
    if pack.is_packed(root, split):
        return _packed_problems(root, split, boxes, val_labels)
    if not split_dir.is_dir():
        return [f"image folder {split_dir} does not exist"]
    problems = []
    if val_labels:
        if not Path(val_labels).is_file():
            problems.append(f"labels file {val_labels} does not exist")
    elif not any(kind == "dir" for _, kind in _kinds(split_dir, IndexReport(split=split), False)):
        problems.append(f"{split_dir} has no class folders (<wnid>/) and no labels file")
    try:
        kind, _ = _box_source(root, split, boxes)
    except FileNotFoundError as e:
        problems.append(str(e))
    else:
        if kind == "none":
            problems.append(f"no boxes: {root / 'Annotation' / split} does not exist")
    return problems


def _packed_problems(root: Path, split: str, boxes: str, val_labels: str) -> list[str]:
    """What makes a packed split unusable as given: a folder of the same name beside it, or a
    box source or labels file (the pack's index carries its labels and boxes)."""
    problems = []
    if (root / split).exists():
        problems.append(
            f"{root} holds both {split}/ and {pack.pack_path(root, split).name}: keep one"
        )
    if boxes or val_labels:
        problems.append(
            f"{pack.index_path(root, split)} carries the split's labels and boxes: a box source "
            f"or labels file does not apply to it (got {boxes or val_labels!r})"
        )
    return problems


def _load_packed(
    root: Path, split: str, strict: bool, max_per_class: int, classes: list[str] | None
) -> tuple[list[ImageRecord], list[str], IndexReport]:
    """A packed split's records (the first `max_per_class` of each class, if set), class list
    (`classes` fixes it: labels are mapped by name, images of other classes skipped as
    `unknown_class_folder`) and report, from its index (`als_det.data.pack`)."""
    data = pack.read_index(root, split)
    meta, where = data["meta"], pack.pack_path(root, split)
    report = IndexReport(**meta["report"])
    report.box_source = f"pack index: {pack.index_path(root, split)}"
    if strict and report.skipped:
        reason, files = sorted(report.skipped.items())[0]
        raise DataError(f"{files[0]}: {reason.replace('_', ' ')} (skipped when {where} was packed)")
    own = list(meta["classes"])
    classes = own if classes is None else classes
    position = {c: i for i, c in enumerate(classes)}
    records: list[ImageRecord] = []
    per_class: dict[int, int] = {}
    off = data["box_offsets"]
    for i, name in enumerate(data["names"]):
        path, wnid = f"{where}/{name}", own[int(data["labels"][i])]
        if wnid not in position:
            report.skip("unknown_class_folder", path, strict, "not in the class list")
            continue
        label = position[wnid]
        per_class[label] = per_class.get(label, 0) + 1
        if max_per_class and per_class[label] > max_per_class:
            continue
        (offset, length), (width, height) = data["extents"][i], data["sizes"][i]
        records.append(
            ImageRecord(
                path,
                label,
                data["boxes"][off[i] : off[i + 1]],
                int(width),
                int(height),
                pack=str(where),
                offset=int(offset),
                length=int(length),
                sha1=data["sha1"][i].tobytes(),
            )
        )
    report.images = len(records)
    report.with_boxes = sum(bool(len(r.boxes)) for r in records)
    report.boxes = sum(len(r.boxes) for r in records)
    return records, classes, report


def _build(
    root: Path,
    split: str,
    boxes: str,
    val_labels: str,
    strict: bool,
    max_per_class: int,
    classes: list[str] | None,
) -> tuple[list[ImageRecord], list[str], IndexReport]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder {split_dir} does not exist")
    report = IndexReport(split=split)
    kind, box_path = _box_source(root, split, boxes)
    report.box_source = f"{kind}: {box_path}" if box_path else "none"
    items, classes = _list_images(split_dir, val_labels, classes, max_per_class, report, strict)
    known = set(classes)

    xml_files: dict[str, str] = {}
    csv_boxes: dict[str, BoxFile] = {}
    if kind == "xml" and box_path is not None:
        xml_files = scan_xml_dir(box_path, report, strict)
    elif kind == "csv" and box_path is not None:
        csv_boxes = read_loc_csv(box_path, report, strict)
    used: set[str] = set()

    records: list[ImageRecord] = []
    for path, label in tqdm(
        items, desc=f"indexing {split}", unit="img", disable=len(items) < 20000
    ):
        try:
            width, height = image_size(path)
        except BadImageError:
            if strict:
                raise
            report.skip("corrupt_image", path, strict)
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        wnid = classes[label]
        box_file = None
        for key in (f"{wnid}/{stem}", stem):
            if key in xml_files:
                used.add(key)
                try:
                    box_file = parse_voc_xml(xml_files[key])
                except DataError as exc:
                    if strict:
                        raise
                    report.skip("malformed_box_file", xml_files[key], strict, str(exc))
                break
            if key in csv_boxes:
                used.add(key)
                box_file = csv_boxes[key]
                break
        if box_file is not None and _before_exif(box_file, path, width, height):
            report.skip(
                "box_file_before_exif",
                box_file.source,
                strict,
                size_mismatch(path, box_file.size, "the box file"),
            )
            box_file = None
        arr = (
            boxes_for(box_file, wnid, known, width, height, report, strict)
            if box_file is not None
            else np.zeros((0, 4), np.float32)
        )
        records.append(ImageRecord(path, label, arr, width, height))
        report.with_boxes += bool(len(arr))
        report.boxes += len(arr)
    if not max_per_class:
        # with max_per_class, unused box files belong to images left out on purpose
        for key in sorted(set(xml_files) - used):
            report.skip("box_file_without_image", xml_files[key], strict)
        for key in sorted(set(csv_boxes) - used):
            report.skip("box_file_without_image", csv_boxes[key].source, strict, f"ImageId {key}")
    report.images = len(records)
    return records, classes, report


def _before_exif(box_file: BoxFile, path: str, width: int, height: int) -> bool:
    """Whether `box_file` gives the stored size of an image that EXIF displays turned a quarter."""
    return (
        box_file.size == (height, width) != (width, height)
        and exif_orientation(path) in TRANSPOSING_ORIENTATIONS
    )


def _unpack(data: dict, root: Path) -> list[ImageRecord]:
    off = data["offsets"]
    return [
        ImageRecord(
            os.path.join(root, p),
            int(lb),
            data["boxes"][off[i] : off[i + 1]],
            int(wh[0]),
            int(wh[1]),
        )
        for i, (p, lb, wh) in enumerate(zip(data["meta"]["paths"], data["labels"], data["sizes"]))
    ]


def is_marked_read_only(path: str | os.PathLike) -> bool:
    """True when `path`'s mode bits deny writing. Mode bits, not access(): root may write anywhere,
    but a folder marked read-only (shared fixtures) is data to leave alone."""
    return not Path(path).stat().st_mode & stat.S_IWUSR


def index_cache_dir(
    root: str | os.PathLike, fallback: str | os.PathLike, requested: str = ""
) -> str:
    """Where to cache `root`'s box index: `requested`, else ROOT's default ("" for build_index),
    else — ROOT marked read-only — `fallback` (a run's own output folder)."""
    if requested:
        return str(requested)
    if not is_marked_read_only(root):
        return ""
    logger.info("data root %s is read-only: caching its box index under %s", root, fallback)
    return str(fallback)


def build_index(
    root: str | os.PathLike,
    split: str,
    boxes: str = "",
    val_labels: str = "",
    strict: bool = False,
    cache_dir: str | os.PathLike = "",
    max_per_class: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[list[ImageRecord], list[str], IndexReport]:
    """Index `root/split` with its boxes; cached under `cache_dir` (default ROOT/.als_det_cache,
    not written when ROOT is marked read-only).

    A packed split (`ROOT/<split>.pack`, `als_det.data.pack`) is read from its pack index
    instead, which needs no cache. The cache (`als_det.data.index_cache`: arrays only, no pickle)
    is keyed by the arguments and checked on load against the name, size and mtime of every file
    in the image and box folders (and of the labels/CSV files), so any added, removed or edited
    file rebuilds it, with the reason logged; it is written atomically. `classes` fixes the class
    list (val must use train's); by default it is the sorted class folder names.
    """
    root = Path(root).resolve()
    classes = list(classes) if classes is not None else None
    if pack.is_packed(root, split):
        problems = _packed_problems(root, split, boxes, val_labels)
        if problems:
            raise ValueError("; ".join(problems))
        records, classes, report = _load_packed(root, split, strict, max_per_class, classes)
        logger.info("%s", report.summary())
        return records, classes, report
    _, box_path = _box_source(root, split, boxes)
    key = {
        "root": str(root),
        "split": split,
        "boxes": str(boxes),
        "val_labels": str(val_labels),
        "strict": strict,
        "max_per_class": max_per_class,
        "classes": classes,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    cache = Path(cache_dir or root / CACHE_SUBDIR) / f"index-{split.replace('/', '_')}-{digest}.npz"
    started = time.perf_counter()
    files = index_cache.fingerprint(
        [root / split, box_path, Path(val_labels) if val_labels else None]
    )
    logger.debug(
        "fingerprinted %d folders/files for the %s index in %.2f s",
        len(files),
        split,
        time.perf_counter() - started,
    )

    cached = index_cache.load(cache, key, files)
    if cached is not None:
        logger.info("loaded box index from %s", cache)
        meta = cached["meta"]
        return _unpack(cached, root), list(meta["classes"]), IndexReport(**meta["report"])

    started = time.perf_counter()
    records, classes, report = _build(
        root, split, boxes, val_labels, strict, max_per_class, classes
    )
    logger.info("%s\n  built in %.1f s", report.summary(), time.perf_counter() - started)
    if not cache_dir and is_marked_read_only(root):
        logger.warning(
            "data root %s is read-only: index not cached; pass cache_dir= (DATA.CACHE_DIR) "
            "so it is not rebuilt at every start",
            root,
        )
        return records, classes, report
    try:
        index_cache.save(cache, key, files, classes, asdict(report), records, root)
    except OSError as exc:
        logger.warning(
            "could not write the index cache %s (%s); pass cache_dir= to a writable "
            "folder so the index is not rebuilt at every start",
            cache,
            exc,
        )
    return records, classes, report

"""The box index: one `ImageRecord` per image with the labelled class's boxes, built once and cached.

Layouts (ILSVRC2012 as users have it):
  images  `ROOT/<split>/<wnid>/<stem>.JPEG` (class folders), or flat `ROOT/<split>/<stem>.JPEG`
          with `val_labels`: a text file with one wnid or 0-based class index (into the sorted wnid
          list) per line in sorted filename order, or Kaggle's `LOC_val_solution.csv`.
  boxes   "" = Pascal-VOC XML under `ROOT/Annotation/<split>` (none if that folder is absent);
          a folder of XMLs, `<dir>/<wnid>/<stem>.xml` or flat `<dir>/<stem>.xml`
          (ILSVRC2012_bbox_train_v2 / _val_v3); or a Kaggle `LOC_*_solution.csv`
          (`ImageId,PredictionString` with `wnid x0 y0 x1 y1 ...`).
VOC corners are inclusive pixels and are read as (xmin, ymin, xmax + 1, ymax + 1); boxes are scaled
when the XML `<size>` differs from the JPEG's header size, clipped to the image, and empty ones are
dropped. Images without a box file keep `N == 0` boxes (the no-box policy applies in training).

Bad input. With `strict=False` each case below is skipped, counted under its reason in
`IndexReport.skipped` (with the files) and listed by `IndexReport.summary()`; with `strict=True` the
first one raises (`BadImageError` for images, `DataError` otherwise) naming the file.

  reason                   what is dropped
  corrupt_image            the image (header unreadable; data truncated later is caught at load
                           time by `ImageNetBoxes`, which returns label -1)
  not_an_image             nothing indexed: a non-image file in an image folder
  empty_class_folder       nothing: a class folder without images (the class keeps its index)
  unknown_class_folder     the folder's images (a folder whose name is not in `classes`)
  unlabelled_image         the image (flat layout: no entry in the labels file)
  bad_label                the image (labels file names an unknown wnid or an index out of range)
  box_file_without_image   nothing: a box file (or CSV row) whose image is absent
  malformed_box_file       the image's boxes: the image stays, with N == 0 (no-box policy)
  unknown_wnid             that box (object name not in `classes`); boxes of other known classes
                           are ignored silently, as the index keeps only the labelled class's
  inverted_box             that box (x1 < x0 or y1 < y0 in the file)
  box_outside_image        that box (nothing left after clipping; also `empty_boxes_dropped`)
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import stat
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from als_det.data import index_cache
from als_det.data.images import BadImageError, image_size

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
CACHE_SUBDIR = ".als_det_cache"


class DataError(ValueError):
    """Bad data-set input (labels, box files); the message names the file."""


@dataclass
class ImageRecord:
    """One image: its path, class index, labelled-class boxes (float32 (N, 4), x0 y0 x1 y1 in the
    decoded image's pixels) and the header size."""

    path: str
    label: int
    boxes: np.ndarray
    width: int
    height: int


@dataclass
class IndexReport:
    """Counts of what an index holds and what it skipped, by reason."""

    split: str
    images: int = 0
    with_boxes: int = 0
    boxes: int = 0
    empty_boxes_dropped: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    box_source: str = ""

    def skip(self, reason: str, file: str | os.PathLike, strict: bool, detail: str = "") -> None:
        """Record a skip, or raise when strict."""
        if strict:
            raise DataError(f"{file}: {reason.replace('_', ' ')}{': ' + detail if detail else ''}")
        self.skipped.setdefault(reason, []).append(str(file))

    def summary(self) -> str:
        lines = [f"index '{self.split}': {self.images} images, {self.with_boxes} with boxes, "
                 f"{self.boxes} boxes, {self.empty_boxes_dropped} empty boxes dropped "
                 f"(box source: {self.box_source or 'none'})"]
        for reason, files in sorted(self.skipped.items()):
            shown = ", ".join(files[:3]) + (f", ... ({len(files) - 3} more)" if len(files) > 3 else "")
            lines.append(f"  skipped {len(files)} x {reason}: {shown}")
        return "\n".join(lines)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(entries: Iterable[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


# ----------------------------------------------------------------------------------- box files
@dataclass
class _BoxFile:
    """Parsed box file: objects (wnid, xmin, ymin, xmax, ymax) in the file's inclusive corners."""

    source: str
    size: tuple[int, int] | None
    objects: list[tuple[str, float, float, float, float]]


def parse_voc_xml(path: str | os.PathLike) -> _BoxFile:
    """Read a Pascal-VOC annotation; `DataError` naming the file when malformed."""
    try:
        root = ET.parse(path).getroot()
        size = None
        size_el = root.find("size")
        if size_el is not None and size_el.findtext("width") and size_el.findtext("height"):
            size = (int(float(size_el.findtext("width"))), int(float(size_el.findtext("height"))))
            if size[0] <= 0 or size[1] <= 0:
                size = None
        objects = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            name = (obj.findtext("name") or "").strip()
            if bb is None or not name:
                raise ValueError("object without <name> or <bndbox>")
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((name, *coords))
    except (ET.ParseError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: malformed box XML ({exc})") from exc
    return _BoxFile(str(path), size, objects)


def _scan_xml_dir(box_dir: Path) -> dict[str, str]:
    """Relative path without extension ("<wnid>/<stem>" or "<stem>") -> XML path."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(box_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, box_dir)
        for name in filenames:
            if name.lower().endswith(".xml"):
                stem = name[:-4]
                found[stem if rel_dir == "." else f"{rel_dir}/{stem}"] = os.path.join(dirpath, name)
    return found


def _read_loc_csv(path: Path, report: IndexReport, strict: bool) -> dict[str, _BoxFile]:
    """Kaggle LOC_*_solution.csv: ImageId -> boxes (no size: the CSV is in the JPEG's pixels)."""
    out: dict[str, _BoxFile] = {}
    for line_no, row in _loc_csv_rows(path):
        where = f"{path}:{line_no}"
        try:
            image_id, pred = row[0].strip(), row[1].split()
            if len(pred) % 5:
                raise ValueError("PredictionString is not groups of 'wnid x0 y0 x1 y1'")
            objects = [(pred[i], *(float(v) for v in pred[i + 1:i + 5]))
                       for i in range(0, len(pred), 5)]
        except (IndexError, ValueError) as exc:
            report.skip("malformed_box_file", where, strict, str(exc))
            continue
        out[image_id] = _BoxFile(where, None, objects)
    return out


def _loc_csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of a Kaggle LOC_*_solution.csv, after checking its header."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected header 'ImageId,PredictionString', got {header}")
        yield from enumerate(reader, start=2)


def _read_val_labels(path: Path, image_names: list[str], classes: list[str] | None
                     ) -> tuple[list[str | int | None], list[str] | None]:
    """Per image (sorted names) its wnid, 0-based index, or None (not in a CSV), and the classes.

    A text file holds one label per line in sorted filename order; a .csv is LOC_val_solution.
    """
    labels: list[str | int | None]
    if path.suffix.lower() == ".csv":
        by_id: dict[str, str] = {}
        for line_no, row in _loc_csv_rows(path):
            if len(row) < 2 or not row[1].split():
                raise DataError(f"{path}:{line_no}: row without a class")
            by_id[row[0].strip()] = row[1].split()[0]
        labels = [by_id.get(os.path.splitext(n)[0]) for n in image_names]
    else:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if len(lines) != len(image_names):
            raise DataError(f"{path}: {len(lines)} labels for {len(image_names)} images; the file "
                            "needs one label per image, in sorted filename order")
        labels = [int(ln) if ln.lstrip("-").isdigit() else ln for ln in lines]
    if classes is None:
        if any(isinstance(lb, int) for lb in labels):
            raise DataError(f"{path}: class indices need the class list; pass classes= (train's)")
        classes = sorted({lb for lb in labels if lb is not None})
    return labels, classes


def _boxes_for(box_file: _BoxFile, wnid: str, known: set[str], width: int, height: int,
               report: IndexReport, strict: bool) -> np.ndarray:
    """The labelled class's boxes as float32 (N, 4), converted, scaled, clipped, empties dropped."""
    sx = sy = 1.0
    if box_file.size is not None and box_file.size != (width, height):
        sx, sy = width / box_file.size[0], height / box_file.size[1]
    kept = []
    for name, xmin, ymin, xmax, ymax in box_file.objects:
        if name not in known:
            report.skip("unknown_wnid", box_file.source, strict, f"object name {name!r}")
            continue
        if name != wnid:
            continue
        if xmax < xmin or ymax < ymin:
            report.skip("inverted_box", box_file.source, strict, f"box {(xmin, ymin, xmax, ymax)}")
            continue
        x0, x1 = np.clip([xmin * sx, (xmax + 1) * sx], 0, width)
        y0, y1 = np.clip([ymin * sy, (ymax + 1) * sy], 0, height)
        if x1 <= x0 or y1 <= y0:
            report.empty_boxes_dropped += 1
            report.skip("box_outside_image", box_file.source, strict,
                        f"box {(xmin, ymin, xmax, ymax)} outside the {width}x{height} image")
            continue
        kept.append((x0, y0, x1, y1))
    return np.asarray(kept, dtype=np.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------------- listing
def _list_images(split_dir: Path, val_labels: str, classes: list[str] | None,
                 max_per_class: int, report: IndexReport, strict: bool
                 ) -> tuple[list[tuple[str, int]], list[str]]:
    """(image path, label) pairs in a stable order, and the class list."""
    entries = _visible(os.scandir(split_dir))
    items: list[tuple[str, int]] = []
    if val_labels:
        files = []
        for e in entries:
            if e.is_file() and _is_image(e.name):
                files.append(e.name)
            elif e.is_file():
                report.skip("not_an_image", e.path, strict)
        labels, classes = _read_val_labels(Path(val_labels), files, classes)
        index = {c: i for i, c in enumerate(classes)}
        per_class: dict[int, int] = {}
        for name, lb in zip(files, labels):
            path = os.path.join(split_dir, name)
            if lb is None:
                report.skip("unlabelled_image", path, strict, f"no row in {val_labels}")
                continue
            label = lb if isinstance(lb, int) else index.get(lb, -1)
            if not 0 <= label < len(classes):
                hint = " (1-based devkit ILSVRC2012_IDs must be converted to wnids)" \
                    if isinstance(lb, int) else ""
                report.skip("bad_label", path, strict, f"label {lb!r} in {val_labels}{hint}")
                continue
            per_class[label] = per_class.get(label, 0) + 1
            if max_per_class and per_class[label] > max_per_class:
                continue
            items.append((path, label))
        return items, classes

    folders = {e.name: e.path for e in entries if e.is_dir()}
    for e in entries:
        if e.is_file():
            report.skip("not_an_image", e.path, strict, "file beside the class folders")
    if classes is None:
        classes = sorted(folders)
    for name in sorted(set(folders) - set(classes)):
        report.skip("unknown_class_folder", folders[name], strict, "not in the class list")
    for label, wnid in enumerate(classes):
        folder = folders.get(wnid)
        names = []
        if folder is not None:
            for e in _visible(os.scandir(folder)):
                if e.is_file() and _is_image(e.name):
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


def _build(root: Path, split: str, boxes: str, val_labels: str, strict: bool, max_per_class: int,
           classes: list[str] | None) -> tuple[list[ImageRecord], list[str], IndexReport]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder {split_dir} does not exist")
    report = IndexReport(split=split)
    kind, box_path = _box_source(root, split, boxes)
    report.box_source = f"{kind}: {box_path}" if box_path else "none"
    items, classes = _list_images(split_dir, val_labels, classes, max_per_class, report, strict)
    known = set(classes)

    xml_files: dict[str, str] = {}
    csv_boxes: dict[str, _BoxFile] = {}
    if kind == "xml" and box_path is not None:
        xml_files = _scan_xml_dir(box_path)
    elif kind == "csv" and box_path is not None:
        csv_boxes = _read_loc_csv(box_path, report, strict)
    used: set[str] = set()

    records: list[ImageRecord] = []
    for path, label in tqdm(items, desc=f"indexing {split}", unit="img", disable=len(items) < 20000):
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
        arr = (_boxes_for(box_file, wnid, known, width, height, report, strict)
               if box_file is not None else np.zeros((0, 4), np.float32))
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


def _unpack(data: dict, root: Path) -> list[ImageRecord]:
    off = data["offsets"]
    return [ImageRecord(os.path.join(root, p), int(lb), data["boxes"][off[i]:off[i + 1]],
                        int(wh[0]), int(wh[1]))
            for i, (p, lb, wh) in enumerate(zip(data["meta"]["paths"], data["labels"],
                                                data["sizes"]))]


def is_marked_read_only(path: str | os.PathLike) -> bool:
    """True when `path`'s mode bits deny writing. Mode bits, not access(): root may write anywhere,
    but a folder marked read-only (shared fixtures) is data to leave alone."""
    return not Path(path).stat().st_mode & stat.S_IWUSR


def index_cache_dir(root: str | os.PathLike, fallback: str | os.PathLike, requested: str = "") -> str:
    """Where to cache `root`'s box index: `requested`, else ROOT's default ("" for build_index),
    else — ROOT marked read-only — `fallback` (a run's own output folder)."""
    if requested:
        return str(requested)
    if not is_marked_read_only(root):
        return ""
    logger.info("data root %s is read-only: caching its box index under %s", root, fallback)
    return str(fallback)


def build_index(root: str | os.PathLike, split: str, boxes: str = "", val_labels: str = "",
                strict: bool = False, cache_dir: str | os.PathLike = "", max_per_class: int = 0,
                classes: Sequence[str] | None = None
                ) -> tuple[list[ImageRecord], list[str], IndexReport]:
    """Index `root/split` with its boxes; cached under `cache_dir` (default ROOT/.als_det_cache,
    not written when ROOT is marked read-only).

    The cache (`als_det.data.index_cache`: arrays only, no pickle) is keyed by the arguments and
    checked on load against the name, size and mtime of every file in the image and box folders
    (and of the labels/CSV files), so any added, removed or edited file rebuilds it, with the
    reason logged; it is written atomically. `classes` fixes the class list (val must use
    train's); by default it is the sorted class folder names.
    """
    root = Path(root).resolve()
    classes = list(classes) if classes is not None else None
    _, box_path = _box_source(root, split, boxes)
    key = {"root": str(root), "split": split, "boxes": str(boxes), "val_labels": str(val_labels),
           "strict": strict, "max_per_class": max_per_class, "classes": classes}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    cache = Path(cache_dir or root / CACHE_SUBDIR) / f"index-{split.replace('/', '_')}-{digest}.npz"
    started = time.perf_counter()
    files = index_cache.fingerprint([root / split, box_path, Path(val_labels) if val_labels else None])
    logger.debug("fingerprinted %d folders/files for the %s index in %.2f s", len(files), split,
              time.perf_counter() - started)

    cached = index_cache.load(cache, key, files)
    if cached is not None:
        logger.info("loaded box index from %s", cache)
        meta = cached["meta"]
        return _unpack(cached, root), list(meta["classes"]), IndexReport(**meta["report"])

    started = time.perf_counter()
    records, classes, report = _build(root, split, boxes, val_labels, strict, max_per_class, classes)
    logger.info("%s\n  built in %.1f s", report.summary(), time.perf_counter() - started)
    if not cache_dir and is_marked_read_only(root):
        logger.warning("data root %s is read-only: index not cached; pass cache_dir= (DATA.CACHE_DIR) "
                    "so it is not rebuilt at every start", root)
        return records, classes, report
    try:
        index_cache.save(cache, key, files, classes, asdict(report), records, root)
    except OSError as exc:
        logger.warning("could not write the index cache %s (%s); pass cache_dir= to a writable "
                    "folder so the index is not rebuilt at every start", cache, exc)
    return records, classes, report

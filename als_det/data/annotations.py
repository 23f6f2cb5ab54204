"""Annotation files of an ImageNet-with-boxes tree: Pascal-VOC XMLs, Kaggle `LOC_*_solution.csv`
files and val label lists, read into `BoxFile`s; whatever they hold that cannot be used is
counted in an `IndexReport` (or, with `strict`, raised as a `DataError` naming the file).
The rules for what is skipped and why are `als_det.data.boxes`' module doc.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from als_det.data.listing import (
    LINK_PROBLEMS,
    entry_kind,
    leads_back,
    link_problem,
    visible_entries,
)


class DataError(ValueError):
    """Bad data-set input (labels, box files); the message names the file."""


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
        lines = [
            f"index '{self.split}': {self.images} images, {self.with_boxes} with boxes, "
            f"{self.boxes} boxes, {self.empty_boxes_dropped} empty boxes dropped "
            f"(box source: {self.box_source or 'none'})"
        ]
        for reason, files in sorted(self.skipped.items()):
            shown = ", ".join(files[:3]) + (
                f", ... ({len(files) - 3} more)" if len(files) > 3 else ""
            )
            lines.append(f"  skipped {len(files)} x {reason}: {shown}")
        return "\n".join(lines)


@dataclass
class BoxFile:
    """Parsed box file: objects (wnid, xmin, ymin, xmax, ymax) in the file's inclusive corners."""

    source: str
    size: tuple[int, int] | None
    objects: list[tuple[str, float, float, float, float]]


def parse_voc_xml(path: str | os.PathLike) -> BoxFile:
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
    return BoxFile(str(path), size, objects)


def scan_xml_dir(box_dir: Path, report: IndexReport, strict: bool) -> dict[str, str]:
    """Relative path without extension ("<wnid>/<stem>" or "<stem>") -> XML path, folder links
    followed; a folder link leading back (to a folder entered or enclosing it), a link that loops
    and one that leads nowhere are counted skips (`als_det.data.listing`)."""
    found: dict[str, str] = {}

    def walk(folder: str, rel: str, inside: frozenset[str]) -> None:
        here = os.path.realpath(folder)
        for e in visible_entries(folder):
            kind = entry_kind(e)
            if kind == "dir":
                real = os.path.realpath(e.path)
                if leads_back(real, here, inside):
                    report.skip("symlink_loop", e.path, strict, f"links back to {real}")
                else:
                    walk(e.path, f"{rel}{e.name}/", inside | {real})
            elif kind in LINK_PROBLEMS:
                report.skip(kind, e.path, strict, link_problem(kind, e.path))
            elif kind == "file" and e.name.lower().endswith(".xml"):
                found[rel + e.name[:-4]] = e.path

    walk(str(box_dir), "", frozenset({os.path.realpath(box_dir)}))
    return found


def read_loc_csv(path: Path, report: IndexReport, strict: bool) -> dict[str, BoxFile]:
    """Kaggle LOC_*_solution.csv: ImageId -> boxes (no size: the CSV is in the JPEG's pixels)."""
    out: dict[str, BoxFile] = {}
    for line_no, row in loc_csv_rows(path):
        where = f"{path}:{line_no}"
        try:
            image_id, pred = row[0].strip(), row[1].split()
            if len(pred) % 5:
                raise ValueError("PredictionString is not groups of 'wnid x0 y0 x1 y1'")
            objects = [
                (pred[i], *(float(v) for v in pred[i + 1 : i + 5])) for i in range(0, len(pred), 5)
            ]
        except (IndexError, ValueError) as exc:
            report.skip("malformed_box_file", where, strict, str(exc))
            continue
        out[image_id] = BoxFile(where, None, objects)
    return out


def loc_csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of a Kaggle LOC_*_solution.csv, after checking its header."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected header 'ImageId,PredictionString', got {header}")
        yield from enumerate(reader, start=2)


def read_val_labels(
    path: Path, image_names: list[str], classes: list[str] | None
) -> tuple[list[str | int | None], list[str] | None]:
    """Per image (sorted names) its wnid, 0-based index, or None (not in a CSV), and the classes.

    A text file holds one label per line in sorted filename order; a .csv is LOC_val_solution.
    """
    labels: list[str | int | None]
    if path.suffix.lower() == ".csv":
        by_id: dict[str, str] = {}
        for line_no, row in loc_csv_rows(path):
            if len(row) < 2 or not row[1].split():
                raise DataError(f"{path}:{line_no}: row without a class")
            by_id[row[0].strip()] = row[1].split()[0]
        labels = [by_id.get(os.path.splitext(n)[0]) for n in image_names]
    else:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if len(lines) != len(image_names):
            raise DataError(
                f"{path}: {len(lines)} labels for {len(image_names)} images; the file "
                "needs one label per image, in sorted filename order"
            )
        labels = [int(ln) if ln.lstrip("-").isdigit() else ln for ln in lines]
    if classes is None:
        if any(isinstance(lb, int) for lb in labels):
            raise DataError(f"{path}: class indices need the class list; pass classes= (train's)")
        classes = sorted({lb for lb in labels if lb is not None})
    return labels, classes


def boxes_for(
    box_file: BoxFile,
    wnid: str,
    known: set[str],
    width: int,
    height: int,
    report: IndexReport,
    strict: bool,
) -> np.ndarray:
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
            report.skip(
                "box_outside_image",
                box_file.source,
                strict,
                f"box {(xmin, ymin, xmax, ymax)} outside the {width}x{height} image",
            )
            continue
        kept.append((x0, y0, x1, y1))
    return np.asarray(kept, dtype=np.float32).reshape(-1, 4)

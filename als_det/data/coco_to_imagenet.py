"""A COCO-format detection set -> an ImageNet-with-boxes tree, for ALS pretraining on any detection
set.

Each image becomes one classification sample: its label is the image's **dominant category** (the
category whose boxes cover the largest total area; ties go to more boxes, then the lower category
id) and its boxes are that category's boxes, written as Pascal-VOC XML like ILSVRC2012_bbox_*:

    OUT/<split>/<class>/<name>                  the original image (copied, or symlinked)
    OUT/Annotation/<split>/<class>/<stem>.xml   inclusive integer corners covering each box
    OUT/classes.json                            [{folder, coco_id, images}] of the classes
    OUT/conversion.json                         sources, options, per-split report (written last)

`<class>` is the category name with spaces as underscores. The first split decides the classes
(categories dominant in at least `min_images` of its images); later splits keep only images of
those classes, and every split has a folder for every class (empty where it has no image of it), so
that its class list is the first split's, as in ImageNet. Crowd annotations (`iscrowd: 1`, a box
around a group of instances) follow an explicit policy: `keep` (a box of its category: the
instances are inside it), `drop` (ignored) or `skip_image` (the image is left out). Every image
left out and every box dropped is counted by reason in the report (an annotation of an image id
that `images` lacks is dropped as "image id not in 'images'"); a missing image file, a malformed
json, duplicate ids (image, annotation or category, as fine-tuning's validation refuses them) and a
`width`/`height` that is not the image's displayed size (EXIF orientation applied, as detectron2
reads it; `als_det.data.images`) are errors naming the file.

`<name>` is `file_name` with its folders flattened into the name (`a/b/c.jpg` -> `a_b_c.jpg`), as
pretraining indexes only files directly inside the class folders; names that become the same stem,
absolute names and names with `..` are refused. Before the tree is moved into place, its box
index is built as pretraining builds it, and its image and box counts must be those written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from als_det.data.boxes import build_index
from als_det.data.images import BadImageError, size_mismatch
from als_det.io import atomic_write_json

logger = logging.getLogger(__name__)

CROWD_POLICIES = ("keep", "drop", "skip_image")
LINK_MODES = ("copy", "symlink")
UNKNOWN_IMAGE = "image id not in 'images'"
_SHOW = 3  # entries named in an error message


class ConversionError(ValueError):
    """A COCO json or image folder that cannot be converted; the message names the file."""


@dataclass(frozen=True)
class SplitSource:
    """One split to convert: its output name, its COCO json and its image folder."""

    name: str
    json_file: str
    image_dir: str


@dataclass
class SplitReport:
    """What one split's conversion wrote and left out."""

    split: str
    json_file: str
    images_in_json: int = 0
    images: int = 0
    boxes: int = 0
    crowd_boxes_kept: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    skipped_images: dict[str, list[str]] = field(default_factory=dict)  # reason -> file names
    dropped_boxes: dict[str, int] = field(default_factory=dict)  # reason -> count

    def skip(self, reason: str, file_name: str) -> None:
        self.skipped_images.setdefault(reason, []).append(file_name)

    def summary(self) -> str:
        """One line, then one line per skip reason."""
        lines = [
            f"{self.split}: {self.images} of {self.images_in_json} images in "
            f"{len(self.per_class)} classes, {self.boxes} boxes ({self.crowd_boxes_kept} crowd) "
            f"[{self.json_file}]"
        ]
        for reason, files in sorted(self.skipped_images.items()):
            lines.append(f"  left out {len(files)} images: {reason} (e.g. {', '.join(files[:3])})")
        for reason, n in sorted(self.dropped_boxes.items()):
            lines.append(f"  dropped {n} boxes: {reason}")
        return "\n".join(lines)


def coco_split_sources(
    coco_root: str | os.PathLike,
    splits: Sequence[tuple[str, str]] = (("train2017", "train"), ("val2017", "val")),
) -> list[SplitSource]:
    """The official COCO layout: (COCO split, output split) -> annotations/instances_<s>.json,
    <s>/."""
    root = Path(coco_root)
    return [
        SplitSource(out, str(root / "annotations" / f"instances_{s}.json"), str(root / s))
        for s, out in splits
    ]


def class_folder(name: str) -> str:
    """A category name as a class folder name: spaces and slashes become underscores."""
    return name.strip().replace(" ", "_").replace("/", "_")


def _load(json_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{json_file}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{json_file}: not a readable json file: {e}") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ConversionError(f"{json_file}: no {key!r} list; not a COCO instances file")
    if not data["categories"]:
        raise ConversionError(f"{json_file}: 'categories' is empty")
    _check_entries(data, json_file)
    return data


def _shown(items: Sequence[Any]) -> str:
    more = f" (and {len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(str(x) for x in items[:_SHOW]) + more


def _check_entries(data: dict[str, Any], json_file: Path) -> None:
    """Image entries have an id, a file name and a positive size; ids are unique in each list."""
    for k, im in enumerate(data["images"]):
        ok = isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str)
        if not ok or not all(
            isinstance(im.get(s), int) and not isinstance(im.get(s), bool) and im[s] > 0
            for s in ("width", "height")
        ):
            raise ConversionError(
                f"{json_file}: images[{k}] needs an id, a file_name and positive integer "
                f"width and height, got {im!r:.200}"
            )
    for key, what in (
        ("images", "image"),
        ("annotations", "annotation"),
        ("categories", "category"),
    ):
        if not all(isinstance(x, dict) for x in data[key]):
            raise ConversionError(f"{json_file}: {key!r} holds an entry that is not an object")
        dup = [i for i, n in Counter(x.get("id") for x in data[key]).items() if n > 1]
        if dup:
            raise ConversionError(f"{json_file}: duplicate {what} ids: {_shown(dup)}")


def _flat_name(file_name: str) -> str:
    """`file_name` with its folders flattened into the name (`a/b.jpg` -> `a_b.jpg`); absolute
    names and `..` are refused (ValueError)."""
    parts = file_name.replace("\\", "/").split("/")
    if file_name.startswith(("/", "\\")) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"file_name {file_name!r} is not a plain relative path")
    return "_".join(parts)


def _flat_names(data: dict[str, Any], json_file: Path) -> dict[Any, str]:
    """image id -> output file name; two images may not share a stem (their XMLs would clash)."""
    names = {}
    for im in data["images"]:
        try:
            names[im["id"]] = _flat_name(im["file_name"])
        except ValueError as e:
            raise ConversionError(f"{json_file}: {e}") from None
    by_stem: dict[str, list[str]] = defaultdict(list)
    for im in data["images"]:
        by_stem[Path(names[im["id"]]).stem].append(im["file_name"])
    clash = [" and ".join(files) for files in by_stem.values() if len(files) > 1]
    if clash:
        raise ConversionError(
            f"{json_file}: {len(clash)} groups of images would share a name once flattened "
            f"into a class folder (file stem, folders joined by '_'): {_shown(clash)}"
        )
    return names


def _categories(data: dict[str, Any], json_file: Path) -> dict[int, str]:
    """category id -> class folder name; two categories may not share a folder."""
    bad = [c for c in data["categories"] if not isinstance(c.get("name"), str)]
    if bad:
        raise ConversionError(f"{json_file}: a category without a name: {bad[0]!r:.200}")
    folders = {c.get("id"): class_folder(c["name"]) for c in data["categories"]}
    hidden = [f for f in folders.values() if not f or f.startswith(".")]
    if hidden:
        raise ConversionError(
            f"{json_file}: category names {hidden} make folder names that are empty or hidden "
            "(leading '.'), which pretraining would not read"
        )
    names = list(folders.values())
    clash = sorted({f for f in names if names.count(f) > 1})
    if clash:
        raise ConversionError(f"{json_file}: categories share a folder name: {clash}")
    return folders


def dominant_category(boxes: Sequence[tuple[int, list[float]]]) -> int:
    """The category id whose boxes cover the largest total area (ties: more boxes, lower id)."""
    area: dict[int, float] = defaultdict(float)
    count: dict[int, int] = defaultdict(int)
    for cat, (_, _, w, h) in boxes:
        area[cat] += w * h
        count[cat] += 1
    return min(area, key=lambda c: (-area[c], -count[c], c))


def voc_corners(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """COCO [x, y, w, h] (continuous) -> VOC inclusive integer corners covering it, inside the
    image."""
    x, y, w, h = bbox
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)) - 1, min(height, math.ceil(y + h)) - 1
    return x0, y0, x1, y1


def voc_xml(
    folder: str, file_name: str, width: int, height: int, boxes: Sequence[tuple[int, int, int, int]]
) -> str:
    """A Pascal-VOC annotation with one `<object>` named `folder` per box."""
    objects = "".join(
        f"\t<object>\n\t\t<name>{escape(folder)}</name>\n\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n"
        f"\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n"
        f"\t</object>\n"
        for x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation>\n\t<folder>{escape(folder)}</folder>\n\t<filename>{escape(file_name)}"
        f"</filename>\n\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n"
        f"\t\t<depth>3</depth>\n\t</size>\n{objects}</annotation>\n"
    )


def _numbers(bbox: Any) -> bool:
    """A list of 4 finite numbers."""
    return (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        and all(math.isfinite(v) for v in bbox)
    )


def _usable_box(
    a: dict[str, Any], im: dict[str, Any], crowd: str, report: SplitReport
) -> tuple[int, list[float], tuple[int, int, int, int]] | None:
    """(category id, COCO bbox, VOC corners) of one annotation, or None (dropped and counted)."""
    bbox = a.get("bbox")
    if a.get("iscrowd", 0) and crowd == "drop":
        reason = "crowd (crowd policy 'drop')"
    elif not _numbers(bbox) or bbox[2] <= 0 or bbox[3] <= 0:
        reason = "malformed or non-positive bbox"
    else:
        corners = voc_corners(bbox, im["width"], im["height"])
        if corners[2] >= corners[0] and corners[3] >= corners[1]:
            return a["category_id"], bbox, corners
        reason = "bbox outside the image"
    report.dropped_boxes[reason] = report.dropped_boxes.get(reason, 0) + 1
    return None


def _labelled_images(
    data: dict[str, Any], folders: dict[int, str], crowd: str, report: SplitReport
) -> list[tuple[dict[str, Any], str, list[tuple[int, int, int, int]], int]]:
    """(image entry, class folder, VOC boxes of that class, crowd boxes among them) per usable
    image."""
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for a in data["annotations"]:
        if a.get("category_id") not in folders:
            raise ConversionError(
                f"{report.json_file}: annotation {a.get('id')} uses undeclared "
                f"category id {a.get('category_id')}"
            )
        by_image[a.get("image_id")].append(a)
    image_ids = {im["id"] for im in data["images"]}
    unknown = sum(len(anns) for i, anns in by_image.items() if i not in image_ids)
    if unknown:
        report.dropped_boxes[UNKNOWN_IMAGE] = unknown
    out = []
    for im in data["images"]:
        anns = by_image.get(im["id"], [])
        if crowd == "skip_image" and any(a.get("iscrowd", 0) for a in anns):
            report.skip("has a crowd annotation (crowd policy 'skip_image')", im["file_name"])
            continue
        usable = [(a, box) for a in anns if (box := _usable_box(a, im, crowd, report)) is not None]
        if not usable:
            report.skip("no usable box", im["file_name"])
            continue
        cat = dominant_category([(c, bbox) for _, (c, bbox, _) in usable])
        mine = [(corners, bool(a.get("iscrowd", 0))) for a, (c, _, corners) in usable if c == cat]
        out.append((im, folders[cat], [v for v, _ in mine], sum(is_crowd for _, is_crowd in mine)))
    return out


def _write_split(
    src: SplitSource, tmp: Path, classes: list[str] | None, crowd: str, min_images: int, link: str
) -> tuple[SplitReport, list[str], dict[str, int]]:
    json_file, image_dir = Path(src.json_file), Path(src.image_dir)
    data = _load(json_file)
    folders = _categories(data, json_file)
    report = SplitReport(
        split=src.name, json_file=str(json_file), images_in_json=len(data["images"])
    )
    names = _flat_names(data, json_file)
    labelled = _labelled_images(data, folders, crowd, report)
    missing = [
        im["file_name"] for im, *_ in labelled if not (image_dir / im["file_name"]).is_file()
    ]
    if missing:
        raise ConversionError(
            f"{json_file}: {len(missing)} images missing in {image_dir}, e.g. {missing[:3]}"
        )
    for im, *_ in labelled:
        path = image_dir / im["file_name"]
        try:
            problem = size_mismatch(path, (im["width"], im["height"]), f"image id {im['id']}")
        except BadImageError as e:
            raise ConversionError(f"{json_file}: {e}") from None
        if problem:
            raise ConversionError(f"{json_file}: {problem}")
    counts: dict[str, int] = defaultdict(int)
    for _, folder, _, _ in labelled:
        counts[folder] += 1
    if classes is None:  # the first split decides the classes
        classes = sorted(f for f, n in counts.items() if n >= min_images)
        if not classes:
            raise ConversionError(
                f"{json_file}: no category is dominant in {min_images} or more images"
            )
        reason = f"class with fewer than {min_images} images"
    else:
        reason = "class absent from the first split"
    keep = set(classes)
    for folder in classes:
        (tmp / src.name / folder).mkdir(parents=True, exist_ok=True)
    for im, folder, boxes, n_crowd in labelled:
        if folder not in keep:
            report.skip(reason, im["file_name"])
            continue
        name = names[im["id"]]
        target = tmp / src.name / folder / name
        source = (image_dir / im["file_name"]).resolve()
        if link == "symlink":
            target.symlink_to(source)
        else:
            shutil.copyfile(source, target)
        xml = tmp / "Annotation" / src.name / folder / (Path(name).stem + ".xml")
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(voc_xml(folder, name, im["width"], im["height"], boxes))
        report.images += 1
        report.boxes += len(boxes)
        report.crowd_boxes_kept += n_crowd
        report.per_class[folder] = report.per_class.get(folder, 0) + 1
    return report, classes, {folder: cid for cid, folder in folders.items()}


def _check_pretraining_reads(
    tmp: Path, classes: list[str], reports: dict[str, SplitReport]
) -> None:
    """Index each split as pretraining does (val with train's classes, cache thrown away): it must
    find every image and box written."""
    with tempfile.TemporaryDirectory(prefix="index-check-") as cache:
        for name, written in reports.items():
            _, _, index = build_index(tmp, name, classes=classes, cache_dir=cache)
            if (index.images, index.boxes) != (written.images, written.boxes):
                raise ConversionError(
                    f"split {name}: wrote {written.images} images with {written.boxes} boxes, "
                    f"but pretraining indexes {index.images} images with {index.boxes} boxes:\n"
                    f"{index.summary()}"
                )
            logger.info(
                "check: pretraining indexes %d %s images with %d boxes, as written",
                index.images,
                name,
                index.boxes,
            )


def coco_to_imagenet(
    splits: Sequence[SplitSource],
    out_root: str | os.PathLike,
    crowd: str = "keep",
    min_images: int = 1,
    link: str = "copy",
) -> dict[str, SplitReport]:
    """Convert `splits` (the first decides the classes) into a new ImageNet-with-boxes tree.

    The tree is written into a temporary sibling and renamed into place when complete; an
    existing non-empty `out_root` is refused, never overwritten.
    """
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd must be one of {CROWD_POLICIES}, got {crowd!r}")
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, got {link!r}")
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    if not splits:
        raise ValueError("no splits to convert")
    names = [src.name for src in splits]
    for name in names:
        if not name or name.startswith(".") or "/" in name or "\\" in name or name == "Annotation":
            raise ValueError(
                f"split name {name!r}: a split is a folder of the tree, so a plain name other "
                "than 'Annotation' (no '/', no leading '.')"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"split names must differ, got {names}")
    out_root = Path(out_root).resolve()
    if out_root.exists() and (not out_root.is_dir() or any(out_root.iterdir())):
        raise ConversionError(f"{out_root} exists and is not empty; choose a new output folder")
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.tmp-", dir=out_root.parent))
    try:
        reports: dict[str, SplitReport] = {}
        classes, ids = None, {}
        for src in splits:
            reports[src.name], classes, split_ids = _write_split(
                src, tmp, classes, crowd, min_images, link
            )
            ids = ids or split_ids
            logger.info("%s", reports[src.name].summary())
        _check_pretraining_reads(tmp, classes, reports)
        first = reports[splits[0].name]
        atomic_write_json(
            tmp / "classes.json",
            [{"folder": c, "coco_id": ids[c], "images": first.per_class[c]} for c in classes],
        )
        atomic_write_json(
            tmp / "conversion.json",
            {
                "crowd": crowd,
                "min_images": min_images,
                "link": link,
                "label": "dominant category (largest total box area; ties: more boxes, lower id)",
                "splits": {name: asdict(r) for name, r in reports.items()},
            },
        )
        if out_root.exists():
            out_root.rmdir()
        os.rename(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return reports

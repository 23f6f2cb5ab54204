"""COCO-format detection data sets: validate the json up front, register it with detectron2.

Registration goes through detectron2's own `load_coco_json` (which maps COCO's non-contiguous
category ids to contiguous ones and back for evaluation); this module adds only the checks that
detectron2 leaves to a crash hours later or to a silent drop: images missing on disk, duplicate
ids, unknown category ids, a width/height that is not the image's size as detectron2 reads it
(EXIF orientation applied; detectron2 checks it only when it first loads the image) (clear errors),
and boxes of non-positive size (dropped, counted and reported).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from als_det.data.images import BadImageError, size_mismatch

logger = logging.getLogger(__name__)

# Names detectron2 pre-registers at import under $DETECTRON2_DATASETS/coco; re-registered here so
# that they too are validated and can point at any COCO root (`--coco-root`).
COCO_SPLITS = {"coco_2017_train": "train2017", "coco_2017_val": "val2017"}
# The embedded default: the generated set's COCO-format detection split (als_det.data.generated).
GENERATED_SPLITS = {"als_det_generated_train": "train2017", "als_det_generated_val": "val2017"}
# In a training run's OUTPUT_DIR: the data sets it used, {"train": [name], "test": [name],
# "datasets": {name: {json_file, image_root, json_sha256}}} (absolute paths).
RECORD_FILE = "datasets.json"
_SHOW = 5  # offending entries named in an error message


class DatasetError(ValueError):
    """A COCO-format data set that cannot be trained or evaluated on; the message names the file."""


@dataclass
class CocoValidationReport:
    """What `validate_coco_json` found in one json file."""

    name: str
    json_file: str
    image_root: str
    json_sha256: str = ""
    images: int = 0
    annotations: int = 0
    crowd: int = 0
    categories: list[tuple[int, str]] = field(default_factory=list)  # (official id, name)
    dropped_boxes: list[int] = field(default_factory=list)  # annotation ids, non-positive w or h
    without_masks: list[int] = field(
        default_factory=list
    )  # non-crowd annotation ids, no segmentation

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"{self.name}: {self.images} images, {self.annotations} boxes ({self.crowd} crowd), "
            f"{len(self.categories)} categories, {len(self.dropped_boxes)} boxes of "
            f"non-positive size dropped [{self.json_file}]"
        )


def _duplicates(values: Iterable) -> list:
    return [v for v, n in Counter(values).items() if n > 1]


def _fail(json_file: str | os.PathLike, problem: str, items: list) -> None:
    shown = ", ".join(str(x) for x in items[:_SHOW])
    more = f" (and {len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    raise DatasetError(f"{json_file}: {problem}: {shown}{more}")


def validate_coco_json(
    name: str, json_file: str | os.PathLike, image_root: str | os.PathLike
) -> CocoValidationReport:
    """Check a COCO instances json against its image folder; raise `DatasetError` on bad input.

    Errors: unreadable json, missing sections, duplicate image/annotation/category ids,
    annotations naming an unknown image or category id, malformed bbox, no usable (non-crowd,
    positive-size) box at all, image files absent.
    Boxes with width or height <= 0 are not errors: their ids are returned for dropping.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    if not json_file.is_file():
        raise DatasetError(f"{json_file}: annotation file not found (data set {name!r})")
    if not image_root.is_dir():
        raise DatasetError(f"{image_root}: image folder not found (data set {name!r}, {json_file})")
    raw, data = _read_coco_json(json_file)
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    _check_references(json_file, images, anns, cats)
    usable = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    if not usable:
        what = (
            "'annotations' is empty"
            if not anns
            else f"all {len(anns)} annotations are crowd regions or boxes of non-positive size"
        )
        raise DatasetError(
            f"{json_file}: no usable box to train or evaluate on ({what}); data set {name!r}"
        )
    missing = [
        str(image_root / im["file_name"])
        for im in images
        if not (image_root / im["file_name"]).is_file()
    ]
    if missing:
        _fail(json_file, f"{len(missing)} of {len(images)} images missing on disk", missing)
    _check_sizes(json_file, image_root, images)

    return CocoValidationReport(
        name=name,
        json_file=str(json_file),
        image_root=str(image_root),
        json_sha256=hashlib.sha256(raw).hexdigest(),
        images=len(images),
        annotations=len(anns),
        crowd=sum(1 for a in anns if a.get("iscrowd", 0)),
        categories=sorted((c["id"], c["name"]) for c in cats),
        dropped_boxes=[a["id"] for a in anns if a["bbox"][2] <= 0 or a["bbox"][3] <= 0],
        without_masks=[
            a["id"] for a in anns if not a.get("iscrowd", 0) and not a.get("segmentation")
        ],
    )


def _check_sizes(json_file: Path, image_root: Path, images: list) -> None:
    """Every image's width and height are its displayed size (EXIF orientation applied), which
    detectron2's `read_image` decodes and `check_image_size` compares at loading time."""
    wrong = []
    for im in images:
        size = (im.get("width"), im.get("height"))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            wrong.append(f"image id {im['id']}: width/height {size} are not positive integers")
            continue
        try:
            problem = size_mismatch(image_root / im["file_name"], size, f"image id {im['id']}")
        except BadImageError as e:
            problem = str(e)
        if problem:
            wrong.append(problem)
    if wrong:
        _fail(
            json_file,
            f"{len(wrong)} of {len(images)} images do not have the width and height given",
            wrong,
        )


def _read_coco_json(json_file: Path) -> tuple[bytes, dict]:
    """The file's bytes (for its hash) and its parsed object, with the three COCO lists."""
    try:
        raw = json_file.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{json_file}: not a readable json file: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: expected a COCO json object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_file}: no {key!r} list; not a COCO instances file")
    if not data["categories"]:
        raise DatasetError(f"{json_file}: 'categories' is empty")
    return raw, data


def _check_references(json_file: Path, images: list, anns: list, cats: list) -> None:
    """Ids are unique, every annotation names a known image and category, every bbox has 4
    numbers."""
    for what, items in (("image", images), ("annotation", anns), ("category", cats)):
        dup = _duplicates(x.get("id") for x in items)
        if dup:
            _fail(json_file, f"duplicate {what} ids", dup)
    image_ids = {im["id"] for im in images}
    cat_ids = {c["id"] for c in cats}
    unknown_img = [a.get("id") for a in anns if a.get("image_id") not in image_ids]
    if unknown_img:
        _fail(
            json_file, "annotations whose image_id is not in 'images' (annotation ids)", unknown_img
        )
    unknown_cat = sorted({a.get("category_id") for a in anns} - cat_ids, key=str)
    if unknown_cat:
        _fail(
            json_file,
            f"annotations use category ids not declared in 'categories' "
            f"(declared: {sorted(cat_ids)}); unknown ids",
            unknown_cat,
        )
    bad_bbox = [
        a.get("id") for a in anns if not (isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4)
    ]
    if bad_bbox:
        _fail(
            json_file, "annotations without a 4-number bbox [x, y, w, h] (annotation ids)", bad_bbox
        )


def load_coco_detection(
    name: str, json_file: str, image_root: str, dropped: Iterable[int] = ()
) -> list[dict]:
    """detectron2's `load_coco_json`, minus the annotations whose ids are in `dropped`."""
    dropped = set(dropped)
    dicts = load_coco_json(json_file, image_root, name, extra_annotation_keys=["id"])
    for record in dicts:
        record["annotations"] = [a for a in record["annotations"] if a["id"] not in dropped]
    return dicts


def register_coco_detection(
    name: str, json_file: str | os.PathLike, image_root: str | os.PathLike
) -> CocoValidationReport:
    """Validate, then register `name` (replacing any earlier registration, detectron2's included).

    When boxes were dropped, the evaluator's ground truth is detectron2's own conversion of the
    registered (cleaned) dicts rather than the original json, so training and evaluation agree.
    """
    report = validate_coco_json(name, json_file, image_root)
    if report.dropped_boxes:
        logger.warning(
            "%s: dropping %d boxes of non-positive size (annotation ids %s%s)",
            json_file,
            len(report.dropped_boxes),
            report.dropped_boxes[:_SHOW],
            " ..." if len(report.dropped_boxes) > _SHOW else "",
        )
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    json_file, image_root, dropped = str(json_file), str(image_root), list(report.dropped_boxes)
    DatasetCatalog.register(name, lambda: load_coco_detection(name, json_file, image_root, dropped))
    meta = {
        "image_root": image_root,
        "evaluator_type": "coco",
        "source_json": json_file,
        "json_sha256": report.json_sha256,
        "thing_classes": [n for _, n in report.categories],
        "thing_dataset_id_to_contiguous_id": {
            cid: i for i, (cid, _) in enumerate(report.categories)
        },
    }
    if not report.dropped_boxes:
        meta["json_file"] = json_file
    MetadataCatalog.get(name).set(**meta)
    logger.info("Registered %s", report.summary())
    return report


def coco_root_default() -> Path:
    """detectron2's convention: `$DETECTRON2_DATASETS/coco` (default `datasets/coco`)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "coco"


def coco_split_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(json, image folder) of a split in the official COCO layout under `root`."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / split


def parse_dataset_spec(spec: str) -> tuple[str, str, str]:
    """`NAME=JSON:IMAGE_DIR` -> (name, json, image_dir); the json path is split at its last
    `.json:` so that paths may contain colons."""
    name, sep, rest = spec.partition("=")
    json_file, sep2, image_dir = rest.rpartition(".json:")
    if not (name and sep and sep2 and json_file and image_dir):
        raise DatasetError(
            f"--dataset expects NAME=JSON:IMAGE_DIR (JSON ending in .json), got {spec!r}"
        )
    return name, json_file + ".json", image_dir


def check_has_masks(reports: list[CocoValidationReport]) -> None:
    """A mask model needs a segmentation for every (non-crowd) object it trains or is scored on."""
    for r in reports:
        if r.without_masks:
            _fail(
                r.json_file,
                f"MODEL.MASK_ON needs instance masks, but {len(r.without_masks)} of "
                f"{r.annotations} annotations have no 'segmentation' (annotation ids)",
                r.without_masks,
            )


def check_same_categories(reports: list[CocoValidationReport]) -> list[tuple[int, str]]:
    """All train and test sets must declare the same categories (ids and names): one model head."""
    first = reports[0]
    for r in reports[1:]:
        if r.categories != first.categories:
            ours, theirs = set(first.categories), set(r.categories)
            raise DatasetError(
                f"{r.json_file} declares different categories than {first.json_file}: "
                f"only in the first {sorted(ours - theirs)[:_SHOW]}, "
                f"only in the second {sorted(theirs - ours)[:_SHOW]}"
            )
    return first.categories


def dataset_record(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """{name: {json_file, image_root, json_sha256}} of registered data sets, paths made absolute."""
    record = {}
    for name in dict.fromkeys(names):
        meta = MetadataCatalog.get(name)
        record[name] = {
            "json_file": os.path.abspath(meta.source_json),
            "image_root": os.path.abspath(meta.image_root),
            "json_sha256": meta.json_sha256,
        }
    return record


def read_dataset_record(path: Path) -> dict:
    """A run's RECORD_FILE, checked for what `--eval-only` and `--resume` use from it."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        entries = [record["datasets"][name] for name in (*record["train"], *record["test"])]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(
            f"{path}: not a readable record of a run's data sets ({type(e).__name__}: {e})"
        ) from e
    if not all(
        isinstance(e, dict) and {"json_file", "image_root", "json_sha256"} <= set(e)
        for e in entries
    ):
        raise DatasetError(f"{path}: a data set entry lacks json_file, image_root or json_sha256")
    return record


def check_recorded(report: CocoValidationReport, entry: dict[str, str], record_path: Path) -> None:
    """The json a run recorded must still be the one it used: same bytes (sha256)."""
    if report.json_sha256 != entry["json_sha256"]:
        raise DatasetError(
            f"{report.json_file} has changed since the run recorded it in {record_path} "
            f"(sha256 {entry['json_sha256'][:12]}... then, {report.json_sha256[:12]}... now): "
            "evaluating on it would not measure the run's data set; name a data set explicitly "
            "with --dataset NAME=JSON:IMAGE_DIR --test-dataset NAME to use the changed file"
        )

"""A prepared copy of an ImageNet-with-boxes tree: every image at most `max_side` pixels on its
longer side, boxes scaled with it, the same layout, so every tool reads the copy unchanged.

    ROOT/<split>/...                   images (class folders or flat): an image whose longer side
                                       exceeds `max_side` is shown as displayed (EXIF orientation
                                       applied), resized (PIL's antialiased bicubic) to
                                       round(side * max_side / longer side) and written as RGB
                                       JPEG at `quality` under the same name; a smaller plain
                                       JPEG (RGB or grey, no EXIF rotation) is copied byte for
                                       byte, any other image (PNG, CMYK, EXIF-rotated) re-encoded
                                       as RGB JPEG at its size
    ROOT/Annotation/<split>/...xml     Pascal-VOC boxes of the image with the same relative path:
                                       <size> set to the new size, corners scaled per axis with
                                       the image (continuous corners, written with 2 decimals; a
                                       side under one pixel is widened to one, and counted)
    ROOT/annotations/*.json            COCO-format boxes (as tiny-imagenet-10 and coco_to_imagenet
                                       trees have them): width, height, bbox, area and polygon
                                       segmentations scaled by each image's factors
    anything else                      copied unchanged and listed in `prepared.json`

With `pack`, each split folder (class folders `<split>/<wnid>/`) and its boxes under Annotation/
are then replaced by `ROOT/<split>.pack` and `ROOT/<split>.pack.index.npz` (`als_det.data.pack`:
the images' bytes end to end, and the split's box index with each image's offset, length and
SHA-1), which every tool and decode path reads as it reads the folder.

Box files whose image is not in the tree are copied unchanged and counted (a warning says so):
nothing is rescaled by guesswork. Coverage, a ratio of areas, is invariant under the scaling up
to the rounding of the new size and of the crop to whole pixels (tests/test_prepare.py bounds it).
The copy is written into a temporary sibling and renamed into place when complete; an existing
non-empty output folder is refused. `OUT/prepared.json` records the source, the settings and what
was done, with the bytes before and after.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from als_det.data.annotations import DataError
from als_det.data.boxes import IMAGE_EXTENSIONS, build_index
from als_det.data.pack import write_pack
from als_det.io import atomic_write_json

logger = logging.getLogger(__name__)

RESAMPLE = "PIL bicubic (antialiased)"
BOX_DIR, COCO_DIR = "Annotation", "annotations"
_ORIENTATION = 0x0112  # EXIF


@dataclass(frozen=True)
class Scale:
    """One image's resize: displayed size before and after."""

    width: int
    height: int
    new_width: int
    new_height: int

    @property
    def sx(self) -> float:
        return self.new_width / self.width

    @property
    def sy(self) -> float:
        return self.new_height / self.height


def new_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The prepared size of a `width` x `height` image: unchanged if it fits in `max_side`."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    s = max_side / longer
    return max(1, round(width * s)), max(1, round(height * s))


def _prepare_image(job: tuple[str, str, int, int]) -> tuple[str, str, tuple[int, int, int, int]]:
    """Write one image; returns (source path, what was done, (w, h, new w, new h))."""
    src, dst, max_side, quality = job
    try:
        with Image.open(src) as img:
            plain = img.format == "JPEG" and img.mode in ("RGB", "L")
            if plain and img.getexif().get(_ORIENTATION, 1) == 1:
                width, height = img.size
                if max(width, height) <= max_side:
                    shutil.copyfile(src, dst)
                    return src, "copied", (width, height, width, height)
            shown = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        shutil.copyfile(src, dst)
        return src, f"unreadable ({exc})", (0, 0, 0, 0)
    width, height = shown.size
    nw, nh = new_size(width, height, max_side)
    if (nw, nh) != (width, height):
        shown = shown.resize((nw, nh), Image.BICUBIC)
    shown.save(dst, "JPEG", quality=quality)
    action = "resized" if (nw, nh) != (width, height) else "reencoded"
    return src, action, (width, height, nw, nh)


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def scale_voc_xml(src: Path, dst: Path, scale: Scale) -> int:
    """`src` with <size> set to the new size and every box scaled: continuous corners (xmin,
    ymin, xmax + 1, ymax + 1) times the factors, written back as VOC corners. Boxes are in the
    XML's own <size> where it has one (as the index reads them), else in the image's pixels. A box
    side under one pixel after scaling is widened to one pixel about its centre; returns how many
    sides were."""
    try:
        tree = ET.parse(src)
        root = tree.getroot()
        w, h = (float(root.findtext(f"size/{k}") or 0) for k in ("width", "height"))
    except (ET.ParseError, ValueError) as exc:
        raise DataError(f"{src}: malformed box XML ({exc})") from exc
    sx, sy = (
        (scale.new_width / w, scale.new_height / h) if w > 0 and h > 0 else (scale.sx, scale.sy)
    )
    size = root.find("size")
    if size is None:
        size = ET.SubElement(root, "size")
    for key, value in (("width", scale.new_width), ("height", scale.new_height)):
        el = size.find(key)
        if el is None:
            el = ET.SubElement(size, key)
        el.text = str(value)
    widened = 0
    for bb in root.iter("bndbox"):
        corners = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            try:
                corners.append(float(bb.find(key).text))  # type: ignore[union-attr, arg-type]
            except (AttributeError, TypeError, ValueError) as exc:
                raise DataError(f"{src}: <bndbox> without a number in <{key}>") from exc
        x0, y0, x1, y1 = (
            corners[0] * sx,
            corners[1] * sy,
            (corners[2] + 1) * sx,
            (corners[3] + 1) * sy,
        )
        for lo, hi, axis in ((x0, x1, "x"), (y0, y1, "y")):
            if hi - lo < 1:  # VOC's inclusive corners cannot hold less than one pixel
                widened += 1
                centre = (lo + hi) / 2
                lo, hi = centre - 0.5, centre + 0.5
            if axis == "x":
                x0, x1 = lo, hi
            else:
                y0, y1 = lo, hi
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1 - 1, y1 - 1)):
            bb.find(key).text = _fmt(value)  # type: ignore[union-attr]
    tree.write(dst, encoding="utf-8")
    return widened


def scale_coco_json(data: dict[str, Any], scales: dict[int, Scale], src: Path) -> dict[str, Any]:
    """A COCO dict with every image's size and its annotations' bbox, area and polygons scaled."""
    for im in data["images"]:
        s = scales[im["id"]]
        im["width"], im["height"] = s.new_width, s.new_height
    for ann in data.get("annotations", []):
        s = scales[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x * s.sx, y * s.sy, w * s.sx, h * s.sy]
        if "area" in ann:
            ann["area"] = ann["area"] * s.sx * s.sy
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            raise DataError(f"{src}: annotation {ann.get('id')} has an RLE mask; cannot rescale it")
        if seg:
            ann["segmentation"] = [
                [v * (s.sx if i % 2 == 0 else s.sy) for i, v in enumerate(poly)] for poly in seg
            ]
    return data


def _top(rel: Path) -> str:
    """The top-level folder of a relative path ("" for a file at the root)."""
    return rel.parts[0] if len(rel.parts) > 1 else ""


def _walk(root: Path) -> list[Path]:
    """Every file under `root`, relative, sorted; symlinked folders followed once."""
    seen: set[str] = set()
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        files.extend(Path(dirpath, f).relative_to(root) for f in sorted(filenames))
    return files


def prepare_imagenet(
    src_root: str | Path,
    out_root: str | Path,
    max_side: int,
    quality: int = 90,
    processes: int = 1,
    pack: bool = False,
) -> dict[str, Any]:
    """Write the prepared copy of `src_root` at `out_root` (with `pack`, each split packed into
    one file); returns `prepared.json`'s record."""
    src_root, out_root = Path(src_root), Path(out_root)
    if max_side < 1:
        raise ValueError(f"--max-side must be >= 1, got {max_side}")
    if not 1 <= quality <= 95:
        raise ValueError(f"--quality must be 1..95 (PIL's useful range), got {quality}")
    if not src_root.is_dir():
        raise FileNotFoundError(f"{src_root} is not a folder")
    if out_root.exists() and (not out_root.is_dir() or any(out_root.iterdir())):
        raise ValueError(f"{out_root} exists and is not empty; choose a new output folder")
    if out_root.resolve().is_relative_to(src_root.resolve()):
        raise ValueError(f"{out_root} is inside the source tree {src_root}")
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.tmp-", dir=out_root.parent))
    try:
        record = _prepare(src_root, tmp, max_side, quality, processes)
        if pack:
            record["packed"] = _pack_splits(tmp)
        atomic_write_json(tmp / "prepared.json", record)
        if out_root.exists():
            out_root.rmdir()
        os.rename(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _prepare(src: Path, out: Path, max_side: int, quality: int, processes: int) -> dict[str, Any]:
    files = _walk(src)
    images = [
        f
        for f in files
        if _top(f) not in ("", BOX_DIR, COCO_DIR) and f.suffix.lower() in IMAGE_EXTENSIONS
    ]
    for rel in {f.parent for f in files}:
        (out / rel).mkdir(parents=True, exist_ok=True)
    jobs = [(str(src / f), str(out / f), max_side, quality) for f in images]
    with mp.get_context("fork").Pool(max(1, processes)) as pool:
        done = pool.map(_prepare_image, jobs, chunksize=64)
    actions: Counter = Counter()
    scales: dict[Path, Scale] = {}
    unreadable = []
    for path, action, (w, h, nw, nh) in done:
        rel = Path(path).relative_to(src)
        if action.startswith("unreadable"):
            logger.warning("%s: %s; copied unchanged", rel, action)
            unreadable.append(str(rel))
            actions["unreadable_copied"] += 1
            continue
        actions[action] += 1
        scales[rel] = Scale(w, h, nw, nh)
    by_stem = {rel.with_suffix(""): s for rel, s in scales.items()}
    boxes: Counter = Counter()
    unchanged: list[str] = []
    for rel in files:
        if rel in scales or str(rel) in unreadable:
            continue
        if _top(rel) == BOX_DIR and rel.suffix.lower() == ".xml":
            scale = by_stem.get(Path(*rel.parts[1:]).with_suffix(""))
            if scale is not None:
                boxes["box_sides_widened_to_one_pixel"] += scale_voc_xml(
                    src / rel, out / rel, scale
                )
                boxes["voc_xml_scaled"] += 1
                continue
            boxes["voc_xml_without_image_copied"] += 1
        elif _top(rel) == COCO_DIR and rel.suffix.lower() == ".json":
            if _coco(src / rel, out / rel, scales):
                boxes["coco_json_scaled"] += 1
                continue
            boxes["coco_json_unmatched_copied"] += 1
        shutil.copyfile(src / rel, out / rel)
        unchanged.append(str(rel))
    for key in ("voc_xml_without_image_copied", "coco_json_unmatched_copied"):
        if boxes[key]:
            logger.warning(
                "%d box file(s) whose images are not in %s copied unchanged (%s)",
                boxes[key],
                src,
                key,
            )
    bytes_before = sum((src / f).stat().st_size for f in images)
    bytes_after = sum((out / f).stat().st_size for f in images)
    logger.info(
        "prepared %d images (%s) at max side %d, JPEG quality %d: %.1f MB -> %.1f MB; boxes: %s",
        len(images),
        ", ".join(f"{n} {a}" for a, n in sorted(actions.items())),
        max_side,
        quality,
        bytes_before / 1e6,
        bytes_after / 1e6,
        dict(boxes) or "none",
    )
    return {
        "source": str(src.resolve()),
        "max_side": max_side,
        "jpeg_quality": quality,
        "resample": RESAMPLE,
        "exif_orientation": "applied to resized and re-encoded images",
        "images": dict(actions),
        "unreadable_images_copied": unreadable,
        "box_files": dict(boxes),
        "copied_unchanged": unchanged,
        "image_bytes_before": bytes_before,
        "image_bytes_after": bytes_after,
    }


def _coco(src: Path, dst: Path, scales: dict[Path, Scale]) -> bool:
    """Scale a COCO json whose every image is in the tree (under some split folder); False if
    it is not such a json or an image is missing."""
    try:
        data = json.loads(src.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return False
    splits = sorted({rel.parts[0] for rel in scales})
    by_id: dict[int, Scale] = {}
    for im in data["images"]:
        found = [scales.get(Path(s, im.get("file_name", ""))) for s in splits]
        found = [f for f in found if f is not None]
        if len(found) != 1:
            return False
        by_id[im["id"]] = found[0]
    atomic_write_json(dst, scale_coco_json(data, by_id, src))
    return True


def _pack_splits(out: Path) -> dict[str, dict[str, Any]]:
    """Replace each split folder of the copy at `out` (and its boxes under Annotation/) by one
    pack file and its index (`als_det.data.pack`); returns what each split's index holds."""
    splits = sorted(
        d.name
        for d in out.iterdir()
        if d.is_dir() and d.name not in (BOX_DIR, COCO_DIR) and not d.name.startswith(".")
    )
    done = {}
    with tempfile.TemporaryDirectory(prefix="pack-index-") as cache:
        for split in splits:
            records, classes, report = build_index(out, split, cache_dir=cache)
            report.skipped = {
                why: [os.path.relpath(f, out) for f in files]
                for why, files in report.skipped.items()
            }
            if not records:
                raise ValueError(
                    f"{split}: no images in class folders to pack (--pack needs the layout "
                    f"{split}/<wnid>/<image>, with or without {BOX_DIR}/{split}/<wnid>/<xml>)"
                )
            done[split] = {
                **write_pack(out, split, records, classes, report),
                "with_boxes": report.with_boxes,
                "skipped": {why: len(files) for why, files in report.skipped.items()},
            }
            shutil.rmtree(out / split)
            shutil.rmtree(out / BOX_DIR / split, ignore_errors=True)
            logger.info("packed %s: %d images, %d bytes", split, len(records), done[split]["bytes"])
    if (out / BOX_DIR).is_dir() and not any((out / BOX_DIR).iterdir()):
        (out / BOX_DIR).rmdir()
    return done

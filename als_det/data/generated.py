"""The embedded default data set: a generated, deterministic context-bias classification task.

K classes of coloured shapes (circle, square, triangle, ...) drawn at box-area fractions spread
log-uniformly over [MIN_AREA, MAX_AREA] of the image, each on a textured background. Every class
owns a "context" texture family (stripes, checker, blobs, waves, rings, dots; its own orientation,
frequency and palette). In `train` and `val` an object sits on its own class's context with
probability CONTEXT_RATE, else on a random other class's, so the background alone predicts the
label most of the time, as grass predicts cows in ImageNet. `val_mixed` draws backgrounds
uniformly; `val_bg_only` holds backgrounds alone, labelled by the class whose context they are.
Also a COCO-format detection set of the same K categories. Layout: docs/architecture.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import cv2
import numpy as np
from tqdm import tqdm

from als_det import __version__
from als_det.data.shapes import (
    COLOURS,
    SHAPES,
    background,
    box_size,
    class_spec,
    draw_object,
    object_shape,
)
from als_det.io import atomic_write_json
from als_det.versions import package_versions

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2
JPEG_QUALITY = 90
# detection objects: box-area fraction range, objects per image, largest IoU between two objects
DETECTION_AREA = (0.01, 0.15)
DETECTION_OBJECTS = (1, 5)
DETECTION_MAX_IOU = 0.1
SPLITS = ("train", "val", "val_mixed", "val_bg_only")


# ------------------------------------------------------------------------------------ params
def _params(cfg_gen: Mapping[str, Any]) -> dict[str, Any]:
    """The generation parameters: config defaults overlaid with `cfg_gen`, typed; unknown keys
    fail."""
    from als_det.config import get_cfg

    defaults = dict(get_cfg().DATA.GEN)
    unknown = set(cfg_gen) - set(defaults)
    if unknown:
        raise KeyError(f"unknown DATA.GEN keys: {sorted(unknown)}")
    p = {k: type(v)(cfg_gen.get(k, v)) for k, v in defaults.items()}
    if not 0 < p["MIN_AREA"] <= p["MAX_AREA"] <= 1:
        raise ValueError("DATA.GEN needs 0 < MIN_AREA <= MAX_AREA <= 1")
    if not 0 <= p["CONTEXT_RATE"] <= 1 or not 0 <= p["NO_BOX_FRACTION"] <= 1:
        raise ValueError("DATA.GEN.CONTEXT_RATE and NO_BOX_FRACTION must lie in [0, 1]")
    if not 2 <= p["NUM_CLASSES"] <= len(SHAPES) * len(COLOURS):
        raise ValueError(f"DATA.GEN.NUM_CLASSES must lie in [2, {len(SHAPES) * len(COLOURS)}]")
    if p["IMAGE_SIZE"] < 16 or p["DETECTION_IMAGE_SIZE"] < 32:
        raise ValueError("DATA.GEN.IMAGE_SIZE >= 16 and DETECTION_IMAGE_SIZE >= 32 are needed")
    return p


def _identity(p: dict[str, Any]) -> dict[str, Any]:
    """What must match for an existing generation to be reused."""
    return {
        "generator": GENERATOR_VERSION,
        "params": p,
        "jpeg_quality": JPEG_QUALITY,
        "detection": {
            "area": list(DETECTION_AREA),
            "objects": list(DETECTION_OBJECTS),
            "max_iou": DETECTION_MAX_IOU,
        },
    }


def _finished(root: Path, identity: dict[str, Any]) -> bool:
    try:
        meta = json.loads((root / "generation.json").read_text())
    except (OSError, ValueError):
        return False
    return {k: meta.get(k) for k in identity} == identity


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _voc_xml(folder: str, stem: str, size: int, wnid: str, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<annotation>\n\t<folder>{escape(folder)}</folder>\n\t<filename>{escape(stem)}</filename>\n"
        f"\t<source>\n\t\t<database>als_det generated context-bias set</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n"
        f"\t</size>\n\t<segmented>0</segmented>\n\t<object>\n\t\t<name>{wnid}</name>\n"
        f"\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n"
        f"\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n</annotation>\n"
    )


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------------------------ writing
def _write_classification(tmp: Path, p: dict[str, Any], bar: tqdm) -> dict[str, Any]:
    K, S = p["NUM_CLASSES"], p["IMAGE_SIZE"]
    counts: dict[str, Any] = {}
    for split_code, split in enumerate(SPLITS):
        n = p["TRAIN_PER_CLASS"] if split == "train" else p["VAL_PER_CLASS"]
        n_img = n_xml = n_own = 0
        for k in range(K):
            wnid = class_spec(k)["wnid"]
            img_dir = tmp / split / wnid
            img_dir.mkdir(parents=True)
            if split != "val_bg_only":
                (tmp / "Annotation" / split / wnid).mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([p["SEED"], split_code, k, i])
                stem = f"{wnid}_{i}"
                if split == "val_mixed":
                    ctx = int(rng.integers(K))
                elif split == "val_bg_only" or rng.random() < p["CONTEXT_RATE"]:
                    ctx = k
                else:
                    ctx = int((k + rng.integers(1, K)) % K)
                n_own += ctx == k
                img = background(ctx, S, rng)
                if split != "val_bg_only":
                    polys, aspect = object_shape(k, rng)
                    bw, bh = box_size(rng, (p["MIN_AREA"], p["MAX_AREA"]), S, aspect)
                    xy = (rng.uniform(0, S - bw), rng.uniform(0, S - bh))
                    drawn = draw_object(img, k, polys, (bw, bh), xy, rng)
                    withhold = split == "train" and rng.random() < p["NO_BOX_FRACTION"]
                    if drawn is not None and not withhold:
                        xml = _voc_xml(wnid, stem, S, wnid, drawn[:4])
                        (tmp / "Annotation" / split / wnid / f"{stem}.xml").write_text(xml)
                        n_xml += 1
                (img_dir / f"{stem}.JPEG").write_bytes(_jpeg(img))
                n_img += 1
                bar.update()
        counts[split] = {"images": n_img, "xml": n_xml, "on_own_context": n_own}
    return counts


def _write_detection(tmp: Path, p: dict[str, Any], bar: tqdm) -> dict[str, Any]:
    K, S = p["NUM_CLASSES"], p["DETECTION_IMAGE_SIZE"]
    categories = [
        {
            "id": k + 1,
            "name": class_spec(k)["name"],
            "wnid": class_spec(k)["wnid"],
            "supercategory": "shape",
        }
        for k in range(K)
    ]
    counts = {}
    for split_code, (split, n) in enumerate(
        (("train2017", p["DETECTION_TRAIN"]), ("val2017", p["DETECTION_VAL"])), start=len(SPLITS)
    ):
        (tmp / "detection" / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(n):
            rng = np.random.default_rng([p["SEED"], split_code, i])
            img = background(int(rng.integers(K)), S, rng)
            placed: list[tuple[float, float, float, float]] = []
            for _ in range(int(rng.integers(DETECTION_OBJECTS[0], DETECTION_OBJECTS[1] + 1))):
                k = int(rng.integers(K))
                polys, aspect = object_shape(k, rng)
                for _try in range(30):
                    bw, bh = box_size(rng, DETECTION_AREA, S, aspect)
                    x, y = rng.uniform(0, S - bw), rng.uniform(0, S - bh)
                    cand = (x, y, x + bw, y + bh)
                    if all(_iou(cand, q) <= DETECTION_MAX_IOU for q in placed):
                        break
                else:
                    continue
                drawn = draw_object(img, k, polys, (bw, bh), (x, y), rng)
                if drawn is None:
                    continue
                placed.append(cand)
                x0, y0, x1, y1, area = drawn
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": k + 1,
                        "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
            name = f"{i + 1:012d}.jpg"
            (tmp / "detection" / split / name).write_bytes(_jpeg(img))
            images.append({"id": i + 1, "file_name": name, "width": S, "height": S})
            bar.update()
        atomic_write_json(
            tmp / "detection" / "annotations" / f"instances_{split}.json",
            {
                "info": {"description": "als_det generated detection set"},
                "images": images,
                "annotations": annotations,
                "categories": categories,
            },
            indent=None,
        )
        counts[split] = {"images": len(images), "annotations": len(annotations)}
    return counts


def generate(root: str | os.PathLike, cfg_gen: Mapping[str, Any], progress: bool = True) -> Path:
    """Make the data set at `root` unless a finished generation with the same parameters is there.

    Writes into a temporary sibling folder, `generation.json` last, then renames it into place,
    so `root` is never a half-written tree. A `root` that exists but holds no generation.json is
    refused rather than deleted (it is not ours).
    """
    root = Path(root).resolve()
    p = _params(cfg_gen)
    identity = _identity(p)
    if _finished(root, identity):
        return root
    if root.exists() and any(root.iterdir()) and not (root / "generation.json").exists():
        raise FileExistsError(
            f"{root} exists and is not a generated data set (no generation.json); "
            "choose another DATA.ROOT or remove it"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        start = time.perf_counter()
        total = (
            p["NUM_CLASSES"] * (p["TRAIN_PER_CLASS"] + 3 * p["VAL_PER_CLASS"])
            + p["DETECTION_TRAIN"]
            + p["DETECTION_VAL"]
        )
        with tqdm(
            total=total, desc=f"generating {root.name}", unit="img", disable=not progress
        ) as bar:
            counts = _write_classification(tmp, p, bar)
            counts.update(_write_detection(tmp, p, bar))
        classes = {class_spec(k)["wnid"]: class_spec(k)["name"] for k in range(p["NUM_CLASSES"])}
        atomic_write_json(tmp / "classes.json", classes)
        atomic_write_json(
            tmp / "generation.json",
            {
                **identity,
                "seed": p["SEED"],
                "counts": counts,
                "classes": classes,
                "seconds": round(time.perf_counter() - start, 3),
                "als_det_version": __version__,
                "versions": package_versions(),
            },
        )
        old = None
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.rename(root, old)
        try:
            os.rename(tmp, root)
        except OSError:
            if _finished(root, identity):  # another process finished the same generation first
                shutil.rmtree(tmp)
            else:
                raise
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("generated %s in %.1f s", root, time.perf_counter() - start)
    return root

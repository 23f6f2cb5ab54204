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
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping
from xml.sax.saxutils import escape

import cv2
import numpy as np
from tqdm import tqdm

from als_det import __version__
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

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "ellipse",
          "diamond", "heart", "pentagon", "arrow")
# (name, hue in degrees on OpenCV's 0..180 scale x2, saturation, value)
COLOURS = (("red", 0, 0.85, 0.9), ("blue", 220, 0.8, 0.9), ("yellow", 55, 0.9, 0.95),
           ("green", 125, 0.8, 0.75), ("magenta", 305, 0.75, 0.9), ("orange", 28, 0.9, 0.95),
           ("cyan", 185, 0.8, 0.9), ("purple", 270, 0.7, 0.75), ("lime", 85, 0.85, 0.9),
           ("pink", 340, 0.5, 0.95), ("teal", 165, 0.85, 0.6), ("white", 0, 0.0, 0.97))
TEXTURES = ("stripes", "checker", "blobs", "waves", "rings", "dots")


def class_spec(k: int) -> dict[str, Any]:
    """Shape, colour and context texture of class k (distinct (shape, colour) for k < 144)."""
    shape = SHAPES[k % len(SHAPES)]
    colour = COLOURS[(k + 5 * (k // len(SHAPES))) % len(COLOURS)]
    return {
        "wnid": f"s{k:07d}",
        "name": f"{colour[0]} {shape}",
        "shape": shape,
        "hsv": colour[1:],
        "texture": TEXTURES[k % len(TEXTURES)],
        # the context: orientation, spatial frequency (cycles per image), two muted colours
        "angle": (k * 47.0) % 180.0,
        "freq": 2.5 + (k * 1.7) % 5.0,
        "palette_hue": (k * 137.5 + 20.0) % 360.0,
        "palette_value": (0.35 + 0.3 * ((k * 0.37) % 1.0), 0.65 + 0.3 * ((k * 0.61) % 1.0)),
    }


# ------------------------------------------------------------------------------------ params
def _params(cfg_gen: Mapping[str, Any]) -> dict[str, Any]:
    """The generation parameters: config defaults overlaid with `cfg_gen`, typed; unknown keys fail."""
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
    return {"generator": GENERATOR_VERSION, "params": p, "jpeg_quality": JPEG_QUALITY,
            "detection": {"area": list(DETECTION_AREA), "objects": list(DETECTION_OBJECTS),
                          "max_iou": DETECTION_MAX_IOU}}


def _finished(root: Path, identity: dict[str, Any]) -> bool:
    try:
        meta = json.loads((root / "generation.json").read_text())
    except (OSError, ValueError):
        return False
    return {k: meta.get(k) for k in identity} == identity


# ------------------------------------------------------------------------------------ drawing
def _hsv_to_bgr(h_deg: float, s: float, v: float) -> np.ndarray:
    hsv = np.array([[[h_deg % 360 / 2.0, np.clip(s, 0, 1) * 255, np.clip(v, 0, 1) * 255]]],
                   dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def background(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class k's context texture (float32 BGR, size x size), with per-image jitter."""
    spec = class_spec(k)
    angle = math.radians(spec["angle"] + rng.uniform(-10, 10))
    freq = spec["freq"] * rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    tex = spec["texture"]
    if tex == "stripes":
        mix = 0.5 + 0.5 * np.tanh(4 * np.sin(2 * math.pi * freq * u + phase))
    elif tex == "checker":
        mix = 0.5 + 0.5 * np.tanh(4 * np.sin(math.pi * freq * u + phase) * np.sin(math.pi * freq * v))
    elif tex == "blobs":
        cells = max(2, int(round(freq)))
        mix = cv2.resize(rng.random((cells, cells), dtype=np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
        mix = 0.5 + 0.5 * np.tanh(6 * (mix - 0.5))
    elif tex == "waves":
        mix = 0.5 + 0.5 * np.sin(2 * math.pi * freq * u + 1.5 * np.sin(2 * math.pi * v + phase))
    elif tex == "rings":
        cx, cy = rng.uniform(-0.2, 1.2, size=2)
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        mix = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * math.pi * freq * r + phase))
    else:  # dots
        d = np.sin(math.pi * freq * 1.5 * u + phase) * np.sin(math.pi * freq * 1.5 * v)
        mix = 0.5 + 0.5 * np.tanh(8 * (np.abs(d) - 0.6))
    hue = spec["palette_hue"] + rng.uniform(-12, 12)
    v0, v1 = spec["palette_value"]
    c0 = _hsv_to_bgr(hue, 0.35 * rng.uniform(0.8, 1.2), v0)
    c1 = _hsv_to_bgr(hue + 40, 0.45 * rng.uniform(0.8, 1.2), v1)
    img = c0 * (1 - mix[..., None]) + c1 * mix[..., None]
    return img + 6.0 * rng.standard_normal(img.shape, dtype=np.float32)


def _unit_polygons(shape: str) -> list[np.ndarray]:
    """Outline(s) in [-1, 1]^2; a second polygon is a hole."""
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)

    def regular(n: int, rot: float = -math.pi / 2) -> np.ndarray:
        a = rot + np.arange(n) * 2 * math.pi / n
        return np.stack([np.cos(a), np.sin(a)], 1)

    if shape == "circle":
        return [circle]
    if shape == "ellipse":
        return [circle * [1.0, 0.5]]
    if shape == "ring":
        return [circle, circle * 0.55]
    if shape == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)]
    if shape == "diamond":
        return [np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float)]
    if shape == "triangle":
        return [regular(3)]
    if shape == "pentagon":
        return [regular(5)]
    if shape == "hexagon":
        return [regular(6, 0.0)]
    if shape == "star":
        outer, inner = regular(5), regular(5, -math.pi / 2 + math.pi / 5) * 0.4
        return [np.stack([outer, inner], 1).reshape(-1, 2)]
    if shape == "cross":
        a = 0.33
        return [np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                          [-a, a], [-1, a], [-1, -a], [-a, -a]], float)]
    if shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [np.stack([x, y], 1) / 16.0]
    if shape == "arrow":
        return [np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3],
                          [-1, 0.3]], float)]
    raise ValueError(f"unknown shape {shape!r}")


def object_shape(k: int, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """Class k's outline(s), rotated by up to 20 degrees, normalised to the unit box, and the
    rotated shape's width/height ratio (so an ellipse stays elongated)."""
    rot = math.radians(rng.uniform(-20, 20))
    rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    polys = [p @ rmat.T for p in _unit_polygons(class_spec(k)["shape"])]
    lo, hi = polys[0].min(0), polys[0].max(0)
    return [(p - lo) / (hi - lo) for p in polys], float((hi - lo)[0] / (hi - lo)[1])


def box_size(rng: np.random.Generator, area: tuple[float, float], size: int,
             aspect: float) -> tuple[float, float]:
    """Box width/height: log-uniform area fraction in `area`, the shape's aspect with jitter,
    shrunk to fit the image when needed."""
    a = math.exp(rng.uniform(math.log(area[0]), math.log(area[1])))
    r = aspect * math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    w, h = math.sqrt(a * r) * size, math.sqrt(a / r) * size
    fit = min(1.0, (size - 1.0) / w, (size - 1.0) / h)
    return w * fit, h * fit


def draw_object(img: np.ndarray, k: int, polys: list[np.ndarray], box_wh: tuple[float, float],
                xy: tuple[float, float], rng: np.random.Generator
                ) -> tuple[int, int, int, int, int] | None:
    """Alpha-blend class k's shape (`polys` from `object_shape`) into `img`, box at `xy`.

    Returns the drawn mask's inclusive pixel box (xmin, ymin, xmax, ymax) and its pixel area,
    or None when nothing visible was drawn.
    """
    h_deg, s, v = class_spec(k)["hsv"]
    colour = _hsv_to_bgr(h_deg + rng.uniform(-8, 8), s * rng.uniform(0.85, 1.0),
                         v * rng.uniform(0.8, 1.0))
    size = img.shape[0]
    mask = np.zeros((size, size), np.uint8)
    for j, p in enumerate(polys):
        pts = (p * np.array(box_wh) + np.array(xy)) * 16  # 4 fractional bits: sub-pixel edges
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 0 if j else 255, cv2.LINE_AA, shift=4)
    ys, xs = np.nonzero(mask > 127)
    if len(xs) == 0:
        return None
    # blend only where the anti-aliased mask is non-zero
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    alpha = mask[r0:r1, c0:c1, None].astype(np.float32) / 255.0
    # a light gradient across the object, so it is not a single pixel value
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) / size
    direction = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + 0.25 * ((xx - xy[0] / size) * math.cos(direction)
                          + (yy - xy[1] / size) * math.sin(direction))
    fill = colour * shade[..., None] + 5.0 * rng.standard_normal(alpha.shape[:2] + (3,),
                                                                 dtype=np.float32)
    region = img[r0:r1, c0:c1]
    region *= 1 - alpha
    region += alpha * fill
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), int(len(xs))


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _voc_xml(folder: str, stem: str, size: int, wnid: str, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (f"<annotation>\n\t<folder>{escape(folder)}</folder>\n\t<filename>{escape(stem)}</filename>\n"
            f"\t<source>\n\t\t<database>als_det generated context-bias set</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{size}</width>\n\t\t<height>{size}</height>\n\t\t<depth>3</depth>\n"
            f"\t</size>\n\t<segmented>0</segmented>\n\t<object>\n\t\t<name>{wnid}</name>\n"
            f"\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>{x1}</xmax>\n"
            f"\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n</annotation>\n")


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
    categories = [{"id": k + 1, "name": class_spec(k)["name"], "wnid": class_spec(k)["wnid"],
                   "supercategory": "shape"} for k in range(K)]
    counts = {}
    for split_code, (split, n) in enumerate((("train2017", p["DETECTION_TRAIN"]),
                                             ("val2017", p["DETECTION_VAL"])), start=len(SPLITS)):
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
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                    "category_id": k + 1,
                                    "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                                    "area": area, "iscrowd": 0})
            name = f"{i + 1:012d}.jpg"
            (tmp / "detection" / split / name).write_bytes(_jpeg(img))
            images.append({"id": i + 1, "file_name": name, "width": S, "height": S})
            bar.update()
        atomic_write_json(tmp / "detection" / "annotations" / f"instances_{split}.json",
                          {"info": {"description": "als_det generated detection set"},
                           "images": images, "annotations": annotations,
                           "categories": categories}, indent=None)
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
        raise FileExistsError(f"{root} exists and is not a generated data set (no generation.json); "
                              "choose another DATA.ROOT or remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        start = time.perf_counter()
        total = p["NUM_CLASSES"] * (p["TRAIN_PER_CLASS"] + 3 * p["VAL_PER_CLASS"]) \
            + p["DETECTION_TRAIN"] + p["DETECTION_VAL"]
        with tqdm(total=total, desc=f"generating {root.name}", unit="img",
                  disable=not progress) as bar:
            counts = _write_classification(tmp, p, bar)
            counts.update(_write_detection(tmp, p, bar))
        classes = {class_spec(k)["wnid"]: class_spec(k)["name"] for k in range(p["NUM_CLASSES"])}
        atomic_write_json(tmp / "classes.json", classes)
        atomic_write_json(tmp / "generation.json", {
            **identity, "seed": p["SEED"], "counts": counts, "classes": classes,
            "seconds": round(time.perf_counter() - start, 3), "als_det_version": __version__,
            "versions": package_versions()})
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

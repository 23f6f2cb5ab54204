"""Drawing the generated data set: each class's shape, colour and context texture (`class_spec`),
its textured backgrounds and its objects, all from a seeded numpy generator (OpenCV draws)."""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "ellipse",
    "diamond",
    "heart",
    "pentagon",
    "arrow",
)
# (name, hue in degrees on OpenCV's 0..180 scale x2, saturation, value)
COLOURS = (
    ("red", 0, 0.85, 0.9),
    ("blue", 220, 0.8, 0.9),
    ("yellow", 55, 0.9, 0.95),
    ("green", 125, 0.8, 0.75),
    ("magenta", 305, 0.75, 0.9),
    ("orange", 28, 0.9, 0.95),
    ("cyan", 185, 0.8, 0.9),
    ("purple", 270, 0.7, 0.75),
    ("lime", 85, 0.85, 0.9),
    ("pink", 340, 0.5, 0.95),
    ("teal", 165, 0.85, 0.6),
    ("white", 0, 0.0, 0.97),
)
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


def _hsv_to_bgr(h_deg: float, s: float, v: float) -> np.ndarray:
    hsv = np.array(
        [[[h_deg % 360 / 2.0, np.clip(s, 0, 1) * 255, np.clip(v, 0, 1) * 255]]], dtype=np.float32
    )
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
        mix = 0.5 + 0.5 * np.tanh(
            4 * np.sin(math.pi * freq * u + phase) * np.sin(math.pi * freq * v)
        )
    elif tex == "blobs":
        cells = max(2, int(round(freq)))
        mix = cv2.resize(
            rng.random((cells, cells), dtype=np.float32),
            (size, size),
            interpolation=cv2.INTER_CUBIC,
        )
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
        return [
            np.array(
                [
                    [-a, -1],
                    [a, -1],
                    [a, -a],
                    [1, -a],
                    [1, a],
                    [a, a],
                    [a, 1],
                    [-a, 1],
                    [-a, a],
                    [-1, a],
                    [-1, -a],
                    [-a, -a],
                ],
                float,
            )
        ]
    if shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [np.stack([x, y], 1) / 16.0]
    if shape == "arrow":
        return [
            np.array(
                [[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3], [-1, 0.3]],
                float,
            )
        ]
    raise ValueError(f"unknown shape {shape!r}")


def object_shape(k: int, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """Class k's outline(s), rotated by up to 20 degrees, normalised to the unit box, and the
    rotated shape's width/height ratio (so an ellipse stays elongated)."""
    rot = math.radians(rng.uniform(-20, 20))
    rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    polys = [p @ rmat.T for p in _unit_polygons(class_spec(k)["shape"])]
    lo, hi = polys[0].min(0), polys[0].max(0)
    return [(p - lo) / (hi - lo) for p in polys], float((hi - lo)[0] / (hi - lo)[1])


def box_size(
    rng: np.random.Generator, area: tuple[float, float], size: int, aspect: float
) -> tuple[float, float]:
    """Box width/height: log-uniform area fraction in `area`, the shape's aspect with jitter,
    shrunk to fit the image when needed."""
    a = math.exp(rng.uniform(math.log(area[0]), math.log(area[1])))
    r = aspect * math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    w, h = math.sqrt(a * r) * size, math.sqrt(a / r) * size
    fit = min(1.0, (size - 1.0) / w, (size - 1.0) / h)
    return w * fit, h * fit


def draw_object(
    img: np.ndarray,
    k: int,
    polys: list[np.ndarray],
    box_wh: tuple[float, float],
    xy: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int, int] | None:
    """Alpha-blend class k's shape (`polys` from `object_shape`) into `img`, box at `xy`.

    Returns the drawn mask's inclusive pixel box (xmin, ymin, xmax, ymax) and its pixel area,
    or None when nothing visible was drawn.
    """
    h_deg, s, v = class_spec(k)["hsv"]
    colour = _hsv_to_bgr(
        h_deg + rng.uniform(-8, 8), s * rng.uniform(0.85, 1.0), v * rng.uniform(0.8, 1.0)
    )
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
    shade = 1.0 + 0.25 * (
        (xx - xy[0] / size) * math.cos(direction) + (yy - xy[1] / size) * math.sin(direction)
    )
    fill = colour * shade[..., None] + 5.0 * rng.standard_normal(
        alpha.shape[:2] + (3,), dtype=np.float32
    )
    region = img[r0:r1, c0:c1]
    region *= 1 - alpha
    region += alpha * fill
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), int(len(xs))

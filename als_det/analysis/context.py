"""Context-only views of val images, built on the fly from the box index.

Variants (applied to the original image in original pixel coordinates, before the model's eval
transform):
- ``intact``: the image itself;
- ``bg_only``: every pixel touched by a box of the labelled class filled;
- ``fg_only``: every pixel touched by no box filled (the object alone);
- ``outside_crop``: the largest axis-aligned crop that touches no box (context without any object
  pixel and without fill artefacts), skipped when smaller than ``min_crop_fraction`` of the image.
Fills (`als_det.views.FILLS` names them): ``black``; ``mean`` (the checkpoint's normalisation
mean, so the filled region is exactly 0 at the network input); ``blur`` (the image Gaussian-blurred
with a radius of ``blur_fraction`` of its shorter side, which keeps colour but removes shape). A
pixel is "touched" by a box when they overlap with positive area: box (x0, y0, x1, y1) covers
columns floor(x0)..ceil(x1)-1. Which views an evaluation makes of these is `als_det.views`'.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from als_det.data.boxes import ImageRecord
from als_det.data.crops import center_crop_box
from als_det.data.images import BadImageError, load_rgb
from als_det.views import FILLS

logger = logging.getLogger(__name__)

VARIANTS = ("intact", "bg_only", "fg_only", "outside_crop")


def check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {tuple(FILLS)}, got {fill!r}")


def box_pixel_mask(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width) bool: True for every pixel that overlaps a box with positive area."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0, c1 = max(0, math.floor(x0)), min(width, math.ceil(x1))
        r0, r1 = max(0, math.floor(y0)), min(height, math.ceil(y1))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def largest_box_free_crop(
    boxes: np.ndarray, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """The largest-area integer rectangle (x0, y0, x1, y1) inside the image touching no box pixel.

    A maximal empty rectangle has every edge on the image border or on a box edge, so only those
    coordinates are candidates; all candidate rectangles are tested at once (one matrix product of
    x-overlaps by y-overlaps). None when every pixel is covered.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return 0, 0, width, height
    bx0 = np.clip(np.floor(b[:, 0]), 0, width)
    bx1 = np.clip(np.ceil(b[:, 2]), 0, width)
    by0 = np.clip(np.floor(b[:, 1]), 0, height)
    by1 = np.clip(np.ceil(b[:, 3]), 0, height)
    xs = np.unique(np.concatenate([[0, width], bx0, bx1]))
    ys = np.unique(np.concatenate([[0, height], by0, by1]))
    li, ri = np.triu_indices(len(xs), k=1)
    ti, bi = np.triu_indices(len(ys), k=1)
    left, right, top, bottom = xs[li], xs[ri], ys[ti], ys[bi]
    over_x = (left[:, None] < bx1[None]) & (right[:, None] > bx0[None])  # [P, boxes]
    over_y = (top[:, None] < by1[None]) & (bottom[:, None] > by0[None])  # [Q, boxes]
    blocked = (over_x.astype(np.float32) @ over_y.astype(np.float32).T) > 0  # [P, Q]
    area = np.where(blocked, -1.0, (right - left)[:, None] * (bottom - top)[None, :])
    p, q = np.unravel_index(int(np.argmax(area)), area.shape)
    if area[p, q] <= 0:
        return None
    return int(left[p]), int(top[q]), int(right[p]), int(bottom[q])


def fill_image(
    image: np.ndarray,
    mask: np.ndarray,
    fill: str,
    mean_rgb: Sequence[float],
    blur_fraction: float = 0.1,
) -> np.ndarray:
    """A copy of `image` (H, W, 3 uint8) with the pixels under `mask` replaced by the fill."""
    check_fill(fill)
    out = image.copy()
    if fill == "black":
        out[mask] = 0
    elif fill == "mean":
        out[mask] = np.asarray([round(v) for v in mean_rgb], dtype=np.uint8)
    elif fill == "blur":
        radius = blur_fraction * min(image.shape[0], image.shape[1])
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
        out[mask] = blurred[mask]
    else:
        raise ValueError(f"fill {fill!r} is registered but has no pixels in fill_image")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """The model's eval transform: resize shorter side to `val_resize`, centre crop, normalise."""

    image_size: int
    val_resize: int
    mean: tuple[float, float, float]  # 0-255 scale, as in the checkpoint
    std: tuple[float, float, float]

    def crop_region(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The original-image region the centre crop sees."""
        return center_crop_box(width, height, self.val_resize, self.image_size)

    def resize_crop(self, image: Image.Image) -> Image.Image:
        resized = TF.resize(image, self.val_resize, antialias=True)
        return TF.center_crop(resized, [self.image_size, self.image_size])

    def to_input(self, image: Image.Image) -> torch.Tensor:
        return TF.normalize(
            TF.to_tensor(self.resize_crop(image)),
            [m / 255 for m in self.mean],
            [s / 255 for s in self.std],
        )

    def boxes_in_input(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Original-image boxes in network-input pixels (clipped to the crop; may be empty)."""
        x0, y0, x1, y1 = self.crop_region(width, height)
        sx, sy = self.image_size / (x1 - x0), self.image_size / (y1 - y0)
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = (b - np.array([x0, y0, x0, y0])) * np.array([sx, sy, sx, sy])
        return np.clip(out, 0, self.image_size)


def centre_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: pixels whose centre lies inside some box (boxes in input pixels)."""
    centres = np.arange(size) + 0.5
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        mask |= ((centres[:, None] > y0) & (centres[:, None] < y1)) & (
            (centres[None] > x0) & (centres[None] < x1)
        )
    return mask


@dataclass
class VariantPlan:
    """Which records a variant uses (positions into the record list) and why others were left
    out."""

    variant: str
    positions: list[int]
    crops: dict[int, tuple[int, int, int, int]]
    skipped: dict[str, int]


def plan_variant(
    records: Sequence[ImageRecord], variant: str, min_crop_fraction: float = 0.1
) -> VariantPlan:
    """Select records for `variant`: images without boxes leave every box variant (counted);
    `outside_crop` also leaves out images whose largest box-free crop is below
    `min_crop_fraction`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    positions: list[int] = []
    crops: dict[int, tuple[int, int, int, int]] = {}
    skipped = {"no_box": 0, "crop_too_small": 0} if variant == "outside_crop" else {"no_box": 0}
    for i, rec in enumerate(records):
        if variant == "intact":
            positions.append(i)
            continue
        if len(rec.boxes) == 0:
            skipped["no_box"] += 1
            continue
        if variant == "outside_crop":
            crop = largest_box_free_crop(rec.boxes, rec.width, rec.height)
            if (
                crop is None
                or (crop[2] - crop[0]) * (crop[3] - crop[1])
                < min_crop_fraction * rec.width * rec.height
            ):
                skipped["crop_too_small"] += 1
                continue
            crops[i] = crop
        positions.append(i)
    if variant == "intact":
        skipped = {}
    return VariantPlan(variant, positions, crops, skipped)


def make_variant(
    image: Image.Image,
    boxes: np.ndarray,
    variant: str,
    fill: str,
    mean_rgb: Sequence[float],
    blur_fraction: float = 0.1,
    crop: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """The `variant` of one decoded image (original pixel coordinates)."""
    if variant == "intact":
        return image
    if variant == "outside_crop":
        if crop is None:
            raise ValueError("outside_crop needs the crop from plan_variant")
        return image.crop(crop)
    width, height = image.size
    inside = box_pixel_mask(boxes, width, height)
    mask = inside if variant == "bg_only" else ~inside
    return Image.fromarray(fill_image(np.asarray(image), mask, fill, mean_rgb, blur_fraction))


class VariantDataset(Dataset):
    """`(input, label, position, box_mask)` for the planned records of one variant.

    `box_mask` marks the network-input pixels inside the labelled boxes (for CAM energy; all False
    for images without boxes and for `outside_crop`). An undecodable image gives label -1 (counted
    and left out by the caller) instead of stopping a long evaluation.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        plan: VariantPlan,
        prep: Preprocessing,
        fill: str = "black",
        blur_fraction: float = 0.1,
        positions: Sequence[int] | None = None,
    ) -> None:
        check_fill(fill)
        self.records = records
        self.plan = plan
        self.prep = prep
        self.fill = fill
        self.blur_fraction = blur_fraction
        self.positions = list(plan.positions if positions is None else positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, torch.Tensor]:
        pos = self.positions[i]
        rec = self.records[pos]
        size = self.prep.image_size
        try:
            image = load_rgb(rec.path)
        except BadImageError as exc:
            logger.warning("%s", exc)
            return torch.zeros(3, size, size), -1, pos, torch.zeros(size, size, dtype=torch.bool)
        width, height = image.size
        view = make_variant(
            image,
            rec.boxes,
            self.plan.variant,
            self.fill,
            self.prep.mean,
            self.blur_fraction,
            self.plan.crops.get(pos),
        )
        if self.plan.variant == "outside_crop" or len(rec.boxes) == 0:
            mask = np.zeros((size, size), dtype=bool)
        else:
            mask = centre_mask(self.prep.boxes_in_input(rec.boxes, width, height), size)
        return self.prep.to_input(view), int(rec.label), pos, torch.from_numpy(mask)

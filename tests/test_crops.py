"""Crop sampling identical to torchvision's; exact crop and object coverage against a pixel
raster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from als_det.data.crops import (
    center_crop_box,
    coverage,
    object_coverage,
    random_resized_crop_params,
)


@pytest.mark.parametrize("size", [(64, 64), (500, 375), (120, 300), (1000, 12), (7, 400)])
def test_crop_params_identical_to_torchvision(size: tuple[int, int]) -> None:
    width, height = size
    img = torch.zeros(3, height, width)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for seed in range(200):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(img, list(scale), list(ratio))
        got = random_resized_crop_params(
            width, height, scale, ratio, torch.Generator().manual_seed(seed)
        )
        assert got == tuple(expected), (seed, size)


def test_crop_params_use_only_the_given_generator() -> None:
    torch.manual_seed(0)
    a = random_resized_crop_params(
        256, 256, (0.08, 1), (0.75, 4 / 3), torch.Generator().manual_seed(5)
    )
    torch.manual_seed(99)
    b = random_resized_crop_params(
        256, 256, (0.08, 1), (0.75, 4 / 3), torch.Generator().manual_seed(5)
    )
    assert a == b


def test_coverage_simple_cases() -> None:
    box = np.array([[10, 10, 50, 50]], np.float32)
    assert coverage(box, (20, 20, 40, 40)) == 1.0  # crop inside the box
    assert coverage(box, (50, 50, 60, 60)) == 0.0  # touching corner only
    assert coverage(box, (60, 0, 70, 10)) == 0.0  # disjoint
    assert coverage(np.zeros((0, 4)), (0, 0, 5, 5)) == 0.0  # no boxes
    assert coverage(box, (0, 0, 20, 20)) == pytest.approx(100 / 400)  # partly outside the crop
    two_same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    assert coverage(two_same, (0, 0, 20, 10)) == pytest.approx(0.5)  # not counted twice
    overlap = np.array([[0, 0, 6, 4], [4, 0, 10, 4]], np.float32)  # union 10 x 4
    assert coverage(overlap, (0, 0, 10, 10)) == pytest.approx(0.4)
    # a VOC box 0..63 inclusive is (0, 0, 64, 64): it covers the whole 64 px image
    assert coverage(np.array([[0, 0, 64, 64]]), (0, 0, 64, 64)) == 1.0


def test_coverage_matches_pixel_raster() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 6))
        xy0 = rng.integers(-10, 50, size=(n, 2))
        boxes = np.concatenate([xy0, xy0 + rng.integers(1, 30, size=(n, 2))], 1).astype(np.float32)
        cx0, cy0 = rng.integers(0, 40, size=2)
        cx1, cy1 = cx0 + rng.integers(1, 30), cy0 + rng.integers(1, 30)
        raster = np.zeros((100, 100), bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            raster[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        expected = raster[cy0:cy1, cx0:cx1].mean()
        assert coverage(boxes, (cx0, cy0, cx1, cy1)) == pytest.approx(expected, abs=1e-9)


def test_coverage_fractional_coordinates_by_fine_raster() -> None:
    boxes = np.array([[0.5, 0.25, 3.5, 2.75], [2.25, 1.5, 5.0, 4.0]])
    scale = 4  # every coordinate is a multiple of 1/4
    raster = np.zeros((40, 40), bool)
    for x0, y0, x1, y1 in (boxes * scale).astype(int):
        raster[y0:y1, x0:x1] = True
    crop = (1.0, 0.5, 4.5, 3.5)
    c = [int(v * scale) for v in crop]
    assert coverage(boxes, crop) == pytest.approx(raster[c[1] : c[3], c[0] : c[2]].mean())


def test_center_crop_box_matches_torchvision_resize() -> None:
    img = Image.new("RGB", (100, 50))
    resized = TF.resize(img, 32, antialias=True)
    assert resized.size == (64, 32)  # the arithmetic below follows torchvision's
    # shorter side 50 -> 32, longer 100 -> 64; centre crop 28: offsets (18, 2) in resized pixels
    sx, sy = 100 / 64, 50 / 32
    assert center_crop_box(100, 50, 32, 28) == pytest.approx((18 * sx, 2 * sy, 46 * sx, 30 * sy))
    assert center_crop_box(64, 64, 64, 64) == (0, 0, 64, 64)
    with pytest.raises(ValueError):
        center_crop_box(64, 64, 32, 48)


def test_object_coverage_simple_cases() -> None:
    box = np.array([[10, 10, 50, 50]], np.float32)  # 40 x 40
    assert object_coverage(box, (0, 0, 100, 100)) == 1.0  # the whole object in view
    assert object_coverage(box, (20, 20, 40, 40)) == pytest.approx(
        400 / 1600
    )  # crop inside the box
    assert object_coverage(box, (60, 0, 70, 10)) == 0.0  # disjoint
    assert object_coverage(np.zeros((0, 4)), (0, 0, 5, 5)) == 0.0
    two_same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    assert object_coverage(two_same, (0, 0, 5, 10)) == pytest.approx(0.5)  # union, not the sum
    apart = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)  # two instances, 200 px
    assert object_coverage(apart, (0, 0, 15, 10)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty crop"):
        object_coverage(box, (5, 5, 5, 9))


def test_object_coverage_matches_pixel_raster() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 6))
        xy0 = rng.integers(0, 50, size=(n, 2))
        boxes = np.concatenate([xy0, xy0 + rng.integers(1, 30, size=(n, 2))], 1).astype(np.float32)
        cx0, cy0 = rng.integers(0, 60, size=2)
        cx1, cy1 = cx0 + rng.integers(1, 40), cy0 + rng.integers(1, 40)
        raster = np.zeros((100, 100), bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            raster[y0:y1, x0:x1] = True
        expected = raster[cy0:cy1, cx0:cx1].sum() / raster.sum()
        assert object_coverage(boxes, (cx0, cy0, cx1, cy1)) == pytest.approx(expected, abs=1e-9)
        # both coverages count the same covered pixels, over different areas
        crop_area = (cx1 - cx0) * (cy1 - cy0)
        assert coverage(boxes, (cx0, cy0, cx1, cy1)) * crop_area == pytest.approx(
            expected * raster.sum()
        )

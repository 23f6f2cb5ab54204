"""Context-only variants: fills, the box-free crop, the eval-transform geometry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from als_det.analysis.context import (
    Preprocessing,
    VariantDataset,
    box_pixel_mask,
    centre_mask,
    fill_image,
    largest_box_free_crop,
    make_variant,
    plan_variant,
)
from als_det.data.boxes import ImageRecord

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _image(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, size=(h, w, 3), dtype=np.uint8)


def _touched(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels overlapping a box with positive area, by the pixel-square definition (slow,
    direct)."""
    mask = np.zeros((h, w), dtype=bool)
    for r, c in itertools.product(range(h), range(w)):
        for x0, y0, x1, y1 in boxes:
            if min(c + 1, x1) - max(c, x0) > 0 and min(r + 1, y1) - max(r, y0) > 0:
                mask[r, c] = True
    return mask


BOXES = np.array([[3.4, 2.0, 11.0, 9.6], [20.0, 15.5, 38.2, 30.0]], dtype=np.float32)


def test_box_pixel_mask_matches_the_pixel_square_definition() -> None:
    assert np.array_equal(box_pixel_mask(BOXES, 40, 30), _touched(BOXES, 30, 40))


@pytest.mark.parametrize("fill", ["black", "mean", "blur"])
def test_bg_only_removes_every_box_pixel_and_keeps_the_rest(fill: str) -> None:
    img = _image()
    out = np.asarray(make_variant(Image.fromarray(img), BOXES, "bg_only", fill, MEAN))
    inside = _touched(BOXES, 30, 40)
    assert np.array_equal(out[~inside], img[~inside])
    if fill == "black":
        assert (out[inside] == 0).all()
    elif fill == "mean":
        assert (out[inside] == np.array([124, 116, 104], dtype=np.uint8)).all()
    else:
        assert (out[inside] != img[inside]).any(axis=1).mean() > 0.9


def test_fg_only_fills_everything_outside_the_boxes() -> None:
    img = _image(seed=1)
    out = np.asarray(make_variant(Image.fromarray(img), BOXES, "fg_only", "black", MEAN))
    inside = _touched(BOXES, 30, 40)
    assert np.array_equal(out[inside], img[inside])
    assert (out[~inside] == 0).all()


def test_fill_rejects_unknown_fill() -> None:
    with pytest.raises(ValueError, match="fill must be one of"):
        fill_image(_image(), np.zeros((30, 40), bool), "grey", MEAN)


def _brute_force_largest_free(mask: np.ndarray) -> int:
    h, w = mask.shape
    best = 0
    for t, b in itertools.combinations(range(h + 1), 2):
        rows = mask[t:b].any(axis=0)
        run = 0
        for c in range(w):
            run = 0 if rows[c] else run + 1
            best = max(best, run * (b - t))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_largest_box_free_crop_is_free_and_maximal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, h = 17, 13
    n = int(rng.integers(1, 4))
    x0, y0 = rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)
    boxes = np.stack(
        [
            x0,
            y0,
            np.minimum(x0 + rng.uniform(0.5, 8, n), w),
            np.minimum(y0 + rng.uniform(0.5, 8, n), h),
        ],
        axis=1,
    )
    touched = _touched(boxes, h, w)
    crop = largest_box_free_crop(boxes, w, h)
    best = _brute_force_largest_free(touched)
    if best == 0:
        assert crop is None
        return
    cx0, cy0, cx1, cy1 = crop
    assert not touched[cy0:cy1, cx0:cx1].any()
    assert (cx1 - cx0) * (cy1 - cy0) == best


def test_largest_box_free_crop_of_a_fully_covered_image_is_none() -> None:
    assert largest_box_free_crop(np.array([[0, 0, 10, 10]], np.float32), 10, 10) is None


def test_plan_counts_images_left_out() -> None:
    recs = [
        ImageRecord("a", 0, np.zeros((0, 4), np.float32), 20, 20),
        ImageRecord(
            "b", 0, np.array([[0, 0, 20, 19]], np.float32), 20, 20
        ),  # free strip is 5% of the image
        ImageRecord("c", 1, np.array([[0, 0, 10, 20]], np.float32), 20, 20),
    ]  # free half
    plan = plan_variant(recs, "outside_crop", min_crop_fraction=0.1)
    assert plan.positions == [2] and plan.skipped == {"no_box": 1, "crop_too_small": 1}
    assert plan.crops[2] == (10, 0, 20, 20)
    bg = plan_variant(recs, "bg_only")
    assert bg.positions == [1, 2] and bg.skipped == {"no_box": 1}
    assert plan_variant(recs, "intact").positions == [0, 1, 2]


@pytest.mark.parametrize("w,h", [(90, 70), (64, 64), (50, 77)])
def test_boxes_in_input_match_torchvision_resize_and_centre_crop(w: int, h: int) -> None:
    prep = Preprocessing(image_size=32, val_resize=37, mean=MEAN, std=STD)
    box = np.array([[0.3 * w, 0.25 * h, 0.75 * w, 0.8 * h]])
    img = np.zeros((h, w, 3), np.uint8)
    img[box_pixel_mask(box, w, h)] = 255
    out = np.asarray(prep.resize_crop(Image.fromarray(img)))[..., 0] > 127
    mapped = centre_mask(prep.boxes_in_input(box, w, h), 32)
    # Interpolation blurs the edge by at most one output pixel either way.
    assert (out != mapped).sum() <= 2 * 32 * 2 + 4
    ys, xs = np.nonzero(out)
    bx0, by0, bx1, by1 = prep.boxes_in_input(box, w, h)[0]
    assert abs(xs.min() - bx0) <= 1 and abs(xs.max() + 1 - bx1) <= 1
    assert abs(ys.min() - by0) <= 1 and abs(ys.max() + 1 - by1) <= 1


def test_variant_dataset_feeds_the_filled_image_through_the_eval_transform(tmp_path) -> None:
    img = _image(48, 56, seed=2)
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    boxes = np.array([[10, 8, 30, 40]], np.float32)
    recs = [ImageRecord(str(path), 3, boxes, 56, 48)]
    prep = Preprocessing(image_size=32, val_resize=37, mean=MEAN, std=STD)
    ds = VariantDataset(recs, plan_variant(recs, "bg_only"), prep, fill="mean")
    x, label, pos, mask = ds[0]
    filled = img.copy()
    filled[box_pixel_mask(boxes, 56, 48)] = np.array([124, 116, 104], np.uint8)
    assert torch.allclose(x, prep.to_input(Image.fromarray(filled)))
    assert (label, pos) == (3, 0)
    assert mask.any() and not mask.all()

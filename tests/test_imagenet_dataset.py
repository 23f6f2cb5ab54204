"""ImageNetBoxes: identical crops for every arm/worker count/epoch replay, coverage of the real
crop, eval centre crop, colour modes, and undecodable images (label -1 or an error)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from exif_photos import rotated_photo
from PIL import Image
from torch.utils.data import DataLoader

from als_det.data.boxes import ImageRecord, build_index
from als_det.data.crops import center_crop_box, random_resized_crop_params
from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetBoxes, sample_seed
from als_det.data.images import BadImageError, load_rgb


@pytest.fixture(scope="module")
def tiny_train(tiny_imagenet: Path, tmp_path_factory: pytest.TempPathFactory):
    records, classes, _ = build_index(
        tiny_imagenet, "train", max_per_class=4, cache_dir=tmp_path_factory.mktemp("cache")
    )
    return records, classes


def _all(ds: ImageNetBoxes) -> list[tuple]:
    return [ds[i] for i in range(len(ds))]


def test_crops_depend_only_on_seed_epoch_index(tiny_train) -> None:
    records, classes = tiny_train
    a = ImageNetBoxes(records, classes, True, 32, seed=3)
    b = ImageNetBoxes(records, classes, True, 32, seed=3)  # e.g. another arm
    first = _all(a)
    for x, y in zip(first, _all(b)):
        assert torch.equal(x[0], y[0]) and x[1:] == y[1:]
    a.set_epoch(1)
    second = _all(a)
    assert sum(not torch.equal(x[0], y[0]) for x, y in zip(first, second)) > len(first) // 2
    a.set_epoch(0)  # resume replays epoch 0 exactly
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, _all(a)))
    other_seed = _all(ImageNetBoxes(records, classes, True, 32, seed=4))
    assert sum(not torch.equal(x[0], y[0]) for x, y in zip(first, other_seed)) > len(first) // 2


def test_same_batches_for_any_worker_count(tiny_train) -> None:
    records, classes = tiny_train
    ds = ImageNetBoxes(records[:16], classes, True, 32, seed=0)
    ds.set_epoch(2)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=workers)
        batches[workers] = list(loader)
    for b0, b2 in zip(batches[0], batches[2]):
        for t0, t2 in zip(b0, b2):
            assert torch.equal(t0, t2)


def _crop_rect(ds: ImageNetBoxes, index: int, rec: ImageRecord) -> tuple[int, int, int, int]:
    """The crop `ds[index]` takes, from the same seeded draws, rounded to whole pixels."""
    if not ds.train:
        return tuple(
            int(round(v))
            for v in center_crop_box(rec.width, rec.height, ds.val_resize, ds.image_size)
        )
    g = torch.Generator().manual_seed(sample_seed(ds.seed, ds.epoch, index))
    top, left, h, w = random_resized_crop_params(rec.width, rec.height, ds.scale, ds.ratio, g)
    return left, top, left + w, top + h


def test_coverage_is_the_box_fraction_of_the_actual_crop(tmp_path: Path) -> None:
    """White box on black: the crop's mean brightness is its crop coverage (up to resampling), and
    its object coverage is the share of the box's pixels inside that crop."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        w, h = int(rng.integers(150, 300)), int(rng.integers(150, 300))
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = int(rng.integers(x0 + 20, w + 1)), int(rng.integers(y0 + 20, h + 1))
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[y0:y1, x0:x1] = 255
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        records.append(ImageRecord(str(path), 0, np.array([[x0, y0, x1, y1]], np.float32), w, h))
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    for train in (True, False):
        ds = ImageNetBoxes(records, ["a"], train, 64, val_resize=73)
        covs = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            for i, (img, label, cov, obj, has_box) in enumerate(_all(ds)):
                brightness = float((img * std + mean).mean())
                assert has_box and label == 0
                assert cov == pytest.approx(brightness, abs=0.04)
                # object coverage: the box's pixels inside that crop over all its pixels (a raster)
                x0, y0, x1, y1 = records[i].boxes[0].astype(int)
                cx0, cy0, cx1, cy1 = _crop_rect(ds, i, records[i])
                raster = np.zeros((records[i].height, records[i].width), bool)
                raster[y0:y1, x0:x1] = True
                assert obj == pytest.approx(raster[cy0:cy1, cx0:cx1].sum() / raster.sum(), abs=0.02)
                covs.append((cov, obj))
        assert sum(0.05 < c < 0.95 for c, _ in covs) >= 5  # partial crops, not only trivial ones
        assert sum(0.05 < o < 0.95 for _, o in covs) >= 5


def test_no_box_record_has_zero_coverage(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    Image.new("RGB", (40, 30), (255, 255, 255)).save(path)
    rec = ImageRecord(str(path), 2, np.zeros((0, 4), np.float32), 40, 30)
    img, label, cov, obj, has_box = ImageNetBoxes([rec], ["a", "b", "c"], True, 16)[0]
    assert (
        img.shape == (3, 16, 16) and label == 2 and cov == 0.0 and obj == 0.0 and has_box is False
    )


def test_eval_mode_is_deterministic_centre_crop(tiny_train) -> None:
    records, classes = tiny_train
    ds = ImageNetBoxes(records, classes, False, 56, val_resize=64)
    x = ds[0]
    ds.set_epoch(5)
    y = ds[0]
    assert x[0].shape == (3, 56, 56) and torch.equal(x[0], y[0]) and x[2:] == y[2:]


def test_greyscale_and_cmyk_become_rgb(tmp_path: Path, tiny_imagenet: Path) -> None:
    Image.new("L", (20, 10), 77).save(tmp_path / "g.jpg")
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    g, c = load_rgb(tmp_path / "g.jpg"), load_rgb(tmp_path / "c.jpg")
    assert g.mode == c.mode == "RGB" and g.size == (20, 10)
    assert np.abs(np.asarray(g).astype(int) - 77).max() <= 2
    r, gch, b = np.asarray(c).reshape(-1, 3).mean(0)
    assert r > 200 and gch < 60 and b < 60  # CMYK (0, 1, 1, 0) is red
    greys = [
        p for p in sorted((tiny_imagenet / "train").glob("*/*.JPEG")) if Image.open(p).mode == "L"
    ][:2]
    assert greys, "the fixture's README promises greyscale JPEGs"
    for p in greys:
        assert load_rgb(p).mode == "RGB"


def _truncated(tmp_path: Path) -> ImageRecord:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        good
    )
    data = good.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    return ImageRecord(str(bad), 1, np.array([[0, 0, 64, 64]], np.float32), 64, 64)


def test_truncated_jpeg_gives_label_minus_one_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = _truncated(tmp_path)
    with pytest.raises(BadImageError, match="truncated.jpg"):
        load_rgb(rec.path)
    ds = ImageNetBoxes([rec, rec], ["a", "b"], True, 32)
    with caplog.at_level(logging.WARNING, logger="als_det.data.imagenet"):
        img, label, cov, obj, has_box = ds[0]
        ds[1]
    assert label == -1 and cov == 0.0 and obj == 0.0 and has_box is False and torch.all(img == 0)
    assert img.shape == (3, 32, 32)
    assert [r.getMessage().count("truncated.jpg") for r in caplog.records] == [1]
    strict = ImageNetBoxes([rec], ["a", "b"], True, 32, strict=True)
    with pytest.raises(BadImageError, match="truncated.jpg"):
        strict[0]


def test_exif_rotated_photo_is_cropped_in_its_displayed_orientation(tmp_path: Path) -> None:
    """Stored 120x90 with EXIF orientation 6, its bright block in the stored top-left corner: as
    displayed (detectron2's convention) 90x120 with the block top-right, where its box is. Every
    crop's brightness then says how much of the box it shows."""
    root = tmp_path / "d"
    rotated_photo(root / "train/n1/n1_0.JPEG", stored=(120, 90))
    xml = root / "Annotation/train/n1/n1_0.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text(
        "<annotation><size><width>90</width><height>120</height></size><object><name>n1</name>"
        "<bndbox><xmin>60</xmin><ymin>0</ymin><xmax>89</xmax><ymax>39</ymax></bndbox></object>"
        "</annotation>"
    )
    records, classes, _ = build_index(root, "train")
    assert (records[0].width, records[0].height) == (90, 120)
    assert np.asarray(load_rgb(records[0].path)).shape == (120, 90, 3)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    ds = ImageNetBoxes(records, classes, True, 32, scale=(0.2, 1.0))
    covs = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        img, _, cov, _, _ = ds[0]
        brightness = float((img * std + mean).mean())
        assert cov == pytest.approx((brightness - 20 / 255) / (215 / 255), abs=0.06)
        covs.append(cov)
    assert sum(0.05 < c < 0.95 for c in covs) >= 3  # partial crops, not only trivial ones

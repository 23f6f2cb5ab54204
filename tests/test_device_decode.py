"""DATA.DECODE device against the workers path on the real photos of tiny-imagenet-10: the same
crops and coverages, the same pixels within a stated tolerance (a wrong flip or a shifted crop
breaks it), the counted CPU fallbacks, EXIF orientation, and a short training per path."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TVF
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from als_det.config import load_config
from als_det.data.boxes import ImageRecord, build_index
from als_det.data.device_decode import (
    DeviceDecodedLoader,
    DeviceDecoder,
    EncodedImageNetBoxes,
    apply_orientation,
    read_header,
)
from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetBoxes
from als_det.data.images import BadImageError
from als_det.engine.data import check_decode
from als_det.engine.trainer import train
from als_det.experiment.stages import _relay

REPO = Path(__file__).resolve().parents[1]
# On the CPU both paths decode with libjpeg-turbo (bit-identical pixels); PIL's and torchvision's
# antialiased bilinear resizes of uint8 images round differently by at most one grey level.
TOLERANCE = 1.0  # grey levels of 255, per pixel and channel
# DALI's CPU pipeline (libjpeg-turbo too): the same within one grey level but on a train crop's
# outermost rows and columns when it is scaled down, where DALI's antialiasing filter replicates
# the edge and PIL's renormalises its weights (measured: up to 10 grey levels there).
DALI_BORDER_TOLERANCE = 12.0
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
DALI = importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali")


@pytest.fixture(scope="module")
def tiny(tiny_imagenet: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    train_records, classes, _ = build_index(
        tiny_imagenet, "train", max_per_class=3, cache_dir=cache
    )
    val_records, _, _ = build_index(
        tiny_imagenet, "val", max_per_class=2, cache_dir=cache, classes=classes
    )
    return train_records, val_records, classes


def _device_batch(ds: ImageNetBoxes, geometry_edit=None):
    encoded = EncodedImageNetBoxes(ds)
    batch = encoded.collate([encoded[i] for i in range(len(ds))])
    if geometry_edit is not None:
        geometry = batch[6].clone()
        geometry_edit(geometry)
        batch = (*batch[:6], geometry)
    return DeviceDecoder(ds, torch.device("cpu"))(batch)


def _pixel_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, the largest difference between two normalised batches, in grey levels."""
    return ((a - b).abs() * _STD).amax(dim=(1, 2, 3)).round(decimals=3)  # float32 noise off


@pytest.mark.parametrize("train_split", [True, False])
def test_same_coverage_and_pixels_on_both_paths(tiny, train_split: bool) -> None:
    train_records, val_records, classes = tiny
    records = train_records if train_split else val_records
    ds = ImageNetBoxes(records, classes, train_split, 32, seed=5)
    ds.set_epoch(3)
    images, labels, cov, obj, has_box = _device_batch(ds)
    ref = [ds[i] for i in range(len(ds))]
    assert labels.tolist() == [r[1] for r in ref]
    assert cov.tolist() == [r[2] for r in ref]  # exactly: the same crops
    assert obj.tolist() == [r[3] for r in ref]
    assert has_box.tolist() == [r[4] for r in ref]
    assert images.dtype == torch.float32 and images.shape == (len(ds), 3, 32, 32)
    assert _pixel_diff(images, torch.stack([r[0] for r in ref])).max() <= TOLERANCE


def test_a_wrong_flip_or_a_shifted_crop_fails_the_pixel_check(tiny) -> None:
    train_records, _, classes = tiny
    ds = ImageNetBoxes(train_records, classes, True, 32, seed=5)
    ref = torch.stack([ds[i][0] for i in range(len(ds))])

    def wrong_flip(g: torch.Tensor) -> None:
        g[:, 5] = 1 - g[:, 5]

    def shifted(g: torch.Tensor) -> None:  # one source pixel right, or left at the border
        g[:, 2] = torch.where(g[:, 2] + g[:, 4] < g[:, 7], g[:, 2] + 1, g[:, 2] - 1)

    for edit in (wrong_flip, shifted):
        diff = _pixel_diff(_device_batch(ds, edit)[0], ref)
        assert (diff > TOLERANCE).all(), edit.__name__


def test_the_loader_gives_the_batches_of_the_workers_path(tiny) -> None:
    """Through a DataLoader with a worker process, in the sampler's order."""
    train_records, _, classes = tiny
    ds = ImageNetBoxes(train_records, classes, True, 24, seed=1)
    ds.set_epoch(2)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    workers = DataLoader(ds, batch_size=8, sampler=order, num_workers=0)
    encoded = DataLoader(
        EncodedImageNetBoxes(ds),
        batch_size=8,
        sampler=order,
        num_workers=1,
        collate_fn=EncodedImageNetBoxes.collate,
    )
    device = DeviceDecodedLoader(encoded, DeviceDecoder(ds, torch.device("cpu"), True))
    assert len(device) == len(workers)
    for (a, *ra), (b, *rb) in zip(workers, device):
        assert b.is_contiguous(memory_format=torch.channels_last)
        assert _pixel_diff(a, b).max() <= TOLERANCE
        for x, y in zip(ra, rb):
            assert torch.equal(x, y)


def _rgb_photo(tiny_imagenet: Path) -> Image.Image:
    path = sorted((tiny_imagenet / "train").rglob("*.JPEG"))[0]
    return Image.open(path).convert("RGB")


def _expected(img: Image.Image, size: int, resize: int) -> torch.Tensor:
    out = TVF.center_crop(TVF.resize(img, resize, antialias=True), [size, size])
    return TVF.normalize(TVF.to_tensor(out), IMAGENET_MEAN, IMAGENET_STD)


def test_odd_files_become_rgb_and_cpu_fallbacks_are_counted(
    tiny_imagenet: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photo = _rgb_photo(tiny_imagenet)
    grey = next(
        p for p in sorted((tiny_imagenet / "train").rglob("*.JPEG")) if Image.open(p).mode == "L"
    )
    photo.save(tmp_path / "png.JPEG", format="PNG")  # ImageNet has PNGs named .JPEG
    photo.convert("CMYK").save(tmp_path / "cmyk.JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    photo.crop((0, 0, 64, 48)).save(tmp_path / "exif.JPEG", quality=95, exif=exif)
    photo.save(tmp_path / "rgb.JPEG", quality=95)
    good = (tmp_path / "rgb.JPEG").read_bytes()
    (tmp_path / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.JPEG").write_bytes(b"not an image")  # no readable header
    names = ["png", "cmyk", "exif", "truncated"]
    paths = [str(tmp_path / f"{n}.JPEG") for n in names] + [
        str(grey),
        str(tmp_path / "garbage.JPEG"),
    ]
    records = [ImageRecord(p, 0, np.zeros((0, 4), np.float32), 64, 64) for p in paths]
    ds = ImageNetBoxes(records, ["n0"], train=False, image_size=32, val_resize=36)
    decoder = DeviceDecoder(ds, torch.device("cpu"))
    encoded = EncodedImageNetBoxes(ds)
    batch = encoded.collate([encoded[i] for i in range(len(ds))])
    with caplog.at_level(logging.WARNING, logger="als_det.data.device_decode"):
        images, labels, *_ = decoder(batch)
    assert labels.tolist() == [0, 0, 0, -1, 0, -1]
    assert "truncated.JPEG" in caplog.text and "garbage.JPEG" in caplog.text
    zero = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    assert torch.allclose(images[3], zero.expand(3, 32, 32))  # a zero image, normalised
    counts = {"decode_cpu_not_jpeg": 1, "decode_cpu_cmyk": 1, "decode_cpu_device_refused": 0}
    assert decoder.take_counts() == counts
    assert decoder.take_counts() == dict.fromkeys(counts, 0)
    expected = [_expected(Image.open(p).convert("RGB"), 32, 36) for p in (paths[0], paths[1])] + [
        _expected(ImageOps.exif_transpose(Image.open(paths[2])), 32, 36)
    ]
    expected.append(_expected(Image.open(grey).convert("RGB"), 32, 36))
    got = torch.stack([images[0], images[1], images[2], images[4]])
    assert _pixel_diff(got, torch.stack(expected)).max() <= TOLERANCE
    strict = ImageNetBoxes(records, ["n0"], False, 32, val_resize=36, strict=True)
    with pytest.raises(BadImageError, match="truncated.JPEG"):
        DeviceDecoder(strict, torch.device("cpu"))(batch)
    with pytest.raises(BadImageError, match="garbage.JPEG: unreadable image header"):
        EncodedImageNetBoxes(strict)[5]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil_shows_it(tmp_path: Path, orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"  # lossless, so the comparison is exact
    Image.fromarray(pixels).save(path, exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    fmt, _, width, height, got = read_header(path.read_bytes())
    assert (fmt, got, (height, width)) == ("PNG", orientation, shown.shape[:2])
    img = apply_orientation(torch.from_numpy(pixels).permute(2, 0, 1), orientation)
    assert np.array_equal(img.permute(1, 2, 0).numpy(), shown)


CONFIG = str(REPO / "configs" / "pretrain" / "tiny_imagenet_als.yaml")


def _opts(tiny_imagenet: Path, out: Path, decode: str, workers: int) -> list[str]:
    return [
        *("DATA.ROOT", str(tiny_imagenet), "DATA.DECODE", decode, "TRAIN.DEVICE", "cpu"),
        *("DATA.MAX_PER_CLASS", "2", "DATA.IMAGE_SIZE", "16", "DATA.VAL_RESIZE", "18"),
        *("DATA.NUM_WORKERS", str(workers), "DATA.CACHE_DIR", str(out.parent / "cache")),
        *("SOLVER.EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.BATCH_SIZE", "5"),
        *("MODEL.ARCH", "resnet18", "TRAIN.LOG_PERIOD", "2", "OUTPUT_DIR", str(out)),
    ]


@pytest.mark.slow
def test_a_short_training_per_path_has_the_same_mean_coverage(
    tiny_imagenet: Path, tmp_path: Path
) -> None:
    """The workers path in this process; the device path as `tools/run_experiment.py` runs a
    stage (`tools/pretrain.py` relayed into a stage log), whose per-iteration lines must survive
    the progress bar's redraws."""
    train(load_config(CONFIG, _opts(tiny_imagenet, tmp_path / "workers", "workers", 0)))
    stage_log = tmp_path / "pretrain.log"
    argv = [sys.executable, "tools/pretrain.py", "--config-file", CONFIG]
    assert (
        _relay([*argv, *_opts(tiny_imagenet, tmp_path / "device", "device", 1)], stage_log, False)
        == 0
    )
    paths = ["workers", "device"]
    if DALI:  # where the dali extra is installed, its CPU pipeline too
        train(load_config(CONFIG, _opts(tiny_imagenet, tmp_path / "dali", "dali", 0)))
        paths.append("dali")
    rows = {
        d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in paths
    }
    for key in ("mean_coverage", "mean_object_coverage", "images"):
        for d in paths[1:]:
            assert [r[key] for r in rows[d]] == [r[key] for r in rows["workers"]], (d, key)
    assert len(rows["device"]) == 2
    fallbacks = ("decode_cpu_not_jpeg", "decode_cpu_cmyk", "decode_cpu_device_refused")
    assert all(r[k] == 0 for r in rows["device"] for k in fallbacks)
    record = {d: json.loads((tmp_path / d / "run.json").read_text()) for d in rows}
    assert record["device"]["decode"] == "device" and record["workers"]["decode"] == "workers"
    assert record["device"]["decode_fallbacks"] == dict.fromkeys(fallbacks, 0)
    assert "decode_fallbacks" not in record["workers"]
    if DALI:
        assert record["dali"]["decode"] == "dali"
        assert record["dali"]["decode_fallbacks"] == dict.fromkeys(
            (*fallbacks, "decode_not_dali_exif", "decode_not_dali_refused"), 0
        )
    line = re.compile(
        r"^\[[^]]+ als_det\.engine\.iteration_log\]: epoch (\d)/2 iter (\d)/4: [\d.]+ img/s, "
        r"data wait \d+% of step time, ETA \d+:\d\d:\d\d \(training\), peak memory [\d.]+ GiB "
        r"\(process peak RSS\)$"
    )
    found = [m.groups() for m in map(line.match, stage_log.read_text().splitlines()) if m]
    assert found == [("1", "2"), ("1", "4"), ("2", "2"), ("2", "4")]
    tb = list((tmp_path / "device" / "tb" / "iterations").glob("events.out.tfevents.*"))
    assert tb and tb[0].stat().st_size > 0


@pytest.mark.skipif(not DALI, reason="NVIDIA DALI (the dali extra) is not installed")
@pytest.mark.parametrize("train_split", [True, False])
def test_dali_gives_the_crops_and_coverages_of_the_workers_path(tiny, train_split: bool) -> None:
    """DALI's CPU pipeline (ROI decode, resize, flip, normalise) on the workers' crop windows."""
    from als_det.data.dali_decode import DALI_FALLBACK_NAMES, DaliDecoder

    train_records, val_records, classes = tiny
    ds = ImageNetBoxes(train_records if train_split else val_records, classes, train_split, 32)
    ds.set_epoch(3)
    encoded = EncodedImageNetBoxes(ds)
    batch = encoded.collate([encoded[i] for i in range(len(ds))])
    decoder = DaliDecoder(ds, torch.device("cpu"), True, batch_size=len(ds))
    images, labels, cov, obj, has_box = decoder(batch)
    ref = [ds[i] for i in range(len(ds))]
    assert labels.tolist() == [r[1] for r in ref]
    assert cov.tolist() == [r[2] for r in ref] and obj.tolist() == [r[3] for r in ref]
    assert images.is_contiguous(memory_format=torch.channels_last)
    want = torch.stack([r[0] for r in ref])
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert _pixel_diff(images[inner], want[inner]).max() <= TOLERANCE
    assert _pixel_diff(images, want).max() <= DALI_BORDER_TOLERANCE
    assert decoder.take_counts() == dict.fromkeys(DALI_FALLBACK_NAMES, 0)
    if train_split:  # the drawn flip reaches DALI: a wrong one fails the check
        geometry = batch[6].clone()
        geometry[:, 5] = 1 - geometry[:, 5]
        flipped = decoder((*batch[:6], geometry))[0]
        assert (_pixel_diff(flipped[inner], want[inner]) > TOLERANCE).all()


@pytest.mark.skipif(not DALI, reason="NVIDIA DALI (the dali extra) is not installed")
def test_dali_leaves_exif_rotated_and_refused_jpegs_to_the_device_path(
    tiny_imagenet: Path, tmp_path: Path
) -> None:
    from als_det.data.dali_decode import DaliDecoder

    photo = _rgb_photo(tiny_imagenet)
    photo.save(tmp_path / "rgb.JPEG", quality=95)
    good = (tmp_path / "rgb.JPEG").read_bytes()
    (tmp_path / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.crop((0, 0, 64, 48)).save(tmp_path / "exif.JPEG", quality=95, exif=exif)
    for names, labels, counts in (
        (["rgb", "exif"], [0, 0], {"decode_not_dali_exif": 1, "decode_not_dali_refused": 0}),
        (["rgb", "truncated"], [0, -1], {"decode_not_dali_exif": 0, "decode_not_dali_refused": 2}),
    ):
        paths = [str(tmp_path / f"{n}.JPEG") for n in names]
        records = [ImageRecord(p, 0, np.zeros((0, 4), np.float32), 64, 64) for p in paths]
        ds = ImageNetBoxes(records, ["n0"], train=False, image_size=32, val_resize=36)
        encoded = EncodedImageNetBoxes(ds)
        batch = encoded.collate([encoded[i] for i in range(len(ds))])
        decoder = DaliDecoder(ds, torch.device("cpu"), batch_size=4)
        images, got, *_ = decoder(batch)
        assert got.tolist() == labels
        assert {k: v for k, v in decoder.take_counts().items() if "dali" in k} == counts
        want = DeviceDecoder(ds, torch.device("cpu"))(batch)[0]
        assert _pixel_diff(images, want).max() <= TOLERANCE  # the rotation applied


@pytest.mark.skipif(bool(DALI), reason="NVIDIA DALI is installed")
def test_dali_without_dali_is_a_clear_error(tiny_imagenet: Path, tmp_path: Path) -> None:
    cfg = load_config(CONFIG, _opts(tiny_imagenet, tmp_path / "dali", "dali", 0))
    with pytest.raises(ValueError, match=r"NVIDIA DALI.*pip install -e '\.\[dali\]'"):
        check_decode(cfg)
    with pytest.raises(ValueError, match="NVIDIA DALI"):
        train(cfg)
    assert not (tmp_path / "dali").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="DATA.DECODE must be workers, device or dali"):
        load_config(CONFIG, _opts(tiny_imagenet, tmp_path / "x", "gpu", 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_cuda_decode_never_writes_into_memory_queued_work_still_reads() -> None:
    """pytorch/vision#9606: nvJPEG's hardware decoder wrote its output into blocks that kernels
    queued on the caller's stream were still to read (a NaN loss within 6 steps on an H200).
    `benchmarks/nvjpeg_race.py` counts the corrupted reads: 784 of 800 with torchvision's decode
    there, and it must find none with als_det's."""
    from als_det.data.device_decode import _decode_jpeg

    spec = importlib.util.spec_from_file_location(
        "nvjpeg_race", REPO / "benchmarks" / "nvjpeg_race.py"
    )
    race = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(race)
    device = torch.device("cuda")
    assert race.corrupted_sums(lambda data: _decode_jpeg(data, device), rounds=50) == 0

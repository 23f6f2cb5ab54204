"""Decode + crop + resize throughput per CPU core of each input path, on real full-size photos.

Paths, each in this one process with one intra-op thread (so images/s is per core), over the
same images and the same crops (seed, epoch):

  workers          `ImageNetBoxes[i]`: PIL decode, random-resized crop, resize, flip, normalise
                   (what each DataLoader worker does on `DATA.DECODE workers`)
  device_cpu       `EncodedImageNetBoxes[i]` (read bytes + header, draw the crop), the collate,
                   then `DeviceDecoder` on the CPU (libjpeg-turbo batch decode, crop, resize, ...):
                   `DATA.DECODE device` when the device is the CPU
  dali_cpu         `EncodedImageNetBoxes`, the collate, then `DaliDecoder` on the CPU (DALI's
                   CPU pipeline: ROI decode, resize, flip, normalise): `DATA.DECODE dali` when
                   the device is the CPU; only where DALI (the `dali` extra) is installed
  prepared_*       the same paths on a copy made by `tools/prepare_imagenet.py --max-side N`
  packed_*         the same paths on that copy packed (`--pack`: one file per split, read with
                   `os.pread`; the same bytes as `prepared_*`, so the difference is the reading)

Default photos: ../shared/data/coco-mini (COCO 2017, about 640x480), all of train2017 and val2017.
Each path runs `--repeats` passes, interleaved; the table shows the median images/s, and the
prepared copy's bytes on disk. Figures, machine and load average go to `--out` (JSON).
Measure on a quiet machine: a loaded one says nothing.

    python benchmarks/bench_decode.py [--root DIR] [--image-size 224] [--max-side 400]
        [--repeats 5] [--batch 32] [--out benchmarks/out/bench_decode.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from als_det.data.boxes import IMAGE_EXTENSIONS, ImageRecord, build_index
from als_det.data.device_decode import DeviceDecoder, EncodedImageNetBoxes
from als_det.data.imagenet import ImageNetBoxes
from als_det.data.prepare import prepare_imagenet
from als_det.io import atomic_write_json
from als_det.versions import package_versions

REPO = Path(__file__).resolve().parents[1]


def _records(root: Path) -> list[ImageRecord]:
    """Every photo under `root` as a box-less record (decode speed does not depend on boxes)."""
    paths = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    return [ImageRecord(str(p), 0, np.zeros((0, 4), np.float32), 0, 0) for p in paths]


def _tree(photos: list[ImageRecord], root: Path) -> Path:
    """An ImageNet-layout tree of symlinks to the photos (one class), for prepare_imagenet."""
    folder = root / "train" / "n00000000"
    folder.mkdir(parents=True)
    for i, r in enumerate(photos):
        (folder / f"{i:06d}{Path(r.path).suffix}").symlink_to(r.path)
    return root


def _workers(ds: ImageNetBoxes, batch: int) -> float:
    """Seconds for every image of `ds` (each path times only its loop, not its set-up)."""
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - t0


def _batches(ds: ImageNetBoxes, batch: int, decoder: DeviceDecoder) -> float:
    encoded = EncodedImageNetBoxes(ds)
    t0 = time.perf_counter()
    for start in range(0, len(ds), batch):
        items = [encoded[i] for i in range(start, min(start + batch, len(ds)))]
        decoder(encoded.collate(items))
    return time.perf_counter() - t0


def _device_cpu(ds: ImageNetBoxes, batch: int) -> float:
    return _batches(ds, batch, DeviceDecoder(ds, torch.device("cpu")))


def _dali_cpu(ds: ImageNetBoxes, batch: int) -> float:
    from als_det.data.dali_decode import DaliDecoder

    decoder = DaliDecoder(ds, torch.device("cpu"), batch_size=batch, num_threads=1)
    return _batches(ds, batch, decoder)


PATHS = {"workers": _workers, "device_cpu": _device_cpu}
if importlib.util.find_spec("nvidia") and importlib.util.find_spec("nvidia.dali"):
    PATHS["dali_cpu"] = _dali_cpu


def _machine() -> dict[str, object]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=str(REPO.parent / "shared" / "data" / "coco-mini"), help="photos"
    )
    parser.add_argument("--image-size", type=int, default=224, help="training crop size")
    parser.add_argument("--max-side", type=int, default=400, help="prepared copy's longer side")
    parser.add_argument("--quality", type=int, default=90, help="prepared copy's JPEG quality")
    parser.add_argument("--repeats", type=int, default=5, help="passes per path (median shown)")
    parser.add_argument("--batch", type=int, default=32, help="device path's batch size")
    parser.add_argument("--limit", type=int, default=0, help="use the first N photos (0 = all)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "bench_decode.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    photos = _records(Path(args.root))
    if args.limit:
        photos = photos[: args.limit]
    if not photos:
        raise SystemExit(f"no photos under {args.root}")
    with tempfile.TemporaryDirectory(prefix="bench_decode-") as tmp:
        src = _tree(photos, Path(tmp) / "src")
        record = prepare_imagenet(src, Path(tmp) / "prepared", args.max_side, args.quality)
        prepared = _records(Path(tmp) / "prepared" / "train")
        prepare_imagenet(src, Path(tmp) / "packed", args.max_side, args.quality, pack=True)
        packed, _, _ = build_index(Path(tmp) / "packed", "train")
        sets = {"": photos, "prepared_": prepared, "packed_": packed}
        rates: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for prefix, records in sets.items():
                ds = ImageNetBoxes(records, ["n00000000"], True, args.image_size, seed=0)
                for name, fn in PATHS.items():
                    rates.setdefault(prefix + name, []).append(len(ds) / fn(ds, args.batch))
    sizes = [os.path.getsize(r.path) for r in photos]
    result = {
        "machine": _machine(),
        "photos": len(photos),
        "mean_photo_kb": round(float(np.mean(sizes)) / 1024, 1),
        "image_size": args.image_size,
        "prepared": {
            "max_side": args.max_side,
            "jpeg_quality": args.quality,
            "bytes_before": record["image_bytes_before"],
            "bytes_after": record["image_bytes_after"],
        },
        "images_per_s_per_core": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "repeats": args.repeats,
        "versions": package_versions(),
    }
    atomic_write_json(Path(args.out), result)
    before, after = record["image_bytes_before"], record["image_bytes_after"]
    print(f"machine: {result['machine']}")
    print(f"prepared copy: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB ({after / before:.0%})")
    rates_line = ", ".join(f"{k} {v:.0f}" for k, v in result["images_per_s_per_core"].items())
    print(f"img/s per core: {rates_line}")


if __name__ == "__main__":
    main()

"""Data-pipeline throughput: the ALS crop + coverage + soft-target path vs torchvision's plain
RandomResizedCrop + flip + ToTensor + Normalize with hard labels, on the same JPEGs.

Both run through a DataLoader with the same batch size and worker count, interleaved over
repeats; the table shows the median images/s and the ALS / plain ratio (last line: the overall
ratio). Default data: ../shared/data/tiny-imagenet-10 beside the checkout, else the generated set.

    python benchmarks/bench_data_pipeline.py [--root DIR] [--workers 0 2] [--repeats 3] [--out F]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from als_det.config import get_cfg
from als_det.data.boxes import build_index
from als_det.data.generated import generate
from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetBoxes
from als_det.io import atomic_write_json
from als_det.targets import LabelStrategy, smoothing, soft_targets
from als_det.versions import package_versions

REPO = Path(__file__).resolve().parents[1]


def _epoch_plain(root: Path, size: int, batch: int, workers: int, seed: int) -> tuple[int, float]:
    tf = T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = ImageFolder(str(root / "train"), transform=tf)
    torch.manual_seed(seed)
    start = time.perf_counter()
    n = 0
    for images, labels in DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers):
        n += len(labels)
    return n, time.perf_counter() - start


def _epoch_als(
    ds: ImageNetBoxes, strategy: LabelStrategy, batch: int, workers: int, seed: int
) -> tuple[int, float]:
    ds.set_epoch(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    n = 0
    for images, labels, cov, _, has_box in DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, generator=g
    ):
        targets = soft_targets(labels, smoothing(strategy, cov, has_box), len(ds.classes))
        n += len(targets)
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default="", help="ImageNet-style root (default: tiny-imagenet-10)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the main process")
    parser.add_argument("--out", default="", help="write the results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
    root = Path(args.root) if args.root else REPO.parent / "shared" / "data" / "tiny-imagenet-10"
    if not args.root and not root.is_dir():
        root = generate(Path(tmp.name) / "generated", get_cfg().DATA.GEN)
    records, classes, report = build_index(root, "train", cache_dir=tmp.name)
    print(report.summary())
    ds = ImageNetBoxes(records, classes, True, args.image_size, seed=0)
    strategy = LabelStrategy("als")

    runs: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for workers in args.workers:
            order = ("plain", "als") if rep % 2 == 0 else ("als", "plain")
            for name in order:
                if name == "plain":
                    n, sec = _epoch_plain(root, args.image_size, args.batch_size, workers, rep)
                else:
                    n, sec = _epoch_als(ds, strategy, args.batch_size, workers, rep)
                runs.setdefault((name, workers), []).append(n / sec)

    rows = []
    print(
        f"\n{root}: {len(ds)} images, batch {args.batch_size}, {args.repeats} interleaved repeats"
    )
    print(f"{'workers':>7}  {'plain img/s':>12}  {'ALS img/s':>12}  {'ALS/plain':>9}")
    for workers in args.workers:
        plain = statistics.median(runs[("plain", workers)])
        als = statistics.median(runs[("als", workers)])
        rows.append(
            {
                "workers": workers,
                "plain_images_per_s": plain,
                "als_images_per_s": als,
                "ratio": als / plain,
                "plain_runs": runs[("plain", workers)],
                "als_runs": runs[("als", workers)],
            }
        )
        print(f"{workers:>7}  {plain:>12.0f}  {als:>12.0f}  {als / plain:>9.3f}")
    overall = statistics.median(r["ratio"] for r in rows)
    print(f"ALS / plain throughput ratio (median over worker counts): {overall:.3f}")
    if args.out:
        atomic_write_json(
            args.out,
            {
                "root": str(root),
                "images": len(ds),
                "rows": rows,
                "ratio": overall,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "repeats": args.repeats,
                "versions": package_versions(),
            },
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()

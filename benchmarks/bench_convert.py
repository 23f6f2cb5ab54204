"""ResNet-50 torchvision -> detectron2 conversion and verification wall time (printed last).

Times `convert_file` without verification (read .pth, check, rename, atomic .pkl write) and
`verify` (build the R50-FPN Faster R-CNN, load through DetectionCheckpointer, compare res2..res5
with torchvision in float64) on a randomly initialised torchvision ResNet-50; median of repeats.

    python benchmarks/bench_convert.py [--repeats 3] [--size 224] [--threads 2] [--out F]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from als_det.convert import convert_file
from als_det.detection.verify import verify
from als_det.io import atomic_write_json
from als_det.versions import package_versions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="verification input size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="optional JSON file for the timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    convert_s, verify_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet50.pth"
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), src)
        for i in range(args.repeats):
            out = Path(tmp) / f"r50_{i}.pkl"
            start = time.perf_counter()
            convert_file(src, out)
            convert_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = verify(out, src, input_size=args.size)
            verify_s.append(time.perf_counter() - start)
            if not result.ok:
                raise SystemExit(result.summary())
            print(
                f"repeat {i}: convert {convert_s[-1]:.2f} s, verify {verify_s[-1]:.2f} s "
                f"({result.loaded_tensors}/{result.expected_tensors} tensors, "
                f"max diff {result.max_diff:.3g})"
            )
    convert_med, verify_med = statistics.median(convert_s), statistics.median(verify_s)
    if args.out:
        atomic_write_json(
            args.out,
            {
                "convert_s": convert_s,
                "verify_s": verify_s,
                "size": args.size,
                "threads": args.threads,
                "versions": package_versions(),
            },
        )
    print(
        f"resnet50 convert {convert_med:.2f} s + verify {verify_med:.2f} s "
        f"(input {args.size}px, {args.threads} threads, median of {args.repeats}): "
        f"{convert_med + verify_med:.2f} s"
    )


if __name__ == "__main__":
    main()

"""Trainer step time on CPU: ALS vs hard targets, same model, same batch (ratio printed last).

Runs `als_det.engine.loops.train_one_epoch` (forward, per-sample smoothing, soft targets, soft
cross entropy, backward, SGD step, NaN check, statistics) over `--steps` copies of one batch for
each arm, interleaved over `--repeats` so CPU contention hits both alike; reports the median seconds
per step. The ALS batch carries real coverages in (0, 1), so its soft targets differ per sample.

    python benchmarks/bench_train_step.py [--arch resnet18] [--size 64] [--batch 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from als_det.engine.loops import train_one_epoch
from als_det.io import atomic_write_json
from als_det.models import build_resnet
from als_det.targets import LabelStrategy
from als_det.versions import package_versions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="optional JSON file for the timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_resnet(args.arch, args.classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batch = (
        torch.randn(args.batch, 3, args.size, args.size),
        torch.randint(0, args.classes, (args.batch,)),
        torch.rand(args.batch, dtype=torch.float64),
        torch.rand(args.batch, dtype=torch.float64),
        torch.ones(args.batch, dtype=torch.bool),
    )
    loader = [batch] * args.steps
    arms = {name: LabelStrategy(name) for name in ("hard", "als")}

    def run(strategy: LabelStrategy) -> float:
        start = time.perf_counter()
        train_one_epoch(
            model, loader, optimizer, scheduler, scaler, strategy, device, 1, progress=False
        )
        return (time.perf_counter() - start) / args.steps

    for strategy in arms.values():  # warm-up: allocator, kernels
        run(strategy)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, strategy in arms.items():
            times[name].append(run(strategy))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in arms:
        print(
            f"{name:5s} {median[name] * 1000:8.1f} ms/step  ({args.batch / median[name]:.0f} "
            f"img/s; runs: {', '.join(f'{t * 1000:.0f}' for t in times[name])} ms)"
        )
    ratio = median["als"] / median["hard"]
    if args.out:
        atomic_write_json(
            args.out,
            {
                "args": vars(args),
                "seconds_per_step": times,
                "median": median,
                "ratio_als_over_hard": ratio,
                "versions": package_versions(),
            },
        )
    print(
        f"{args.arch} {args.size}px batch {args.batch}, {args.threads} threads: "
        f"ALS / hard step time = {ratio:.3f}"
    )


if __name__ == "__main__":
    main()

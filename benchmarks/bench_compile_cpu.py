"""TRAIN.COMPILE True on the CPU: the trainer with torch.compile (inductor), bf16 autocast and
channels_last.

1. `als_det.engine.trainer.train` with TRAIN.COMPILE True, then False, one short epoch each on a
   generated data set (ResNet-18, 64 px, batch 32): the compiled run's first epoch includes the
   cold compile (inductor's caches go to a fresh folder), its run.json must record
   `"compile": "inductor"` and TorchDynamo must have produced graphs.
2. Steady state: `train_one_epoch` on one batch, eager and compiled models alternated over
   `--repeats` so that CPU contention hits both alike; median seconds per step.
Too slow for the test suite (a cold compile of forward and backward takes about a minute on 2
cores), hence a benchmark.

    python benchmarks/bench_compile_cpu.py [--arch resnet18] [--steps 5] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

# A cold compile is what a first run pays: inductor's on-disk caches go to a fresh folder.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-cache-"))

import torch  # noqa: E402

from als_det.config import load_config  # noqa: E402
from als_det.data.generated import generate  # noqa: E402
from als_det.engine.loops import train_one_epoch  # noqa: E402
from als_det.engine.trainer import train  # noqa: E402
from als_det.io import atomic_write_json  # noqa: E402
from als_det.models import build_resnet  # noqa: E402
from als_det.targets import LabelStrategy  # noqa: E402
from als_det.versions import package_versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GEN = {
    "NUM_CLASSES": 10,
    "TRAIN_PER_CLASS": 20,
    "VAL_PER_CLASS": 2,
    "IMAGE_SIZE": 64,
    "DETECTION_TRAIN": 1,
    "DETECTION_VAL": 1,
    "DETECTION_IMAGE_SIZE": 32,
}


def first_epoch(root: Path, out: Path, compiled: bool, arch: str) -> dict:
    """The trainer itself, one epoch of 4 iterations: (run.json's compile, epoch 1 training
    seconds)."""
    cfg = load_config(
        str(REPO / "configs/pretrain/demo_als.yaml"),
        [
            "DATA.ROOT",
            str(root),
            "DATA.GENERATE",
            "False",
            "DATA.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(out),
            "MODEL.ARCH",
            arch,
            "SOLVER.EPOCHS",
            "1",
            "SOLVER.WARMUP_EPOCHS",
            "0",
            "SOLVER.BATCH_SIZE",
            "32",
            "TRAIN.MAX_ITERS_PER_EPOCH",
            "4",
            "TRAIN.DEVICE",
            "cpu",
            "TRAIN.AMP",
            "bf16",
            "TRAIN.CHANNELS_LAST",
            "True",
            "TRAIN.COMPILE",
            str(compiled),
        ],
    )
    train(cfg)
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "compile": json.loads((out / "run.json").read_text())["compile"],
        "epoch1_train_s": row["train_time_s"],
    }


def steady_state(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per `train_one_epoch` step, eager vs compiled, alternated."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    batch = (
        torch.randn(32, 3, 64, 64),
        torch.randint(0, 10, (32,)),
        torch.rand(32),
        torch.ones(32, dtype=torch.bool),
    )
    models = {}
    for name in ("eager", "compiled"):
        model = build_resnet(args.arch, 10).to(memory_format=torch.channels_last)
        models[name] = (
            torch.compile(model) if name == "compiled" else model,
            torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
        )

    def step_time(name: str) -> float:
        model, opt = models[name]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        start = time.perf_counter()
        train_one_epoch(
            model,
            [batch] * args.steps,
            opt,
            sched,
            scaler,
            LabelStrategy("als"),
            device,
            1,
            amp="bf16",
            channels_last=True,
            progress=False,
        )
        return (time.perf_counter() - start) / args.steps

    for name in models:  # warm-up (the compiled model compiles here, from the cache step 1 filled)
        step_time(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name in models:
            times[name].append(step_time(name))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="optional JSON file for the figures")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torch._dynamo.utils import counters

    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "gen", GEN, progress=False)
        counters.clear()
        compiled = first_epoch(root, Path(tmp) / "compiled", True, args.arch)
        graphs = counters["stats"]["unique_graphs"]
        eager = first_epoch(root, Path(tmp) / "eager", False, args.arch)
    if compiled["compile"] != "inductor" or graphs < 1:
        raise SystemExit(
            "the compiled run did not compile (run.json "
            f"compile={compiled['compile']}, graphs={graphs})"
        )
    median = steady_state(args)
    ratio = median["eager"] / median["compiled"]
    if args.out:
        atomic_write_json(
            args.out,
            {
                "args": vars(args),
                "first_epoch": {"eager": eager, "compiled": compiled},
                "dynamo_graphs": graphs,
                "median_s_per_step": median,
                "compiled_speedup": ratio,
                "versions": package_versions(),
            },
        )
    print(
        f"first epoch (4 steps): eager {eager['epoch1_train_s']:.1f} s, compiled "
        f"{compiled['epoch1_train_s']:.1f} s (cold inductor compile, {graphs} graph(s)); steady "
        f"state: eager {median['eager'] * 1000:.0f} ms/step, compiled "
        f"{median['compiled'] * 1000:.0f} ms/step"
    )
    print(
        f"{args.arch} 64px batch 32 bf16 channels_last, {args.threads} threads: cold compile "
        f"{compiled['epoch1_train_s'] - eager['epoch1_train_s']:.0f} s, compiled speed-up "
        f"{ratio:.2f}x"
    )


if __name__ == "__main__":
    main()

"""What a plan will cost before it runs: each stage's hours on its resources and GPU-hours, from
stated per-GPU rates, each labelled with where it comes from (`tools/run_experiment.py --dry-run`).

Rates, measured ones first where this checkout has them:
  decode per core  `benchmarks/out/bench_decode.json` (images/s per core of the `workers` path,
                   from `benchmarks/bench_decode.py`), else issue 21's assumption of 150
  step per GPU     `benchmarks/out/gpu_check/gpu_check.json` (the trainer's own step, ResNet-50,
                   224 px, bf16; compiled where the config compiles), else the project's recorded
                   run of it (`benchmarks/measured/gpu_check_h200.json`, one H200), else NVIDIA's
                   published ResNet-50 figure (DALI + AMP, one A100)
  device decode    the same check's `DATA.DECODE device` decode rate (nvJPEG): each batch's decode
                   waits for the previous step (docs/benchmarks.md), so decode and step add up;
                   without a measurement the device path is counted at the step rate
  detection        detectron2's model-zoo training speed of the config (8 V100, float32)
  transfer         the step rate for its fine-tuning images, 3x it for its forward-only images
                   (features, predictions; assumed: a backward pass costs about two forwards)
Pretraining and transfer scale the step rate by the architecture's FLOPs and the crop's pixels; on
`DATA.DECODE workers` a pretraining GPU gets at most min(DATA.NUM_WORKERS, CPUs per process) x the
decode rate. Stages with no rate (evaluation, conversion, comparison, data generation) show their
time limit, labelled as such. Training time only: per-epoch evaluation, start-up and requeues
come on top.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from als_det.data.pack import PACK_SUFFIX, is_packed, read_index
from als_det.experiment.stages import Stage

REPO = Path(__file__).resolve().parents[2]
RECORDED_GPU_CHECK = REPO / "benchmarks" / "measured" / "gpu_check_h200.json"
ILSVRC2012_TRAIN = 1_281_167
RESNET_GFLOPS = {
    "resnet18": 1.8,
    "resnet34": 3.6,
    "resnet50": 4.1,
    "resnet101": 7.8,
    "resnet152": 11.5,
}
PUBLISHED_STEP = (
    2470.0,
    "published: NVIDIA DeepLearningExamples ResNet-50 v1.5, PyTorch, DALI + AMP, 1x A100",
)
ASSUMED_DECODE = (150.0, "assumed: issue 21's 100-250 PIL decodes + crops per core, not measured")
# detectron2 MODEL_ZOO.md, "train time (s/iter)" on 8 V100 at 16 images per iteration, float32;
# the R101 1x configs have no zoo figure (the zoo trains them 3x): theirs is the 3x one.
ZOO_S_PER_ITER = {
    "faster_rcnn_R_50_C4_1x": 0.551,
    "faster_rcnn_R_50_FPN_1x": 0.210,
    "faster_rcnn_R_101_C4_1x": 0.619,
    "faster_rcnn_R_101_FPN_1x": 0.286,
    "retinanet_R_50_FPN_1x": 0.205,
    "mask_rcnn_R_50_FPN_1x": 0.261,
}
ZOO_SOURCE = "published: detectron2 model zoo, 8 V100, float32"
FORWARD_SPEEDUP = (3.0, "assumed: a forward pass alone costs a third of a training step")


def measured_rates(
    bench_dir: Path, recorded: Path | None = RECORDED_GPU_CHECK
) -> dict[str, tuple[float, str]]:
    """The rates measured in this checkout (git-ignored `benchmarks/out`), and for the GPU the
    project's `recorded` run where this checkout has none, by name."""
    out: dict[str, tuple[float, str]] = {}
    decode = bench_dir / "bench_decode.json"
    if decode.is_file():
        d = json.loads(decode.read_text())
        rate = d["images_per_s_per_core"]["workers"]
        machine = d["machine"]
        out["decode"] = (rate, f"measured: bench_decode.py on {machine['cpu']}, {machine['date']}")
    check = bench_dir / "gpu_check" / "gpu_check.json"
    if check.is_file():
        out.update(_gpu_check_rates(check, "this checkout"))
    elif recorded is not None and recorded.is_file():
        out.update(_gpu_check_rates(recorded, str(recorded.relative_to(REPO))))
    return out


def _gpu_check_rates(path: Path, where: str) -> dict[str, tuple[float, str]]:
    """`step` (eager), `step_compiled` and `device_decode` images/s of a GPU check's JSON."""
    d = json.loads(path.read_text())
    env, sections = d.get("environment", {}), d.get("sections", {})
    if env.get("device") != "cuda":
        return {}
    src = f"measured: gpu_check.sh on {env.get('gpu')}, {env['date']}, {where}"
    pre, dec = sections.get("pretrain", {}), sections.get("gpu_decode", {})
    figures = {
        "step": pre.get("eager_als_img_s"),
        "step_compiled": pre.get("compiled_als_img_s"),
        "device_decode": next(
            (v for k, v in dec.items() if re.fullmatch(r"decode_device_\d+w_img_s", k)), None
        ),
    }
    return {name: (float(rate), src) for name, rate in figures.items() if rate}


def _pretrain_images(cfg: Any, generated: bool) -> tuple[int, str]:
    """Train images per epoch: counted where the split is here, else the generated set's or
    ILSVRC2012's."""
    split = Path(cfg.DATA.ROOT) / cfg.DATA.TRAIN_SPLIT
    if generated:
        n = cfg.DATA.GEN.NUM_CLASSES * cfg.DATA.GEN.TRAIN_PER_CLASS
        return n, f"{n} images (the generated set)"
    if is_packed(cfg.DATA.ROOT, cfg.DATA.TRAIN_SPLIT):
        counts = np.bincount(read_index(cfg.DATA.ROOT, cfg.DATA.TRAIN_SPLIT)["labels"])
        n = int(np.minimum(counts, cfg.DATA.MAX_PER_CLASS or 10**12).sum())
        return n, f"{n} images in {split}{PACK_SUFFIX}"
    if split.is_dir():
        n = sum(
            min(len(os.listdir(e.path)), cfg.DATA.MAX_PER_CLASS or 10**12)
            for e in os.scandir(split)
            if e.is_dir()
        )
        return n, f"{n} images in {split}"
    n = ILSVRC2012_TRAIN if not cfg.DATA.MAX_PER_CLASS else 1000 * cfg.DATA.MAX_PER_CLASS
    return n, f"{n} images (ILSVRC2012 train; {split} is not here)"


def _config_and_overrides(args: Sequence[str]) -> tuple[str, list[str]]:
    """A tool's `--config-file` and its trailing `KEY VALUE` overrides (options come before)."""
    args = [a for a in args if a != "--resume"]
    i = args.index("--config-file")
    first = next(
        (j for j in range(i + 2, len(args)) if re.fullmatch(r"[A-Z][A-Z0-9_.]*", args[j])),
        len(args),
    )
    return args[i + 1], args[first:]


def _step_rate(cfg: Any, rates: dict[str, tuple[float, str]]) -> tuple[float, str]:
    """Training images/s per GPU of the config's architecture at its crop size, and its source."""
    step, step_src = rates.get("step", PUBLISHED_STEP)
    if cfg.TRAIN.COMPILE and "step_compiled" in rates:
        step, step_src = rates["step_compiled"]
        step_src += ", torch.compile"
    scale = RESNET_GFLOPS["resnet50"] / RESNET_GFLOPS.get(cfg.MODEL.ARCH, 4.1)
    return step * scale * (224 / cfg.DATA.IMAGE_SIZE) ** 2, step_src


def _gpus(stage: Stage) -> int:
    return stage.resources.nodes * stage.resources.gpus_per_node


def pretrain_estimate(
    stage: Stage, rates: dict[str, tuple[float, str]]
) -> tuple[list[str], dict[str, float]]:
    """The stage's lines, and its GPU-hours on each decode path ("config": the config's)."""
    from als_det.config import load_config

    config, opts = _config_and_overrides(stage.command.args)
    cfg = load_config(config, opts)
    gpus = _gpus(stage)
    if not gpus:
        return ["#    no GPU: the rates are per GPU, no estimate"], {
            "workers": 0.0,
            "device": 0.0,
            "config": 0.0,
        }
    images, where = _pretrain_images(cfg, "data" in stage.deps)
    if cfg.TRAIN.MAX_ITERS_PER_EPOCH:
        images = min(images, cfg.TRAIN.MAX_ITERS_PER_EPOCH * cfg.SOLVER.BATCH_SIZE * gpus)
        where += f", {images} per epoch (TRAIN.MAX_ITERS_PER_EPOCH)"
    step, step_src = _step_rate(cfg, rates)
    decode, decode_src = rates.get("decode", ASSUMED_DECODE)
    cores = min(cfg.DATA.NUM_WORKERS, stage.resources.cpus_per_proc) or 1
    work = cfg.SOLVER.EPOCHS * images
    lines = [
        f"#    {cfg.SOLVER.EPOCHS} epochs x {where}, {cfg.MODEL.ARCH} at {cfg.DATA.IMAGE_SIZE} px "
        f"on {gpus} GPU(s): step {step:.0f} img/s per GPU ({step_src}; scaled by FLOPs and "
        f"pixels), decode {decode:.0f} img/s per core x {cores} ({decode_src})"
    ]
    device_decode = rates.get("device_decode")
    if device_decode:
        lines.append(
            f"#    device decode {device_decode[0]:.0f} img/s per GPU ({device_decode[1]}), "
            "in series with the step"
        )
    gpu_hours = {}
    for path in ("workers", "device"):
        if path == "workers":
            rate = min(step, decode * cores)
            bound = "CPU decode-bound" if decode * cores < step else "GPU step-bound"
        elif device_decode:
            rate = 1 / (1 / step + 1 / device_decode[0])
            bound = "device decode + GPU step"
        else:
            rate, bound = step, "GPU step-bound"
        hours = work / (rate * gpus) / 3600
        gpu_hours[path] = hours * gpus
        ran = " (the config's)" if path == cfg.DATA.DECODE else ""
        lines.append(
            f"#    DATA.DECODE {path}{ran}: {rate:.0f} img/s per GPU ({bound}), "
            f"{hours:.1f} h, {hours * gpus:.0f} GPU-hours"
        )
    gpu_hours["config"] = gpu_hours.get(cfg.DATA.DECODE, gpu_hours["device"])
    return lines, gpu_hours


def detection_estimate(stage: Stage) -> tuple[list[str], float | None]:
    """The stage's lines and GPU-hours (None without a published figure)."""
    from als_det.detection.config import get_detection_cfg

    config, opts = _config_and_overrides(stage.command.args)
    name = Path(config).stem
    if name not in ZOO_S_PER_ITER:
        limit = stage.resources.timeout_min
        return [f"#    no published figure for {name}: its time limit, {limit} min"], None
    cfg = get_detection_cfg(config, opts)
    gpus = max(1, _gpus(stage))
    s_iter = ZOO_S_PER_ITER[name] * (8 / gpus) * (cfg.SOLVER.IMS_PER_BATCH / 16)
    hours = cfg.SOLVER.MAX_ITER * s_iter / 3600
    return [
        f"#    {cfg.SOLVER.MAX_ITER} iterations at {cfg.SOLVER.IMS_PER_BATCH} images on {gpus} "
        f"GPU(s): {s_iter:.3f} s/iter ({ZOO_SOURCE}, scaled to these GPUs and batch; AMP "
        f"{'on' if cfg.SOLVER.AMP.ENABLED else 'off'}, which the figure does not include), "
        f"{hours:.1f} h, {hours * gpus:.0f} GPU-hours"
    ], hours * gpus


def _downstream_images(root: Path, max_per_class: int) -> dict[str, int] | None:
    """Images per split of a downstream set (ImageNet layout), None where it is not here."""
    counts = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            return None
        counts[split] = sum(
            min(len(os.listdir(e.path)), max_per_class or 10**12)
            for e in os.scandir(root / split)
            if e.is_dir()
        )
    return counts


def transfer_estimate(
    stage: Stage, pretrain: Stage, rates: dict[str, tuple[float, str]]
) -> tuple[list[str], float | None]:
    """The stage's lines and GPU-hours (None when its data set is not here to count)."""
    import argparse

    from als_det.analysis.transfer import TransferOptions
    from als_det.cli import add_options, options_from_args
    from als_det.config import load_config
    from als_det.experiment.stages import resolve

    spec = dict(zip(stage.command.spec[::2], stage.command.spec[1::2]))
    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser, TransferOptions)
    opts = options_from_args(TransferOptions, parser.parse_known_args(list(spec["options"]))[0])
    gpus = _gpus(stage)
    limit = stage.resources.timeout_min
    if not gpus:
        return [f"#    no GPU: the rates are per GPU, no estimate (time limit {limit} min)"], 0.0
    images = _downstream_images(resolve(spec["data"]), opts.max_per_class)
    if images is None:
        return [f"#    {spec['data']} is not here to count: its time limit, {limit} min"], None
    config, overrides = _config_and_overrides(pretrain.command.args)
    cfg = load_config(config, overrides)
    step, step_src = _step_rate(cfg, rates)
    speedup, speedup_src = FORWARD_SPEEDUP
    protocols = opts.protocol_list()
    trained = opts.epochs * images["train"] if "finetune" in protocols else 0
    forward = (images["train"] + images["val"]) * bool({"linear_probe", "knn"} & set(protocols))
    forward += images["val"] if "finetune" in protocols else 0
    hours = (trained / step + forward / (step * speedup)) / 3600
    return [
        f"#    {images['train']} train and {images['val']} val images, {', '.join(protocols)}: "
        f"{trained} fine-tuning images at {step:.0f} img/s per GPU ({step_src}; scaled by FLOPs "
        f"and pixels), {forward} forward-only at {speedup:g}x that ({speedup_src}); one process, "
        f"{hours * 60:.1f} min, {hours:.2f} GPU-hours"
    ], hours


def estimate_lines(
    stages: Sequence[Stage], bench_dir: Path, recorded: Path | None = RECORDED_GPU_CHECK
) -> str:
    """The `--dry-run` estimate of every stage, in order, and the plan's total."""
    rates = measured_rates(bench_dir, recorded)
    lines = ["# estimates (training time on each stage's resources; sources in brackets):"]
    total = {"config": 0.0, "device": 0.0}
    limits = 0.0
    by_name = {st.name: st for st in stages}
    for st in stages:
        lines.append(f"# ~ {st.name}")
        gpus = _gpus(st)
        if st.kind == "pretrain":
            more, hours = pretrain_estimate(st, rates)
            lines += more
            total["config"] += hours["config"]
            total["device"] += hours["device"]
            continue
        if st.kind in ("finetune", "transfer"):
            more, gpu_hours = (
                detection_estimate(st)
                if st.kind == "finetune"
                else transfer_estimate(st, by_name[st.deps[0]], rates)
            )
            lines += more
            if gpu_hours is not None:
                total["config"] += gpu_hours
                total["device"] += gpu_hours
                continue
        else:
            limit = st.resources.timeout_min
            at_most = f", at most {limit / 60 * gpus:.0f} GPU-hours" if gpus else ""
            lines.append(f"#    no rate: its time limit, {limit} min{at_most}")
        limits += st.resources.timeout_min / 60 * gpus
    lines.append(
        f"# total: {total['config']:.0f} GPU-hours as configured, {total['device']:.0f} with "
        f"DATA.DECODE device for pretraining, plus at most {limits:.0f} GPU-hours of stages "
        "without a rate (their time limits)"
    )
    return "\n".join(lines)

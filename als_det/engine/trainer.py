"""The pretraining loop, modelled on torchvision's `references/classification/train.py`.

`train(cfg)` runs one arm (hard | ls | als: they differ only in targets) on a CPU, one GPU, or
several processes under torchrun, and writes `OUTPUT_DIR/{config.yaml, run.json, metrics.jsonl,
last.pth, best.pth, tb/}`. Choices, where torchvision offers several: lr = BASE_LR x global batch /
REFERENCE_BATCH with a per-iteration linear warm-up, then cosine or step decay; SGD weight decay on
every parameter (BN and biases included, torchvision's default); the training sampler drops the
tail so no image is seen twice in an epoch; evaluation shards val without padding so every image
counts exactly once.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from als_det.data.boxes import IndexReport, ImageRecord, build_index, index_cache_dir
from als_det.data.crops import coverage as box_coverage
from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetBoxes
from als_det.engine.checkpoint import (get_rng_state, load_checkpoint, save_checkpoint, set_rng_state,
                                       unwrap_model)
from als_det.engine.distributed import (DistInfo, all_gather_cat, all_reduce_sum, barrier, cleanup_distributed,
                                        init_distributed)
from als_det.engine.resume import ResumeError, check_resume, resume_record
from als_det.io import atomic_write_json, atomic_write_text
from als_det.logger import setup_logging
from als_det.metrics.calibration import calibration_metrics_from_logits
from als_det.mixing import BatchMixer, loss_for_mixed_batch
from als_det.models import build_resnet
from als_det.targets import LabelStrategy, loss_for_batch
from als_det.versions import package_versions


logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops before that step is taken."""


def _autocast(device: torch.device, amp: str):
    """Autocast for `amp` on `device` ("bf16" on CPU or GPU, "fp16" on GPU); a no-op for "none"."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def resolve_precision(cfg: CfgNode, device: torch.device) -> tuple[str, bool]:
    """(amp, channels_last) as they will run on `device`: the config's, or an error for fp16 on the CPU."""
    if cfg.TRAIN.AMP == "fp16" and device.type != "cuda":
        raise ValueError("TRAIN.AMP fp16 (float16 autocast with GradScaler) is a GPU setting; on the CPU "
                         "use TRAIN.AMP bf16 (CPU autocast) or none")
    return cfg.TRAIN.AMP, bool(cfg.TRAIN.CHANNELS_LAST)


# ---------------------------------------------------------------------------------------------
# learning rate


def lr_factor(iteration: int, iters_per_epoch: int, cfg: CfgNode) -> float:
    """Multiplier of the peak lr at `iteration` (0-based, counted over the whole run)."""
    warmup = int(round(cfg.SOLVER.WARMUP_EPOCHS * iters_per_epoch))
    if iteration < warmup:
        return (iteration + 1) / warmup
    if cfg.SOLVER.SCHEDULE == "cosine":
        total = cfg.SOLVER.EPOCHS * iters_per_epoch
        progress = (iteration - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    epoch = iteration // iters_per_epoch
    return cfg.SOLVER.GAMMA ** sum(epoch >= s for s in cfg.SOLVER.STEPS)


def build_optimizer(model: nn.Module, cfg: CfgNode, world_size: int) -> torch.optim.SGD:
    """SGD with momentum; peak lr scaled linearly with the global batch."""
    lr = cfg.SOLVER.BASE_LR * cfg.SOLVER.BATCH_SIZE * world_size / cfg.SOLVER.REFERENCE_BATCH
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.SOLVER.MOMENTUM,
                           nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: CfgNode,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, cfg))


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class DataBundle:
    train_set: ImageNetBoxes
    val_set: ImageNetBoxes
    classes: list[str]
    reports: dict[str, IndexReport]
    box_area: float  # mean over train images with boxes of area(union(boxes)) / image area


def mean_box_area(records: list[ImageRecord]) -> float:
    """Mean coverage of the whole image by the labelled boxes, over images that have boxes."""
    areas = [box_coverage(r.boxes, (0.0, 0.0, float(r.width), float(r.height))) for r in records if len(r.boxes)]
    return float(np.mean(areas)) if areas else float("nan")


def build_data(cfg: CfgNode, info: DistInfo, out_dir: Path) -> DataBundle:
    """Generate the demo data if asked, index train and val (val with train's classes), build datasets.

    Rank 0 generates and indexes first (writing the caches); the other ranks then read them.
    """
    root = Path(cfg.DATA.ROOT)
    for turn in ("main", "others"):
        if (turn == "main") == info.is_main:
            if cfg.DATA.GENERATE:
                from als_det.data.generated import ensure_generated

                ensure_generated(root, cfg.DATA.GEN)
            if not (root / cfg.DATA.TRAIN_SPLIT).is_dir():
                raise FileNotFoundError(f"DATA.ROOT {root} has no '{cfg.DATA.TRAIN_SPLIT}' folder "
                                        "(set DATA.GENERATE True to make the demo data there)")
            cache = index_cache_dir(cfg.DATA.ROOT, out_dir / "index_cache", cfg.DATA.CACHE_DIR)
            train_records, classes, train_report = build_index(
                root, cfg.DATA.TRAIN_SPLIT, boxes=cfg.DATA.TRAIN_BOXES, strict=cfg.DATA.STRICT,
                cache_dir=cache, max_per_class=cfg.DATA.MAX_PER_CLASS)
            val_records, _, val_report = build_index(
                root, cfg.DATA.VAL_SPLIT, boxes=cfg.DATA.VAL_BOXES, val_labels=cfg.DATA.VAL_LABELS,
                strict=cfg.DATA.STRICT, cache_dir=cache, max_per_class=cfg.DATA.MAX_PER_CLASS, classes=classes)
        barrier()
    kw = dict(image_size=cfg.DATA.IMAGE_SIZE, seed=cfg.SEED, strict=cfg.DATA.STRICT)
    train_set = ImageNetBoxes(train_records, classes, train=True, scale=tuple(cfg.DATA.CROP_SCALE),
                              ratio=tuple(cfg.DATA.CROP_RATIO), **kw)
    val_set = ImageNetBoxes(val_records, classes, train=False, val_resize=cfg.DATA.VAL_RESIZE, **kw)
    return DataBundle(train_set, val_set, classes, {"train": train_report, "val": val_report},
                      mean_box_area(train_records))


def _loaders(cfg: CfgNode, data: DataBundle, info: DistInfo) -> tuple[DataLoader, DistributedSampler, DataLoader]:
    sampler = DistributedSampler(data.train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.SEED, drop_last=True)
    if len(sampler) < cfg.SOLVER.BATCH_SIZE:
        raise ValueError(f"the train split has {len(sampler)} images per process, fewer than "
                         f"SOLVER.BATCH_SIZE={cfg.SOLVER.BATCH_SIZE}")
    common = dict(batch_size=cfg.SOLVER.BATCH_SIZE, num_workers=cfg.DATA.NUM_WORKERS,
                  pin_memory=info.device.type == "cuda")
    # persistent_workers stays off: workers must pick up the dataset's set_epoch each epoch.
    train_loader = DataLoader(data.train_set, sampler=sampler, drop_last=True, **common)
    shard = Subset(data.val_set, range(info.rank, len(data.val_set), info.world_size))
    val_loader = DataLoader(shard, shuffle=False, drop_last=False, **common)
    return train_loader, sampler, val_loader


# ---------------------------------------------------------------------------------------------
# one epoch, evaluation


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    strategy: LabelStrategy, device: torch.device, epoch: int, *, amp: str = "none",
                    channels_last: bool = False, max_iters: int = 0, progress: bool = True,
                    mixer: BatchMixer | None = None) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's statistics summed over all ranks.

    `epoch` is 1-based (for messages). A NaN/inf loss on any rank raises NonFiniteLossError on
    every rank before the optimizer step. A cutmix/mixup strategy needs its `mixer`, which mixes
    each batch after loading (coverage statistics are those of the crops before mixing).
    """
    if strategy.mixes and mixer is None:
        raise ValueError(f"label strategy {strategy.name} needs a BatchMixer")
    model.train()
    n_iters = len(loader) if max_iters <= 0 else min(max_iters, len(loader))
    # sums: loss*n_used, n_used, e over used, coverage over used with box, n with box, bad, skipped, seen,
    # object coverage over used with box
    sums = torch.zeros(9, dtype=torch.float64, device=device)
    start = time.perf_counter()
    bar = tqdm(total=n_iters, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, leave=False)
    for it, (images, labels, cov, obj_cov, has_box) in enumerate(loader):
        if it >= n_iters:
            break
        images = images.to(device, non_blocking=True)
        labels, cov, obj_cov, has_box = labels.to(device), cov.to(device), obj_cov.to(device), has_box.to(device)
        mixed_targets = None
        if mixer is not None:
            images, mixed_targets = mixer(images, labels, epoch, it)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(images)
        if mixed_targets is not None:
            loss, e, n_skipped = loss_for_mixed_batch(logits, labels, mixed_targets)
        else:
            loss, e, n_skipped = loss_for_batch(strategy, logits, labels, cov, has_box, obj_cov)
        used = (labels >= 0) & ~torch.isnan(e)
        n_used = used.sum()
        batch = torch.stack([loss.detach().double() * n_used, n_used.double(),
                             e[used].double().sum(), cov[used & has_box].double().sum(),
                             (used & has_box).sum().double(), (labels < 0).sum().double(),
                             torch.tensor(float(n_skipped), dtype=torch.float64, device=device),
                             torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=device),
                             obj_cov[used & has_box].double().sum()])
        all_reduce_sum(batch)
        if not torch.isfinite(batch[0]):
            raise NonFiniteLossError(f"non-finite training loss at epoch {epoch}, iteration {it + 1}/{n_iters} "
                                     f"(lr {optimizer.param_groups[0]['lr']:.4g}); stopping before this step")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums += batch
        if progress:
            rate = sums[7].item() / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{batch[0].item() / max(1.0, batch[1].item()):.3f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.4g}", img_s=f"{rate:.0f}", refresh=False)
            bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    s = sums.tolist()
    return {"train_loss": s[0] / max(1.0, s[1]), "mean_e": s[2] / max(1.0, s[1]),
            "mean_coverage": s[3] / s[4] if s[4] else None,
            "mean_object_coverage": s[8] / s[4] if s[4] else None, "with_box_fraction": s[4] / max(1.0, s[1]),
            "images": int(s[7]), "used": int(s[1]), "bad_images": int(s[5]), "skipped_no_box": int(s[6]),
            "iterations": n_iters, "images_per_s": s[7] / seconds, "train_time_s": seconds}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int, *,
             amp: str = "none", channels_last: bool = False, progress: bool = False) -> dict[str, Any]:
    """Top-1/5, NLL, Brier, ECE (`calibration_metrics_from_logits`) over the whole val set.

    Under torchrun each rank passes its own unpadded shard; predictions are gathered so every
    image counts once. Images with label -1 (undecodable) are left out and counted.
    """
    model.eval()
    outputs, labels = [], []
    for images, target, *_ in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(images)
        if logits.shape[1] != num_classes:
            raise ValueError(f"model predicts {logits.shape[1]} classes, expected {num_classes}")
        outputs.append(logits.float())
        labels.append(target.to(device))
    empty = torch.zeros(0, num_classes, device=device)
    z = all_gather_cat(torch.cat(outputs) if outputs else empty).cpu()
    y = all_gather_cat(torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)).cpu()
    good = y >= 0
    if not good.any():
        raise ValueError("evaluation found no readable val image")
    metrics = calibration_metrics_from_logits(z[good], y[good])
    out = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}  # scalars; no reliability bins
    out.update(n=int(good.sum()), bad_images=int((~good).sum()))
    return out


# ---------------------------------------------------------------------------------------------
# the run


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def _check_finite(model: nn.Module, epoch: int) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteLossError(f"non-finite value in {name} after epoch {epoch}; checkpoint not written")


def _set_aside_previous_run(out_dir: Path) -> None:
    """A fresh run into an OUTPUT_DIR that holds an earlier run moves that run's files into
    OUTPUT_DIR/previous-<time>/ first: files of two runs never mix, and no result is destroyed."""
    names = ("last.pth", "best.pth", "metrics.jsonl", "run.json", "config.yaml", "log.txt", "tb")
    old = [p for p in (out_dir / n for n in names) if p.exists()]
    if not any(p.name in ("last.pth", "metrics.jsonl") for p in old):
        return
    aside = out_dir / datetime.now().strftime("previous-%Y%m%d-%H%M%S-%f")
    aside.mkdir()
    for path in old:
        path.rename(aside / path.name)
    logger.info("%s held an earlier run; starting afresh, its files moved to %s (pass --resume to "
                "continue a run instead)", out_dir, aside)


def _resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    if not resume:
        return None
    path = out_dir / "last.pth" if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: checkpoint {path} does not exist")
    return path


def train(cfg: CfgNode, resume: str | None = None, stop_after_epoch: int | None = None,
          model_hook: Callable[[nn.Module], None] | None = None, allow_config_change: bool = False) -> Path:
    """Pretrain one arm as `cfg` says; returns OUTPUT_DIR.

    resume: None (a fresh run; an earlier run's files in OUTPUT_DIR are set aside), "last"
    (OUTPUT_DIR/last.pth) or a checkpoint path: continues exactly where that run stopped. A
    resume whose experiment differs from the checkpoint's is refused (`ResumeError` listing the
    differences) unless `allow_config_change`, which records the changes in run.json; a refused
    resume changes nothing in OUTPUT_DIR. stop_after_epoch: end (cleanly, with checkpoints)
    after that many epochs, the schedule still planned for SOLVER.EPOCHS, as if preempted.
    model_hook: called with the freshly built model (e.g. to attach forward hooks).
    """
    owns_group = not torch.distributed.is_initialized()
    deterministic = torch.are_deterministic_algorithms_enabled()
    info = init_distributed(cfg.TRAIN.DEVICE)
    try:
        return _train(cfg, info, resume, stop_after_epoch, model_hook, allow_config_change)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if owns_group:
            cleanup_distributed()


def _run_record(cfg: CfgNode, info: DistInfo, data: DataBundle, strategy: LabelStrategy, amp: str,
                channels_last: bool, resumes: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json: what actually ran (device, precision, memory format, compiler), data and versions."""
    return {"seed": cfg.SEED, "world_size": info.world_size, "device": str(info.device), "amp": amp,
            "channels_last": channels_last, "compile": "inductor" if cfg.TRAIN.COMPILE else False,
            "label_strategy": strategy.to_dict(), "classes": data.classes,
            "index": {k: {"images": r.images, "with_boxes": r.with_boxes, "boxes": r.boxes,
                          "skipped": {why: len(f) for why, f in r.skipped.items()}} for k, r in data.reports.items()},
            "train_mean_box_area": data.box_area, "resumes": resumes, "versions": package_versions()}


def _checked_resume(resume_path: Path | None, cfg: CfgNode, info: DistInfo, allow_config_change: bool
                    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the checkpoint to resume, run.json's `resumes` list); ResumeError if the experiment changed."""
    if resume_path is None:
        return None, []
    ckpt = load_checkpoint(resume_path)
    diffs = check_resume(ckpt, cfg, info.world_size, str(resume_path), allow_config_change)
    run_json = Path(cfg.OUTPUT_DIR) / "run.json"
    earlier = json.loads(run_json.read_text()).get("resumes", []) if run_json.is_file() else []
    if diffs:
        logger.info("resuming with %d deliberate config change(s) (recorded in run.json): %s", len(diffs),
                    ", ".join(diffs))
    return ckpt, resume_record(str(resume_path), int(ckpt["epoch"]), diffs, earlier)


def _train(cfg: CfgNode, info: DistInfo, resume: str | None, stop_after_epoch: int | None,
           model_hook: Callable[[nn.Module], None] | None, allow_config_change: bool = False) -> Path:
    out_dir = Path(cfg.OUTPUT_DIR)
    main, device = info.is_main, info.device
    # Every check that can refuse the run comes before the first write into OUTPUT_DIR.
    amp, channels_last = resolve_precision(cfg, device)
    resume_path = _resolve_resume(resume, out_dir)
    ckpt, resumes = _checked_resume(resume_path, cfg, info, allow_config_change)
    if cfg.TRAIN.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not cfg.TRAIN.DETERMINISTIC
    torch.manual_seed(cfg.SEED)
    np.random.seed(cfg.SEED)
    random.seed(cfg.SEED)

    data = build_data(cfg, info, out_dir)
    if ckpt is not None and ckpt["classes"] != data.classes:
        raise ResumeError(f"cannot resume {resume_path}: it was trained on {len(ckpt['classes'])} classes, "
                          f"{cfg.DATA.ROOT} now has {len(data.classes)} (or other names)")
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_path is None:
            _set_aside_previous_run(out_dir)
        atomic_write_text(out_dir / "config.yaml", cfg.dump())
    setup_logging(out_dir, info.rank)
    num_classes = len(data.classes)
    strategy = LabelStrategy.from_cfg(cfg.LABELS)
    mixer = BatchMixer(strategy, num_classes, cfg.SEED, info.rank) if strategy.mixes else None
    train_loader, sampler, val_loader = _loaders(cfg, data, info)
    iters_per_epoch = len(train_loader) if cfg.TRAIN.MAX_ITERS_PER_EPOCH <= 0 else \
        min(cfg.TRAIN.MAX_ITERS_PER_EPOCH, len(train_loader))
    tr, va = data.reports["train"], data.reports["val"]
    logger.info(tr.summary())
    logger.info(va.summary())
    logger.info(f"train: {tr.images} images, {tr.with_boxes} with boxes ({100.0 * tr.with_boxes / max(1, tr.images):.1f}%), "
         f"mean box area {data.box_area:.3f} of the image; {num_classes} classes; label strategy "
         f"{strategy.name}; {info.world_size} process(es) on {device}, global batch "
         f"{cfg.SOLVER.BATCH_SIZE * info.world_size}, {iters_per_epoch} iterations/epoch; precision "
         f"{'float32' if amp == 'none' else amp + ' autocast'}, channels_last {channels_last}")

    model = build_resnet(cfg.MODEL.ARCH, num_classes).to(device)
    if model_hook is not None:
        model_hook(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg, info.world_size)
    scheduler = build_scheduler(optimizer, cfg, iters_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    start_epoch, best_top1, last_val = 0, -1.0, {}
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng_state"])
        start_epoch, best_top1, last_val = int(ckpt["epoch"]), float(ckpt["best_top1"]), ckpt["metrics"]
        history = _read_metrics(out_dir / "metrics.jsonl", start_epoch)
        logger.info("resumed from %s after epoch %d", resume_path, start_epoch)

    if info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.TRAIN.COMPILE:
        model = torch.compile(model)
    raw_model = unwrap_model(model)  # saved and evaluated: torchvision key names, no collectives

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_epoch + 1)
        atomic_write_json(out_dir / "run.json", _run_record(cfg, info, data, strategy, amp, channels_last, resumes))

    last_epoch = cfg.SOLVER.EPOCHS if stop_after_epoch is None else min(stop_after_epoch, cfg.SOLVER.EPOCHS)
    for epoch in range(start_epoch, last_epoch):
        sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)
        t0 = time.perf_counter()
        stats = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, strategy, device, epoch + 1,
                                amp=amp, channels_last=channels_last, max_iters=cfg.TRAIN.MAX_ITERS_PER_EPOCH,
                                progress=main, mixer=mixer)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **stats}
        if (epoch + 1) % cfg.TRAIN.EVAL_PERIOD == 0 or epoch + 1 == cfg.SOLVER.EPOCHS:
            t1 = time.perf_counter()
            last_val = evaluate(raw_model, val_loader, device, num_classes, amp=amp,
                                channels_last=channels_last, progress=main)
            row.update({f"val_{k}": v for k, v in last_val.items()}, eval_time_s=time.perf_counter() - t1)
        row["epoch_time_s"] = time.perf_counter() - t0
        _check_finite(raw_model, epoch + 1)
        is_best = "val_top1" in row and row["val_top1"] > best_top1
        best_top1 = max(best_top1, row.get("val_top1", best_top1))
        if main:
            state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                     "epoch": epoch + 1, "arch": cfg.MODEL.ARCH, "num_classes": num_classes, "classes": data.classes,
                     "label_strategy": strategy.to_dict(),
                     "preprocessing": {"input_format": "RGB", "pixel_mean": [255.0 * m for m in IMAGENET_MEAN],
                                       "pixel_std": [255.0 * s for s in IMAGENET_STD],
                                       "image_size": cfg.DATA.IMAGE_SIZE},
                     "config": cfg.dump(), "seed": cfg.SEED, "rng_state": get_rng_state(), "metrics": last_val,
                     "best_top1": best_top1, "world_size": info.world_size, "versions": package_versions()}
            save_checkpoint(out_dir / "last.pth", state)
            if is_best:
                save_checkpoint(out_dir / "best.pth", state)
            history.append(row)
            _write_jsonl(out_dir / "metrics.jsonl", history)
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, epoch + 1)
            writer.flush()
            val_txt = (f", val top1 {row['val_top1']:.3f} top5 {row['val_top5']:.3f} nll {row['val_nll']:.3f} "
                       f"ece {row['val_ece']:.3f}") if "val_top1" in row else ""
            cov = "n/a" if row["mean_coverage"] is None else f"{row['mean_coverage']:.3f}"
            logger.info(f"epoch {epoch + 1}/{cfg.SOLVER.EPOCHS}: loss {row['train_loss']:.4f}, mean e {row['mean_e']:.3f}, "
                 f"mean crop coverage {cov}, {row['images_per_s']:.0f} img/s, bad images {row['bad_images']}, "
                 f"no-box skips {row['skipped_no_box']}{val_txt} ({row['epoch_time_s']:.1f} s)")
        barrier()
    if writer is not None:
        writer.close()
    return out_dir

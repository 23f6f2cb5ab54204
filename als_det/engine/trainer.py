"""The pretraining loop, modelled on torchvision's `references/classification/train.py`.

`train(cfg)` runs one arm (hard | ls | als | cutmix | mixup: they differ only in targets) on a CPU,
one GPU, or several processes under torchrun, and writes `OUTPUT_DIR/{config.yaml, run.json,
metrics.jsonl, log.txt, last.pth, best.pth, tb/}`: the data and loaders come from
`engine.data`, the solver from `engine.solver`, checkpoints go through `CheckpointSaver`
(`engine.checkpoint`), per-epoch metrics through `MetricsWriter` (`engine.events`), and what the
run records about itself (checkpoint identity, run.json) comes from `engine.run_record`. SGD weight
decay applies to every parameter (BN and biases included, torchvision's default).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from fvcore.common.config import CfgNode

from als_det.config import ResumeError
from als_det.engine.checkpoint import BEST, LAST, CheckpointSaver, load_checkpoint
from als_det.engine.data import (
    DataBundle,
    build_data,
    build_loaders,
    check_decode,
    decode_fallbacks,
)
from als_det.engine.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from als_det.engine.events import MetricsWriter
from als_det.engine.iteration_log import IterationLog
from als_det.engine.loops import NonFiniteLossError, evaluate, resolve_precision, train_one_epoch
from als_det.engine.resume import check_resume, resume_record
from als_det.engine.run_record import checkpoint_identity, fallback_totals, log_start, run_record
from als_det.engine.solver import build_optimizer, build_scheduler
from als_det.io import (
    atomic_write_json,
    atomic_write_text,
    read_history,
    remove_stale_temp_files,
)
from als_det.logger import setup_logging
from als_det.mixing import BatchMixer
from als_det.models import build_resnet
from als_det.output_dir import check_output_folder, set_aside_note, set_aside_previous_run
from als_det.run_lock import output_lock
from als_det.targets import LabelStrategy

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the run


def _check_finite(model: nn.Module, epoch: int) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteLossError(
                f"non-finite value in {name} after epoch {epoch}; checkpoint not written"
            )


PRETRAIN_OUTPUTS = (
    "last.pth",
    "best.pth",
    "metrics.jsonl",
    "run.json",
    "config.yaml",
    "log.txt",
    "tb",
)
PRETRAIN_MARKERS = ("last.pth", "metrics.jsonl")


def _resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    if not resume:
        return None
    path = out_dir / "last.pth" if resume == "last" else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: checkpoint {path} does not exist")
    return path


def train(
    cfg: CfgNode,
    resume: str | None = None,
    stop_after_epoch: int | None = None,
    model_hook: Callable[[nn.Module], None] | None = None,
    allow_config_change: bool = False,
) -> Path:
    """Pretrain one arm as `cfg` says; returns OUTPUT_DIR.

    resume: None (a fresh run; an earlier run's files in OUTPUT_DIR are set aside), "last"
    (OUTPUT_DIR/last.pth) or a checkpoint path: continues exactly where that run stopped. A
    resume whose experiment differs from the checkpoint's is refused (`ResumeError` listing the
    differences) unless `allow_config_change`, which records the changes in run.json; a refused
    resume changes nothing in OUTPUT_DIR. stop_after_epoch: end (cleanly, with checkpoints)
    after that many epochs, the schedule still planned for SOLVER.EPOCHS, as if preempted.
    model_hook: called with the freshly built model (e.g. to attach forward hooks).
    """
    check_output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    owns_group = not torch.distributed.is_initialized()
    deterministic = torch.are_deterministic_algorithms_enabled()
    info = init_distributed(cfg.TRAIN.DEVICE)
    try:
        with output_lock(cfg.OUTPUT_DIR, enabled=info.is_main):
            return _train(cfg, info, resume, stop_after_epoch, model_hook, allow_config_change)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if owns_group:
            cleanup_distributed()


def _checked_resume(
    resume_path: Path | None, cfg: CfgNode, info: DistInfo, allow_config_change: bool
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the checkpoint to resume, run.json's `resumes` list); ResumeError if the experiment
    changed."""
    if resume_path is None:
        return None, []
    ckpt = load_checkpoint(resume_path)
    diffs = check_resume(ckpt, cfg, info.world_size, str(resume_path), allow_config_change)
    run_json = Path(cfg.OUTPUT_DIR) / "run.json"
    earlier = json.loads(run_json.read_text()).get("resumes", []) if run_json.is_file() else []
    if diffs:
        logger.info(
            "resuming with %d deliberate config change(s) (recorded in run.json): %s",
            len(diffs),
            ", ".join(diffs),
        )
    return ckpt, resume_record(str(resume_path), int(ckpt["epoch"]), diffs, earlier)


def _seed(cfg: CfgNode) -> None:
    """Seed every generator from SEED; TRAIN.DETERMINISTIC picks deterministic algorithms."""
    if cfg.TRAIN.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not cfg.TRAIN.DETERMINISTIC
    torch.manual_seed(cfg.SEED)
    np.random.seed(cfg.SEED)
    random.seed(cfg.SEED)


def _prepare_output_dir(out_dir: Path, cfg: CfgNode, fresh: bool) -> None:
    """Create OUTPUT_DIR; remove temporary files of killed writes; a fresh run sets an earlier
    run's files aside; write config.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PRETRAIN_OUTPUTS:
        remove_stale_temp_files(out_dir / name)
    aside = set_aside_previous_run(out_dir, PRETRAIN_OUTPUTS, PRETRAIN_MARKERS) if fresh else None
    if aside is not None:
        logger.info("%s", set_aside_note(out_dir, aside))
    atomic_write_text(out_dir / "config.yaml", cfg.dump())


def _build_model(
    cfg: CfgNode,
    num_classes: int,
    device: torch.device,
    channels_last: bool,
    model_hook: Callable[[nn.Module], None] | None,
) -> nn.Module:
    model = build_resnet(cfg.MODEL.ARCH, num_classes).to(device)
    if model_hook is not None:
        model_hook(model)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _wrap_for_training(model: nn.Module, cfg: CfgNode, info: DistInfo) -> nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile if asked."""
    if info.distributed:
        device = info.device
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(model) if cfg.TRAIN.COMPILE else model


def _start(
    cfg: CfgNode, info: DistInfo, resume: str | None, allow_config_change: bool
) -> tuple[DataBundle, dict[str, Any] | None, Path | None, list[dict[str, Any]], str, bool]:
    """Every check that can refuse the run, before the first write into OUTPUT_DIR; then the
    folder prepared and logging set up. Returns (data, the checkpoint to resume or None, its path,
    run.json's `resumes`, amp, channels_last)."""
    out_dir = Path(cfg.OUTPUT_DIR)
    amp, channels_last = resolve_precision(cfg, info.device)
    check_decode(cfg)
    resume_path = _resolve_resume(resume, out_dir)
    ckpt, resumes = _checked_resume(resume_path, cfg, info, allow_config_change)
    _seed(cfg)
    data = build_data(cfg, info, out_dir)
    if ckpt is not None and ckpt["classes"] != data.classes:
        raise ResumeError(
            f"cannot resume {resume_path}: it was trained on {len(ckpt['classes'])} classes, "
            f"{cfg.DATA.ROOT} now has {len(data.classes)} (or other names)"
        )
    if info.is_main:
        _prepare_output_dir(out_dir, cfg, fresh=resume_path is None)
    setup_logging(out_dir, info.rank)
    return data, ckpt, resume_path, resumes, amp, channels_last


def _epoch(
    epoch: int,
    train_step: Callable[..., dict[str, float]],
    validate: Callable[[], dict[str, float]],
    optimizer: torch.optim.Optimizer,
    cfg: CfgNode,
    last_val: dict[str, float],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train one epoch, validate when TRAIN.EVAL_PERIOD (or the last epoch) says so; returns the
    epoch's metrics row and the latest validation metrics."""
    t0 = time.perf_counter()
    stats = train_step(epoch=epoch)
    row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats}
    if epoch % cfg.TRAIN.EVAL_PERIOD == 0 or epoch == cfg.SOLVER.EPOCHS:
        t1 = time.perf_counter()
        last_val = validate()
        row.update({f"val_{k}": v for k, v in last_val.items()})
        row["eval_time_s"] = time.perf_counter() - t1
    row["epoch_time_s"] = time.perf_counter() - t0
    return row, last_val


def _train(
    cfg: CfgNode,
    info: DistInfo,
    resume: str | None,
    stop_after_epoch: int | None,
    model_hook: Callable[[nn.Module], None] | None,
    allow_config_change: bool = False,
) -> Path:
    out_dir, main, device = Path(cfg.OUTPUT_DIR), info.is_main, info.device
    data, ckpt, resume_path, resumes, amp, channels_last = _start(
        cfg, info, resume, allow_config_change
    )
    strategy = LabelStrategy.from_cfg(cfg.LABELS)
    mixer = BatchMixer(strategy, len(data.classes), cfg.SEED, info.rank) if strategy.mixes else None
    train_loader, sampler, val_loader = build_loaders(cfg, data, info)
    max_iters = cfg.TRAIN.MAX_ITERS_PER_EPOCH
    iters_per_epoch = len(train_loader) if max_iters <= 0 else min(max_iters, len(train_loader))
    log_start(cfg, info, data, strategy, iters_per_epoch, amp, channels_last)

    model = _build_model(cfg, len(data.classes), device, channels_last, model_hook)
    optimizer = build_optimizer(model, cfg, info.world_size)
    scheduler = build_scheduler(optimizer, cfg, iters_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    saver = CheckpointSaver(
        out_dir,
        model,
        optimizer,
        scheduler,
        scaler,
        checkpoint_identity(cfg, data, strategy, info.world_size),
        enabled=main,
    )
    start_epoch, last_val, history = 0, {}, []
    if ckpt is not None:
        start_epoch, last_val = saver.resume(ckpt)
        history = read_history(out_dir / "metrics.jsonl", start_epoch)
        logger.info("resumed from %s after epoch %d", resume_path, start_epoch)
    raw_model = model  # saved and evaluated: torchvision key names, no collectives
    model = _wrap_for_training(model, cfg, info)
    record = run_record(cfg, info, data, strategy, amp, channels_last, resumes)
    if main:
        atomic_write_json(out_dir / "run.json", record)
    writer = MetricsWriter(out_dir, cfg.SOLVER.EPOCHS, history, start_epoch, enabled=main)
    iteration_log = IterationLog(
        out_dir,
        cfg.TRAIN.LOG_PERIOD,
        cfg.SOLVER.EPOCHS,
        iters_per_epoch,
        device,
        info.world_size,
        start_epoch,
        enabled=main,
    )
    if ckpt is not None:  # redo what a kill after the checkpoint's last.pth left undone
        saver.restore_best(ckpt)
        writer.resume(ckpt.get("metrics_row"))
    train_step = partial(
        train_one_epoch,
        model,
        train_loader,
        optimizer,
        scheduler,
        scaler,
        strategy,
        device,
        amp=amp,
        channels_last=channels_last,
        max_iters=max_iters,
        progress=main,
        mixer=mixer,
        iteration_log=iteration_log,
    )
    validate = partial(
        evaluate,
        raw_model,
        val_loader,
        device,
        len(data.classes),
        amp=amp,
        channels_last=channels_last,
        progress=main,
    )
    last_epoch = (
        cfg.SOLVER.EPOCHS if stop_after_epoch is None else min(stop_after_epoch, cfg.SOLVER.EPOCHS)
    )
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            sampler.set_epoch(epoch - 1)
            data.train_set.set_epoch(epoch - 1)
            row, last_val = _epoch(epoch, train_step, validate, optimizer, cfg, last_val)
            row.update(decode_fallbacks(train_loader, val_loader))
            _check_finite(raw_model, epoch)
            saver.save(epoch, last_val, row)  # last.pth, the commit point; then best.pth
            writer.write(row)
            if main and cfg.DATA.DECODE != "workers":
                record["decode_fallbacks"] = fallback_totals(writer.history, cfg.DATA.DECODE)
                atomic_write_json(out_dir / "run.json", record)
            barrier()
    finally:
        writer.close()
        iteration_log.close()
    if main:
        best = f"; best val top-1 (epoch {saver.best_epoch}): {out_dir / BEST}"
        logger.info("checkpoints: %s%s", out_dir / LAST, best if saver.best_epoch else "")
    return out_dir

"""One training epoch and one evaluation pass, torchvision's `train_one_epoch` / `evaluate`
(`references/classification`): plain functions over a model and a loader, summed or gathered
over every rank; `engine.trainer.train` runs them epoch by epoch."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader
from tqdm import tqdm

from als_det.engine.distributed import all_gather_cat, all_reduce_sum
from als_det.engine.iteration_log import IterationLog
from als_det.metrics.calibration import calibration_metrics_from_logits
from als_det.mixing import BatchMixer, loss_for_mixed_batch
from als_det.targets import LabelStrategy, loss_for_batch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops before that step is taken."""


def _autocast(device: torch.device, amp: str):
    """Autocast for `amp` on `device` ("bf16" on CPU or GPU, "fp16" on GPU); a no-op for "none"."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def resolve_precision(cfg: CfgNode, device: torch.device) -> tuple[str, bool]:
    """(amp, channels_last) as they will run on `device`: the config's, or an error for fp16 on
    the CPU."""
    if cfg.TRAIN.AMP == "fp16" and device.type != "cuda":
        raise ValueError(
            "TRAIN.AMP fp16 (float16 autocast with GradScaler) is a GPU setting; on the CPU "
            "use TRAIN.AMP bf16 (CPU autocast) or none"
        )
    return cfg.TRAIN.AMP, bool(cfg.TRAIN.CHANNELS_LAST)


def emulated_bf16_warning(amp: str, device: torch.device) -> str | None:
    """A warning when bf16 autocast will run on a CPU without bf16 instructions (AVX512-BF16 or
    AMX): there PyTorch emulates it, several times slower than float32. None otherwise."""
    if amp != "bf16" or device.type != "cpu":
        return None
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return None
    return (
        f"TRAIN.AMP bf16 on a CPU without bf16 instructions (no AVX512-BF16 or AMX; PyTorch sees "
        f"{torch.backends.cpu.get_cpu_capability()}): bf16 is emulated, and a ResNet-50 forward "
        f"pass took 5.6x as long as in float32 on such a CPU (docs/benchmarks.md). It runs as "
        f"configured; TRAIN.AMP none trains in float32"
    )


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    strategy: LabelStrategy,
    device: torch.device,
    epoch: int,
    *,
    amp: str = "none",
    channels_last: bool = False,
    max_iters: int = 0,
    progress: bool = True,
    mixer: BatchMixer | None = None,
    iteration_log: IterationLog | None = None,
) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's statistics summed over all ranks.

    `epoch` is 1-based (for messages). A NaN/inf loss on any rank raises NonFiniteLossError on
    every rank before the optimizer step. A cutmix/mixup strategy needs its `mixer`, which mixes
    each batch after loading (coverage statistics are those of the crops before mixing).
    `iteration_log` gets each iteration's images and data wait.
    """
    if strategy.mixes and mixer is None:
        raise ValueError(f"label strategy {strategy.name} needs a BatchMixer")
    model.train()
    n_iters = len(loader) if max_iters <= 0 else min(max_iters, len(loader))
    # sums: loss*n_used, n_used, e over used, coverage over used with box, n with box, bad, skipped,
    # seen, object coverage over used with box
    sums = torch.zeros(9, dtype=torch.float64, device=device)
    start = time.perf_counter()
    bar = tqdm(
        total=n_iters, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, leave=False
    )
    if iteration_log is not None:
        iteration_log.start_epoch(epoch)
    waiting_since = time.perf_counter()
    for it, (images, labels, cov, obj_cov, has_box) in enumerate(loader):
        if it >= n_iters:
            break
        data_wait = time.perf_counter() - waiting_since
        images = images.to(device, non_blocking=True)
        labels, cov, obj_cov, has_box = (
            labels.to(device),
            cov.to(device),
            obj_cov.to(device),
            has_box.to(device),
        )
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
        batch = _batch_sums(loss, e, labels, cov, obj_cov, has_box, n_skipped)
        all_reduce_sum(batch)
        if not torch.isfinite(batch[0]):
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch}, iteration {it + 1}/{n_iters} "
                f"(lr {optimizer.param_groups[0]['lr']:.4g}); stopping before this step"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums += batch
        if progress:
            rate = sums[7].item() / (time.perf_counter() - start)
            bar.set_postfix(
                loss=f"{batch[0].item() / max(1.0, batch[1].item()):.3f}",
                lr=f"{optimizer.param_groups[0]['lr']:.4g}",
                img_s=f"{rate:.0f}",
                refresh=False,
            )
            bar.update()
        if iteration_log is not None:
            iteration_log.step(it, labels.shape[0], data_wait)
        waiting_since = time.perf_counter()
    bar.close()
    return _epoch_stats(sums.tolist(), n_iters, time.perf_counter() - start)


def _batch_sums(
    loss: torch.Tensor,
    e: torch.Tensor,
    labels: torch.Tensor,
    cov: torch.Tensor,
    obj_cov: torch.Tensor,
    has_box: torch.Tensor,
    n_skipped: int,
) -> torch.Tensor:
    """A batch's contribution to the epoch sums (the order `_epoch_stats` reads)."""
    used = (labels >= 0) & ~torch.isnan(e)
    n_used = used.sum()
    n_seen = torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=labels.device)
    return torch.stack(
        [
            loss.detach().double() * n_used,
            n_used.double(),
            e[used].double().sum(),
            cov[used & has_box].double().sum(),
            (used & has_box).sum().double(),
            (labels < 0).sum().double(),
            torch.tensor(float(n_skipped), dtype=torch.float64, device=labels.device),
            n_seen,
            obj_cov[used & has_box].double().sum(),
        ]
    )


def _epoch_stats(s: list[float], n_iters: int, seconds: float) -> dict[str, float]:
    """The epoch's statistics from its summed `_batch_sums`."""
    return {
        "train_loss": s[0] / max(1.0, s[1]),
        "mean_e": s[2] / max(1.0, s[1]),
        "mean_coverage": s[3] / s[4] if s[4] else None,
        "mean_object_coverage": s[8] / s[4] if s[4] else None,
        "with_box_fraction": s[4] / max(1.0, s[1]),
        "images": int(s[7]),
        "used": int(s[1]),
        "bad_images": int(s[5]),
        "skipped_no_box": int(s[6]),
        "iterations": n_iters,
        "images_per_s": s[7] / seconds,
        "train_time_s": seconds,
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    *,
    amp: str = "none",
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1/5, NLL, Brier, ECE (`calibration_metrics_from_logits`) over the whole val set.

    Under torchrun each rank passes its own unpadded shard; predictions are gathered so every
    image counts once. Images with label -1 (undecodable) are left out and counted.
    """
    model.eval()
    outputs, labels = [], []
    for images, target, *_ in tqdm(
        loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True
    ):
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
    y = all_gather_cat(
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    ).cpu()
    good = y >= 0
    if not good.any():
        raise ValueError("evaluation found no readable val image")
    metrics = calibration_metrics_from_logits(z[good], y[good])
    out = {
        k: v for k, v in metrics.items() if not isinstance(v, (dict, list))
    }  # scalars; no reliability bins
    out.update(n=int(good.sum()), bad_images=int((~good).sum()))
    return out

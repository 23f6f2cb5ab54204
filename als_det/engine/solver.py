"""The pretraining solver: SGD with the learning rate scaled linearly with the global batch, a
per-iteration linear warm-up, then cosine or step decay (torchvision's reference recipe)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode


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
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: CfgNode, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, iters_per_epoch, cfg)
    )

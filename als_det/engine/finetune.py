"""Full fine-tuning of a pretrained ResNet on a downstream classification set: one short, seeded
recipe, the same for every backbone (the transfer benchmark's third protocol).

A new `fc` head (torchvision's initialisation, from the seed), every layer trained, hard labels;
SGD with momentum and a per-iteration cosine schedule without warm-up (`engine.solver`, with the
reference batch set to the batch so the learning rate is used as given); the pretraining crops
and flips (`data.imagenet.ImageNetBoxes`, seeded per image and epoch) and its epoch loop
(`engine.loops.train_one_epoch`). One process.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from als_det.config import get_cfg
from als_det.engine.loops import train_one_epoch
from als_det.engine.solver import build_optimizer, build_scheduler
from als_det.targets import LabelStrategy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneRecipe:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                "fine-tuning needs epochs >= 1, batch size >= 1, lr > 0 and weight decay >= 0, "
                f"got {self.epochs}, {self.batch_size}, {self.lr}, {self.weight_decay}"
            )


def _solver_cfg(recipe: FinetuneRecipe):
    cfg = get_cfg()
    s = cfg.SOLVER
    s.EPOCHS, s.BATCH_SIZE, s.BASE_LR = recipe.epochs, recipe.batch_size, recipe.lr
    s.REFERENCE_BATCH, s.MOMENTUM, s.NESTEROV = recipe.batch_size, recipe.momentum, False
    s.WEIGHT_DECAY, s.WARMUP_EPOCHS, s.SCHEDULE = recipe.weight_decay, 0, "cosine"
    return cfg


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, desc: str, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs [N, ...] float32 on the CPU, labels [N]) of `model` in eval mode over `loader`
    (whose items start with image, label), in the loader's order."""
    model.eval()
    outs, labels = [], []
    for images, target, *_ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        outs.append(model(images.to(device, non_blocking=True)).float().cpu())
        labels.append(target)
    if not outs:
        raise ValueError(f"{desc}: no images")
    return torch.cat(outs), torch.cat(labels)


def finetune(
    backbone: nn.Module,
    num_classes: int,
    train_set: Dataset,
    val_set: Dataset,
    recipe: FinetuneRecipe,
    device: torch.device,
    workers: int = 0,
    progress: bool = True,
    desc: str = "fine-tune",
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]]]:
    """Fine-tune a copy of `backbone` (a torchvision ResNet; not modified) with a new
    `num_classes`-way head on `train_set` (an `ImageNetBoxes` with `train=True`); returns the
    val logits [N, num_classes] and labels [N] (-1: undecodable) in `val_set`'s order, and each
    epoch's training statistics."""
    recipe.validate()
    if len(train_set) < recipe.batch_size:
        raise ValueError(
            f"fine-tuning: {len(train_set)} train images, fewer than the batch size "
            f"{recipe.batch_size}"
        )
    torch.manual_seed(recipe.seed)
    model = copy.deepcopy(backbone)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.to(device)
    cfg = _solver_cfg(recipe)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    loader = DataLoader(
        train_set,
        batch_size=recipe.batch_size,
        shuffle=True,
        generator=shuffle,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    optimizer = build_optimizer(model, cfg, world_size=1)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    hard = LabelStrategy("hard")
    history = []
    for epoch in range(recipe.epochs):
        train_set.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            scheduler,
            scaler,
            hard,
            device,
            epoch + 1,
            progress=progress,
        )
        logger.info(
            "%s: epoch %d/%d, train loss %.4f", desc, epoch + 1, recipe.epochs, stats["train_loss"]
        )
        history.append({"epoch": epoch + 1, **stats})
    val_loader = DataLoader(
        val_set, batch_size=recipe.batch_size, shuffle=False, num_workers=workers
    )
    logits, labels = predict(model, val_loader, device, f"{desc} val", progress)
    return logits, labels, history

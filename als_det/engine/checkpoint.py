"""Pretraining checkpoints: one dict (see docs/architecture.md), written atomically.

The dict holds only tensors and plain Python values, so it loads with `torch.load(...,
weights_only=True)`: nobody has to unpickle arbitrary objects to read a backbone. During a run,
`CheckpointSaver` owns it (timm's `CheckpointSaver`): what goes in, last.pth and best.pth.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from als_det.io import atomic_torch_save
from als_det.models import build_resnet
from als_det.versions import package_versions
from als_det.weights_io import (
    WRAPPER_PREFIXES,
    UnsafeFileError,
    WeightsFileError,
    read_torch_file,
)

REQUIRED_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "arch",
    "num_classes",
    "classes",
    "label_strategy",
    "preprocessing",
    "config",
    "seed",
    "rng_state",
    "metrics",
    "best_top1",
    "versions",
)
LAST, BEST = "last.pth", "best.pth"


class CheckpointError(ValueError):
    """A file that is not an als_det pretraining checkpoint (or not a readable one)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain torchvision module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically after checking it has every key and clean torchvision key names."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise KeyError(f"checkpoint for {path} lacks {missing}")
    wrapped = [k for k in state["model"] if k.startswith(WRAPPER_PREFIXES)]
    if wrapped:
        raise ValueError(
            f"checkpoint for {path}: model keys carry a wrapper prefix, e.g. {wrapped[0]!r}; "
            "save unwrap_model(model).state_dict()"
        )
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt, _ = read_torch_file(path, map_location=map_location)
    except UnsafeFileError as exc:  # no --unsafe-load here: the suite's checkpoints never need it
        raise CheckpointError(
            f"{exc.refusal}. tools/pretrain.py writes checkpoints that the weights-only reader "
            "reads, so this file is not one of them (or it was altered); pretraining resumes and "
            "evaluation read only those"
        ) from exc
    except WeightsFileError as exc:
        raise CheckpointError(str(exc)) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} holds a {type(ckpt).__name__}, not an als_det pretraining checkpoint"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not an als_det pretraining checkpoint: it lacks {missing}"
        )
    return ckpt


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained ResNet (eval mode, on the CPU) and the checkpoint dict it came from."""
    ckpt = load_checkpoint(path)
    model = build_resnet(ckpt["arch"], int(ckpt["num_classes"]))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit {ckpt['arch']} with {ckpt['num_classes']} classes: {exc}"
        ) from exc
    return model.eval(), ckpt


class CheckpointSaver:
    """A run's checkpoints: `save(epoch, metrics, row)` writes OUTPUT_DIR/last.pth after every epoch
    and copies it to best.pth when val top-1 beats every earlier epoch's (`best_top1`, kept in the
    checkpoint so that a resumed run keeps choosing the same best). `identity` holds what does not
    change during the run (arch, classes, label strategy, preprocessing, config, seed, ...); with
    `enabled=False` (ranks other than 0) it only follows `best_top1`.

    last.pth is the epoch's commit point: it is written first and carries what comes after it
    (`best_epoch`, the epoch's metrics.jsonl row `metrics_row`), so that `restore_best` (and
    `MetricsWriter.resume`) redo what a kill after it left undone."""

    def __init__(
        self,
        out_dir: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        identity: dict[str, Any],
        enabled: bool = True,
    ) -> None:
        self.out_dir, self.identity, self.enabled = Path(out_dir), identity, enabled
        self.model, self.optimizer, self.scheduler, self.scaler = (
            model,
            optimizer,
            scheduler,
            scaler,
        )
        self.best_top1, self.best_epoch = -1.0, 0

    def resume(self, ckpt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Restore model, optimizer, scheduler, scaler, RNG state and best top-1 from `ckpt`;
        returns (epochs completed, the last validation metrics)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng_state"])
        self.best_top1 = float(ckpt["best_top1"])
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        return int(ckpt["epoch"]), ckpt["metrics"]

    def restore_best(self, ckpt: dict[str, Any]) -> None:
        """On resume from `ckpt`: if its own epoch was the best, write best.pth from it (a run
        killed after last.pth, before best.pth, did not)."""
        if self.enabled and self.best_epoch == int(ckpt["epoch"]):
            save_checkpoint(self.out_dir / BEST, ckpt)

    def save(self, epoch: int, metrics: dict[str, Any], row: dict[str, Any]) -> None:
        """After `epoch` (1-based) with its last validation `metrics` and its metrics.jsonl `row`
        (`val_top1` in it when the epoch was validated)."""
        top1 = row.get("val_top1")
        is_best = top1 is not None and top1 > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = top1, epoch
        if not self.enabled:
            return
        state = {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": epoch,
            **self.identity,
            "rng_state": get_rng_state(),
            "metrics": metrics,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "metrics_row": row,
            "versions": package_versions(),
        }
        save_checkpoint(self.out_dir / LAST, state)
        if is_best:
            save_checkpoint(self.out_dir / BEST, state)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` captured (CUDA states only where the same GPUs exist)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples all the way down; serialisers may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value

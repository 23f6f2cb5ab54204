"""Pretraining checkpoints: one dict (see docs/architecture.md), written atomically.

The dict holds only tensors and plain Python values, so it loads with `torch.load(...,
weights_only=True)`: nobody has to unpickle arbitrary objects to read a backbone.
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
from als_det.weights_io import WRAPPER_PREFIXES, WeightsFileError, read_torch_file

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "arch", "num_classes", "classes",
                 "label_strategy", "preprocessing", "config", "seed", "rng_state", "metrics", "versions")


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
        raise ValueError(f"checkpoint for {path}: model keys carry a wrapper prefix, e.g. {wrapped[0]!r}; "
                         "save unwrap_model(model).state_dict()")
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt, _ = read_torch_file(path, map_location=map_location)
    except WeightsFileError as exc:
        raise CheckpointError(str(exc)) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not an als_det pretraining checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not an als_det pretraining checkpoint: it lacks {missing}")
    return ckpt


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained ResNet (eval mode, on the CPU) and the checkpoint dict it came from."""
    ckpt = load_checkpoint(path)
    model = build_resnet(ckpt["arch"], int(ckpt["num_classes"]))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['arch']} with {ckpt['num_classes']} classes: "
                              f"{exc}") from exc
    return model.eval(), ckpt


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` captured (CUDA states only where the same GPUs exist)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples all the way down; serialisers may hand back lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value

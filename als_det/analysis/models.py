"""Pretraining checkpoints loaded for evaluation: the model, its checkpoint dict, its eval
transform.

`load_models` reads every checkpoint safely (`engine.checkpoint.load_backbone`), names each model
(its label strategy by default; names must be distinct) and takes its eval transform from the
checkpoint itself (input size and normalisation from `preprocessing`, resize from the config).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import yaml

from als_det.analysis.context import Preprocessing
from als_det.engine.checkpoint import load_backbone


class EvaluationInputError(ValueError):
    """Checkpoints that do not fit the data (classes, architecture) or each other (names)."""


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class LoadedModel:
    """One checkpoint under evaluation; `results` and `confidences` fill as views are evaluated."""

    name: str
    path: str
    model: nn.Module
    ckpt: dict[str, Any]
    prep: Preprocessing
    sha256: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    confidences: dict[str, torch.Tensor] = field(default_factory=dict)  # per image, by view


def _val_resize(ckpt: dict[str, Any], path: str) -> int:
    try:
        cfg = yaml.safe_load(ckpt["config"])
        return int(cfg["DATA"]["VAL_RESIZE"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise EvaluationInputError(
            f"{path}: cannot read DATA.VAL_RESIZE from the checkpoint's config ({exc})"
        ) from exc


def load_models(paths: Sequence[str], names: Sequence[str] | None = None) -> list[LoadedModel]:
    """Load each checkpoint; names default to the label strategy's name and must be unique."""
    if names and len(names) != len(paths):
        raise EvaluationInputError(f"got {len(names)} --name for {len(paths)} --checkpoint")
    models = []
    for i, path in enumerate(paths):
        model, ckpt = load_backbone(path)
        if int(ckpt["num_classes"]) != len(ckpt["classes"]):
            raise EvaluationInputError(
                f"{path}: num_classes {ckpt['num_classes']} but {len(ckpt['classes'])} class names"
            )
        pre = ckpt["preprocessing"]
        if pre.get("input_format", "RGB") != "RGB":
            raise EvaluationInputError(
                f"{path}: input_format {pre['input_format']!r}; only RGB is supported"
            )
        prep = Preprocessing(
            int(pre["image_size"]),
            _val_resize(ckpt, str(path)),
            tuple(float(v) for v in pre["pixel_mean"]),
            tuple(float(v) for v in pre["pixel_std"]),
        )
        name = names[i] if names else str(ckpt["label_strategy"]["name"])
        models.append(LoadedModel(name, str(path), model, ckpt, prep))
    seen: dict[str, str] = {}
    for m in models:
        if m.name in seen:
            raise EvaluationInputError(
                f"two checkpoints are both named {m.name!r} ({seen[m.name]} and {m.path}); "
                "give each a distinct --name"
            )
        seen[m.name] = m.path
    return models


def check_models_fit_data(
    models: Sequence[LoadedModel], classes: Sequence[str], data_desc: str
) -> None:
    """Every checkpoint must have been trained on exactly the data's classes, in the same order."""
    for m in models:
        ck = list(m.ckpt["classes"])
        if int(m.ckpt["num_classes"]) != len(classes):
            raise EvaluationInputError(
                f"{m.path}: a {m.ckpt['arch']} with {m.ckpt['num_classes']} classes cannot be "
                f"evaluated on {data_desc}, which has {len(classes)} classes"
            )
        if ck != list(classes):
            only_ck = sorted(set(ck) - set(classes))[:5]
            only_data = sorted(set(classes) - set(ck))[:5]
            detail = (
                f"only in the checkpoint: {only_ck}; only in the data: {only_data}"
                if only_ck or only_data
                else "same classes in a different order"
            )
            raise EvaluationInputError(
                f"{m.path}: its classes differ from those of {data_desc} ({detail})"
            )

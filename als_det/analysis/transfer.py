"""The transfer run: pretraining checkpoints x a downstream classification set (ImageNet layout,
classes the backbones never saw) -> linear probe, k-NN, full fine-tuning and class separation,
with paired bootstrap intervals against a baseline (`transfer.json`'s content; see
docs/architecture.md).

Frozen features are each checkpoint's penultimate layer (global average pool of layer4) on the
centre crop at the checkpoint's own image size and resize; the fine-tuning crops are the
pretraining's random resized crops at the same size (`engine.finetune`). Everything a protocol
computes per checkpoint is cached under `OUT/cache/<checkpoint sha256>/` (features as `.npz`
without pickle, protocol results as JSON, each with the key it was computed for), so a rerun, or
one stopped midway, resumes where it ended and recomputes only what a changed option or data
set touches. One process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from als_det.analysis.models import DEVICES, EvaluationInputError, LoadedModel, load_models
from als_det.cli import option
from als_det.data.boxes import ImageRecord, build_index, index_cache_dir
from als_det.data.class_names import class_names
from als_det.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageNetBoxes
from als_det.engine.distributed import resolve_device
from als_det.engine.finetune import FinetuneRecipe, finetune, predict
from als_det.io import atomic_savez, atomic_write_json, sha256_file
from als_det.logger import setup_logging
from als_det.metrics.transfer import (
    BOOTSTRAP_METHOD,
    KNN_K,
    KNN_TEMPERATURE,
    PROBE_C_GRID,
    PROBE_HOLDOUT_FRACTION,
    class_separation,
    knn_accuracy,
    linear_probe,
    paired_bootstrap,
)
from als_det.versions import package_versions

logger = logging.getLogger(__name__)

PROTOCOLS = ("linear_probe", "knn", "finetune")
CACHE_FORMAT = 1


@dataclass
class TransferOptions:
    """Everything that decides a transfer measurement besides the checkpoints and the data; the
    fields with help text are `tools/transfer.py`'s options."""

    protocols: str = option(
        ",".join(PROTOCOLS), "comma-separated protocols to run, of " + ", ".join(PROTOCOLS)
    )
    epochs: int = option(10, "fine-tuning: epochs")
    lr: float = option(0.01, "fine-tuning: peak learning rate (SGD, cosine, no warm-up)")
    batch_size: int = option(64, "fine-tuning batch; also the feature-extraction batch")
    weight_decay: float = option(1e-4, "fine-tuning: SGD weight decay")
    k: int = option(KNN_K, "k-NN: neighbours that vote")
    seed: int = option(0, "seed of the probe's held-out split, fine-tuning and the bootstrap")
    n_boot: int = option(1000, "bootstrap resamples of the val images")
    max_per_class: int = option(
        0, "keep the first N images of each class in train and val (0 = all)", metavar="N"
    )
    workers: int = option(2, "data-loading processes")
    device: str = option("auto", "where to run (auto: a GPU when there is one)", choices=DEVICES)
    progress: bool = True

    def protocol_list(self) -> list[str]:
        chosen = [p.strip() for p in self.protocols.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in PROTOCOLS]
        if unknown or not chosen:
            raise ValueError(f"--protocols takes some of {', '.join(PROTOCOLS)}, got {chosen}")
        return [p for p in PROTOCOLS if p in chosen]

    def recipe(self) -> FinetuneRecipe:
        return FinetuneRecipe(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
        )

    def validate(self) -> None:
        self.protocol_list()
        self.recipe().validate()
        if self.k < 1 or self.n_boot < 1 or self.max_per_class < 0 or self.workers < 0:
            raise ValueError(
                "k and n_boot must be >= 1, max_per_class and workers >= 0, got "
                f"{self.k}, {self.n_boot}, {self.max_per_class}, {self.workers}"
            )


@dataclass
class DownstreamData:
    root: Path
    classes: list[str]
    train: list[ImageRecord]
    val: list[ImageRecord]
    digest: str  # of every image's path (relative to root), size, mtime and label


def _records_digest(root: Path, splits: dict[str, list[ImageRecord]]) -> str:
    h = hashlib.sha256()
    for split, records in splits.items():
        for r in records:
            st = os.stat(r.path)
            rel = Path(r.path).relative_to(root)
            h.update(f"{split}\t{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{r.label}\n".encode())
    return h.hexdigest()


def check_downstream_root(root: str | Path) -> Path:
    """ROOT resolved; an error unless it has train/ and val/ folders."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"downstream data folder {root} does not exist")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"downstream data folder {root} has no {split}/ folder (ImageNet layout: "
                f"{split}/<class>/<image>)"
            )
    return root


def load_downstream(root: Path, out: Path, max_per_class: int) -> DownstreamData:
    """Index ROOT/train and ROOT/val (val with train's classes; ROOT checked by
    `check_downstream_root`)."""
    cache = index_cache_dir(root, out / ".als_det_cache")
    train, classes, _ = build_index(root, "train", cache_dir=cache, max_per_class=max_per_class)
    val, _, _ = build_index(
        root, "val", cache_dir=cache, max_per_class=max_per_class, classes=classes
    )
    if len(classes) < 2 or not train or not val:
        raise EvaluationInputError(
            f"{root}: a downstream set needs two or more classes with train and val images "
            f"(found {len(classes)} classes, {len(train)} train and {len(val)} val images)"
        )
    return DownstreamData(
        root, classes, train, val, _records_digest(root, {"train": train, "val": val})
    )


def check_normalisation(models: Sequence[LoadedModel]) -> None:
    """The downstream images are normalised as the suite's pretraining normalises them
    (`ImageNetBoxes`); a checkpoint recording another normalisation is refused."""
    for m in models:
        mean = tuple(v / 255 for v in m.prep.mean)
        std = tuple(v / 255 for v in m.prep.std)
        if not (np.allclose(mean, IMAGENET_MEAN) and np.allclose(std, IMAGENET_STD)):
            raise EvaluationInputError(
                f"{m.path}: its preprocessing normalises with mean {m.prep.mean} and std "
                f"{m.prep.std}; the transfer benchmark reads images with ImageNet's "
                "(123.675, 116.28, 103.53) / (58.395, 57.12, 57.375)"
            )


def _eval_set(lm: LoadedModel, data: DownstreamData, records: list[ImageRecord]) -> ImageNetBoxes:
    return ImageNetBoxes(
        records,
        data.classes,
        train=False,
        image_size=lm.prep.image_size,
        val_resize=lm.prep.val_resize,
    )


class Cache:
    """One checkpoint's cached results under OUT/cache/<sha256>/: each entry with the key it was
    computed for; a different key recomputes (logged)."""

    def __init__(self, out: Path, sha256: str, base_key: dict[str, Any]) -> None:
        self.folder = out / "cache" / sha256
        self.base_key = {"format": CACHE_FORMAT, **base_key}

    def _key(self, extra: dict[str, Any]) -> str:
        return json.dumps({**self.base_key, **extra}, sort_keys=True)

    def json(self, name: str, extra: dict[str, Any], compute: Callable[[], dict]) -> dict:
        path, key = self.folder / f"{name}.json", self._key(extra)
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                logger.warning("unreadable cache %s (%s): recomputing", path, exc)
            else:
                if isinstance(stored, dict) and stored.get("key") == key and "value" in stored:
                    logger.info("reusing %s", path)
                    return stored["value"]
                logger.info("cache %s was computed for other settings: recomputing", path)
        value = compute()
        atomic_write_json(path, {"key": key, "value": value})
        return value

    def arrays(
        self, name: str, compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        path, key = self.folder / f"{name}.npz", self._key({})
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    stored = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                logger.warning("unreadable cache %s (%s): recomputing", path, exc)
            else:
                stored_key = stored.pop("key", np.zeros(0, np.uint8))
                if stored_key.tobytes() == key.encode():
                    logger.info("reusing %s", path)
                    return stored
                logger.info("cache %s was computed for other settings: recomputing", path)
        value = compute()
        atomic_savez(path, key=np.frombuffer(key.encode(), dtype=np.uint8), **value)
        return value


def _penultimate(model: nn.Module) -> nn.Module:
    head_free = copy.deepcopy(model)
    head_free.fc = nn.Identity()
    return head_free


def extract_features(
    lm: LoadedModel,
    data: DownstreamData,
    opts: TransferOptions,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Penultimate features and labels of train and val (label -1: an undecodable image)."""
    net = _penultimate(lm.model).to(device)
    out = {}
    for split, records in (("train", data.train), ("val", data.val)):
        loader = DataLoader(
            _eval_set(lm, data, records),
            batch_size=opts.batch_size,
            shuffle=False,
            num_workers=opts.workers,
        )
        feats, labels = predict(net, loader, device, f"{lm.name} {split} features", opts.progress)
        out[f"{split}_features"] = feats.numpy()
        out[f"{split}_labels"] = labels.numpy()
    return out


def _readable(
    arrays: dict[str, np.ndarray], split: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.from_numpy(arrays[f"{split}_labels"]).long()
    ok = labels >= 0
    return torch.from_numpy(arrays[f"{split}_features"])[ok].to(device), labels[ok].to(device)


def _correct_list(result: dict[str, Any]) -> dict[str, Any]:
    result = dict(result)
    result["correct"] = [bool(c) for c in result["correct"].tolist()]
    return result


def measure_model(
    lm: LoadedModel,
    data: DownstreamData,
    opts: TransferOptions,
    device: torch.device,
    out: Path,
) -> dict[str, Any]:
    """Every chosen protocol for one checkpoint (cached); per-image `correct` lists included."""
    prep = {"image_size": lm.prep.image_size, "val_resize": lm.prep.val_resize}
    cache = Cache(out, lm.sha256, {"data": data.digest, **prep})
    protocols = opts.protocol_list()
    result: dict[str, Any] = {}
    if {"linear_probe", "knn"} & set(protocols):
        arrays = cache.arrays("features", lambda: extract_features(lm, data, opts, device))
        tx, ty = _readable(arrays, "train", device)
        vx, vy = _readable(arrays, "val", device)
        result["features"] = {
            "dim": int(tx.shape[1]),
            "undecodable": {
                split: int((arrays[f"{split}_labels"] < 0).sum()) for split in ("train", "val")
            },
        }
        k = len(data.classes)
        if "linear_probe" in protocols:
            logger.info(
                "%s: linear probe over C in %s (a fit per C, then the refit)",
                lm.name,
                list(PROBE_C_GRID),
            )
            result["linear_probe"] = cache.json(
                "linear_probe",
                {
                    "seed": opts.seed,
                    "c_grid": list(PROBE_C_GRID),
                    "holdout_fraction": PROBE_HOLDOUT_FRACTION,
                },
                lambda: _correct_list(linear_probe(tx, ty, vx, vy, k, seed=opts.seed)),
            )
        if "knn" in protocols:
            result["knn"] = cache.json(
                "knn",
                {"k": opts.k, "temperature": KNN_TEMPERATURE},
                lambda: _correct_list(knn_accuracy(tx, ty, vx, vy, k, opts.k)),
            )
        r2 = class_separation(tx, ty)
        result["class_separation"] = {"r2": r2, "on": "downstream train features"}
    if "finetune" in protocols:
        recipe = opts.recipe()
        result["finetune"] = cache.json(
            "finetune",
            {"recipe": asdict(recipe)},
            lambda: _finetune(lm, data, recipe, opts, device),
        )
    return result


def _finetune(
    lm: LoadedModel,
    data: DownstreamData,
    recipe: FinetuneRecipe,
    opts: TransferOptions,
    device: torch.device,
) -> dict[str, Any]:
    train_set = ImageNetBoxes(
        data.train, data.classes, train=True, image_size=lm.prep.image_size, seed=recipe.seed
    )
    logits, labels, history = finetune(
        lm.model,
        len(data.classes),
        train_set,
        _eval_set(lm, data, data.val),
        recipe,
        device,
        workers=opts.workers,
        progress=opts.progress,
        desc=f"{lm.name} fine-tune",
    )
    ok = labels >= 0
    correct = logits.argmax(1)[ok] == labels[ok]
    return {
        "top1": float(correct.double().mean()),
        **asdict(recipe),
        "schedule": "cosine per iteration, no warm-up, SGD momentum, new fc head, all layers",
        "train_loss": [h["train_loss"] for h in history],
        "correct": [bool(c) for c in correct.tolist()],
    }


def seen_classes(lm: LoadedModel, data: DownstreamData) -> list[str]:
    """Downstream classes the checkpoint was pretrained on (warned about: not a transfer)."""
    seen = sorted(set(lm.ckpt["classes"]) & set(data.classes))
    if seen:
        logger.warning(
            "%s was pretrained on %d of the downstream classes (%s%s): not unseen classes",
            lm.name,
            len(seen),
            ", ".join(seen[:5]),
            ", ..." if len(seen) > 5 else "",
        )
    return seen


def _model_entry(lm: LoadedModel, measured: dict[str, Any], seen: list[str]) -> dict[str, Any]:
    ck = lm.ckpt
    entry: dict[str, Any] = {
        "checkpoint": str(Path(lm.path).resolve()),
        "sha256": lm.sha256,
        "arch": ck["arch"],
        "pretrain_epoch": int(ck["epoch"]),
        "pretrain_seed": ck["seed"],
        "image_size": lm.prep.image_size,
        "val_resize": lm.prep.val_resize,
        "label_strategy": ck["label_strategy"],
        "pretrained_on_downstream_classes": seen,
    }
    for key, value in measured.items():
        entry[key] = {k: v for k, v in value.items() if k != "correct"}
        if "correct" in value:
            entry[key]["n"] = len(value["correct"])
    return entry


def comparisons(
    correct: dict[str, dict[str, list[bool]]], baseline: str, n_boot: int, seed: int
) -> dict[str, Any]:
    """Per protocol, every other model against `baseline`: the paired bootstrap of top-1."""
    out: dict[str, Any] = {"baseline": baseline, "method": BOOTSTRAP_METHOD, "protocols": {}}
    for protocol in PROTOCOLS:
        if protocol not in correct[baseline]:
            continue
        base = torch.tensor(correct[baseline][protocol])
        out["protocols"][protocol] = {
            name: paired_bootstrap(torch.tensor(c[protocol]), base, n_boot, seed)
            for name, c in correct.items()
            if name != baseline
        }
    return out


def run_transfer(
    checkpoints: Sequence[str],
    data_root: str,
    out_dir: str,
    names: Sequence[str] | None = None,
    baseline: str | None = None,
    opts: TransferOptions | None = None,
    args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure every checkpoint on `data_root` (module docstring); returns transfer.json's
    content. Every check (options, checkpoints, names, the data's folders) comes before the first
    write into `out_dir`; writes there only log.txt, the index cache and OUT/cache/."""
    start = time.perf_counter()
    opts = opts or TransferOptions()
    opts.validate()
    out = Path(out_dir)
    device = resolve_device(opts.device)
    models = load_models(checkpoints, names)
    baseline = baseline or models[0].name
    if baseline not in {m.name for m in models}:
        raise EvaluationInputError(
            f"--baseline {baseline!r} is none of the model names {[m.name for m in models]}"
        )
    check_normalisation(models)
    root = check_downstream_root(data_root)
    setup_logging(out)
    data = load_downstream(root, out, opts.max_per_class)
    logger.info(
        "transfer of %d checkpoint(s) to %s: %d classes, %d train and %d val images; %s",
        len(models),
        data.root,
        len(data.classes),
        len(data.train),
        len(data.val),
        ", ".join(opts.protocol_list()),
    )
    entries, correct = {}, {}
    for i, lm in enumerate(models, 1):
        lm.sha256 = sha256_file(lm.path)
        logger.info("checkpoint %d/%d: %s (%s)", i, len(models), lm.name, lm.path)
        seen = seen_classes(lm, data)
        measured = measure_model(lm, data, opts, device, out)
        entries[lm.name] = _model_entry(lm, measured, seen)
        correct[lm.name] = {p: v["correct"] for p, v in measured.items() if "correct" in v}
        logger.info(
            "%s: %s",
            lm.name,
            ", ".join(f"{p} top-1 {entries[lm.name][p]['top1']:.3f}" for p in correct[lm.name]),
        )
    return {
        "models": entries,
        "comparisons": comparisons(correct, baseline, opts.n_boot, opts.seed),
        "data": {
            "root": str(data.root),
            "classes": data.classes,
            "class_names": class_names(data.root, data.classes),
            "images": {"train": len(data.train), "val": len(data.val)},
            "max_per_class": opts.max_per_class,
            "digest": data.digest,
        },
        "options": {
            **asdict(opts),
            "probe_c_grid": list(PROBE_C_GRID),
            "probe_holdout_fraction": PROBE_HOLDOUT_FRACTION,
            "knn_temperature": KNN_TEMPERATURE,
        },
        "device": str(device),
        "versions": package_versions(),
        "args": args or {},
        "wall_time_s": time.perf_counter() - start,
    }

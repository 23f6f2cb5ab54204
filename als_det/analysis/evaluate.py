"""The evaluation run: checkpoints x (val, context-only variants, generated splits) -> a metrics
dict.

`evaluate_checkpoints` returns the metrics (`metrics.json`'s content, see docs/architecture.md) on
rank 0 and writes only data files (the index cache, `cam_grid.npz`); the report, its figures and
metrics.json itself come from `als_det.report.evaluation.write_evaluation`. Every pass shards the
planned images with ``range(rank, N, world)`` and gathers per-image results with
``all_gather_object``, so under torchrun each image is counted exactly once (no sampler padding).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from als_det.analysis.cam import CAM_METHODS, compute_cams, energy_inside, features_and_logits
from als_det.analysis.context import VariantDataset, check_fill, plan_variant
from als_det.analysis.localization import cam_grid, cam_summary
from als_det.analysis.models import (
    EvaluationInputError,
    LoadedModel,
    check_models_fit_data,
    load_models,
)
from als_det.cli import option
from als_det.data.boxes import ImageRecord, build_index, index_cache_dir
from als_det.data.class_names import class_names
from als_det.engine.distributed import DistInfo, all_gather_objects, init_distributed
from als_det.io import sha256_file
from als_det.logger import setup_logging
from als_det.metrics.calibration import calibration_metrics_from_logits, temperature_scaling_report
from als_det.metrics.context import confidence_summary, fill_comparisons, headline
from als_det.output_dir import check_output_folder
from als_det.revision import code_revision
from als_det.versions import package_versions
from als_det.views import FILLS, PRIMARY, VIEWS, splits

logger = logging.getLogger(__name__)

CALIBRATION_KEYS = ("top1", "top5", "nll", "brier", "ece", "mce", "ace")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EvalOptions:
    """Everything that decides an evaluation besides the checkpoints and the data root; the
    fields with help text are `tools/evaluate.py`'s options."""

    split: str = option("val", "the split to evaluate")
    boxes: str = option("", "box source for the split (default ROOT/Annotation/<split>)")
    val_labels: str = option("", "labels file for a flat val folder")
    fill: str = option(
        "black",
        "fill for the box variants (bg_only also runs under the others, side by side)",
        choices=tuple(FILLS),
    )
    single_fill: bool = option(
        False, "evaluate bg_only under --fill only, not side by side under every fill"
    )
    blur_fraction: float = 0.1
    min_crop_fraction: float = option(
        0.1, "outside_crop: skip images whose largest box-free crop is smaller than this fraction"
    )
    batch_size: int = option(64, "images per batch")
    workers: int = option(2, "data-loading processes")
    max_images: int = option(0, "evaluate N images spread over the split (0 = all)", metavar="N")
    temperature_scaling: bool = option(
        False, "fit a temperature on a seeded half of val, report both"
    )
    ts_fit_fraction: float = 0.5
    seed: int = option(0, "seed of the temperature-scaling split and the bootstrap")
    cam_method: str = option("cam", "class activation maps by", flag="--cam", choices=CAM_METHODS)
    grid_images: int = option(8, "rows of the CAM grid")
    device: str = option("auto", "where to run (auto: a GPU when there is one)", choices=DEVICES)
    cache_dir: str = option(
        "",
        "box index cache (default ROOT/.als_det_cache, or the output folder's "
        "if ROOT is read-only)",
    )
    progress: bool = True

    def validate(self) -> None:
        check_fill(self.fill)
        if self.cam_method not in CAM_METHODS:
            raise ValueError(f"cam_method must be one of {CAM_METHODS}, got {self.cam_method!r}")
        if self.batch_size < 1 or self.workers < 0 or self.max_images < 0 or self.grid_images < 0:
            raise ValueError("batch_size must be >= 1 and workers, max_images, grid_images >= 0")


def select_records(records: Sequence[ImageRecord], max_images: int) -> list[ImageRecord]:
    """All records, or `max_images` of them spread evenly over the (class-sorted) index."""
    if not max_images or max_images >= len(records):
        return list(records)
    picks = np.unique(np.linspace(0, len(records) - 1, max_images).round().astype(int))
    return [records[i] for i in picks]


def run_pass(
    lm: LoadedModel,
    records: Sequence[ImageRecord],
    variant: str,
    opts: EvalOptions,
    info: DistInfo,
    desc: str,
    with_cam: bool,
    fill: str | None = None,
) -> dict[str, Any]:
    """Logits (and CAM energies) for every planned image of `variant` (box variants filled with
    `fill`, default `opts.fill`), gathered on every rank."""
    plan = plan_variant(records, variant, opts.min_crop_fraction)
    mine = plan.positions[info.rank :: info.world_size]
    ds = VariantDataset(
        records, plan, lm.prep, fill or opts.fill, opts.blur_fraction, positions=mine
    )
    loader = DataLoader(
        ds,
        batch_size=opts.batch_size,
        shuffle=False,
        num_workers=opts.workers,
        pin_memory=info.device.type == "cuda",
    )
    positions, labels, logits, energy = [], [], [], []
    model = lm.model.to(info.device)
    for x, y, pos, mask in tqdm(
        loader, desc=desc, disable=not (opts.progress and info.is_main), leave=False
    ):
        x = x.to(info.device, non_blocking=True)
        y_dev = y.to(info.device)
        if with_cam:
            cams, out = compute_cams(model, x, y_dev.clamp_min(0), opts.cam_method)
            energy.append(energy_inside(cams.cpu(), mask))
        else:
            with torch.no_grad():
                _, out = features_and_logits(model, x)
        positions.append(pos)
        labels.append(y)
        logits.append(out.float().cpu())
    k = int(lm.ckpt["num_classes"])
    local = {
        "positions": torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long),
        "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        "logits": torch.cat(logits) if logits else torch.zeros(0, k),
        "energy": torch.cat(energy) if energy else torch.zeros(0, dtype=torch.float64),
    }
    parts = all_gather_objects(local)
    merged = {key: torch.cat([p[key] for p in parts]) for key in local}
    order = torch.argsort(merged["positions"])
    merged = {key: (v[order] if v.shape[0] == order.shape[0] else v) for key, v in merged.items()}
    merged["skipped"] = dict(plan.skipped)
    return merged


def _drop_undecodable(res: dict[str, Any]) -> dict[str, Any]:
    ok = res["labels"] >= 0
    res["skipped"]["undecodable"] = int((~ok).sum())
    for key in ("positions", "labels", "logits"):
        res[key] = res[key][ok]
    if res["energy"].numel():
        res["energy"] = res["energy"][ok]
    return res


def _extra_splits(root: Path) -> list[str]:
    """The generated data set's own splits that views are built from (val_mixed, val_bg_only),
    when `root` is one."""
    if not (root / "generation.json").is_file():
        return []
    return [s for s in splits() if (root / s).is_dir()]


def evaluate_model(
    lm: LoadedModel,
    records: Sequence[ImageRecord],
    extra: dict[str, list[ImageRecord]],
    opts: EvalOptions,
    info: DistInfo,
    where: str,
) -> None:
    """Every view of one model: the intact split at `where` (calibration, CAM energy, temperature
    scaling), then each view of `als_det.views` (box variants of the split, the generated splits in
    `extra`); fills `lm.results` and `lm.confidences`."""
    res = _drop_undecodable(
        run_pass(lm, records, "intact", opts, info, f"{lm.name} {opts.split}", True)
    )
    if not len(res["labels"]):
        raise EvaluationInputError(f"{where}: no decodable images to evaluate")
    val = calibration_metrics_from_logits(res["logits"], res["labels"])
    val.update(
        {
            k: v
            for k, v in confidence_summary(res["logits"], res["labels"], "intact").items()
            if k in ("frac_confidence_gt_0.5", "confidence_histogram")
        }
    )
    val["skipped"] = res["skipped"]
    lm.results["val"] = val
    lm.confidences = {"val": res["logits"].softmax(1).max(1).values}
    lm.results["cam"] = cam_summary(res, records, lm.prep, opts.cam_method)
    if opts.temperature_scaling:
        lm.results["temperature_scaling"] = temperature_scaling_report(
            res["logits"], res["labels"], opts.ts_fit_fraction, opts.seed
        )
    variants: dict[str, Any] = {}
    views = [(v.name, records, v.variant, False) for v in VIEWS.values() if v.variant]
    views += [
        (v.name, extra[v.split], "intact", v.calibration)
        for v in VIEWS.values()
        if v.split in extra
    ]
    for view, recs, variant, calibration in views:
        r = _drop_undecodable(
            run_pass(lm, recs, variant, opts, info, f"{lm.name} {view}", calibration)
        )
        variants[view] = {
            **confidence_summary(r["logits"], r["labels"], view),
            "skipped": r["skipped"],
        }
        lm.confidences[view] = r["logits"].softmax(1).max(1).values
        if calibration and len(r["labels"]):
            cal = calibration_metrics_from_logits(r["logits"], r["labels"])
            variants[view].update({k: cal[k] for k in CALIBRATION_KEYS})
            variants[view]["cam"] = cam_summary(r, recs, lm.prep, opts.cam_method)
    lm.results["variants"] = variants


def evaluate_fills(
    lm: LoadedModel, records: Sequence[ImageRecord], opts: EvalOptions, info: DistInfo
) -> None:
    """bg_only under every fill (`opts.fill`'s pass reused; only it with `opts.single_fill`): what
    the fill itself does to the verdict (docs/als.md). Fills `lm.results["bg_only_by_fill"]`."""
    lm.results["bg_only_by_fill"] = {opts.fill: lm.results["variants"][PRIMARY]}
    lm.confidences[f"bg_only@{opts.fill}"] = lm.confidences[PRIMARY]
    variant = VIEWS[PRIMARY].variant
    for fill in () if opts.single_fill else [f for f in FILLS if f != opts.fill]:
        desc = f"{lm.name} {PRIMARY} ({fill} fill)"
        r = _drop_undecodable(run_pass(lm, records, variant, opts, info, desc, False, fill))
        lm.results["bg_only_by_fill"][fill] = {
            **confidence_summary(r["logits"], r["labels"], PRIMARY),
            "skipped": r["skipped"],
        }
        lm.confidences[f"bg_only@{fill}"] = r["logits"].softmax(1).max(1).values


def _model_entry(lm: LoadedModel) -> dict[str, Any]:
    ck = lm.ckpt
    return {
        "checkpoint": {
            "path": str(Path(lm.path).resolve()),
            "sha256": lm.sha256,
            "arch": ck["arch"],
            "num_classes": int(ck["num_classes"]),
            "epoch": int(ck["epoch"]),
            "seed": ck["seed"],
            "preprocessing": ck["preprocessing"],
            "val_resize": lm.prep.val_resize,
        },
        "label_strategy": ck["label_strategy"],
        **lm.results,
    }


def evaluate_checkpoints(
    checkpoints: Sequence[str],
    data_root: str,
    out_dir: str,
    names: Sequence[str] | None = None,
    baseline: str | None = None,
    opts: EvalOptions | None = None,
    args: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Evaluate every checkpoint on `data_root`'s split; the metrics dict on rank 0 (None on the
    others). `out_dir` receives the log, the CAM grid's data and (if `data_root` is read-only)
    the index cache; `report.evaluation.write_evaluation` writes the rest."""
    start = time.perf_counter()
    opts = opts or EvalOptions()
    opts.validate()
    root, out = Path(data_root), check_output_folder(out_dir, "--out")
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    info = init_distributed(opts.device)
    models = load_models(checkpoints, names)
    if baseline is None:
        baseline = "hard" if any(m.name == "hard" for m in models) else models[0].name
    if baseline not in {m.name for m in models}:
        raise EvaluationInputError(
            f"--baseline {baseline!r} is none of the model names {[m.name for m in models]}"
        )
    cache_dir = index_cache_dir(root, out / ".als_det_cache", opts.cache_dir)
    records_all, classes, report = build_index(
        root, opts.split, boxes=opts.boxes, val_labels=opts.val_labels, cache_dir=cache_dir
    )
    check_models_fit_data(models, classes, f"{root}/{opts.split}")
    records = select_records(records_all, opts.max_images)
    extra = {
        s: select_records(
            build_index(root, s, classes=classes, cache_dir=cache_dir)[0], opts.max_images
        )
        for s in _extra_splits(root)
    }
    setup_logging(out, info.rank)
    logger.info("%s", report.summary())
    for lm in models:
        lm.sha256 = sha256_file(lm.path)
        evaluate_model(lm, records, extra, opts, info, f"{root}/{opts.split}")
        evaluate_fills(lm, records, opts, info)
    if not info.is_main:
        return None
    entries = {lm.name: _model_entry(lm) for lm in models}
    display_names = class_names(root, classes)
    return {
        "models": entries,
        "headline": headline(
            entries, baseline, {lm.name: lm.confidences for lm in models}, opts.seed
        ),
        "fills": {
            "primary": opts.fill,
            "comparisons": fill_comparisons(
                entries, baseline, {lm.name: lm.confidences for lm in models}, opts.seed
            ),
        },
        "data": {
            "root": str(root.resolve()),
            "split": opts.split,
            "classes": classes,
            "class_names": display_names,
            "index": report.summary(),
            "images_in_index": len(records_all),
            "images_evaluated": len(records),
            "with_boxes": sum(1 for r in records if len(r.boxes)),
            "extra_splits": list(extra),
            "world_size": info.world_size,
            "device": str(info.device),
        },
        "options": asdict(opts),
        "cam_grid": cam_grid(
            models, records, display_names, opts.grid_images, opts.cam_method, out / "cam_grid.npz"
        ),
        "figures": {},
        "versions": package_versions(),
        "revision": code_revision(),
        "args": args or {},
        "wall_time_s": round(time.perf_counter() - start, 1),
    }

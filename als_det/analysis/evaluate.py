"""The evaluation run: checkpoints x (val, context-only variants, generated splits) -> metrics.json + report.

Every pass shards the planned images with ``range(rank, N, world)`` and gathers per-image results
with ``all_gather_object``, so under torchrun each image is counted exactly once (no sampler
padding), and rank 0 computes the metrics and writes the files.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from als_det.analysis.cam import CAM_METHODS, compute_cams, energy_inside, features_and_logits, save_cam_grid
from als_det.analysis.context import FILLS, Preprocessing, VariantDataset, centre_mask, plan_variant
from als_det.cli import option
from als_det.data.boxes import ImageRecord, build_index, index_cache_dir
from als_det.data.class_names import class_names
from als_det.data.images import load_rgb
from als_det.engine.checkpoint import load_backbone
from als_det.engine.distributed import DistInfo, init_distributed
from als_det.io import atomic_write_json, sha256_file
from als_det.logger import setup_logging
from als_det.metrics.calibration import calibration_metrics_from_logits, temperature_scaling_report
from als_det.versions import package_versions

logger = logging.getLogger(__name__)

BOX_VARIANTS = ("bg_only", "fg_only", "outside_crop")
# What "accuracy" means per view: the object is present (accuracy) or absent (the class is
# predicted from context alone).
ACCURACY_MEANING = {"bg_only": "context_accuracy", "outside_crop": "context_accuracy",
                    "val_bg_only": "context_accuracy", "fg_only": "accuracy", "val_mixed": "accuracy"}
CONTEXT_SOURCES = ("bg_only", "outside_crop", "val_bg_only")
HIST_BINS = 20


class EvaluationInputError(ValueError):
    """Checkpoints that do not fit the data (classes, architecture) or each other (names)."""


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EvalOptions:
    """Everything that decides an evaluation besides the checkpoints and the data root; the
    fields with help text are `tools/evaluate.py`'s options."""

    split: str = option("val", "the split to evaluate")
    boxes: str = option("", "box source for the split (default ROOT/Annotation/<split>)")
    val_labels: str = option("", "labels file for a flat val folder")
    fill: str = option("black", "fill for the box variants", choices=FILLS)
    blur_fraction: float = 0.1
    min_crop_fraction: float = option(
        0.1, "outside_crop: skip images whose largest box-free crop is smaller than this fraction")
    batch_size: int = option(64, "images per batch")
    workers: int = option(2, "data-loading processes")
    max_images: int = option(0, "evaluate N images spread over the split (0 = all)", metavar="N")
    temperature_scaling: bool = option(False, "fit a temperature on a seeded half of val, report both")
    ts_fit_fraction: float = 0.5
    seed: int = option(0, "seed of the temperature-scaling split and the bootstrap")
    cam_method: str = option("cam", "class activation maps by", flag="--cam", choices=CAM_METHODS)
    grid_images: int = option(8, "rows of the CAM grid")
    device: str = option("auto", "where to run (auto: a GPU when there is one)", choices=DEVICES)
    cache_dir: str = option("", "box index cache (default ROOT/.als_det_cache, or the output folder's "
                                "if ROOT is read-only)")
    progress: bool = True

    def validate(self) -> None:
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {self.fill!r}")
        if self.cam_method not in CAM_METHODS:
            raise ValueError(f"cam_method must be one of {CAM_METHODS}, got {self.cam_method!r}")
        if self.batch_size < 1 or self.workers < 0 or self.max_images < 0 or self.grid_images < 0:
            raise ValueError("batch_size must be >= 1 and workers, max_images, grid_images >= 0")


@dataclass
class LoadedModel:
    name: str
    path: str
    model: nn.Module
    ckpt: dict[str, Any]
    prep: Preprocessing
    sha256: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    confidences: dict[str, torch.Tensor] = field(default_factory=dict)   # per image, by view


def _val_resize(ckpt: dict[str, Any], path: str) -> int:
    try:
        cfg = yaml.safe_load(ckpt["config"])
        return int(cfg["DATA"]["VAL_RESIZE"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise EvaluationInputError(f"{path}: cannot read DATA.VAL_RESIZE from the checkpoint's config ({exc})") from exc


def load_models(paths: Sequence[str], names: Sequence[str] | None = None) -> list[LoadedModel]:
    """Load each checkpoint; names default to the label strategy's name and must be unique."""
    if names and len(names) != len(paths):
        raise EvaluationInputError(f"got {len(names)} --name for {len(paths)} --checkpoint")
    models = []
    for i, path in enumerate(paths):
        model, ckpt = load_backbone(path)
        if int(ckpt["num_classes"]) != len(ckpt["classes"]):
            raise EvaluationInputError(f"{path}: num_classes {ckpt['num_classes']} but {len(ckpt['classes'])} "
                                       "class names")
        pre = ckpt["preprocessing"]
        if pre.get("input_format", "RGB") != "RGB":
            raise EvaluationInputError(f"{path}: input_format {pre['input_format']!r}; only RGB is supported")
        prep = Preprocessing(int(pre["image_size"]), _val_resize(ckpt, str(path)),
                             tuple(float(v) for v in pre["pixel_mean"]), tuple(float(v) for v in pre["pixel_std"]))
        name = names[i] if names else str(ckpt["label_strategy"]["name"])
        models.append(LoadedModel(name, str(path), model, ckpt, prep))
    seen: dict[str, str] = {}
    for m in models:
        if m.name in seen:
            raise EvaluationInputError(f"two checkpoints are both named {m.name!r} ({seen[m.name]} and {m.path}); "
                                       "give each a distinct --name")
        seen[m.name] = m.path
    return models


def check_models_fit_data(models: Sequence[LoadedModel], classes: Sequence[str], data_desc: str) -> None:
    """Every checkpoint must have been trained on exactly the data's classes, in the same order."""
    for m in models:
        ck = list(m.ckpt["classes"])
        if int(m.ckpt["num_classes"]) != len(classes):
            raise EvaluationInputError(f"{m.path}: a {m.ckpt['arch']} with {m.ckpt['num_classes']} classes cannot be "
                                       f"evaluated on {data_desc}, which has {len(classes)} classes")
        if ck != list(classes):
            only_ck = sorted(set(ck) - set(classes))[:5]
            only_data = sorted(set(classes) - set(ck))[:5]
            detail = (f"only in the checkpoint: {only_ck}; only in the data: {only_data}" if only_ck or only_data
                      else "same classes in a different order")
            raise EvaluationInputError(f"{m.path}: its classes differ from those of {data_desc} ({detail})")


def select_records(records: Sequence[ImageRecord], max_images: int) -> list[ImageRecord]:
    """All records, or `max_images` of them spread evenly over the (class-sorted) index."""
    if not max_images or max_images >= len(records):
        return list(records)
    picks = np.unique(np.linspace(0, len(records) - 1, max_images).round().astype(int))
    return [records[i] for i in picks]


def _gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def run_pass(lm: LoadedModel, records: Sequence[ImageRecord], variant: str, opts: EvalOptions, info: DistInfo,
             desc: str, with_cam: bool) -> dict[str, Any]:
    """Logits (and CAM energies) for every planned image of `variant`, gathered on every rank."""
    plan = plan_variant(records, variant, opts.min_crop_fraction)
    mine = plan.positions[info.rank::info.world_size]
    ds = VariantDataset(records, plan, lm.prep, opts.fill, opts.blur_fraction, positions=mine)
    loader = DataLoader(ds, batch_size=opts.batch_size, shuffle=False, num_workers=opts.workers,
                        pin_memory=info.device.type == "cuda")
    positions, labels, logits, energy = [], [], [], []
    model = lm.model.to(info.device)
    for x, y, pos, mask in tqdm(loader, desc=desc, disable=not (opts.progress and info.is_main), leave=False):
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
    local = {"positions": torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long),
             "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
             "logits": torch.cat(logits) if logits else torch.zeros(0, k),
             "energy": torch.cat(energy) if energy else torch.zeros(0, dtype=torch.float64)}
    parts = _gather(local, info)
    merged = {key: torch.cat([p[key] for p in parts]) for key in local}
    order = torch.argsort(merged["positions"])
    merged = {key: (v[order] if v.shape[0] == order.shape[0] else v) for key, v in merged.items()}
    merged["skipped"] = dict(plan.skipped)
    return merged


def _histogram(conf: torch.Tensor) -> dict[str, Any]:
    counts = torch.histc(conf.double(), bins=HIST_BINS, min=0.0, max=1.0)
    return {"edges": np.linspace(0, 1, HIST_BINS + 1).tolist(), "counts": [int(c) for c in counts.tolist()]}


def _drop_undecodable(res: dict[str, Any]) -> dict[str, Any]:
    ok = res["labels"] >= 0
    res["skipped"]["undecodable"] = int((~ok).sum())
    for key in ("positions", "labels", "logits"):
        res[key] = res[key][ok]
    if res["energy"].numel():
        res["energy"] = res["energy"][ok]
    return res


def confidence_summary(logits: torch.Tensor, labels: torch.Tensor, variant: str) -> dict[str, Any]:
    """Mean max-softmax confidence, fraction above 0.5, (context) accuracy and a histogram."""
    if logits.shape[0] == 0:
        return {"n": 0}
    probs = logits.softmax(dim=1)
    conf, pred = probs.max(dim=1)
    return {"n": int(logits.shape[0]),
            "mean_confidence": float(conf.double().mean()),
            "frac_confidence_gt_0.5": float((conf > 0.5).double().mean()),
            ACCURACY_MEANING.get(variant, "accuracy"): float((pred == labels).double().mean()),
            "confidence_histogram": _histogram(conf)}


def cam_summary(res: dict[str, Any], records: Sequence[ImageRecord], prep: Preprocessing, method: str) -> dict[str, Any]:
    """Mean fraction of positive CAM energy inside the labelled boxes, next to the boxes' share of
    the input (what a uniform map would score)."""
    has_box = torch.tensor([len(records[int(p)].boxes) > 0 for p in res["positions"]], dtype=torch.bool)
    energy = res["energy"]
    valid = has_box & ~torch.isnan(energy)
    area = [float(centre_mask(prep.boxes_in_input(records[int(p)].boxes, records[int(p)].width,
                                                   records[int(p)].height), prep.image_size).mean())
            for p, ok in zip(res["positions"], valid.tolist()) if ok]
    return {"method": method,
            "n": int(valid.sum()),
            "mean_energy_inside_boxes": float(energy[valid].mean()) if valid.any() else None,
            "mean_box_area_fraction": float(np.mean(area)) if area else None,
            "skipped": {"no_box": int((~has_box).sum()), "no_positive_energy": int((has_box & torch.isnan(energy)).sum())}}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def bootstrap_ratio_intervals(conf: dict[str, dict[str, torch.Tensor]], a: str, b: str, source: str, k: int,
                              n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of the three ratios, resampling images with replacement.

    `conf[model][view]` holds per-image max-softmax confidences ("val" and `source`), the same
    images in the same order for every model, so resamples are paired across the two models; the
    val and context-only image sets are resampled separately.
    """
    g = torch.Generator().manual_seed(seed)

    def means(view: str) -> tuple[torch.Tensor, torch.Tensor]:
        ca, cb = conf[a][view].double(), conf[b][view].double()
        out_a, out_b = [], []
        for start in range(0, n_boot, 100):
            idx = torch.randint(0, ca.shape[0], (min(100, n_boot - start), ca.shape[0]), generator=g)
            out_a.append(ca[idx].mean(1))
            out_b.append(cb[idx].mean(1))
        return torch.cat(out_a), torch.cat(out_b)

    sa, sb = means(source)
    va, vb = means("val")
    chance = 1.0 / k
    samples = {"ratio_absolute": sa / sb,
               "ratio_above_chance": ((sa - chance) / (1 - chance)) / ((sb - chance) / (1 - chance)),
               "ratio_relative_to_val": (sa / va) / (sb / vb)}
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    out = {key: [float(v) for v in torch.quantile(x, q)] for key, x in samples.items()}
    if not bool(((sb - chance) > 0).all()):
        del out["ratio_above_chance"]   # the baseline touches chance in some resamples: no finite interval
    return out


def headline_comparison(a: str, b: str, ma: dict[str, Any], mb: dict[str, Any], source: str,
                        intervals: dict[str, list[float]] | None = None) -> dict[str, Any] | None:
    """bg-confidence ratio of model `a` over baseline `b` in three forms, plus a sentence from the numbers.

    `intervals` (from `bootstrap_ratio_intervals`) lets the sentence say whether a ratio is
    distinguishable from 1.
    """
    va, vb = ma["variants"].get(source), mb["variants"].get(source)
    if not va or not vb or not va.get("n") or not vb.get("n"):
        return None
    k = int(ma["val"]["num_classes"])
    ca, cb = va["mean_confidence"], vb["mean_confidence"]
    wa, wb = ma["val"]["mean_confidence"], mb["val"]["mean_confidence"]
    chance = 1.0 / k
    na, nb = (ca - chance) / (1 - chance), (cb - chance) / (1 - chance)
    rel_a, rel_b = ca / wa, cb / wb
    out = {"model": a, "baseline": b, "source": source, "num_classes": k,
           "confidence": {a: ca, b: cb}, "val_confidence": {a: wa, b: wb},
           "above_chance": {a: na, b: nb}, "relative_to_val": {a: rel_a, b: rel_b},
           "ratio_absolute": _ratio(ca, cb), "ratio_above_chance": _ratio(na, nb) if nb > 0 else None,
           "ratio_relative_to_val": _ratio(rel_a, rel_b), "ratio_val_confidence": wa / wb,
           "intervals_95": intervals or {}}
    out["sentence"] = _headline_sentence(out, ma["val"]["top1"], mb["val"]["top1"], ma["val"]["ece"], mb["val"]["ece"])
    return out


def _ci(h: dict[str, Any], key: str) -> str:
    iv = h["intervals_95"].get(key)
    return f", 95% CI {iv[0]:.2f}-{iv[1]:.2f}" if iv else ""


def _includes_one(h: dict[str, Any], key: str) -> bool:
    iv = h["intervals_95"].get(key)
    return bool(iv) and iv[0] <= 1 <= iv[1]


def _headline_sentence(h: dict[str, Any], top1_a: float, top1_b: float, ece_a: float, ece_b: float) -> str:
    a, b, s = h["model"], h["baseline"], h["source"]
    ca, cb = h["confidence"][a], h["confidence"][b]
    absolute, val_ratio, rel = h["ratio_absolute"], h["ratio_val_confidence"], h["ratio_relative_to_val"]
    unchanged = _includes_one(h, "ratio_absolute")
    verb = "leaves" if unchanged else ("lowers" if ca < cb else "raises")
    parts = [f"{a} {verb} mean {s} confidence {'about unchanged, ' if unchanged else ''}from {cb:.2f} ({b}) to "
             f"{ca:.2f} ({ca - cb:+.2f} absolute, ratio {_fmt(absolute)}{_ci(h, 'ratio_absolute')}; ratio above "
             f"chance {_fmt(h['ratio_above_chance'])} with K={h['num_classes']})."]
    wa, wb = h["val_confidence"][a], h["val_confidence"][b]
    parts.append(f"On intact val its mean confidence is {wa:.2f} vs {wb:.2f} (ratio {val_ratio:.2f}), "
                 f"top-1 {top1_a:.1%} vs {top1_b:.1%}, ECE {ece_a:.3f} vs {ece_b:.3f}.")
    ra, rb = h["relative_to_val"][a], h["relative_to_val"][b]
    parts.append(f"Relative to each model's own val confidence, {s}/val is {ra:.2f} for {a} and {rb:.2f} for {b} "
                 f"(ratio {rel:.2f}{_ci(h, 'ratio_relative_to_val')}):")
    if absolute is not None and absolute < 1 and not unchanged:
        if val_ratio >= 1:
            parts.append(f"none of the {s} drop comes from lower val confidence,")
        else:
            share = math.log(val_ratio) / math.log(absolute)
            parts.append(f"the lower val confidence accounts for all of the {s} drop in log terms," if share >= 1 else
                         f"the lower val confidence accounts for {share:.0%} of the {s} drop in log terms,")
    if _includes_one(h, "ratio_relative_to_val"):
        parts.append(f"so once overall confidence is accounted for, {a} and {b} rely on context alike "
                     "(the interval includes 1).")
    elif rel < 1:
        parts.append(f"so {a} relies less on context than {b} even after accounting for its overall confidence "
                     f"(by a factor {rel:.2f}).")
    elif h["intervals_95"].get("ratio_relative_to_val"):
        parts.append(f"so relative to its own val confidence, {a} relies on context more than {b} "
                     f"(by a factor {rel:.2f}).")
    else:
        parts.append(f"so once its overall confidence is accounted for, {a} relies on context no less than {b}.")
    return " ".join(parts)


def headline(models: dict[str, dict[str, Any]], baseline: str,
             conf: dict[str, dict[str, torch.Tensor]] | None = None, seed: int = 0) -> dict[str, Any]:
    """Comparisons of every model with the baseline on each context-only source (bg_only first);
    with per-image confidences `conf`, each ratio gets a bootstrap interval."""
    comps: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        if name == baseline:
            continue
        for source in CONTEXT_SOURCES:
            intervals = None
            ca, cb = (conf or {}).get(name, {}).get(source), (conf or {}).get(baseline, {}).get(source)
            if ca is not None and cb is not None and ca.numel() and ca.shape == cb.shape:
                intervals = bootstrap_ratio_intervals(conf, name, baseline, source, int(m["val"]["num_classes"]),
                                                      seed=seed)
            h = headline_comparison(name, baseline, m, models[baseline], source, intervals)
            if h is not None:
                comps.setdefault(name, {})[source] = h
    return {"baseline": baseline, "primary_source": "bg_only", "comparisons": comps,
            "interval_method": "percentile bootstrap, 1000 resamples of images, paired across models; it covers "
                               "the choice of images only, not seed-to-seed training variance"}


def _extra_splits(root: Path) -> list[str]:
    """The generated data set's own val_mixed and val_bg_only splits, when `root` is one."""
    if not (root / "generation.json").is_file():
        return []
    return [s for s in ("val_mixed", "val_bg_only") if (root / s).is_dir()]


def _cam_grid(models: Sequence[LoadedModel], records: Sequence[ImageRecord], names: Sequence[str],
              opts: EvalOptions, path: Path) -> Path | None:
    """The fixed grid: `grid_images` boxed val images spread over the index, CAMs of every model;
    `names`: a display name per class index."""
    boxed = [i for i, r in enumerate(records) if len(r.boxes)]
    if not boxed or not opts.grid_images:
        return None
    picks = [boxed[i] for i in np.unique(np.linspace(0, len(boxed) - 1, opts.grid_images).round().astype(int))]
    prep = models[0].prep
    images, boxes, row_labels = [], [], []
    for p in picks:
        rec = records[p]
        img = load_rgb(rec.path)
        images.append(np.asarray(prep.resize_crop(img)))
        boxes.append(prep.boxes_in_input(rec.boxes, *img.size))
        row_labels.append(f"{names[rec.label]}\n{Path(rec.path).stem}")
    cams: dict[str, list[np.ndarray]] = {}
    titles: dict[str, list[str]] = {}
    for lm in models:
        if lm.prep != prep:
            logger.warning("%s uses another eval transform than %s; its CAM grid column uses its own crop", lm.name,
                        models[0].name)
        x = torch.stack([lm.prep.to_input(load_rgb(records[p].path)) for p in picks])
        y = torch.tensor([records[p].label for p in picks])
        device = next(lm.model.parameters()).device
        maps, logits = compute_cams(lm.model, x.to(device), y.to(device), opts.cam_method)
        probs = logits.softmax(1).cpu()
        conf, pred = probs.max(1)
        cams[lm.name] = [m.cpu().numpy() for m in maps]
        titles[lm.name] = [f"pred {names[int(c)]} {float(q):.2f}" for c, q in zip(pred, conf)]
    return save_cam_grid(images, boxes, cams, titles, row_labels, path)


def evaluate_checkpoints(checkpoints: Sequence[str], data_root: str, out_dir: str, names: Sequence[str] | None = None,
                         baseline: str | None = None, opts: EvalOptions | None = None,
                         args: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Evaluate every checkpoint on `data_root`'s split; rank 0 writes metrics.json, figures, report.md.

    Returns the metrics dict on rank 0 (None on other ranks).
    """
    from als_det.report.evaluation import write_report

    start = time.perf_counter()
    opts = opts or EvalOptions()
    opts.validate()
    root, out = Path(data_root), Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    info = init_distributed(opts.device)
    models = load_models(checkpoints, names)
    if baseline is None:
        baseline = "hard" if any(m.name == "hard" for m in models) else models[0].name
    if baseline not in {m.name for m in models}:
        raise EvaluationInputError(f"--baseline {baseline!r} is none of the model names {[m.name for m in models]}")
    cache_dir = index_cache_dir(root, out / ".als_det_cache", opts.cache_dir)
    records_all, classes, report = build_index(root, opts.split, boxes=opts.boxes, val_labels=opts.val_labels,
                                               cache_dir=cache_dir)
    check_models_fit_data(models, classes, f"{root}/{opts.split}")
    records = select_records(records_all, opts.max_images)
    extra = {s: select_records(build_index(root, s, classes=classes, cache_dir=cache_dir)[0], opts.max_images)
             for s in _extra_splits(root)}
    setup_logging(out, info.rank)
    logger.info("%s", report.summary())

    for lm in models:
        lm.sha256 = sha256_file(lm.path)
        res = _drop_undecodable(run_pass(lm, records, "intact", opts, info, f"{lm.name} {opts.split}", True))
        val = calibration_metrics_from_logits(res["logits"], res["labels"]) if len(res["labels"]) else None
        if val is None:
            raise EvaluationInputError(f"{root}/{opts.split}: no decodable images to evaluate")
        val.update({k: v for k, v in confidence_summary(res["logits"], res["labels"], "intact").items()
                    if k in ("frac_confidence_gt_0.5", "confidence_histogram")})
        val["skipped"] = res["skipped"]
        lm.results["val"] = val
        lm.confidences = {"val": res["logits"].softmax(1).max(1).values}
        lm.results["cam"] = cam_summary(res, records, lm.prep, opts.cam_method)
        if opts.temperature_scaling:
            lm.results["temperature_scaling"] = temperature_scaling_report(
                res["logits"], res["labels"], opts.ts_fit_fraction, opts.seed)
        variants: dict[str, Any] = {}
        for v in BOX_VARIANTS:
            r = _drop_undecodable(run_pass(lm, records, v, opts, info, f"{lm.name} {v}", False))
            variants[v] = {**confidence_summary(r["logits"], r["labels"], v), "skipped": r["skipped"]}
            lm.confidences[v] = r["logits"].softmax(1).max(1).values
        for split, recs in extra.items():
            r = _drop_undecodable(run_pass(lm, recs, "intact", opts, info, f"{lm.name} {split}", split == "val_mixed"))
            variants[split] = {**confidence_summary(r["logits"], r["labels"], split), "skipped": r["skipped"]}
            lm.confidences[split] = r["logits"].softmax(1).max(1).values
            if split == "val_mixed" and len(r["labels"]):
                cal = calibration_metrics_from_logits(r["logits"], r["labels"])
                variants[split].update({k: cal[k] for k in ("top1", "top5", "nll", "brier", "ece", "mce", "ace")})
                variants[split]["cam"] = cam_summary(r, recs, lm.prep, opts.cam_method)
        lm.results["variants"] = variants

    if not info.is_main:
        return None
    metrics_models = {}
    for lm in models:
        ck = lm.ckpt
        metrics_models[lm.name] = {
            "checkpoint": {"path": str(Path(lm.path).resolve()), "sha256": lm.sha256, "arch": ck["arch"],
                           "num_classes": int(ck["num_classes"]), "epoch": int(ck["epoch"]), "seed": ck["seed"],
                           "preprocessing": ck["preprocessing"], "val_resize": lm.prep.val_resize},
            "label_strategy": ck["label_strategy"],
            **lm.results,
        }
    figures = {}
    display_names = class_names(root, classes)
    grid = _cam_grid(models, records, display_names, opts, out / "cam_grid.png")
    if grid is not None:
        figures["cam_grid"] = grid.name
    metrics = {
        "models": metrics_models,
        "headline": headline(metrics_models, baseline, {lm.name: lm.confidences for lm in models}, opts.seed),
        "data": {"root": str(root.resolve()), "split": opts.split, "classes": classes, "class_names": display_names,
                 "index": report.summary(), "images_in_index": len(records_all), "images_evaluated": len(records),
                 "with_boxes": sum(1 for r in records if len(r.boxes)), "extra_splits": list(extra),
                 "world_size": info.world_size, "device": str(info.device)},
        "options": asdict(opts),
        "figures": figures,
        "versions": package_versions(),
        "args": args or {},
    }
    metrics["wall_time_s"] = round(time.perf_counter() - start, 1)
    write_report(metrics, out)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics

"""Context reliance in numbers: confidence summaries of a view, and the ratios of a model's
context-only confidence over a baseline's in every context-only view (the record keeps the name
"headline"), with percentile-bootstrap intervals.

Three forms of the ratio, because each alone misleads: `absolute` (mean confidence on the
context-only view, model / baseline), `above_chance` (each confidence as (c - 1/K) / (1 - 1/K)
first: with few classes the chance floor caps any absolute ratio) and `relative_to_val` (each
model's context-only confidence over its own confidence on intact val: a model that is less
confident everywhere does not count as relying less on context). Sentences about these numbers
are the report's (`als_det.report.evaluation`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from als_det.views import PRIMARY, VIEWS, context_sources

HIST_BINS = 20
INTERVAL_METHOD = (
    "percentile bootstrap, 1000 resamples of images, paired across models; it covers "
    "the choice of images only, not seed-to-seed training variance"
)


def confidence_histogram(conf: torch.Tensor) -> dict[str, Any]:
    """Counts of max-softmax confidences in HIST_BINS equal bins of [0, 1]."""
    counts = torch.histc(conf.double(), bins=HIST_BINS, min=0.0, max=1.0)
    return {
        "edges": np.linspace(0, 1, HIST_BINS + 1).tolist(),
        "counts": [int(c) for c in counts.tolist()],
    }


def _accuracy_key(view: str) -> str:
    """What "accuracy" means in a view: the object is present (accuracy) or absent (the class is
    predicted from context alone: context accuracy)."""
    return "context_accuracy" if view in VIEWS and VIEWS[view].context_only else "accuracy"


def confidence_summary(logits: torch.Tensor, labels: torch.Tensor, variant: str) -> dict[str, Any]:
    """Mean max-softmax confidence, fraction above 0.5, (context) accuracy and a histogram."""
    if logits.shape[0] == 0:
        return {"n": 0}
    probs = logits.softmax(dim=1)
    conf, pred = probs.max(dim=1)
    return {
        "n": int(logits.shape[0]),
        "mean_confidence": float(conf.double().mean()),
        "frac_confidence_gt_0.5": float((conf > 0.5).double().mean()),
        _accuracy_key(variant): float((pred == labels).double().mean()),
        "confidence_histogram": confidence_histogram(conf),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def bootstrap_ratio_intervals(
    conf: dict[str, dict[str, torch.Tensor]],
    a: str,
    b: str,
    source: str,
    k: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
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
            idx = torch.randint(
                0, ca.shape[0], (min(100, n_boot - start), ca.shape[0]), generator=g
            )
            out_a.append(ca[idx].mean(1))
            out_b.append(cb[idx].mean(1))
        return torch.cat(out_a), torch.cat(out_b)

    sa, sb = means(source)
    va, vb = means("val")
    chance = 1.0 / k
    samples = {
        "ratio_absolute": sa / sb,
        "ratio_above_chance": ((sa - chance) / (1 - chance)) / ((sb - chance) / (1 - chance)),
        "ratio_relative_to_val": (sa / va) / (sb / vb),
    }
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    out = {key: [float(v) for v in torch.quantile(x, q)] for key, x in samples.items()}
    if not bool(((sb - chance) > 0).all()):
        del out[
            "ratio_above_chance"
        ]  # the baseline touches chance in some resamples: no finite interval
    return out


def headline_comparison(
    a: str,
    b: str,
    ma: dict[str, Any],
    mb: dict[str, Any],
    source: str,
    intervals: dict[str, list[float]] | None = None,
) -> dict[str, Any] | None:
    """The `source` confidence ratio of model `a` over baseline `b` in its three forms (`ma`, `mb`:
    the models' metrics.json entries); `intervals` from `bootstrap_ratio_intervals`. None when
    either model has no images of `source`."""
    va, vb = ma["variants"].get(source), mb["variants"].get(source)
    if not va or not vb or not va.get("n") or not vb.get("n"):
        return None
    k = int(ma["val"]["num_classes"])
    ca, cb = va["mean_confidence"], vb["mean_confidence"]
    wa, wb = ma["val"]["mean_confidence"], mb["val"]["mean_confidence"]
    chance = 1.0 / k
    na, nb = (ca - chance) / (1 - chance), (cb - chance) / (1 - chance)
    rel_a, rel_b = ca / wa, cb / wb
    return {
        "model": a,
        "baseline": b,
        "source": source,
        "num_classes": k,
        "confidence": {a: ca, b: cb},
        "val_confidence": {a: wa, b: wb},
        "above_chance": {a: na, b: nb},
        "relative_to_val": {a: rel_a, b: rel_b},
        "ratio_absolute": _ratio(ca, cb),
        "ratio_above_chance": _ratio(na, nb) if nb > 0 else None,
        "ratio_relative_to_val": _ratio(rel_a, rel_b),
        "ratio_val_confidence": wa / wb,
        "intervals_95": intervals or {},
    }


def headline(
    models: dict[str, dict[str, Any]],
    baseline: str,
    conf: dict[str, dict[str, torch.Tensor]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Comparisons of every model with the baseline on each context-only view of `als_det.views`
    (bg_only first); with per-image confidences `conf`, each ratio gets a bootstrap interval."""
    comps: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        if name == baseline:
            continue
        for source in context_sources():
            intervals = None
            ca, cb = (
                (conf or {}).get(name, {}).get(source),
                (conf or {}).get(baseline, {}).get(source),
            )
            if ca is not None and cb is not None and ca.numel() and ca.shape == cb.shape:
                intervals = bootstrap_ratio_intervals(
                    conf, name, baseline, source, int(m["val"]["num_classes"]), seed=seed
                )
            h = headline_comparison(name, baseline, m, models[baseline], source, intervals)
            if h is not None:
                comps.setdefault(name, {})[source] = h
    return {
        "baseline": baseline,
        "primary_source": PRIMARY,
        "comparisons": comps,
        "interval_method": INTERVAL_METHOD,
    }


def fill_comparisons(
    models: dict[str, dict[str, Any]],
    baseline: str,
    conf: dict[str, dict[str, torch.Tensor]] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The bg_only comparison of every model with the baseline once per fill the models were
    evaluated under (their "bg_only_by_fill"; per-image confidences
    `conf[model]["bg_only@<fill>"]`): {model: {fill: headline_comparison}}. The fill decides what
    "context alone" means, so a verdict is only as good as its agreement across fills
    (docs/als.md)."""
    fills = [
        f
        for f in models[baseline].get("bg_only_by_fill", {})
        if all(f in m.get("bg_only_by_fill", {}) for m in models.values())
    ]
    out: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        if name == baseline:
            continue
        for fill in fills:
            entries = {
                n: {
                    "val": models[n]["val"],
                    "variants": {"bg_only": models[n]["bg_only_by_fill"][fill]},
                }
                for n in (name, baseline)
            }
            views = {
                n: {
                    "val": (conf or {}).get(n, {}).get("val"),
                    "bg_only": (conf or {}).get(n, {}).get(f"bg_only@{fill}"),
                }
                for n in (name, baseline)
            }
            intervals = None
            ca, cb = views[name]["bg_only"], views[baseline]["bg_only"]
            if ca is not None and cb is not None and ca.numel() and ca.shape == cb.shape:
                intervals = bootstrap_ratio_intervals(
                    views, name, baseline, "bg_only", int(m["val"]["num_classes"]), seed=seed
                )
            h = headline_comparison(
                name, baseline, entries[name], entries[baseline], "bg_only", intervals
            )
            if h is not None:
                out.setdefault(name, {})[fill] = {**h, "fill": fill}
    return out

"""The demo's one page: pretraining curves, classification/calibration/context table, the detector
AP table, every figure, stage timings. Reads only result files (metrics.jsonl, metrics.json,
comparison.*), so it can be redrawn from a finished `demo_output/` at any time."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from als_det.io import atomic_write_text, read_history
from als_det.metrics.intervals import t_interval
from als_det.report.figures import save_figure
from als_det.report.fills import fill_section
from als_det.report.sweep import SweepCell, summarize
from als_det.report.sweep_tables import INTERVAL_METHOD, reliance_table, verdict
from als_det.report.tables import markdown_table, with_interval
from als_det.versions import package_versions

# (label, path into a model's metrics.json entry, format)
CONTEXT_COLUMNS: list[tuple[str, tuple[str, ...], str]] = [
    ("top-1", ("val", "top1"), ".3f"),
    ("ECE", ("val", "ece"), ".3f"),
    ("NLL", ("val", "nll"), ".3f"),
    ("conf val", ("val", "mean_confidence"), ".3f"),
    ("conf bg_only", ("variants", "bg_only", "mean_confidence"), ".3f"),
    ("conf outside_crop", ("variants", "outside_crop", "mean_confidence"), ".3f"),
    ("conf val_bg_only", ("variants", "val_bg_only", "mean_confidence"), ".3f"),
    ("bg_only / val", None, ".3f"),  # computed: relative confidence
    ("top-1 val_mixed", ("variants", "val_mixed", "top1"), ".3f"),
    ("CAM in box", ("cam", "mean_energy_inside_boxes"), ".3f"),
]


def _get(d: Mapping[str, Any], path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return None if d is None else float(d)


def _arm(name: str) -> str:
    return name.rsplit("_s", 1)[0] if "_s" in name else name


def _cell(values: list[float], spec: str) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(float(np.mean(values)), spec)} ± {format(float(np.std(values, ddof=1)), spec)}"


def context_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table, one row per arm (mean ± sample std over seeds when there are several)."""
    by_arm: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for name, m in models.items():
        by_arm[_arm(name)].append(m)
    rows = []
    for arm, ms in by_arm.items():
        cells = [arm, str(len(ms))]
        for _, path, spec in CONTEXT_COLUMNS:
            if path is None:
                vals = [
                    (_get(m, ("variants", "bg_only", "mean_confidence")) or math.nan)
                    / (_get(m, ("val", "mean_confidence")) or math.nan)
                    for m in ms
                ]
            else:
                vals = [_get(m, path) for m in ms]
            cells.append(_cell(vals, spec))
        rows.append(cells)
    return markdown_table(rows, ["arm", "n"] + [c[0] for c in CONTEXT_COLUMNS])


def pretrain_table(runs: Mapping[str, Path]) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """Per run: epochs, final val top-1 and ECE, mean ALS smoothing, wall time; plus the curves."""
    curves: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for name, ckpt in runs.items():
        lines = read_history(ckpt.parent / "metrics.jsonl")
        curves[name] = lines
        last = lines[-1] if lines else {}
        total = sum(float(x.get("epoch_time_s") or 0.0) for x in lines)
        rows.append(
            [
                name,
                last.get("epoch", "–"),
                _fmt(last.get("val_top1")),
                _fmt(last.get("val_ece")),
                _fmt(last.get("mean_e")),
                f"{total:.0f}",
            ]
        )
    return markdown_table(
        rows, ["run", "epochs", "val top-1", "val ECE", "mean e", "train s"]
    ), curves


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(float(v), spec)


def curves_figure(curves: Mapping[str, list[dict[str, Any]]], path: Path) -> Path | None:
    if not any(curves.values()):
        return None
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    for name, lines in curves.items():
        epochs = [x["epoch"] for x in lines]
        axes[0].plot(epochs, [x.get("train_loss") for x in lines], marker="o", label=name)
        axes[1].plot(epochs, [x.get("val_top1") for x in lines], marker="o", label=name)
    axes[0].set(title="train loss", xlabel="epoch")
    axes[1].set(title="val top-1", xlabel="epoch", ylim=(0, 1))
    axes[1].legend(fontsize=8)
    return save_figure(fig, path)


def _one_seed(metrics: Mapping[str, Any], runs: Sequence[str]) -> list[str]:
    """One seed: the numbers and their image-level intervals, and no direction, which the spread
    between seeds (not measured by one run) can flip."""
    head = metrics.get("headline", {})
    lines = [
        "**What the numbers say — one seed.** The intervals cover the choice of images only, not "
        "training variance: between seeds these ratios move by more than their width (README, "
        "\"`make demo`\"), so one run does not show the direction of the difference in context "
        "reliance. `make demo SEEDS=3` pairs each arm with hard of the same seed and gives "
        "t-intervals over seeds.\n"
    ]
    for name, by_source in head.get("comparisons", {}).items():
        if name not in runs:
            continue
        for source in ("bg_only", "outside_crop"):
            h = by_source.get(source)
            if isinstance(h, Mapping):
                lines.append(
                    f"- {name} / {head['baseline']}, {source} confidence: absolute "
                    f"{with_interval(h, 'ratio_absolute')}, relative to own val confidence "
                    f"{with_interval(h, 'ratio_relative_to_val')}"
                )
    return lines + [""]


def _over_seeds(plan: Any, ckpts: Mapping[str, Path], eval_dir: Path) -> list[str]:
    """Several seeds: each arm paired with the baseline of its own seed; verdicts from
    t-intervals."""
    cells = [
        SweepCell(arm.name, seed, ckpts[run].parent, eval_dir / "metrics.json", model=run)
        for run, arm, seed in plan.runs()
    ]
    sweep = summarize(cells, plan.baseline)
    lines = [
        f"**What the numbers say — {len(plan.seeds)} seeds** ({INTERVAL_METHOD}):\n",
        verdict(sweep, "bg_only"),
        "",
    ]
    if "outside_crop" in sweep.sources:
        lines += [verdict(sweep, "outside_crop"), ""]
    return lines + ["Per arm over seeds (bg_only):\n", reliance_table(sweep, "bg_only"), ""]


FILL_VIEWS = ("black", "mean", "blur", "outside_crop")


def _reliance(model: Mapping[str, Any], view: str) -> float | None:
    """Context-only confidence in `view` (a fill of bg_only, or outside_crop) over own val's."""
    if view == "outside_crop":
        v = model["variants"].get("outside_crop")
    else:
        v = model.get("bg_only_by_fill", {}).get(view)
    if not v or not v.get("n"):
        return None
    return v["mean_confidence"] / model["val"]["mean_confidence"]


def fills_over_seeds(plan: Any, metrics: Mapping[str, Any]) -> list[str]:
    """Several seeds: per arm and view (each fill of bg_only, and outside_crop), the ratio of its
    relative context-only confidence to the baseline's of the same seed; per seed, then the mean
    with its t-interval and what it says (lower / alike / higher)."""
    models = metrics["models"]
    views = [v for v in FILL_VIEWS if all(_reliance(m, v) is not None for m in models.values())]
    if len(views) < 2:
        return []
    rows = []
    for arm in (a for a in plan.arms if a != plan.baseline):
        cells = []
        for view in views:
            per_seed = [
                _reliance(models[plan.run_name(arm, s)], view)
                / _reliance(models[plan.run_name(plan.baseline, s)], view)
                for s in plan.seeds
            ]
            mean, lo, hi = t_interval(per_seed)
            word = "lower" if hi < 1 else ("higher" if lo > 1 else "alike")
            seeds = " / ".join(f"{x:.2f}" for x in per_seed)
            cells.append(f"{seeds}: {mean:.3f} [{lo:.3f}, {hi:.3f}] {word}")
        rows.append([f"{arm} / {plan.baseline}", *cells])
    headers = [
        "",
        *(f"bg_only, {v} fill" if v != "outside_crop" else "outside_crop (no fill)" for v in views),
    ]
    return [
        "### Context reliance under each fill, over seeds",
        "",
        "Context-only confidence relative to own val confidence, each arm over the baseline of the "
        "same seed: per seed, then the mean and its 95% t-interval over seeds; lower / alike / "
        "higher: the interval lies below 1 / includes 1 / lies above 1. Each fill adds or leaks "
        'something (docs/als.md, "Context-only views: what each fill adds or leaks").',
        "",
        markdown_table(rows, headers),
        "",
    ]


def what_the_numbers_say(
    plan: Any, ckpts: Mapping[str, Path], eval_dir: Path, metrics: Mapping[str, Any]
) -> list[str]:
    """The verdict and the fill table: from t-intervals over seeds paired with the baseline, or
    for one seed the numbers without a direction."""
    if len(plan.seeds) > 1:
        return _over_seeds(plan, ckpts, eval_dir) + fills_over_seeds(plan, metrics)
    fills = fill_section(metrics)
    if fills:
        fills[1:1] = [
            "",
            "One seed: lower / alike / higher below describe these checkpoints on these images; "
            "another seed can flip them.",
        ]
    return _one_seed(metrics, list(ckpts)) + fills


def write_demo_report(
    out: Path,
    plan: Any,
    ckpts: Mapping[str, Path],
    eval_dir: Path,
    det_dirs: Sequence[Path],
    compare_dir: Path,
    timings: Mapping[str, float],
) -> tuple[Path, str]:
    """Write OUT/report.md; return it and the two tables printed at the end of `make demo`."""
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    ctx = context_table(metrics["models"])
    ap_table = (compare_dir / "comparison.md").read_text().strip()
    pre_table, curves = pretrain_table(ckpts)
    curves_png = curves_figure(curves, out / "pretrain_curves.png")
    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    figures = metrics.get("figures", {})
    seeds = list(plan.seeds)

    md = [
        "# als_det demo report\n",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `make demo` (seeds {seeds}) on the "
        "generated context-bias data set. **Demo-scale numbers on generated data**, not "
        "ImageNet/COCO results.\n",
        "## Pretraining\n",
        pre_table,
        "",
    ]
    if curves_png:
        md += [f"![pretraining curves]({rel(curves_png)})\n"]
    md += [
        "## Classification, calibration and context reliance\n",
        "conf = mean max-softmax confidence. `bg_only`: val images with every box of the labelled "
        "class filled; `outside_crop`: the largest crop that avoids every box (no fill); "
        "`val_bg_only`: generated backgrounds with no object; `top-1 val_mixed`: objects on "
        "random backgrounds; `bg_only / val`: context-only confidence relative to the same "
        "model's confidence on intact images; `CAM in box`: share of class-activation energy "
        "inside the labelled boxes.\n",
        ctx,
        "",
    ]
    md += what_the_numbers_say(plan, ckpts, eval_dir, metrics) + [""]
    for key, title in (
        ("reliability", "Reliability diagrams"),
        ("bg_only_confidence", "Confidence on bg_only"),
        ("cam_grid", "Class activation maps"),
    ):
        if figures.get(key):
            md += [f"### {title}\n", f"![{title}]({rel(eval_dir / Path(figures[key]).name)})\n"]
    md += [
        f"Full evaluation report: [evaluation/report.md]({rel(eval_dir / 'report.md')})\n",
        "## Detection transfer (Faster R-CNN, COCO-style box AP)\n",
        ap_table,
        "",
        f"![AP by strategy]({rel(compare_dir / 'ap_by_strategy.png')})\n",
        "## Stages\n",
        markdown_table([[k, f"{v:.0f}"] for k, v in timings.items()], ["stage", "seconds"]),
        "",
        "## Versions\n",
        "```",
        json.dumps(package_versions(), indent=1),
        "```",
        "",
    ]
    report = atomic_write_text(out / "report.md", "\n".join(md))
    tables = (
        "Classification / calibration / context (demo scale, generated data)\n"
        + ctx
        + "\n\nDetection AP (demo scale, generated data)\n"
        + ap_table
    )
    return report, tables

"""The demo's one page: pretraining curves, classification/calibration/context table, the detector
AP table, every figure, stage timings. Reads only result files (metrics.jsonl, metrics.json,
comparison.*), so it can be redrawn from a finished `demo_output/` at any time."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from als_det.io import atomic_write_text, read_history
from als_det.metrics.comparison import mean_std
from als_det.report.figures import save_figure
from als_det.report.fills import (
    RATIO_HEADERS,
    agreement,
    fill_section,
    fill_title,
    ratio_cells,
    unfilled_title,
)
from als_det.report.sweep import Sweep, SweepCell, chance_seeds, summarize, verdict_views
from als_det.report.sweep_tables import INTERVAL_METHOD, verdict, view_verdict, views_note
from als_det.report.tables import MISSING, cell, interval_cell, markdown_table, mean_pm_std
from als_det.versions import package_versions
from als_det.views import (
    FILLS,
    PRIMARY,
    VIEWS,
    context_sources,
    fill_source,
    unfilled_context_views,
)


def context_columns() -> list[tuple[str, tuple[str, ...] | None, str]]:
    """(label, path into a model's metrics.json entry or None for bg_only / val, format): every
    context-only view and every view with calibration of `als_det.views`."""
    return [
        ("top-1", ("val", "top1"), ".3f"),
        ("ECE", ("val", "ece"), ".3f"),
        ("NLL", ("val", "nll"), ".3f"),
        ("conf val", ("val", "mean_confidence"), ".3f"),
        *((f"conf {s}", ("variants", s, "mean_confidence"), ".3f") for s in context_sources()),
        (f"{PRIMARY} / val", None, ".3f"),  # computed: relative confidence
        *(
            (f"top-1 {v.name}", ("variants", v.name, "top1"), ".3f")
            for v in VIEWS.values()
            if v.calibration
        ),
        ("CAM in box", ("cam", "mean_energy_inside_boxes"), ".3f"),
    ]


def _get(d: Mapping[str, Any], path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return None if d is None else float(d)


def _relative(m: Mapping[str, Any]) -> float | None:
    """bg_only confidence over own val confidence."""
    bg = _get(m, ("variants", PRIMARY, "mean_confidence"))
    val = _get(m, ("val", "mean_confidence"))
    return bg / val if bg is not None and val else None


def _runs_by_arm(plan: Any, models: Mapping[str, Any]) -> dict[str, list[str]]:
    """The plan's arms (in its order) -> their runs' model names in `models`, every seed's."""
    by_arm: dict[str, list[str]] = {a: [] for a in plan.arms}
    for run, arm, _ in plan.runs():
        if run not in models:
            raise ValueError(
                f"the evaluation has no model {run!r} of the plan (it has {list(models)})"
            )
        by_arm[arm.name].append(run)
    return by_arm


def context_table(plan: Any, models: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table, one row per arm of the plan (mean ± sample std over seeds when there are
    several)."""
    rows, columns = [], context_columns()
    for arm, runs in _runs_by_arm(plan, models).items():
        ms = [models[r] for r in runs]
        cells = [arm, str(len(ms))]
        for _, path, spec in columns:
            vals = [_relative(m) if path is None else _get(m, path) for m in ms]
            cells.append(mean_pm_std(*mean_std(vals), spec))
        rows.append(cells)
    return markdown_table(rows, ["arm", "n"] + [c[0] for c in columns])


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
                last.get("epoch", MISSING),
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
    return cell(None if v is None else float(v), spec)


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


def _one_seed(metrics: Mapping[str, Any], runs: Sequence[str], table: bool) -> list[str]:
    """One seed: the numbers and their image-level intervals (`table`: a row per comparison and
    context-only view of the val images; else the fill table that follows has them), and no
    direction, which the spread between seeds (not measured by one run) can flip."""
    head = metrics.get("headline", {})
    lines = [
        "**What the numbers say — one seed.** The intervals cover the choice of images only, not "
        "training variance: between seeds these ratios move by more than their width (README, "
        "\"`make demo`\"), so one run does not show the direction of the difference in context "
        "reliance. `make demo SEEDS=3` pairs each arm with hard of the same seed and gives "
        "t-intervals over seeds.\n"
    ]
    if not table:
        return lines + [""]
    rows = []
    for name, by_source in head.get("comparisons", {}).items():
        for source in (s for s in context_sources() if VIEWS[s].variant is not None):
            h = by_source.get(source)
            if name in runs and isinstance(h, Mapping):
                rows.append(
                    [f"{name} / {head['baseline']}", source]
                    + ratio_cells(h, "ratio_absolute")
                    + ratio_cells(h, "ratio_relative_to_val")
                )
    return lines + [markdown_table(rows, RATIO_HEADERS[:-1]), "", ""] if rows else lines + [""]


def _over_seeds(plan: Any, sweep: Sweep, own_fill: str) -> list[str]:
    """Several seeds: each arm paired with the baseline of its own seed; the verdict in every
    context-only view from t-intervals, whether they agree, and the verdicts' accuracy cost."""
    views = [PRIMARY, *verdict_views(sweep)]
    return [
        f"**What the numbers say — {len(plan.seeds)} seeds** ({INTERVAL_METHOD}):\n",
        *fills_over_seeds(sweep, own_fill),
        *(line for view in views for line in (verdict(sweep, view), "")),
        views_note(),
        "",
    ]


def _fill_views(own_fill: str) -> list[tuple[str, str]]:
    """(sweep source, column title): bg_only under each fill, then the context without any fill
    (outside_crop)."""
    return [(PRIMARY if f == own_fill else fill_source(f), fill_title(f)) for f in FILLS] + [
        (v, unfilled_title(v)) for v in unfilled_context_views()
    ]


def fills_over_seeds(sweep: Sweep, own_fill: str) -> list[str]:
    """Several seeds: per arm and view (each fill of bg_only, and outside_crop), the ratio of its
    relative context-only confidence to the baseline's of the same seed (the sweep's paired
    values): one row each, a column per seed, then the mean, its t-interval and what it says
    (lower / alike / higher); and per arm whether the views agree. `own_fill`: the evaluation's
    fill, under which bg_only itself ran."""
    groups = [g for g in sweep.groups if g.epochs == sweep.main_epochs]
    views = [
        (source, title)
        for source, title in _fill_views(own_fill)
        if all(f"conf_{source}" in c.values for g in groups for c in g.cells)
    ]
    if len(views) < 2:
        return []
    seeds = sorted({c.cell.seed for g in groups for c in g.cells})
    rows, sentences = [], []
    for g in (g for g in groups if g.setting != sweep.baseline):
        chance, words = chance_seeds(sweep, g), {}
        for source, title in views:
            key = f"ratio_relative_to_val_{source}"
            by_seed = {c.cell.seed: c.values.get(key) for c in g.cells}
            stats = g.stats[key]
            words[title] = view_verdict(sweep, g, source)
            rows.append(
                [
                    f"{g.setting} / {sweep.baseline}",
                    title,
                    *(cell(by_seed.get(s), ".3f") for s in seeds),
                    cell(stats["mean"], ".3f"),
                    interval_cell(stats["interval"]),
                    words[title],
                ]
            )
        label = f"{g.setting} vs {sweep.baseline}"
        sentences.append(
            f"- {label}: no verdict: it or {sweep.baseline} is at or near chance on val in "
            f"seed(s) {', '.join(map(str, chance))}."
            if chance
            else agreement(label, words)
        )
    headers = ["comparison", "view", *(f"seed {s}" for s in seeds)]
    return [
        "### Context reliance in every context-only view, over seeds",
        "",
        "Context-only confidence relative to own val confidence, each arm over the baseline of the "
        "same seed: per seed, then the mean and its 95% t-interval over seeds; verdict: the "
        "interval lies below 1 (lower) / includes 1 (alike) / lies above 1 (higher); at chance: a "
        "model at or near chance on val in some seed, no verdict. Each view adds or leaks "
        'something of its own (docs/als.md, "Context-only views: what each fill adds or '
        'leaks"), so none is the measure.',
        "",
        markdown_table(
            rows,
            [*headers, "mean", "95% interval", "verdict"],
            colalign=("left", "left") + ("right",) * (len(seeds) + 2) + ("left",),
        ),
        "",
        *sentences,
        "",
    ]


def what_the_numbers_say(
    plan: Any, ckpts: Mapping[str, Path], eval_dir: Path, metrics: Mapping[str, Any]
) -> list[str]:
    """The verdicts in every context-only view and whether they agree: from t-intervals over
    seeds paired with the baseline (one `report.sweep.summarize` of the runs), or for one seed the
    numbers without a direction."""
    if len(plan.seeds) > 1:
        cells = [
            SweepCell(arm.name, seed, ckpts[run].parent, eval_dir / "metrics.json", model=run)
            for run, arm, seed in plan.runs()
        ]
        return _over_seeds(plan, summarize(cells, plan.baseline), metrics["options"]["fill"])
    fills = fill_section(metrics)
    if fills:
        fills[1:1] = [
            "",
            "One seed: lower / alike / higher below describe these checkpoints on these images; "
            "another seed can flip them.",
        ]
    return _one_seed(metrics, list(ckpts), table=not fills) + fills


ONE_SEED_AP = (
    "**One seed.** Each Δ is one fine-tuning of one pretraining per arm: between seeds one arm's "
    "AP moves by several points (README, \"`make demo`\"), so one run does not show which arm "
    "transfers better. `make demo SEEDS=3` gives the spread over seeds."
)


def stages_section(timings: Mapping[str, float], wall_s: float | None) -> list[str]:
    """Each stage's recorded time and their sum, whichever invocation ran them (a resumed run
    reuses finished stages); apart, this invocation's wall time."""
    rows = [[k, f"{v:.0f}"] for k, v in timings.items()]
    total = sum(timings.values())
    rows.append(["**total, every stage** (what the whole demo cost)", f"{total:.0f}"])
    lines = [markdown_table(rows, ["stage", "seconds"], colalign=("left", "right")), ""]
    if wall_s is not None:
        lines += [
            f"This invocation took {wall_s:.0f} s of wall time: the stages it ran (stages "
            "finished by an earlier invocation were reused and count only in the total above), "
            "the checks and this report.",
            "",
        ]
    return lines


def write_demo_report(
    out: Path,
    plan: Any,
    ckpts: Mapping[str, Path],
    eval_dir: Path,
    det_dirs: Sequence[Path],
    compare_dir: Path,
    timings: Mapping[str, float],
    wall_s: float | None = None,
) -> tuple[Path, str]:
    """Write OUT/report.md; return it and the two tables printed at the end of `make demo`.
    `timings`: each stage's recorded seconds; `wall_s`: the wall time of this invocation."""
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    ctx = context_table(plan, metrics["models"])
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
        ("context_confidence", "Confidence on every context-only view"),
        ("cam_grid", "Class activation maps"),
    ):
        if figures.get(key):
            md += [f"### {title}\n", f"![{title}]({rel(eval_dir / Path(figures[key]).name)})\n"]
    md += [
        f"Full evaluation report: [evaluation/report.md]({rel(eval_dir / 'report.md')})\n",
        "## Detection transfer (Faster R-CNN, COCO-style box AP)\n",
        ap_table,
        "",
        *([ONE_SEED_AP, ""] if len(seeds) == 1 else []),
        f"![AP by strategy]({rel(compare_dir / 'ap_by_strategy.png')})\n",
        "## Stages\n",
        *stages_section(timings, wall_s),
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
        + ("\n\n" + ONE_SEED_AP.replace("**", "") if len(seeds) == 1 else "")
    )
    return report, tables

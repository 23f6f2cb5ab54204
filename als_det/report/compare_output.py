"""How a comparison (`report.compare.Comparison`) is shown: the table in Markdown, CSV or LaTeX
with the runs each row pools, the AP bar chart, and the files `tools/compare.py` writes."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tabulate import tabulate

from als_det.io import atomic_write_json, atomic_write_text
from als_det.output_dir import check_output_folder
from als_det.report.compare import FORMATS, METRICS, TASKS, Comparison, compare, run_folder
from als_det.report.figures import save_figure
from als_det.report.tables import MISSING, markdown_table, mean_pm_std

logger = logging.getLogger(__name__)


def _csv(comp: Comparison) -> str:
    """One row per strategy; box AP columns as `AP_mean`, mask AP columns as `segm_AP_mean`, then
    the run folders pooled (`;`-separated)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    prefix = {task: "" if task == "bbox" else f"{task}_" for task in comp.tasks}
    w.writerow(
        ["strategy", "n"]
        + [
            f"{prefix[t]}{m}_{s}"
            for t in comp.tasks
            for m in METRICS
            for s in ("mean", "std", "delta")
        ]
        + ["runs"]
    )
    for g in comp.groups:
        w.writerow(
            [g.name, g.n]
            + [
                f"{v:.4f}"
                for t in comp.tasks
                for m in METRICS
                for v in (g.mean(m, t), g.std(m, t), comp.delta(g, m, t))
            ]
            + [";".join(r.folder for r in g.runs)]
        )
    return buf.getvalue()


def pooled_runs(comp: Comparison) -> list[str]:
    """One line per row: the runs it pools (with their pretraining/fine-tuning seeds) and the
    duplicates it counted once."""
    lines = []
    for g in comp.groups:
        line = f"{g.name} (n={g.n}): " + ", ".join(
            f"{r.folder} (seeds {r.identity.seeds[0]}/{r.identity.seeds[1]})" for r in g.runs
        )
        if g.duplicates:
            line += "; counted once: " + ", ".join(
                f"{run_folder(d.run)} (as {run_folder(d.same_as)}: {d.why})" for d in g.duplicates
            )
        lines.append(line)
    return lines


def _rows(comp: Comparison, task: str) -> list[list[str]]:
    rows = []
    for g in comp.groups:
        cells = []
        for m in METRICS:
            cell = mean_pm_std(g.mean(m, task), g.std(m, task), ".2f")
            delta = comp.delta(g, m, task)
            if g.name != comp.baseline and not math.isnan(delta):
                cell += f" ({delta:+.2f})"
            cells.append(cell)
        rows.append([g.name, str(g.n)] + cells)
    return rows


def format_table(comp: Comparison, fmt: str = "markdown") -> str:
    """The table: one row per strategy, `mean ± std (Δ vs baseline)` per metric, and n; with mask
    AP, a second table after a title line for each."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "csv":
        return _csv(comp)
    head = ["strategy", "n", *METRICS]
    align = ("left",) + ("right",) * (len(head) - 1)
    parts = []
    for task in comp.tasks:
        rows = _rows(comp, task)
        title = [f"{TASKS[task]} ({task})", ""] if len(comp.tasks) > 1 else []
        if fmt == "markdown":
            table = markdown_table(rows, head, colalign=align)
        else:  # booktabs LaTeX; tabulate escapes _ and the like, ± becomes math
            title = [f"% {t}" for t in title if t]
            table = tabulate(
                rows, head, tablefmt="latex_booktabs", disable_numparse=True, colalign=align
            ).replace("±", r"$\pm$")
        parts.append("\n".join(title + [table]))
    note = (
        f"; {MISSING}: no number (no detections, or no ground truth of that size)"
        if any(MISSING in c for task in comp.tasks for r in _rows(comp, task) for c in r)
        else ""
    )
    footer = (
        f"\n\nmean ± sample std over n runs; (Δ) vs {comp.baseline}{note}\n"
        if fmt == "markdown"
        else "\n"
    )
    runs = pooled_runs(comp)
    footer += (
        "\nruns in each row (seeds: pretraining/fine-tuning):\n"
        + "".join(f"- {line}\n" for line in runs)
        if fmt == "markdown"
        else "".join(f"% {line}\n" for line in runs)
    )
    return "\n\n".join(parts) + footer


def bar_figure(comp: Comparison, metric: str = "AP") -> Figure:
    """Bar chart of `metric` by strategy, one panel per task; error bars = sample std over the runs
    of a row, drawn only where n >= 2 (the caption says so)."""
    fig = Figure(
        figsize=(max(3.6, 1.0 + 1.0 * len(comp.groups)) * len(comp.tasks), 3.4),
        layout="constrained",
    )
    x = np.arange(len(comp.groups))
    spread = [i for i, g in enumerate(comp.groups) if g.n >= 2]
    for i, task in enumerate(comp.tasks):
        ax = fig.add_subplot(1, len(comp.tasks), i + 1)
        means = np.array([g.mean(metric, task) for g in comp.groups])
        ax.bar(x, means, color=["0.6" if g.name == comp.baseline else "C0" for g in comp.groups])
        if spread:
            ax.errorbar(
                x[spread],
                means[spread],
                yerr=[comp.groups[j].std(metric, task) for j in spread],
                fmt="none",
                ecolor="black",
                capsize=4,
            )
        ax.set_xticks(x, [f"{g.name}\n(n={g.n})" for g in comp.groups])
        ax.set_ylabel(f"{TASKS[task].split()[0]} {metric}")
        if len(comp.tasks) > 1:
            ax.set_title(
                "Detection (boxes)" if task == "bbox" else "Instance segmentation (masks)",
                fontsize=9,
            )
    what = f"{'Detection ' if comp.tasks == ('bbox',) else ''}{metric}"
    fig.suptitle(f"{what} by pretraining label strategy", fontsize=10)
    single = [g.name for g in comp.groups if g.n < 2]
    caption = (["error bars: sample std over the n runs of a row"] if spread else []) + (
        [f"n=1, no error bar: {', '.join(single)}"] if single else []
    )
    fig.supxlabel("\n".join(caption), fontsize=7)
    return fig


def bar_chart(comp: Comparison, path: str | Path, metric: str = "AP") -> Path:
    """`bar_figure`, written to `path`."""
    return save_figure(bar_figure(comp, metric), path)


def write_comparison(
    comp: Comparison, out_dir: str | Path, fmt: str = "markdown"
) -> dict[str, Path]:
    """Write the table (chosen format), comparison.json and ap_by_strategy.png into `out_dir`."""
    out_dir = Path(out_dir)
    return {
        "table": atomic_write_text(out_dir / f"comparison.{FORMATS[fmt]}", format_table(comp, fmt)),
        "json": atomic_write_json(out_dir / "comparison.json", comp.to_json()),
        "chart": bar_chart(comp, out_dir / "ap_by_strategy.png"),
    }


def run_compare(
    paths: Sequence[str | Path],
    baseline: str = "hard",
    fmt: str = "markdown",
    out_dir: str | Path = "output/compare",
) -> str:
    """`tools/compare.py`: compare, write the files (logged), return the table."""
    check_output_folder(out_dir, "--out")
    comp = compare(paths, baseline)
    for path in write_comparison(comp, out_dir, fmt).values():
        logger.info("wrote %s", path)
    return format_table(comp, fmt)

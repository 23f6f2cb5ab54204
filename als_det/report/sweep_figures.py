"""Sweep figures: the accuracy / context-reliance trade-off with its Pareto front, training
length, and transfer against context reliance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from als_det.metrics.comparison import NEUTRAL_POINTS
from als_det.report.figures import save_figure
from als_det.report.sweep import TRANSFER_PROTOCOLS, Group, Sweep
from als_det.report.transfer import PROTOCOL_TITLES
from als_det.strategies import get_strategy
from als_det.views import PRIMARY, unfilled_context_views


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (higher x and lower y, one of them strictly),
    ordered by x."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(xo >= x and yo <= y and (xo > x or yo < y) for xo, yo in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def _mean_std(g: Group, key: str, scale: float = 1.0) -> tuple[float, float]:
    s = g.stats.get(key) or {}
    if s.get("mean") is None:
        return float("nan"), 0.0
    return s["mean"] * scale, (s["std"] or 0.0) * abs(scale)


PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
)


def _styles(sweep: Sweep) -> dict[str, dict]:
    """One marker and colour per setting, the same in every figure: the baseline a black square,
    a strategy with a colour of its own (ls: grey) in it, the others by the palette, each with its
    strategy's marker (`als_det.strategies`)."""
    styles: dict[str, dict] = {}
    for g in sweep.groups:
        if g.setting in styles:
            continue
        spec = get_strategy(g.strategy["name"])
        if g.setting == sweep.baseline:
            styles[g.setting] = {"marker": "s", "color": "black", "markersize": 9}
        elif spec.color:
            styles[g.setting] = {"marker": spec.marker, "color": spec.color, "markersize": 9}
        else:
            n = sum(1 for v in styles.values() if v["color"] in PALETTE)
            styles[g.setting] = {
                "marker": spec.marker,
                "color": PALETTE[n % len(PALETTE)],
                "markersize": 7,
            }
    return styles


LABEL_OFFSETS = ((6, 5), (6, -13), (-6, 5), (-6, -13), (6, 15), (-6, -23))  # points from the marker


def _label_points(ax, names: list[str], pts: list[tuple[float, float]]) -> None:
    """Name each point at the first offset whose label box overlaps no label placed before (the
    last offset when all do): settings with close results stay readable."""
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    for name, (x, y) in zip(names, pts):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width, height = 5.0 * len(name) + 4, 12.0
        for dx, dy in LABEL_OFFSETS:
            left = px + dx if dx > 0 else px + dx - width
            box = (left, py + dy - 2, left + width, py + dy + height - 2)
            if not any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed
            ):
                break
        placed.append(box)
        ax.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=(dx, dy),
            ha="left" if dx > 0 else "right",
            fontsize=8,
            zorder=4,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        )


def _setting_point(ax, x: float, y: float, xerr: float, yerr: float, style: dict) -> None:
    """One setting's mean, with its ± std in both directions, in the setting's style."""
    ax.errorbar(
        x,
        y,
        xerr=xerr,
        yerr=yerr,
        linestyle="none",
        capsize=3,
        elinewidth=1,
        **style,
        markeredgecolor="black",
        markeredgewidth=0.6,
        zorder=3,
    )


def _panel(ax, sweep: Sweep, groups: list[Group], key: str, ylabel: str) -> None:
    base = next(g for g in groups if g.setting == sweep.baseline)
    hx, _ = _mean_std(base, "top1", 100)
    styles = _styles(sweep)
    pts = []
    for g in groups:
        x, xerr = _mean_std(g, "top1", 100)
        y, yerr = (1.0, 0.0) if g is base else _mean_std(g, key)
        pts.append((x, y))
        _setting_point(ax, x, y, xerr, yerr, styles[g.setting])
    ok = [i for i, p in enumerate(pts) if np.isfinite(p).all()]
    front = [ok[i] for i in pareto_front([pts[i] for i in ok])]
    if len(front) > 1:
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            "--",
            color="0.35",
            linewidth=1.2,
            zorder=2,
            label="Pareto front (higher top-1, lower ratio)",
        )
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, zorder=1)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    ax.fill_between(
        [hx - NEUTRAL_POINTS, x1],
        y0,
        min(1.0, y1),
        color="tab:green",
        alpha=0.08,
        zorder=0,
        label=f"≤ {NEUTRAL_POINTS:g} point below {sweep.baseline}, ratio < 1",
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    _label_points(ax, [g.setting for g in groups], pts)
    ax.set_xlabel("top-1 on val (%)")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(fontsize=7, loc="best")


def tradeoff_figure(sweep: Sweep, source: str, path: str | Path) -> Path:
    """x = top-1, y = `source` confidence over the baseline's (left: each relative to its own val
    confidence; right: absolute); one point per setting at the sweep's main length, ± 1 std over
    seeds."""
    groups = [g for g in sweep.groups if g.epochs == sweep.main_epochs]
    fig = Figure(figsize=(11.5, 4.6))
    left, right = fig.subplots(1, 2)
    _panel(
        left,
        sweep,
        groups,
        f"ratio_relative_to_val_{source}",
        f"({source} conf / val conf) over {sweep.baseline}'s\n"
        "(context reliance relative to own confidence)",
    )
    _panel(
        right,
        sweep,
        groups,
        f"ratio_absolute_{source}",
        f"{source} confidence over {sweep.baseline}'s (absolute)",
    )
    seeds = sorted({len(g.cells) for g in groups})
    fig.suptitle(
        f"Accuracy vs confidence from context alone ({source}), {sweep.main_epochs} epochs, "
        f"{'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])} per setting; "
        f"bars: ± 1 std over seeds",
        fontsize=10,
    )
    return save_figure(fig, path)


def training_length_figure(sweep: Sweep, path: str | Path, source: str = PRIMARY) -> Path | None:
    """For settings run at two or more lengths: top-1, top-1 cost vs the baseline, relative
    reliance."""
    lengths: dict[str, list[Group]] = {}
    for g in sweep.groups:
        lengths.setdefault(g.setting, []).append(g)
    multi = {s: sorted(gs, key=lambda g: g.epochs) for s, gs in lengths.items() if len(gs) > 1}
    if not multi:
        return None
    fig = Figure(figsize=(13, 4.0))
    axes = fig.subplots(1, 3)
    panels = (
        ("top1", 100, "top-1 on val (%)"),
        ("d_top1", -100, f"top-1 cost vs {sweep.baseline} (points)"),
        (
            f"ratio_relative_to_val_{source}",
            1,
            f"{source} conf / val conf, over {sweep.baseline}'s",
        ),
    )
    epochs = sorted({g.epochs for gs in multi.values() for g in gs})
    styles = _styles(sweep)
    for ax, (key, scale, label) in zip(axes, panels):
        for setting, gs in multi.items():
            if key != "top1" and setting == sweep.baseline:
                continue
            ms = [_mean_std(g, key, scale) for g in gs]
            ax.errorbar(
                [g.epochs for g in gs],
                [m for m, _ in ms],
                yerr=[s for _, s in ms],
                capsize=3,
                marker=styles[setting]["marker"],
                color=styles[setting]["color"],
                label=setting,
            )
        if key != "top1":
            ax.axhline(0.0 if key == "d_top1" else 1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(epochs, [str(e) for e in epochs])
        ax.minorticks_off()
        ax.set_xlabel("training epochs")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3, linewidth=0.5)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Training length: does the accuracy cost shrink? (bars: ± 1 std over seeds)", fontsize=10
    )
    return save_figure(fig, path)


def transfer_figure(sweep: Sweep, path: str | Path) -> Path | None:
    """x = context reliance (bg_only, and outside_crop where evaluated: confidence relative to own
    val confidence, over the baseline's), y = transfer top-1 minus the baseline's (linear probe,
    else the first protocol measured); one point per setting at the main length, ± 1 std over
    seeds. Upper left of the baseline: less context reliance, better transfer. None without
    context views."""
    groups = [g for g in sweep.groups if g.epochs == sweep.main_epochs]
    protocol = next(
        p for p in TRANSFER_PROTOCOLS if any(f"transfer_{p}" in g.stats for g in sweep.groups)
    )
    views = [s for s in (PRIMARY, *unfilled_context_views()) if s in sweep.sources]
    if not views:
        return None
    fig = Figure(figsize=(5.8 * len(views), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(views)))
    styles = _styles(sweep)
    title = PROTOCOL_TITLES[protocol]
    for ax, source in zip(axes, views):
        names, pts = [], []
        for g in groups:
            base = g.setting == sweep.baseline
            x, xerr = (1.0, 0.0) if base else _mean_std(g, f"ratio_relative_to_val_{source}")
            y, yerr = (0.0, 0.0) if base else _mean_std(g, f"d_transfer_{protocol}", 100)
            names.append(g.setting)
            pts.append((x, y))
            _setting_point(ax, x, y, xerr, yerr, styles[g.setting])
        ax.axhline(0.0, color="grey", linestyle=":", linewidth=1, zorder=1)
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1, zorder=1)
        _label_points(ax, names, pts)
        ax.set_xlabel(
            f"({source} conf / val conf) over {sweep.baseline}'s (context reliance)", fontsize=9
        )
        ax.set_ylabel(f"{title} top-1 minus {sweep.baseline}'s (points)", fontsize=9)
        ax.grid(alpha=0.3, linewidth=0.5)
    seeds = sorted({len(g.cells) for g in groups})
    fig.suptitle(
        f"Transfer ({title}) vs context reliance, {sweep.main_epochs} "
        f"epoch{'s' * (sweep.main_epochs != 1)}, "
        f"{'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])} per setting; bars: ± 1 std "
        "over seeds",
        fontsize=10,
    )
    return save_figure(fig, path)

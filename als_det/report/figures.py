"""Figures drawn from result files alone (no models): reliability diagrams, the confidence on every
context-only view, the CAM grid; `save_figure` writes every figure of the suite.

Each figure has a `*_figure` function that returns the drawn `Figure` (tests inspect it) and a
wrapper that saves it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from als_det.io import atomic_write_bytes

CAM_METHOD_NAMES = {"cam": "CAM", "gradcam": "Grad-CAM"}
CAM_COLOURMAP = "jet"


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay out `fig` (tight, unless it has its own layout engine) and write it as a PNG,
    atomically."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def _nan_for_none(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _reliability_panel(ax: Axes, count_ax: Axes, bins: dict[str, Any], title: str) -> None:
    """Accuracy per confidence bin (bars) against its mean confidence (red) on `ax`; the images per
    bin (bars, numbers above) on `count_ax` below it."""
    edges = np.asarray(bins["edges"])
    width = np.diff(edges)
    centres = edges[:-1] + width / 2
    acc, conf = _nan_for_none(bins["accuracy"]), _nan_for_none(bins["confidence"])
    counts = np.asarray(bins["counts"])
    filled = counts > 0
    ax.bar(
        centres[filled],
        acc[filled],
        width=width[filled],
        color="tab:blue",
        alpha=0.75,
        edgecolor="black",
        linewidth=0.5,
        label="accuracy in bin",
    )
    ax.hlines(
        conf[filled],
        edges[:-1][filled],
        edges[1:][filled],
        colors="tab:red",
        linewidth=2,
        label="mean confidence in bin",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelbottom=False)
    count_ax.bar(
        centres[filled],
        counts[filled],
        width=width[filled],
        color="0.6",
        edgecolor="black",
        linewidth=0.5,
    )
    for x, c in zip(centres[filled], counts[filled]):
        count_ax.annotate(
            str(int(c)),
            (x, c),
            xytext=(0, 1),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=5.5,
            rotation=90,
        )
    count_ax.set_xlim(0, 1)
    count_ax.set_ylim(0, 1.6 * max(int(counts.max()), 1))
    count_ax.set_ylabel("images", fontsize=7)
    count_ax.tick_params(labelsize=6)
    count_ax.set_xlabel("confidence (top label)")


def _scaled_title(name: str, ts: dict[str, Any]) -> str:
    t = f"T = {ts['temperature']:.3g}" + (
        ": DEGENERATE FIT, see report" if ts.get("degenerate") else ""
    )
    return (
        f"{name} after temperature scaling\n{t}\nheld-out {ts['n_eval']} images: ECE "
        f"{ts['before']['ece']:.3f} \u2192 {ts['after']['ece']:.3f}"
    )


def reliability_figure(
    models: dict[str, dict[str, Any]], scaled: dict[str, dict[str, Any]] | None = None
) -> Figure:
    """A column per model: its reliability diagram on val with images per bin below; with `scaled`
    (model -> `temperature_scaling_report`), a second pair of rows after temperature scaling on the
    held-out part. `models[name]` is a `calibration_metrics` dict (with "bins")."""
    names = list(models)
    sections = 2 if scaled else 1
    fig = Figure(figsize=(3.3 * len(names), 3.7 * sections + 0.4), layout="constrained")
    axes = fig.subplots(2 * sections, len(names), squeeze=False, height_ratios=[3, 1] * sections)
    for col, name in enumerate(names):
        m = models[name]
        _reliability_panel(
            axes[0][col],
            axes[1][col],
            m["bins"],
            f"{name}: val, {m['n']} images\nECE {m['ece']:.3f}, top-1 {m['top1']:.1%}",
        )
        if not scaled:
            continue
        ts = scaled.get(name)
        if ts and ts.get("after"):
            _reliability_panel(
                axes[2][col], axes[3][col], ts["after"]["bins"], _scaled_title(name, ts)
            )
        else:
            why = ts.get("reason", "no fit") if ts else "not temperature-scaled"
            for ax in (axes[2][col], axes[3][col]):
                ax.set_axis_off()
            axes[2][col].text(
                0.5,
                0.5,
                f"{name}: no temperature-scaled panel\n({why})",
                ha="center",
                va="center",
                fontsize=8,
                wrap=True,
                transform=axes[2][col].transAxes,
            )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=len(labels), fontsize=7, frameon=False
    )
    return fig


def reliability_diagrams(
    models: dict[str, dict[str, Any]],
    path: str | Path,
    scaled: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """`reliability_figure`, written to `path`."""
    return save_figure(reliability_figure(models, scaled), path)


def context_confidence_figure(
    confidences: dict[str, dict[str, float | None]], val: dict[str, float], baseline: str
) -> Figure:
    """Small multiples, a column per context-only view (`confidences[model][view]`: mean
    max-softmax confidence, None without images): above, the mean confidence; below, the same
    over the model's own mean confidence on intact val (`val[model]`). A bar per model, the
    baseline's grey, with a dotted line at its value to read every other bar against."""
    names = list(confidences)
    views = list(dict.fromkeys(v for by_view in confidences.values() for v in by_view))
    height = 0.3 * len(names) + 1.1
    fig = Figure(figsize=(2.7 * len(views) + 1.0, 2 * height + 0.7), layout="constrained")
    axes = fig.subplots(2, len(views), squeeze=False, sharey=True)
    y = np.arange(len(names))
    colours = ["0.6" if n == baseline else "tab:blue" for n in names]
    forms = {"mean confidence": dict.fromkeys(names, 1.0), "÷ own val confidence": val}
    for row, (label, divisor) in enumerate(forms.items()):
        d = np.array([divisor[n] for n in names])
        values = {v: _nan_for_none([confidences[n].get(v) for n in names]) / d for v in views}
        top = np.nanmax([1.0, *np.concatenate(list(values.values()))])
        for col, view in enumerate(views):
            ax, x = axes[row][col], values[view]
            ax.barh(y, np.nan_to_num(x), color=colours, height=0.7)
            for yi, xi in zip(y, x):
                text = "no images" if np.isnan(xi) else f"{xi:.2f}"
                ax.annotate(
                    text,
                    (0 if np.isnan(xi) else xi, yi),
                    xytext=(2, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
            base = x[names.index(baseline)]
            if not np.isnan(base):
                ax.axvline(base, color="0.25", linestyle=":", linewidth=1.2)
            ax.set_xlim(0, 1.18 * top)
            ax.tick_params(labelsize=7)
            ax.set_xlabel(label, fontsize=8)
            if row == 0:
                ax.set_title(view, fontsize=9)
    axes[0][0].set_yticks(y, names, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(
        f"Confidence on every context-only view (dotted: the baseline {baseline})\nbelow: over "
        "the model's own val confidence (1 = as confident as on intact val)",
        fontsize=9,
    )
    return fig


def context_confidence(
    confidences: dict[str, dict[str, float | None]],
    val: dict[str, float],
    baseline: str,
    path: str | Path,
) -> Path:
    """`context_confidence_figure`, written to `path`."""
    return save_figure(context_confidence_figure(confidences, val, baseline), path)


def _draw_boxes(ax: Axes, boxes: np.ndarray) -> None:
    for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5
            )
        )


def cam_grid_figure(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    cams: dict[str, Sequence[np.ndarray]],
    titles: dict[str, Sequence[str]],
    row_labels: Sequence[str],
    method: str,
    files: Sequence[str] | None = None,
) -> Figure:
    """A row per image: the input with its boxes (titled by its class `row_labels[i]`, the file
    `files[i]` in small print below), then each model's map, each scaled to its own peak, on one
    colour bar.

    `images` are uint8 network-input crops [S, S, 3], `boxes` in input pixels, `cams[model][i]` a
    [S, S] map, `titles[model][i]` a caption (e.g. the prediction and confidence), `method` a key
    of CAM_METHOD_NAMES.
    """
    label = CAM_METHOD_NAMES[method]
    names = list(cams)
    rows, cols = len(images), 1 + len(names)
    fig = Figure(figsize=(2.2 * max(cols, 2) + 0.9, 2.4 * rows + 0.6), layout="compressed")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r])
            if c > 0:
                cam = np.clip(cams[names[c - 1]][r], 0, None)
                peak = cam.max()
                ax.imshow(
                    cam / peak if peak > 0 else cam, cmap=CAM_COLOURMAP, alpha=0.5, vmin=0, vmax=1
                )
                ax.set_title(f"{names[c - 1]}\n{titles[names[c - 1]][r]}", fontsize=8)
            else:
                ax.set_title(row_labels[r], fontsize=9, fontweight="bold")
                if files:
                    ax.set_xlabel(f"file {files[r]}", fontsize=6, color="0.35")
            _draw_boxes(ax, boxes[r])
            ax.set_xticks([])
            ax.set_yticks([])
    bar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap=CAM_COLOURMAP),
        ax=axes[:, 1:].ravel().tolist(),
        shrink=min(1.0, 0.9 / rows + 0.3),
        aspect=25,
    )
    bar.set_label(f"{label}, positive part / its peak (each map)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{label} of the labelled class (white: labelled boxes)", fontsize=9)
    return fig


def cam_grid(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    cams: dict[str, Sequence[np.ndarray]],
    titles: dict[str, Sequence[str]],
    row_labels: Sequence[str],
    path: str | Path,
    method: str,
    files: Sequence[str] | None = None,
) -> Path:
    """`cam_grid_figure`, written to `path`."""
    return save_figure(
        cam_grid_figure(images, boxes, cams, titles, row_labels, method, files), path
    )

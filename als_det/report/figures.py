"""Figures drawn from result files alone (no models): reliability diagrams, confidence histograms,
the CAM grid; `save_figure` writes every figure of the suite."""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from als_det.io import atomic_write_bytes


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay out `fig` and write it as a PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def reliability_diagrams(models: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """A panel per model: accuracy per confidence bin (bars) and the bin's mean confidence (red), ECE in the title.

    `models[name]` is a `calibration_metrics` dict (with "bins").
    """
    names = list(models)
    fig = Figure(figsize=(3.4 * len(names), 3.6))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        m = models[name]
        edges = np.asarray(m["bins"]["edges"])
        width = np.diff(edges)
        centres = edges[:-1] + width / 2
        acc = np.array([np.nan if a is None else a for a in m["bins"]["accuracy"]])
        conf = np.array([np.nan if c is None else c for c in m["bins"]["confidence"]])
        filled = ~np.isnan(acc)
        ax.bar(centres[filled], acc[filled], width=width[filled], color="tab:blue", alpha=0.75, edgecolor="black",
               linewidth=0.5, label="accuracy in bin")
        ax.hlines(conf[filled], edges[:-1][filled], edges[1:][filled], colors="tab:red", linewidth=2,
                  label="mean confidence in bin")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top label)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {m['ece']:.3f}, top-1 {m['top1']:.1%}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    return save_figure(fig, path)


def confidence_histograms(hists: dict[str, dict[str, Any]], title: str, path: str | Path) -> Path:
    """Overlaid step histograms of max-softmax confidence, one line per model (fractions of images)."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    for name, h in hists.items():
        counts = np.asarray(h["counts"], dtype=float)
        total = counts.sum()
        frac = counts / total if total else counts
        ax.stairs(frac, np.asarray(h["edges"]), label=f"{name} (n={int(total)})", linewidth=1.8)
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("max softmax confidence")
    ax.set_ylabel("fraction of images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def cam_grid(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], cams: dict[str, Sequence[np.ndarray]],
             titles: dict[str, Sequence[str]], row_labels: Sequence[str], path: str | Path) -> Path:
    """One PNG: a row per image (the input with its boxes, then each model's CAM overlaid).

    `images` are uint8 network-input crops [S, S, 3], `boxes` in input pixels, `cams[model][i]` a
    [S, S] map, `titles[model][i]` a caption (e.g. the prediction and confidence).
    """
    names = list(cams)
    rows, cols = len(images), 1 + len(names)
    fig = Figure(figsize=(2.2 * max(cols, 2), 2.3 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r])
            if c > 0:
                cam = np.clip(cams[names[c - 1]][r], 0, None)
                peak = cam.max()
                ax.imshow(cam / peak if peak > 0 else cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.set_title(f"{names[c - 1]}\n{titles[names[c - 1]][r]}", fontsize=8)
            else:
                ax.set_title(row_labels[r], fontsize=8)
            for x0, y0, x1, y1 in np.asarray(boxes[r]).reshape(-1, 4):
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                                       linewidth=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("CAM of the labelled class\n(white: labelled boxes)", fontsize=9)
    return save_figure(fig, path)

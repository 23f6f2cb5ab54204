"""An evaluation's metrics (`als_det.analysis.evaluate`) -> report.md with tables (models as
columns, `report.evaluation_markdown`), its figures, and metrics.json:
`write_evaluation(metrics, out_dir)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from als_det.io import atomic_write_json, atomic_write_text
from als_det.report.evaluation_markdown import render_report
from als_det.report.figures import cam_grid, context_confidence, reliability_diagrams
from als_det.report.fills import view_confidences
from als_det.report.headline import add_sentences


def _draw_cam_grid(entry: dict[str, Any], out: Path) -> Path:
    with np.load(out / entry["data"], allow_pickle=False) as data:
        boxes = data["boxes"]
        images = list(data["images"])
        cams = {name: list(data[f"cam_{i}"]) for i, name in enumerate(entry["models"])}
    per_row = [boxes[boxes[:, 0] == r, 1:] for r in range(len(images))]
    return cam_grid(
        images,
        per_row,
        cams,
        entry["titles"],
        entry["rows"],
        out / "cam_grid.png",
        entry["method"],
        entry.get("files"),
    )


def write_evaluation(metrics: dict[str, Any], out_dir: str | Path) -> Path:
    """Draw the figures into `out_dir`, give each headline comparison its sentence, write
    report.md and metrics.json (figures recorded under "figures"); returns report.md."""
    out = Path(out_dir)
    models = metrics["models"]
    figs = metrics.setdefault("figures", {})
    scaled = {n: m["temperature_scaling"] for n, m in models.items() if "temperature_scaling" in m}
    figs["reliability"] = reliability_diagrams(
        {n: m["val"] for n, m in models.items()}, out / "reliability.png", scaled
    ).name
    figs["context_confidence"] = context_confidence(
        {n: view_confidences(m) for n, m in models.items()},
        {n: m["val"]["mean_confidence"] for n, m in models.items()},
        metrics["headline"]["baseline"],
        out / "context_confidence.png",
    ).name
    if metrics.get("cam_grid"):
        figs["cam_grid"] = _draw_cam_grid(metrics["cam_grid"], out).name
    add_sentences(metrics)
    report = atomic_write_text(out / "report.md", render_report(metrics))
    atomic_write_json(out / "metrics.json", metrics)
    return report

"""A sweep's report: `write_sweep_report` summarizes the cells (`report.sweep`) and writes
report.md (`report.sweep_tables`), sweep.json and the figures (`report.sweep_figures`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from als_det.io import atomic_write_json, atomic_write_text
from als_det.report.sweep import SweepCell, of_val_images, summarize
from als_det.report.sweep_figures import (
    tradeoff_figure,
    training_length_figure,
    transfer_figure,
)
from als_det.report.sweep_tables import render_sweep_report, sweep_json


def write_sweep_report(
    cells: Sequence[SweepCell],
    out_dir: str | Path,
    baseline: str = "hard",
    main_epochs: int | None = None,
    title: str = "",
    missing: Sequence[dict[str, Any]] = (),
    missing_transfer: Sequence[dict[str, Any]] = (),
) -> Path:
    """Summarize `cells` and write OUT/report.md, OUT/sweep.json and the figures; returns
    report.md. `missing`: the planned cells left out ({cell, setting, seed, epochs, reason}),
    named at the top; `missing_transfer`: likewise the shown cells without their transfer."""
    out = Path(out_dir)
    sweep = summarize(cells, baseline, main_epochs)
    figures = {
        s: tradeoff_figure(sweep, s, out / f"tradeoff_{s}.png").name
        for s in sweep.sources
        if of_val_images(s)
    }
    length = training_length_figure(sweep, out / "training_length.png")
    if length is not None:
        figures["training_length"] = length.name
    transfer = None if sweep.transfer is None else transfer_figure(sweep, out / "transfer.png")
    if transfer is not None:
        figures["transfer"] = transfer.name
    atomic_write_json(out / "sweep.json", sweep_json(sweep, figures, missing, missing_transfer))
    return atomic_write_text(
        out / "report.md",
        render_sweep_report(sweep, figures, title, missing, missing_transfer),
    )

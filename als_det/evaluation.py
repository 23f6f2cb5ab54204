"""`tools/evaluate.py` as one call: the data root's layout picks the evaluation (box-based, or the
ImageNet-9 Backgrounds Challenge for a tree with `original/val`), options that do not apply to it
are refused before anything runs, then the evaluation, its report and a summary in the log."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from als_det.analysis.backgrounds import evaluate_in9, is_in9_layout
from als_det.analysis.evaluate import EvalOptions, evaluate_checkpoints
from als_det.cli import option_flag
from als_det.report.backgrounds import summary_lines, write_in9_report
from als_det.report.evaluation import write_evaluation

logger = logging.getLogger(__name__)

# Options of the box-based evaluation that an ImageNet-9 tree has no use for.
IN9_IGNORES = (
    "split",
    "boxes",
    "val_labels",
    "temperature_scaling",
    "fill",
    "min_crop_fraction",
    "cam_method",
    "grid_images",
    "max_images",
    "cache_dir",
)


def check_options(
    data_root: str | Path, opts: EvalOptions, baseline: str | None, in_to_in9: str | None
) -> bool:
    """Whether `data_root` is an ImageNet-9 tree; ValueError naming every option (changed from its
    default) that does not apply to its kind of data."""
    if not is_in9_layout(data_root):
        if in_to_in9:
            raise ValueError(
                f"--in-to-in9 applies to ImageNet-9 data; {data_root} has no original/val folder"
            )
        return False
    defaults = EvalOptions()
    unused = [
        option_flag(f)
        for f in fields(EvalOptions)
        if f.name in IN9_IGNORES and getattr(opts, f.name) != getattr(defaults, f.name)
    ]
    if baseline is not None:
        unused.insert(0, "--baseline")
    if unused:
        raise ValueError(
            f"{' '.join(unused)} do(es) not apply to ImageNet-9 data ({data_root} has original/val)"
        )
    return True


def evaluate(
    checkpoints: Sequence[str],
    data_root: str,
    out_dir: str,
    names: Sequence[str] | None = None,
    baseline: str | None = None,
    in_to_in9: str | None = None,
    opts: EvalOptions | None = None,
    args: dict[str, Any] | None = None,
) -> Path | None:
    """Evaluate `checkpoints` on `data_root` and write the report into `out_dir`: report.md and
    metrics.json, or in9_report.md and in9_metrics.json. Returns the report on rank 0 (None on
    the others); `args`: the command line, recorded in the metrics."""
    opts = opts or EvalOptions()
    if check_options(data_root, opts, baseline, in_to_in9):
        metrics = evaluate_in9(
            checkpoints, data_root, out_dir, names, in_to_in9=in_to_in9, opts=opts, args=args
        )
        write, summary = write_in9_report, summary_lines
    else:
        metrics = evaluate_checkpoints(
            checkpoints, data_root, out_dir, names, baseline=baseline, opts=opts, args=args
        )
        write, summary = write_evaluation, _bg_only_sentences
    if metrics is None:  # not rank 0
        return None
    report = write(metrics, out_dir)
    logger.info("wrote %s and its metrics beside it (%.0f s)", report, metrics["wall_time_s"])
    for line in summary(metrics):
        logger.info(line)
    return report


def _bg_only_sentences(metrics: dict[str, Any]) -> list[str]:
    return [
        comps["bg_only"]["sentence"]
        for comps in metrics["headline"]["comparisons"].values()
        if "bg_only" in comps
    ]

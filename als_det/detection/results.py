"""`OUTPUT_DIR/results.json` of a fine-tuning run (schema in docs/architecture.md)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from als_det.io import atomic_write_json
from als_det.versions import package_versions

SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _number(x: Any) -> float | None:
    """COCOeval's NaN (no ground truth / no detections) becomes JSON null, not a non-standard NaN."""
    x = float(x)
    return None if math.isnan(x) else x


TASKS = ("bbox", "segm")  # COCO box AP, and mask AP for models that predict masks


def bbox_summary(bbox: Mapping[str, float]) -> dict[str, Any]:
    """detectron2's COCOEvaluator `bbox` (or `segm`) dict -> {AP, ..., APl, per_class: {name: AP}}."""
    missing = [m for m in SUMMARY_METRICS if m not in bbox]
    if missing:
        raise KeyError(f"evaluation results lack {missing}; got keys {sorted(bbox)}")
    out: dict[str, Any] = {m: _number(bbox[m]) for m in SUMMARY_METRICS}
    out["per_class"] = {k[len("AP-"):]: _number(v) for k, v in bbox.items() if k.startswith("AP-")}
    return out


def task_summaries(results: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """{"bbox": summary, ["segm": summary]} from one data set's COCOEvaluator results."""
    return {task: bbox_summary(results[task]) for task in TASKS if task in results}


def write_results(output_dir: str | Path, eval_results: Mapping[str, Mapping[str, Any]],
                  backbone: Mapping[str, Any], iterations: int, seed: int,
                  **extra: Any) -> Path:
    """Write results.json atomically. `eval_results` maps each test data set's name to
    detectron2's results for it ({"bbox": {...}, ["segm": {...}]}); `bbox` (and `segm`) are the
    first data set's, every data set's are kept under `by_dataset`."""
    if not eval_results:
        raise ValueError("no evaluation results to write")
    by_dataset = {name: task_summaries(res) for name, res in eval_results.items()}
    first = next(iter(by_dataset))
    payload = {**by_dataset[first], "test_dataset": first, "by_dataset": by_dataset,
               "backbone": dict(backbone), "iterations": int(iterations), "seed": int(seed),
               **extra, "versions": package_versions()}
    return atomic_write_json(Path(output_dir) / "results.json", payload)

"""`OUTPUT_DIR/results.json` of a fine-tuning run (schema in docs/architecture.md)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from als_det.config import flatten_config
from als_det.detection.datasets import dataset_record
from als_det.io import atomic_write_json
from als_det.revision import code_revision
from als_det.versions import package_versions

SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Detection config keys that do not define the experiment: where and how it runs, its seed (a
# run's seed is what varies between the runs pooled as one experiment), the weights (the backbone
# is identified by its own record) and the data set names (data sets are identified by the sha256
# of their json). Every other key (model, solver and schedule, input sizes, test settings) does.
NOT_EXPERIMENT_KEYS = frozenset(
    {
        "OUTPUT_DIR",
        "SEED",
        "MODEL.WEIGHTS",
        "MODEL.DEVICE",
        "DATASETS.TRAIN",
        "DATASETS.TEST",
        "DATALOADER.NUM_WORKERS",
        "SOLVER.CHECKPOINT_PERIOD",
        "TEST.EVAL_PERIOD",
        "VIS_PERIOD",
        "CUDNN_BENCHMARK",
    }
)


def experiment_config(cfg: CfgNode) -> dict[str, Any]:
    """results.json's `detection_config`: the keys that define the experiment and their sha256."""
    values = {k: v for k, v in flatten_config(cfg).items() if k not in NOT_EXPERIMENT_KEYS}
    text = json.dumps(values, sort_keys=True)
    return {"fingerprint": hashlib.sha256(text.encode()).hexdigest(), "values": values}


def training_record(cfg: CfgNode) -> dict[str, Any]:
    """How the fine-tuned weights were made beyond the backbone: the fine-tuning seed and the
    training data (sha256 of each registered json). Kept in each checkpoint, so that an
    `--eval-only` run of it knows which seed it measures."""
    return {
        "seed": int(cfg.SEED),
        "train_sets": {n: r["json_sha256"] for n, r in dataset_record(cfg.DATASETS.TRAIN).items()},
    }


NO_CUDA_AMP = "detectron2's AMPTrainer (float16 autocast + GradScaler) needs CUDA"


def amp_record(cfg: CfgNode) -> dict[str, Any]:
    """results.json's `amp` (whether training ran in mixed precision) and, when it did not, why."""
    if cfg.SOLVER.AMP.ENABLED:
        return {"amp": True}
    if not cfg.MODEL.DEVICE.startswith("cuda"):
        return {"amp": False, "amp_reason": f"MODEL.DEVICE {cfg.MODEL.DEVICE}: {NO_CUDA_AMP}"}
    return {"amp": False, "amp_reason": "SOLVER.AMP.ENABLED is False in the config"}


def _number(x: Any) -> float | None:
    """COCOeval's NaN (no ground truth / no detections) becomes JSON null, not a non-standard
    NaN."""
    x = float(x)
    return None if math.isnan(x) else x


TASKS = ("bbox", "segm")  # COCO box AP, and mask AP for models that predict masks


def bbox_summary(bbox: Mapping[str, float]) -> dict[str, Any]:
    """detectron2's COCOEvaluator `bbox` (or `segm`) dict -> {AP, ..., APl, per_class: {name:
    AP}}."""
    missing = [m for m in SUMMARY_METRICS if m not in bbox]
    if missing:
        raise KeyError(f"evaluation results lack {missing}; got keys {sorted(bbox)}")
    out: dict[str, Any] = {m: _number(bbox[m]) for m in SUMMARY_METRICS}
    out["per_class"] = {k[len("AP-") :]: _number(v) for k, v in bbox.items() if k.startswith("AP-")}
    return out


def task_summaries(results: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """{"bbox": summary, ["segm": summary]} from one data set's COCOEvaluator results."""
    return {task: bbox_summary(results[task]) for task in TASKS if task in results}


def write_results(
    output_dir: str | Path,
    eval_results: Mapping[str, Mapping[str, Any]],
    backbone: Mapping[str, Any],
    iterations: int,
    seed: int,
    **extra: Any,
) -> Path:
    """Write results.json atomically. `eval_results` maps each test data set's name to
    detectron2's results for it ({"bbox": {...}, ["segm": {...}]}); `bbox` (and `segm`) are the
    first data set's, every data set's are kept under `by_dataset`. `extra` holds the rest of the
    run's record (data sets, detection config, training record, ...)."""
    if not eval_results:
        raise ValueError("no evaluation results to write")
    by_dataset = {name: task_summaries(res) for name, res in eval_results.items()}
    first = next(iter(by_dataset))
    payload = {
        **by_dataset[first],
        "test_dataset": first,
        "by_dataset": by_dataset,
        "backbone": dict(backbone),
        "iterations": int(iterations),
        "seed": int(seed),
        **extra,
        "versions": package_versions(),
        "revision": code_revision(),
    }
    return atomic_write_json(Path(output_dir) / "results.json", payload)

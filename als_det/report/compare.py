"""Compare fine-tuning runs: results.json files -> per-strategy statistics (`Comparison`), which
`report.compare_output` shows as tables and an AP bar chart.

Box AP (`bbox`) always; mask AP (`segm`) too when every run has it (Mask R-CNN), as a second table.

Every run must measure one experiment (test set, detection config, schedule, training data: see
`als_det.report.pooling`). Runs are grouped by their backbone's label strategy
(`backbone.label_strategy.name`; when runs sharing a name differ in the strategy's parameters or
in their backbone recipe, the differing ones join the group label). Within a group each run is a
seed; a run with the same seeds as another is a duplicate, named and counted once. Several seeds
per strategy give a mean and a sample standard deviation (n shown); each metric's difference to
the baseline strategy's mean is reported; every row names the runs it pools.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from als_det.metrics.comparison import mean_std
from als_det.report.pooling import (
    Duplicate,
    ResultsError,
    RunIdentity,
    check_one_experiment,
    drop_duplicates,
    read_identity,
    recipe_differences,
)
from als_det.strategies import rank

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = {"bbox": "box AP", "segm": "mask AP"}
FORMATS = {"markdown": "md", "csv": "csv", "latex": "tex"}

logger = logging.getLogger(__name__)


@dataclass
class Run:
    path: Path
    strategy: dict[str, Any]
    identity: RunIdentity
    metrics: dict[str, dict[str, float]]  # task (bbox, segm) -> metric -> value

    @property
    def folder(self) -> str:
        return run_folder(self.path)


@dataclass
class Group:
    name: str
    runs: list[Run] = field(default_factory=list)
    duplicates: list[Duplicate] = field(
        default_factory=list
    )  # runs of the same seeds, counted once

    @property
    def n(self) -> int:
        return len(self.runs)

    def values(self, metric: str, task: str = "bbox") -> np.ndarray:
        return np.array([r.metrics[task][metric] for r in self.runs], dtype=np.float64)

    def mean(self, metric: str, task: str = "bbox") -> float:
        return mean_std(self.values(metric, task))[0]

    def std(self, metric: str, task: str = "bbox") -> float:
        """Sample standard deviation (ddof=1); NaN for a single run."""
        std = mean_std(self.values(metric, task))[1]
        return math.nan if std is None else std


def run_folder(results: Path) -> str:
    """A results.json's run folder, as given (how tables name runs)."""
    return str(results.parent if results.name == "results.json" else results)


def results_path(path: str | Path) -> Path:
    """A run folder or its results.json -> the results.json path."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def load_run(path: str | Path) -> Run:
    """Read and check one results.json (a run folder or the file itself)."""
    file = results_path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{file}: no results.json (did the fine-tuning run finish?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{file}: not a readable json file: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("bbox"), dict):
        raise ResultsError(f"{file}: no 'bbox' object; not a fine-tuning results.json")
    metrics = {task: _task_metrics(file, task, data[task]) for task in TASKS if task in data}
    strategy = (data.get("backbone") or {}).get("label_strategy")
    if isinstance(strategy, str):
        strategy = {"name": strategy}
    if not isinstance(strategy, dict) or not strategy.get("name"):
        raise ResultsError(
            f"{file}: backbone.label_strategy.name is missing; cannot group the run "
            "(was the backbone converted from an als_det pretraining checkpoint?)"
        )
    return Run(path=file, strategy=strategy, identity=read_identity(file, data), metrics=metrics)


def _task_metrics(file: Path, task: str, section: Any) -> dict[str, float]:
    if not isinstance(section, dict):
        raise ResultsError(f"{file}: '{task}' is not an object")
    metrics = {}
    for m in METRICS:
        v = section.get(m, "absent")
        # null: COCOeval gave no number (no ground truth of that size, or a run without detections)
        if v is None:
            metrics[m] = math.nan
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            raise ResultsError(f"{file}: {task}.{m} is {v!r}, expected a number")
        metrics[m] = float(v)
    return metrics


def _sort_key(name: str) -> tuple[int, str]:
    return rank(name.split("[")[0]), name


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Group by strategy name, adding the strategy parameters and backbone-recipe keys that differ
    among runs of the same name; within a group, runs of the same seeds are counted once."""
    files = [r.path.resolve() for r in runs]
    dup = sorted({str(f) for f in files if files.count(f) > 1})
    if dup:
        raise ResultsError(f"the same results.json given more than once: {dup}")
    by_name: dict[str, list[Run]] = {}
    for r in runs:
        by_name.setdefault(r.strategy["name"], []).append(r)
    members_of: dict[str, list[Run]] = {}
    for name, members in by_name.items():
        keys = sorted({k for r in members for k in r.strategy if k != "name"})
        varying = [k for k in keys if len({json.dumps(r.strategy.get(k)) for r in members}) > 1]
        recipe = recipe_differences(members)
        for r in members:
            parts = [f"{k}={r.strategy.get(k)}" for k in varying] + [
                f"{k}={r.identity.recipe.get(k)}" for k in recipe
            ]
            label = name + ("[" + ",".join(parts) + "]" if parts else "")
            members_of.setdefault(label, []).append(r)
    groups = [Group(label, *drop_duplicates(members)) for label, members in members_of.items()]
    return sorted(groups, key=lambda g: _sort_key(g.name))


@dataclass
class Comparison:
    groups: list[Group]
    baseline: str
    tasks: tuple[str, ...] = ("bbox",)

    def base(self) -> Group:
        return next(g for g in self.groups if g.name == self.baseline)

    def delta(self, group: Group, metric: str, task: str = "bbox") -> float:
        return group.mean(metric, task) - self.base().mean(metric, task)

    def _stats(self, g: Group, task: str) -> dict[str, Any]:
        return {
            m: {
                k: None if math.isnan(v) else v
                for k, v in (
                    ("mean", g.mean(m, task)),
                    ("std", g.std(m, task)),
                    ("delta", self.delta(g, m, task)),
                )
            }
            for m in METRICS
        }

    def to_json(self) -> dict[str, Any]:
        """Box AP statistics at the top of each group (as before mask AP existed), mask AP under
        `segm`."""
        first = self.groups[0].runs[0].identity
        experiment = {
            "test_set": first.test_set,
            "test_json_sha256": first.test_sha256,
            "detection_config": first.config_fingerprint,
            "iterations": first.iterations,
        }
        return {
            "baseline": self.baseline,
            "metrics": list(METRICS),
            "tasks": list(self.tasks),
            "experiment": experiment,
            "groups": {
                g.name: {
                    "n": g.n,
                    "runs": [str(r.path) for r in g.runs],
                    "seeds": [
                        {"pretrain": r.identity.seeds[0], "finetune": r.identity.seeds[1]}
                        for r in g.runs
                    ],
                    "duplicates": [
                        {"run": str(d.run), "same_as": str(d.same_as), "why": d.why}
                        for d in g.duplicates
                    ],
                    **self._stats(g, "bbox"),
                    **{task: self._stats(g, task) for task in self.tasks if task != "bbox"},
                }
                for g in self.groups
            },
        }


def compare(paths: Sequence[str | Path], baseline: str = "hard") -> Comparison:
    """Load every run, group by strategy and check the baseline is among the groups."""
    if not paths:
        raise ResultsError("no run folders given")
    runs = [load_run(p) for p in paths]
    check_one_experiment(runs)
    with_masks = [str(r.path) for r in runs if "segm" in r.metrics]
    if with_masks and len(with_masks) != len(runs):
        raise ResultsError(
            f"only some runs have mask AP (segm): {with_masks}; compare mask models "
            "with mask models"
        )
    groups = group_runs(runs)
    names = [g.name for g in groups]
    if baseline not in names:
        raise ResultsError(
            f"baseline {baseline!r} is not among the strategies {names}; pass --baseline NAME"
        )
    return Comparison(groups, baseline, ("bbox", "segm") if with_masks else ("bbox",))

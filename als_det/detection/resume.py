"""Whether a fine-tune may `--resume` from its OUTPUT_DIR's last checkpoint, decided before anything
in the folder changes.

Each checkpoint's trainer state records the experiment it trains (`EXPERIMENT_KEY`: the detection
config's experiment keys, `als_det.detection.results.experiment_config`), how it trains (seed and
train sets by json sha256, `training_record`) and the resumes before it (`RESUMES_KEY`). As in
pretraining (`als_det.engine.resume`; the refusal is `als_det.config.changed_experiment`), a resume
whose experiment differs is refused with every difference listed, unless the change is deliberate
(`--allow-config-change`): then it is recorded in results.json's `resumes`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from als_det.config import ALLOW_FLAG, ResumeError, changed_experiment
from als_det.detection.results import experiment_config, training_record
from als_det.weights_io import WeightsFileError, read_torch_file

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"  # detectron2's record of the latest checkpoint's file name
EXPERIMENT_KEY = "als_det_experiment"
TRAINING_KEY = "als_det_training"
RESUMES_KEY = "als_det_resumes"
TRAIN_SETS = "train data sets (json sha256)"


@dataclass
class CheckedResume:
    """A checkpoint that may be resumed: its path, its iteration and results.json's `resumes`
    (the checkpoint's earlier ones plus this one, with the experiment changes it allowed)."""

    path: Path
    iteration: int
    resumes: list[dict[str, Any]]


def last_checkpoint(output_dir: str | Path) -> Path:
    """The checkpoint `--resume` continues from; a ResumeError when there is none."""
    tag = Path(output_dir) / LAST_CHECKPOINT
    if not tag.is_file():
        raise ResumeError(
            f"cannot resume: {output_dir} holds no checkpoint (no {LAST_CHECKPOINT} file); "
            "start a fresh run without --resume"
        )
    path = tag.parent / tag.read_text(encoding="utf-8").strip()
    if not path.is_file():
        raise ResumeError(f"cannot resume: {tag} names {path.name}, which does not exist")
    return path


def experiment_differences(state: Mapping[str, Any], cfg: CfgNode) -> dict[str, tuple[Any, Any]]:
    """What differs between the experiment a checkpoint's trainer `state` records and `cfg`'s:
    key -> (checkpoint's, now); a key one side lacks shows as None there."""
    then, now = state[EXPERIMENT_KEY], experiment_config(cfg)["values"]
    diffs = {
        k: (then.get(k), now.get(k))
        for k in sorted(set(then) | set(now))
        if then.get(k) != now.get(k)
    }
    trained, training = state.get(TRAINING_KEY) or {}, training_record(cfg)
    if trained.get("seed") != training["seed"]:
        diffs["SEED"] = (trained.get("seed"), training["seed"])
    if trained.get("train_sets") != training["train_sets"]:
        diffs[TRAIN_SETS] = (trained.get("train_sets"), training["train_sets"])
    return diffs


def check_resume(cfg: CfgNode, unsafe_load: bool, allow_change: bool) -> CheckedResume:
    """Read OUTPUT_DIR's last checkpoint and compare its experiment with `cfg`'s (registered data
    sets, class count set). A negative SEED (draw one) takes the checkpoint's seed (`cfg` is
    changed). Raises ResumeError: no or an unreadable checkpoint, or a changed experiment unless
    `allow_change`."""
    path = last_checkpoint(cfg.OUTPUT_DIR)
    try:
        data, _ = read_torch_file(path, unsafe_load)
    except WeightsFileError as err:
        raise ResumeError(f"cannot resume: {err}") from err
    state = data.get("trainer") if isinstance(data, dict) else None
    if not isinstance(state, dict) or "iteration" not in data:
        raise ResumeError(f"cannot resume {path}: not a checkpoint of a fine-tuning run")
    if EXPERIMENT_KEY not in state:
        raise ResumeError(
            f"cannot resume {path}: it records no experiment config to check this one against "
            "(written before als_det recorded it); start a fresh run"
        )
    seed = (state.get(TRAINING_KEY) or {}).get("seed")
    if cfg.SEED < 0 and seed is not None:
        cfg.defrost()
        cfg.SEED = seed
        cfg.freeze()
        logger.info("SEED is negative: resuming with the checkpoint's seed %d", seed)
    diffs = experiment_differences(state, cfg)
    if diffs and not allow_change:
        raise changed_experiment(str(path), diffs, "results.json")
    if diffs:
        logger.warning(
            "resuming with %d deliberate change(s) of the experiment (%s; recorded in "
            "results.json): %s",
            len(diffs),
            ALLOW_FLAG,
            ", ".join(diffs),
        )
    iteration = int(data["iteration"])
    entry = {
        "from": str(path),
        "after_iteration": iteration,
        "config_changes": {k: {"checkpoint": a, "now": b} for k, (a, b) in diffs.items()},
    }
    resumes = [*(state.get(RESUMES_KEY) or []), entry]
    return CheckedResume(path=path, iteration=iteration, resumes=resumes)

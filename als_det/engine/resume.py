"""Whether a checkpoint may be resumed under the current config.

Every config key defines the experiment except the few in `als_det.config.RUNTIME_KEYS`, which
only say where and how fast it runs. A resume whose experiment keys (or process count, hence
global batch) differ from the checkpoint's is refused with every difference listed, unless the
change is deliberate (`allow_change`); then the differences are returned for `run.json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fvcore.common.config import CfgNode

from als_det.config import (
    RUNTIME_KEYS,
    changed_experiment,
    flatten_config,
    saved_config,
)

WORLD_SIZE = "processes (global batch = SOLVER.BATCH_SIZE x processes)"


def config_differences(saved_yaml: str, cfg: CfgNode) -> dict[str, tuple[Any, Any]]:
    """Experiment keys whose value differs: key -> (checkpoint's, now). A key the checkpoint's
    config lacks had its default then; a key that no longer exists shows as `None` now."""
    then = saved_config(saved_yaml)
    now = flatten_config(cfg)
    return {
        k: (then.get(k), now.get(k))
        for k in sorted(set(then) | set(now))
        if k not in RUNTIME_KEYS and then.get(k) != now.get(k)
    }


def check_resume(
    ckpt: Mapping[str, Any], cfg: CfgNode, world_size: int, path: str, allow_change: bool = False
) -> dict[str, tuple[Any, Any]]:
    """The differences between the checkpoint's experiment and this one's ({} when none).

    Raises ResumeError listing each difference unless `allow_change`.
    """
    diffs = config_differences(ckpt["config"], cfg)
    saved_world = ckpt.get("world_size")
    if saved_world is not None and int(saved_world) != world_size:
        diffs[WORLD_SIZE] = (int(saved_world), world_size)
    if diffs and not allow_change:
        raise changed_experiment(path, diffs, "run.json")
    return diffs


def resume_record(
    path: str, epoch: int, diffs: Mapping[str, tuple[Any, Any]], earlier: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """run.json's `resumes` list: the earlier entries plus this resume and its allowed changes."""
    entry = {
        "from": path,
        "after_epoch": epoch,
        "config_changes": {k: {"checkpoint": a, "now": b} for k, (a, b) in diffs.items()},
    }
    return [*earlier, entry]

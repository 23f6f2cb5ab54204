"""--resume against a changed experiment: refused with every difference listed and OUTPUT_DIR
untouched, or allowed on purpose and recorded in run.json; and the config's numeric ranges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_trainer import CONFIGS, tiny_cfg
from tiny_runs import TINY_GEN

from als_det.config import ResumeError, load_config
from als_det.data.generated import generate
from als_det.engine.checkpoint import load_checkpoint
from als_det.engine.resume import WORLD_SIZE, check_resume, config_differences
from als_det.engine.trainer import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, OUTPUT_DIR of a finished 2-epoch run), never modified by the tests: they copy
    it."""
    base = tmp_path_factory.mktemp("resume")
    root = generate(base / "gen", TINY_GEN, progress=False)
    out = train(tiny_cfg(root, base / "run", "TRAIN.MAX_ITERS_PER_EPOCH", "1"))
    return root, out


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_refused_resume_lists_every_difference_and_changes_nothing(finished_run, tmp_path):
    root, done = finished_run
    out = tmp_path / "run"
    shutil.copytree(done, out)
    before = _snapshot(out)
    changed = tiny_cfg(
        root,
        out,
        "TRAIN.MAX_ITERS_PER_EPOCH",
        "1",
        "DATA.IMAGE_SIZE",
        "12",
        "SOLVER.BATCH_SIZE",
        "4",
        "SOLVER.EPOCHS",
        "3",
        "DATA.NUM_WORKERS",
        "1",
    )
    with pytest.raises(ResumeError) as err:
        train(changed, resume="last")
    msg = str(err.value)
    assert "3 differences" in msg and "--allow-config-change" in msg
    for line in (
        "DATA.IMAGE_SIZE: 16 (checkpoint) -> 12 (now)",
        "SOLVER.BATCH_SIZE: 8 (checkpoint) -> 4 (now)",
        "SOLVER.EPOCHS: 2 (checkpoint) -> 3 (now)",
    ):
        assert line in msg
    assert "NUM_WORKERS" not in msg  # how fast it runs is not the experiment
    assert (
        _snapshot(out) == before
    )  # config.yaml, run.json, metrics, checkpoints, events: untouched


def test_allowed_change_continues_and_is_recorded(finished_run, tmp_path):
    root, done = finished_run
    out = tmp_path / "run"
    shutil.copytree(done, out)
    train(
        tiny_cfg(root, out, "TRAIN.MAX_ITERS_PER_EPOCH", "1", "SOLVER.EPOCHS", "3"),
        resume="last",
        allow_config_change=True,
    )
    assert load_checkpoint(out / "last.pth")["epoch"] == 3
    run = json.loads((out / "run.json").read_text())
    (resume,) = run["resumes"]
    assert resume["after_epoch"] == 2 and resume["from"] == str(out / "last.pth")
    assert resume["config_changes"] == {"SOLVER.EPOCHS": {"checkpoint": 2, "now": 3}}
    assert "SOLVER:\n  BASE_LR: 0.2" in (out / "config.yaml").read_text()
    assert "EPOCHS: 3" in (out / "config.yaml").read_text()


def test_experiment_keys_and_process_count(finished_run):
    root, done = finished_run
    ckpt = load_checkpoint(done / "last.pth")
    same = tiny_cfg(
        root,
        done,
        "TRAIN.MAX_ITERS_PER_EPOCH",
        "1",
        "DATA.NUM_WORKERS",
        "3",
        "TRAIN.EVAL_PERIOD",
        "2",
        "OUTPUT_DIR",
        "elsewhere",
        "TRAIN.COMPILE",
        "True",
    )
    assert check_resume(ckpt, same, world_size=1, path="x") == {}
    assert ckpt["world_size"] == 1
    with pytest.raises(ResumeError, match=r"processes \(global batch"):
        check_resume(ckpt, same, world_size=2, path="x")
    assert check_resume(ckpt, same, world_size=2, path="x", allow_change=True) == {
        WORLD_SIZE: (1, 2)
    }
    other = tiny_cfg(
        root,
        done,
        "TRAIN.MAX_ITERS_PER_EPOCH",
        "1",
        "LABELS.STRATEGY",
        "hard",
        "SEED",
        "4",
        "TRAIN.AMP",
        "bf16",
        "DATA.CROP_SCALE",
        "(0.2, 1.0)",
    )
    assert config_differences(ckpt["config"], other) == {
        "DATA.CROP_SCALE": ([0.08, 1.0], [0.2, 1.0]),
        "LABELS.STRATEGY": ("als", "hard"),
        "SEED": (0, 4),
        "TRAIN.AMP": ("none", "bf16"),
    }


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("SOLVER.EPOCHS", "-1", "SOLVER.EPOCHS must be >= 1, got -1"),
        ("SOLVER.EPOCHS", "0", "SOLVER.EPOCHS must be >= 1"),
        ("SOLVER.BATCH_SIZE", "0", "SOLVER.BATCH_SIZE must be >= 1"),
        ("SOLVER.BASE_LR", "0.0", "SOLVER.BASE_LR must be > 0"),
        ("SOLVER.BASE_LR", "-0.1", "SOLVER.BASE_LR must be > 0"),
        ("SOLVER.WARMUP_EPOCHS", "8", r"WARMUP_EPOCHS \(8\) must be less than SOLVER.EPOCHS \(8\)"),
        ("SOLVER.MOMENTUM", "1.5", "SOLVER.MOMENTUM must be >= 0 and <= 1"),
        ("SOLVER.WEIGHT_DECAY", "-1e-4", "SOLVER.WEIGHT_DECAY must be >= 0"),
        ("DATA.IMAGE_SIZE", "0", "DATA.IMAGE_SIZE must be > 0"),
        ("DATA.VAL_RESIZE", "32", r"DATA.VAL_RESIZE \(32\) must be >= DATA.IMAGE_SIZE \(64\)"),
        ("DATA.NUM_WORKERS", "-1", "DATA.NUM_WORKERS must be >= 0"),
        ("DATA.CROP_SCALE", "(0.5, 0.1)", "DATA.CROP_SCALE must be"),
        ("DATA.CROP_RATIO", "(0.0, 1.0)", "DATA.CROP_RATIO must be"),
        ("TRAIN.EVAL_PERIOD", "0", "TRAIN.EVAL_PERIOD must be >= 1"),
        ("TRAIN.MAX_ITERS_PER_EPOCH", "-2", "TRAIN.MAX_ITERS_PER_EPOCH must be >= 0"),
        ("SEED", "-3", "SEED must be >= 0"),
        ("DATA.GEN.CONTEXT_RATE", "1.2", "DATA.GEN.CONTEXT_RATE must be >= 0 and <= 1"),
        ("SOLVER.BASE_LR", "1e999", "SOLVER.BASE_LR must be > 0"),  # inf
        # the LABELS keys, checked by LabelStrategy itself
        ("LABELS.STRATEGY", "soft", "LABELS.STRATEGY must be one of"),
        ("LABELS.POWER", "0.0", "LABELS.POWER must be > 0"),
        ("LABELS.NO_BOX_EPSILON", "1.5", r"LABELS.NO_BOX_EPSILON must lie in \[0, 1\]"),
        ("LABELS.E_MAX", "-0.1", "LABELS needs 0 <= E_MIN <= E_MAX <= 1"),
    ],
)
def test_numeric_keys_outside_their_range_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_config(str(CONFIGS / "demo_als.yaml"), [key, value])


def test_step_schedule_needs_steps_inside_the_run():
    with pytest.raises(ValueError, match="SOLVER.STEPS must be increasing"):
        load_config(
            str(CONFIGS / "demo_als.yaml"), ["SOLVER.SCHEDULE", "step", "SOLVER.STEPS", "(6, 3)"]
        )
    cfg = load_config(
        str(CONFIGS / "demo_als.yaml"), ["SOLVER.SCHEDULE", "step", "SOLVER.STEPS", "(3, 6)"]
    )
    assert tuple(cfg.SOLVER.STEPS) == (3, 6)

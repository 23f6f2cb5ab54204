"""Reading config files: only plain YAML (no file can run code), `_BASE_` chains and their faults,
each a one-line error naming the file, in both config systems and in plans."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import run_tool

from als_det.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = "configs/pretrain/demo_als.yaml"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_tagged_or_malformed_pretraining_config_is_one_line(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(
        f"_BASE_: {REPO / DEMO}\nSEED: !!python/object/apply:os.system [touch {marker}]\n"
    )
    assert run_tool("pretrain", ["--config-file", str(tagged)]) == 2
    assert _error_line(capsys).startswith(f"error: {tagged}: refused at line 2")
    assert not marker.exists()
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("SOLVER:\n  EPOCHS: [1\n")
    assert run_tool("pretrain", ["--config-file", str(malformed)]) == 2
    assert _error_line(capsys).startswith(f"error: {malformed}: not valid YAML: line 3")
    (tmp_path / "child.yaml").write_text("_BASE_: tagged.yaml\n")
    with pytest.raises(ConfigError, match=rf"tagged.yaml \(a _BASE_ of {tmp_path}/child.yaml\)"):
        load_config(str(tmp_path / "child.yaml"))
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("- SEED\n- 1\n", "a config is a mapping of KEY: value, got a list"),
        ("_BASE_: 3\n", "_BASE_ must be a file name or a list of them, got 3"),
        ("_BASE_: nowhere.yaml\n", "config file .*nowhere.yaml \\(a _BASE_ of .*\\) not found"),
        ("DATA: 1\n", "c.yaml: DATA must be a section of keys, got int \\(1\\)$"),
        ("SOLVER:\n  EPOCHS: abc\n", "c.yaml: SOLVER.EPOCHS must be int, got str \\(abc\\)$"),
        (
            "SOLVER:\n  STEPS:\n    X: 1\n",
            "c.yaml: SOLVER.STEPS must be tuple, got a section of keys",
        ),
    ],
)
def test_config_file_faults_name_the_file(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(str(tmp_path / "c.yaml"))
    assert "\n" not in str(err.value)


def test_a_base_cycle_is_named_in_both_config_systems(tmp_path):
    from als_det.detection.config import get_detection_cfg

    (tmp_path / "a.yaml").write_text("_BASE_: [ok.yaml, b.yaml]\nSEED: 1\n")
    (tmp_path / "b.yaml").write_text("_BASE_: sub/../a.yaml\n")
    (tmp_path / "ok.yaml").write_text("SEED: 2\n")
    (tmp_path / "sub").mkdir()
    cycle = f"{tmp_path}/a.yaml: _BASE_ cycle: {tmp_path}/a.yaml -> {tmp_path}/b.yaml -> "
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "a.yaml"))
    assert str(err.value) == f"{cycle}{tmp_path}/sub/../a.yaml"
    with pytest.raises(ConfigError) as err:
        get_detection_cfg(str(tmp_path / "a.yaml"))
    assert str(err.value) == f"{cycle}{tmp_path}/sub/../a.yaml"
    # the same base twice (a diamond) is no cycle
    (tmp_path / "b.yaml").write_text("_BASE_: ok.yaml\n")
    assert load_config(str(tmp_path / "a.yaml")).SEED == 1


def test_a_plan_naming_a_tagged_or_malformed_config_is_one_line(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    plan = (REPO / "configs/experiments/smoke.yaml").read_text()
    for name, text in (
        ("tagged.yaml", f"SEED: !!python/object/apply:os.system [touch {marker}]\n"),
        ("malformed.yaml", "SEED: [\n"),
    ):
        (tmp_path / name).write_text(text)
        (tmp_path / "plan.yaml").write_text(plan.replace(DEMO, str(tmp_path / name)))
        argv = ["--plan", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "out")]
        assert run_tool("run_experiment", [*argv, "--dry-run"]) == 2
        assert _error_line(capsys).startswith(f"error: {tmp_path / name}: ")
        assert not marker.exists() and not (tmp_path / "out").exists()
    # the plan file itself
    for text, message in (
        (f"name: x\nout: !!python/object/apply:os.system [touch {marker}]\n", "refused at line 2"),
        ("name: [x\n", "not valid YAML: line 2, column 1"),
    ):
        (tmp_path / "plan.yaml").write_text(text)
        assert run_tool("run_experiment", ["--plan", str(tmp_path / "plan.yaml"), "--dry-run"]) == 2
        assert _error_line(capsys).startswith(f"error: {tmp_path / 'plan.yaml'}: {message}")
        assert not marker.exists()


def test_the_model_zoo_reads_safely_as_detectron2_reads_it(tmp_path):
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from als_det.detection.config import ZOO_DIR, DetectionCfgNode, get_detection_cfg

    # every zoo file reads (Base-RetinaNet.yaml's one eval tag as its known value) ...
    zoo = sorted(Path(ZOO_DIR).rglob("*.yaml"))
    assert len(zoo) > 50
    for path in zoo:
        DetectionCfgNode.load_yaml_with_base(str(path))
    # ... giving exactly what detectron2's unsafe reading gives
    name = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
    theirs = get_cfg()
    theirs.merge_from_file(model_zoo.get_config_file(name))
    assert get_detection_cfg(f"model_zoo://{name}").dump() == theirs.dump()
    # the same tag in a user's file is refused
    own = tmp_path / "own.yaml"
    own.write_text((Path(ZOO_DIR) / "Base-RetinaNet.yaml").read_text())
    with pytest.raises(ConfigError, match="own.yaml: refused at line 8: .*apply:eval"):
        get_detection_cfg(str(own))


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("SOLVER:\n  BASE_LR: .nan\n", "SOLVER.BASE_LR must be a finite number, got nan"),
        ("SOLVER:\n  BASE_LR: -0.01\n", "SOLVER.BASE_LR must be > 0, got -0.01"),
        ("SOLVER:\n  WEIGHT_DECAY: .inf\n", "SOLVER.WEIGHT_DECAY must be a finite number, got inf"),
        ("SOLVER:\n  MAX_ITER: 0\n", "SOLVER.MAX_ITER must be >= 1, got 0"),
        ("SOLVER:\n  CHECKPOINT_PERIOD: 0\n", "SOLVER.CHECKPOINT_PERIOD must be >= 1, got 0"),
        (
            "SOLVER:\n  STEPS: (20, 10)\n",
            r"SOLVER.STEPS must be increasing iterations, got \(20, 10\)",
        ),
        ("INPUT:\n  MIN_SIZE_TRAIN: (64, 0)\n", r"INPUT.MIN_SIZE_TRAIN must be > 0, got \[64, 0\]"),
        ("MODEL:\n  PIXEL_STD: [1.0, 0.0, 1.0]\n", "MODEL.PIXEL_STD must be > 0"),
        (
            "MODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 1.5\n",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST must be >= 0 and <= 1, got 1.5",
        ),
    ],
)
def test_detection_configs_are_range_checked_up_front(tmp_path, capsys, yaml_text, message):
    from als_det.detection.config import get_detection_cfg

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"_BASE_: {REPO / 'configs/detection/faster_rcnn_R_18_FPN_demo.yaml'}\n{yaml_text}"
    )
    with pytest.raises(ValueError, match=message):
        get_detection_cfg(str(bad))
    if "nan" in message:  # the tool: one line, before any model or data set
        assert run_tool("finetune_coco", ["--config-file", str(bad)]) == 2
        assert _error_line(capsys).startswith(f"error: {message}")

"""A fine-tuning run's folder holds one run: a fresh run sets an earlier one aside, and the data
sets a run used are recorded there and used again by `--eval-only` with the run's own
config.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import DETECTION_DEMO, FINETUNE_TINY, finetune, tiny_coco

from als_det.detection.datasets import DatasetError

REPO = Path(__file__).resolve().parents[1]


def _tool(*argv: str, config: str = DETECTION_DEMO) -> None:
    """tools/finetune_coco.py in its own process, as a user runs it (detectron2 caches its log file
    per process, so two runs into one folder are two commands)."""
    proc = subprocess.run(
        [sys.executable, "tools/finetune_coco.py", "--config-file", config, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _iterations(out: Path) -> list[int]:
    return [
        json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def trained(resnet18_pkl, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A 2-iteration fine-tune on a tiny hand-made set (a checkpoint after each iteration)."""
    root = tmp_path_factory.mktemp("ft")
    js, img = tiny_coco(root / "data")
    data = ["--dataset", f"tiny={js}:{img}", "--train-dataset", "tiny", "--test-dataset", "tiny"]
    out = root / "run"
    finetune(
        *data,
        "MODEL.WEIGHTS",
        str(resnet18_pkl),
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        *FINETUNE_TINY,
    )
    return out, js, data


@pytest.mark.slow
def test_a_fresh_fine_tune_into_a_used_folder_sets_the_earlier_run_aside(
    trained,
    resnet18_pkl,
    tmp_path,
):
    _, _, data = trained
    out = tmp_path / "run"
    _tool(
        *data,
        "MODEL.WEIGHTS",
        str(resnet18_pkl),
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "3",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        *FINETUNE_TINY,
    )
    earlier = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "model_0000001.pth" in earlier and _iterations(out) == [
        2,
        3,
    ]  # last training row, evaluation

    # a re-run from the run's own config.yaml: its weights, sizes and data sets, fewer iterations
    _tool(
        "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", config=str(out / "config.yaml")
    )
    aside = list(out.glob("previous-*"))
    assert len(aside) == 1
    # the earlier run survives whole and untouched, beside the new one
    assert {p.name: p.read_bytes() for p in aside[0].iterdir() if p.is_file()} == earlier
    # the folder holds the new run alone: its iterations, one event file, no stale checkpoint
    assert _iterations(out) == [1, 2]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_final.pth"]
    assert json.loads((out / "results.json").read_text())["iterations"] == 2
    log = (out / "log.txt").read_text()
    assert log.count("Starting training from iteration 0") == 1
    assert f"held an earlier run; starting afresh, its files moved to {aside[0]}" in log
    # read before the earlier run was set aside with its config
    assert f"Using the data sets recorded in {out / 'datasets.json'}" in log
    # --resume continues the run in the folder instead: nothing more is set aside
    _tool(
        *data,
        "--resume",
        "--allow-config-change",
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "3",
        *FINETUNE_TINY,
    )
    assert len(list(out.glob("previous-*"))) == 1 and _iterations(out) == [1, 2, 2, 3]


@pytest.mark.slow
def test_eval_only_with_the_runs_config_evaluates_the_data_sets_it_used(
    trained, tmp_path, monkeypatch
):
    run, js, _ = trained
    recorded = json.loads((run / "datasets.json").read_text())
    assert recorded["train"] == recorded["test"] == ["tiny"]
    assert recorded["datasets"]["tiny"]["json_file"] == str(js)
    elsewhere = (
        tmp_path / "elsewhere"
    )  # a fresh working folder: relative default paths would point here
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ev = tmp_path / "eval"
    finetune(
        "--eval-only",
        "MODEL.WEIGHTS",
        str(run / "model_final.pth"),
        "OUTPUT_DIR",
        str(ev),
        config=str(run / "config.yaml"),
    )
    res, trained_res = (json.loads((d / "results.json").read_text()) for d in (ev, run))
    assert res["test_dataset"] == "tiny" and res["eval_only"] is True
    assert res["datasets"]["tiny"] == recorded["datasets"]["tiny"]
    assert res["bbox"] == trained_res["bbox"]
    # what tools/compare.py pools by: the same experiment, and the seed of the run that made the
    # weights
    sha = recorded["datasets"]["tiny"]["json_sha256"]
    assert res["training"] == trained_res["training"] == {"seed": 5, "train_sets": {"tiny": sha}}
    assert res["detection_config"] == trained_res["detection_config"]
    values = res["detection_config"]["values"]
    assert values["SOLVER.MAX_ITER"] == 2 and values["INPUT.MIN_SIZE_TEST"] == 64
    assert not {"SEED", "OUTPUT_DIR", "MODEL.WEIGHTS", "DATASETS.TEST"} & set(values)
    assert (
        list(elsewhere.iterdir()) == []
    )  # no data set generated or registered under the working folder
    assert "data sets recorded in " + str(run / "datasets.json") in (ev / "log.txt").read_text()


@pytest.mark.slow
def test_eval_only_refuses_a_recorded_data_set_that_changed(trained, tmp_path):
    run, js, _ = trained
    data = json.loads(js.read_text())
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "config.yaml").write_text((run / "config.yaml").read_text())
    record = json.loads((run / "datasets.json").read_text())
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**data, "annotations": data["annotations"][:1]}))
    record["datasets"]["tiny"]["json_file"] = str(changed)
    (copy / "datasets.json").write_text(json.dumps(record))
    with pytest.raises(
        DatasetError,
        match=rf"{changed} has changed since the run recorded it in "
        rf"{copy / 'datasets.json'}",
    ):
        finetune(
            "--eval-only",
            "MODEL.WEIGHTS",
            str(run / "model_final.pth"),
            "OUTPUT_DIR",
            str(tmp_path / "ev"),
            config=str(copy / "config.yaml"),
        )

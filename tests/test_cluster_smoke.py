"""`configs/experiments/cluster_smoke.yaml`: paper_r50's stages in paper_r50's resources shape, and
end to end here on the real-data fixtures (tiny-imagenet-10 for ImageNet, coco-mini for COCO) with
the resources of this machine and small images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_runs import tool_module

from als_det.experiment.graph import build_graph
from als_det.experiment.plan import load_plan

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "configs/experiments"
DET = "faster_rcnn_R_50_FPN_1x"


def test_cluster_smoke_has_every_stage_of_the_paper_plan_in_its_resources_shape():
    paper, smoke = (
        build_graph(load_plan(PLANS / f"{n}.yaml")) for n in ("paper_r50", "cluster_smoke")
    )
    assert [st.name for st in smoke.stages] == [st.name for st in paper.stages]
    for small, full in zip(smoke.stages, paper.stages):
        assert small.command.tool == full.command.tool
        config = dict(zip(small.command.spec[::2], small.command.spec[1::2])).get("config")
        assert config == dict(zip(full.command.spec[::2], full.command.spec[1::2])).get("config")
        shape = ("nodes", "gpus_per_node", "procs_per_node", "cpus_per_proc", "mem_gb")
        assert [getattr(small.resources, k) for k in shape] == [
            getattr(full.resources, k) for k in shape
        ], small.name
        assert small.resources.timeout_min <= full.resources.timeout_min


@pytest.mark.slow
def test_cluster_smoke_runs_end_to_end_on_the_real_data_fixtures(
    tiny_imagenet, coco_mini, tmp_path, capsys
):
    raw = yaml.safe_load((PLANS / "cluster_smoke.yaml").read_text())
    raw["out"] = str(tmp_path / "out")
    raw["data"]["root"] = str(tiny_imagenet)
    del raw["arms"]["ls"]  # two arms keep the test short; a third adds nothing it checks
    del raw["transfer"]  # transfer stages run end to end in tests/test_sweep_plan.py
    for section in (raw["pretrain"], raw["evaluate"], raw["convert"], raw["compare"]):
        section["resources"] = {"timeout_min": 30}  # one process on this machine's CPUs
    raw["pretrain"]["overrides"].update(
        {
            "DATA.MAX_PER_CLASS": 2,
            "TRAIN.MAX_ITERS_PER_EPOCH": 1,
            "SOLVER.BATCH_SIZE": 4,
            "DATA.NUM_WORKERS": 0,
            "DATA.IMAGE_SIZE": 32,
            "DATA.VAL_RESIZE": 36,
        }
    )
    raw["evaluate"]["args"] = ["--workers", "0", "--max-images", "10", "--grid-images", "0"]
    det = raw["detection"][0]
    det["args"] = [a.replace("datasets/coco", str(coco_mini)) for a in det["args"]]
    det["resources"] = {"timeout_min": 30}
    det["overrides"].update(
        {
            "SOLVER.MAX_ITER": 1,
            "SOLVER.WARMUP_ITERS": 0,
            "SOLVER.IMS_PER_BATCH": 1,
            "DATALOADER.NUM_WORKERS": 0,
            "INPUT.MIN_SIZE_TRAIN": "(64,)",
            "INPUT.MAX_SIZE_TRAIN": 96,
            "INPUT.MIN_SIZE_TEST": 64,
            "INPUT.MAX_SIZE_TEST": 96,
        }
    )
    plan = tmp_path / "cluster_smoke.yaml"
    plan.write_text(yaml.safe_dump(raw, sort_keys=False))
    main = tool_module("run_experiment")["main"]

    assert main(["--plan", str(plan)]) == 0  # the pre-flight check included
    err = capsys.readouterr().err
    assert "PROBLEM" not in err and "8 stage(s) ran, 0 reused" in err, err[-3000:]
    out = tmp_path / "out"
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert sorted(metrics["models"]) == ["als", "hard"]
    for arm in ("hard", "als"):
        assert "ARCH: resnet50" in (out / "pretrain" / arm / "config.yaml").read_text()
        run = json.loads((out / "pretrain" / arm / "run.json").read_text())
        assert run["index"]["train"]["images"] == run["index"]["train"]["with_boxes"] == 2 * 10
        results = json.loads((out / "detection" / DET / arm / "results.json").read_text())
        assert results["backbone"]["path"] == str(out / "pretrained" / f"{arm}.pkl")
        assert results["test_dataset"] == "coco_val_smoke" and "AP" in results["bbox"]
    comparison = json.loads((out / "compare" / DET / "comparison.json").read_text())
    assert sorted(comparison["groups"]) == ["als", "hard"]

"""The pre-flight check of `tools/run_experiment.py`: before any stage starts, every missing
prerequisite is one line and the command stops with exit 2; the shipped CPU plans pass it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import tool_module

from als_det.data.boxes import layout_problems
from als_det.experiment import preflight
from als_det.experiment.graph import build_graph
from als_det.experiment.plan import parse_plan
from als_det.experiment.runner import dry_run

REPO = Path(__file__).resolve().parents[1]
PLANS = REPO / "configs/experiments"


def _raw(name: str) -> dict:
    return yaml.safe_load((PLANS / f"{name}.yaml").read_text())


def _problems(raw: dict, launcher: str = "local") -> list[str]:
    plan = parse_plan(raw, "p.yaml")
    return [f.text for f in preflight.check(plan, build_graph(plan), launcher) if not f.ok]


def test_paper_plan_without_imagenet_stops_before_launching_with_one_line_per_problem(
    tmp_path, capsys
):
    main = tool_module("run_experiment")["main"]
    out = tmp_path / "paper"
    assert main(["--plan", str(PLANS / "paper_r50.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    problems = [ln for ln in err.splitlines() if ln.lstrip().startswith("PROBLEM")]
    expected = [
        "pretraining: data root datasets/imagenet does not exist",
        "transfer: downstream root datasets/downstream does not exist (expected train/<class>/*",
        "COCO root datasets/coco",
    ]
    if torch.cuda.device_count() < 8:
        expected.append("ask for 8 per node, this machine has")
    assert len(problems) == len(expected), err
    for text, line in zip(expected, problems):
        assert text in line, err
    assert f"found {len(expected)} problem(s)" in err and "--skip-preflight" in err
    assert "error: " in err and "Traceback" not in err and "torchrun" not in err
    assert not out.exists()  # nothing launched, nothing written

    assert main(["--plan", str(PLANS / "paper_r50.yaml"), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "# pre-flight check:" in listing
    assert sum("PROBLEM" in ln for ln in listing.splitlines()) == len(expected)


def test_skip_preflight_launches_anyway(tmp_path, capsys):
    main = tool_module("run_experiment")["main"]
    raw = {
        "name": "nowhere",
        "out": str(tmp_path / "out"),
        "data": {"root": str(tmp_path / "nowhere")},
        "arms": {"hard": {"config": "configs/pretrain/tiny_imagenet_hard.yaml"}},
        "evaluate": None,
    }
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(raw))
    assert main(["--plan", str(plan)]) == 2
    assert not (tmp_path / "out").exists()
    assert main(["--plan", str(plan), "--skip-preflight"]) == 1  # the stage ran, and failed
    assert "FAILED stage pretrain_hard failed" in capsys.readouterr().err
    assert "nowhere has no 'train' folder" in (tmp_path / "out/logs/pretrain_hard.log").read_text()


@pytest.mark.parametrize("name", ["demo", "smoke", "sweep_smoke", "sweep_tiny_imagenet"])
def test_shipped_cpu_plans_pass(name, tiny_imagenet, tiny_imagenet_transfer, tmp_path):
    raw = _raw(name)
    raw["out"] = str(tmp_path / "out")
    if not raw["data"].get("generate"):
        raw["data"]["root"] = str(tiny_imagenet)
    if raw.get("transfer"):
        raw["transfer"]["data"] = str(tiny_imagenet_transfer)
    assert _problems(raw) == []


def test_gpus_torch_detectron2_and_disk_are_reported(tmp_path):
    raw = _raw("smoke")
    raw["out"] = str(tmp_path / "out")
    raw["pretrain"]["resources"] = {"gpus_per_node": 64}
    plan = parse_plan(raw, "p.yaml")
    graph = build_graph(plan)
    text = preflight.listing(preflight.check(plan, graph, "local"))
    assert f"torch {torch.__version__}" in text
    assert "pretrain_hard, pretrain_als ask for 64 per node, this machine has" in text
    assert "detectron2: " in text and ("pure-Python build" in text or "compiled" in text)
    assert "disk: about 1.2 GB needed" in text  # 2 pretraining x 0.1 + 2 fine-tuning x 0.5
    # On SLURM the GPUs are the nodes': not a problem of this machine.
    slurm = preflight.check(plan, graph, "slurm")
    assert [f.ok for f in slurm if f.text.startswith("GPUs")] == [True]


def test_layout_problems_name_what_build_index_would_miss(tmp_path):
    root = tmp_path / "imagenet"
    (root / "train" / "n01440764").mkdir(parents=True)
    (root / "train" / "n01440764" / "a.JPEG").write_bytes(b"")
    (root / "val").mkdir()
    (root / "val" / "b.JPEG").write_bytes(b"")  # flat val, no labels file
    (root / "Annotation" / "train").mkdir(parents=True)
    assert layout_problems(root, "train") == []
    assert layout_problems(root, "val") == [
        f"{root / 'val'} has no class folders (<wnid>/) and no labels file",
        f"no boxes: {root / 'Annotation' / 'val'} does not exist",
    ]
    assert layout_problems(root, "val", boxes=str(tmp_path / "LOC.csv"), val_labels="x.txt") == [
        "labels file x.txt does not exist",
        f"box source {tmp_path / 'LOC.csv'} does not exist",
    ]
    assert layout_problems(root, "test") == [f"image folder {root / 'test'} does not exist"]


def test_detection_data_sets_and_evaluation_root_are_checked(tmp_path, tiny_imagenet, coco_mini):
    raw = _raw("smoke")
    raw["out"] = str(tmp_path / "out")
    raw["data"] = {"root": str(tiny_imagenet)}
    raw["evaluate"]["data"] = str(tmp_path / "in9")
    ann = coco_mini / "annotations"
    raw["detection"][0]["args"] = [
        "--dataset",
        f"mini_train={ann}/instances_train2017.json:{coco_mini}/train2017",
        "--dataset",
        f"mini_val={tmp_path}/instances_val2017.json:{coco_mini}/val2017",
        "--train-dataset",
        "mini_train",
        "--test-dataset",
        "mini_val",
    ]
    assert _problems(raw) == [
        f"evaluation: data root {tmp_path / 'in9'} does not exist ({preflight.IMAGENET_LAYOUT})",
        f"fine-tuning (faster_rcnn_R_18_FPN_demo): mini_val: {tmp_path}/instances_val2017.json "
        "not found (COCO-format json and image folder)",
    ]
    raw["detection"][0]["args"] = ["--coco-root", str(coco_mini)]
    raw["evaluate"]["data"] = str(tiny_imagenet)
    assert _problems(raw) == []


def test_transfer_downstream_root_is_checked(tmp_path, tiny_imagenet, tiny_imagenet_transfer):
    raw = _raw("sweep_smoke")
    raw["out"] = str(tmp_path / "out")
    raw["data"]["root"] = str(tiny_imagenet)
    down = tmp_path / "down"
    raw["transfer"]["data"] = str(down)
    layout = 'expected train/<class>/*, val/<class>/*; docs/architecture.md "Transfer stage"'
    assert _problems(raw) == [f"transfer: downstream root {down} does not exist ({layout})"]
    (down / "train" / "daisy").mkdir(parents=True)
    (down / "val").mkdir()
    assert _problems(raw) == [
        f"transfer: downstream root {down}: no class folders in val/ ({layout})"
    ]
    raw["transfer"]["data"] = str(tiny_imagenet_transfer)
    plan = parse_plan(raw, "p.yaml")
    found = [f for f in preflight.check(plan, build_graph(plan), "local") if "transfer:" in f.text]
    assert [(f.ok, f.text) for f in found] == [
        (
            True,
            f"transfer: downstream root {tiny_imagenet_transfer}: 20 train and 20 val classes "
            "found",
        )
    ]


def test_dry_run_ends_with_the_check_as_comments(tmp_path):
    raw = _raw("smoke")
    raw["out"] = str(tmp_path / "out")
    text = dry_run(parse_plan(raw, "p.yaml"))
    check = text.split("# pre-flight check:\n", 1)[1].splitlines()
    assert check and all(ln.startswith("#  ok") for ln in check), text


def test_an_arm_whose_config_does_not_load_is_left_to_fail_on_its_own(tmp_path):
    raw = _raw("smoke")
    raw["out"] = str(tmp_path / "out")
    raw["arms"]["broken"] = {"config": "configs/pretrain/demo_hard.yaml", "overrides": {"NOT.A": 1}}
    plan = parse_plan(raw, "p.yaml")
    findings = preflight.check(plan, build_graph(plan), "local")
    assert all(f.ok for f in findings)  # the other arms run; the broken one fails as its stage
    text = preflight.listing(findings)
    assert "unchecked  pretrain_broken: its config does not load: " in text and "NOT.A" in text


def test_the_gpu_smoke_plan_runs_its_cuda_settings_on_a_gpu_and_is_refused_without_one():
    """`gpu_check.sh`'s chain: fp16 + GradScaler on the workers path for one arm, bf16 + nvJPEG
    for the other, detectron2's AMP, one GPU for every stage that trains or evaluates."""
    plan = parse_plan(_raw("gpu_smoke"), "gpu_smoke.yaml")
    graph = build_graph(plan)
    gpu_stages = {st.name for st in graph.stages if st.resources.gpus_per_node == 1}
    kinds = {name.split("_")[0] for name in gpu_stages}
    assert kinds == {"pretrain", "evaluate", "transfer", "finetune"}
    args = {
        st.name: dict(zip(st.command.args[::2], st.command.args[1::2]))
        for st in graph.stages
        if st.name.startswith("pretrain_")
    }
    hard, als = args["pretrain_hard_fp16"], args["pretrain_als"]
    assert (hard["TRAIN.AMP"], hard["DATA.DECODE"]) == ("fp16", "workers")
    assert (als["TRAIN.AMP"], als["DATA.DECODE"], als["TRAIN.CHANNELS_LAST"]) == (
        "bf16",
        "device",
        "True",
    )
    (finetune, *_) = [st for st in graph.stages if st.name.startswith("finetune_")]
    assert "SOLVER.AMP.ENABLED" in finetune.command.args
    refused = [p for p in _problems(_raw("gpu_smoke")) if "ask for 1 per node" in p]
    assert bool(refused) == (torch.cuda.device_count() == 0)

"""`tools/run_experiment.py --dry-run` estimates each stage's time and GPU-hours from labelled
rates: published reference figures, or the ones this checkout measured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from als_det.experiment.estimate import RECORDED_GPU_CHECK
from als_det.experiment.plan import load_plan, parse_plan
from als_det.experiment.runner import dry_run

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "experiments" / "paper_r50.yaml"


def _estimates(text: str) -> dict[str, list[str]]:
    """{stage: its estimate lines} from a dry run's listing."""
    out: dict[str, list[str]] = {}
    tail = text.split("# estimates", 1)[1].split("# pre-flight check", 1)[0].splitlines()[1:]
    for line in tail:
        if line.startswith("# ~ "):
            out[line[4:]] = []
        elif line.startswith("#    "):
            out[next(reversed(out))].append(line)
    return out


def _hours(line: str) -> float:
    return float(re.search(r", ([\d.]+) h, ", line).group(1))


def test_every_stage_of_the_paper_plan_has_a_labelled_estimate(tmp_path: Path) -> None:
    text = dry_run(load_plan(PAPER), bench_dir=tmp_path, recorded=None)  # nothing measured
    est = _estimates(text)
    assert len(est) == 14
    pre = est["pretrain_als"]
    assert "1281167 images (ILSVRC2012 train" in pre[0] and "resnet50 at 224 px on 8 GPU" in pre[0]
    assert "published: NVIDIA DeepLearningExamples" in pre[0] and "assumed: issue 21" in pre[0]
    workers, device = pre[1], pre[2]
    assert workers.startswith("#    DATA.DECODE workers (the config's): 1200 img/s per GPU")
    # 90 epochs x 1,281,167 images at 8 x 2470 img/s
    assert _hours(device) == round(90 * 1281167 / (8 * 2470) / 3600, 1)
    assert _hours(workers) > _hours(device)
    det = est["finetune_faster_rcnn_R_50_FPN_1x_hard"][0]
    assert "0.210 s/iter (published: detectron2 model zoo, 8 V100, float32" in det
    assert _hours(det) == round(90000 * 0.210 / 3600, 1)
    assert "no rate: its time limit, 180 min, at most 24 GPU-hours" in est["evaluate"][0]
    assert (
        "datasets/downstream is not here to count: its time limit, 240 min"
        in est["transfer_hard"][0]
    )
    estimates = text.split("# pre-flight check", 1)[0]  # the pre-flight list follows them
    assert estimates.splitlines()[-1].startswith("# total: ")


def test_measured_rates_replace_the_assumed_ones(tmp_path: Path) -> None:
    machine = {"cpu": "Test CPU", "date": "2026-12-03 10:00:00 UTC"}
    (tmp_path / "bench_decode.json").write_text(
        json.dumps({"images_per_s_per_core": {"workers": 400.0}, "machine": machine})
    )
    plan = load_plan(PAPER)
    pre = _estimates(dry_run(plan, bench_dir=tmp_path, recorded=None))["pretrain_hard"]
    assert "measured: bench_decode.py on Test CPU, 2026-12-03 10:00:00 UTC" in pre[0]
    # 8 workers x 400 img/s per core outrun the GPU step: both paths are GPU-bound
    assert "(GPU step-bound)" in pre[1] and _hours(pre[1]) == _hours(pre[2])


def test_transfer_estimate_counts_the_downstream_set(tmp_path: Path, tiny_imagenet_transfer):
    raw = yaml.safe_load(PAPER.read_text())
    raw["transfer"]["data"] = str(tiny_imagenet_transfer)
    plan = parse_plan(raw, "p.yaml")
    line = _estimates(dry_run(plan, bench_dir=tmp_path, recorded=None))["transfer_ls"][0]
    # 20 classes x 300 train and 50 val images; 10 epochs x 6000 fine-tuning images at the
    # published step (ResNet-50 at 224 px), 6000 + 1000 feature images and 1000 predictions at 3x
    assert "6000 train and 1000 val images, linear_probe, knn, finetune: 60000 fine-tuning" in line
    assert "2470 img/s per GPU (published: NVIDIA DeepLearningExamples" in line
    assert "8000 forward-only at 3x that (assumed: a forward pass alone" in line
    minutes = (60000 / 2470 + 8000 / (3 * 2470)) / 60
    assert f"one process, {minutes:.1f} min, {minutes / 60:.2f} GPU-hours" in line


def test_the_recorded_gpu_check_gives_the_step_and_the_device_decode(tmp_path: Path) -> None:
    """Without a GPU check of its own, a checkout estimates from the project's recorded one: the
    eager step (the paper configs do not compile), the compiled one where a config compiles, and
    on `DATA.DECODE device` the decode in series with the step."""
    recorded = json.loads(RECORDED_GPU_CHECK.read_text())
    env, sections = recorded["environment"], recorded["sections"]
    step = sections["pretrain"]["eager_als_img_s"]
    (decode,) = [v for k, v in sections["gpu_decode"].items() if k.startswith("decode_device_")]
    pre = _estimates(dry_run(load_plan(PAPER), bench_dir=tmp_path))["pretrain_als"]
    source = f"measured: gpu_check.sh on {env['gpu']}, {env['date']}, benchmarks/measured/"
    assert f"step {step:.0f} img/s per GPU ({source}" in pre[0]
    assert f"device decode {decode:.0f} img/s per GPU ({source}" in pre[1]
    in_series = 1 / (1 / step + 1 / decode)
    assert pre[3].startswith(f"#    DATA.DECODE device: {in_series:.0f} img/s per GPU")
    assert _hours(pre[3]) == round(90 * 1281167 / (8 * in_series) / 3600, 1)

    raw = yaml.safe_load(PAPER.read_text())
    raw["pretrain"]["overrides"] = {"TRAIN.COMPILE": True}
    plan = parse_plan(raw, "p.yaml")
    compiled = _estimates(dry_run(plan, bench_dir=tmp_path))["pretrain_als"][0]
    assert f"step {sections['pretrain']['compiled_als_img_s']:.0f} img/s per GPU" in compiled
    assert "torch.compile" in compiled

    # this checkout's own GPU check wins over the recorded one
    mine = {
        "environment": {"device": "cuda", "gpu": "Test GPU", "date": "2026-12-05 00:00:00 UTC"},
        "sections": {"pretrain": {"eager_als_img_s": 1000.0}},
    }
    (tmp_path / "gpu_check").mkdir()
    (tmp_path / "gpu_check" / "gpu_check.json").write_text(json.dumps(mine))
    own = _estimates(dry_run(load_plan(PAPER), bench_dir=tmp_path))["pretrain_als"]
    assert "step 1000 img/s per GPU (measured: gpu_check.sh on Test GPU" in own[0]
    assert not any("device decode" in line for line in own)  # not measured there

"""The trainer on a tiny generated data set: exact resume, NaN stop, checkpoint contents, lr
schedule, the CutMix arm on the hard arm's crops, object coverage."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from fvcore.common.config import CfgNode
from tiny_runs import TINY_GEN, tiny_data_overrides

from als_det.config import get_cfg, load_config
from als_det.data.generated import generate
from als_det.engine.checkpoint import REQUIRED_KEYS, load_backbone, load_checkpoint
from als_det.engine.solver import build_optimizer, lr_factor
from als_det.engine.trainer import NonFiniteLossError, train
from als_det.mixing import BatchMixer
from als_det.revision import code_revision
from als_det.targets import LabelStrategy

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """24 train / 9 val images of 3 classes; one train JPEG truncated, one train XML removed."""
    root = generate(tmp_path_factory.mktemp("data") / "gen", TINY_GEN, progress=False)
    jpegs = sorted((root / "train").rglob("*.JPEG"))
    data = jpegs[0].read_bytes()
    jpegs[0].write_bytes(data[:-30])  # header intact: indexed, fails to decode
    (root / "Annotation" / "train" / jpegs[1].parent.name / (jpegs[1].stem + ".xml")).unlink()
    return root


def tiny_cfg(root: Path, out: Path, *extra: str) -> CfgNode:
    return load_config(
        str(CONFIGS / "demo_als.yaml"),
        [
            *tiny_data_overrides(root, out / "cache"),
            "SOLVER.EPOCHS",
            "2",
            "SOLVER.BATCH_SIZE",
            "8",
            "SOLVER.BASE_LR",
            "0.2",
            "LABELS.NO_BOX",
            "skip",
            "TRAIN.DEVICE",
            "cpu",
            "TRAIN.DETERMINISTIC",
            "True",
            "OUTPUT_DIR",
            str(out),
            *extra,
        ],
    )


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory) -> dict[str, Path]:
    """A: 2 epochs straight. B: stopped after epoch 1 (its checkpoint kept), then resumed."""
    base = tmp_path_factory.mktemp("runs")
    a = train(tiny_cfg(tiny_root, base / "a"))
    cfg_b = tiny_cfg(tiny_root, base / "b")
    train(cfg_b, stop_after_epoch=1)
    shutil.copy(base / "b" / "last.pth", base / "epoch1.pth")
    metrics_epoch1 = rows(base / "b")
    train(cfg_b, resume="last")
    return {
        "a": a,
        "b": base / "b",
        "epoch1": base / "epoch1.pth",
        "metrics_epoch1": metrics_epoch1,
    }


def test_resume_ends_with_the_same_weights(runs):
    a, b = load_checkpoint(runs["a"] / "last.pth"), load_checkpoint(runs["b"] / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    assert set(a["model"]) == set(b["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # the resumed run's history is the uninterrupted one's, epoch for epoch
    ra, rb = rows(runs["a"]), rows(runs["b"])
    assert [r["epoch"] for r in rb] == [1, 2] and len(runs["metrics_epoch1"]) == 1
    for x, y in zip(ra, rb):
        for key in ("lr", "train_loss", "mean_e", "mean_coverage", "val_top1", "val_nll"):
            assert x[key] == y[key], key
    # the weights did move: epoch 2 differs from epoch 1
    e1 = load_checkpoint(runs["epoch1"])
    assert not torch.equal(e1["model"]["conv1.weight"], a["model"]["conv1.weight"])


def _without_timings(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.endswith("_time_s") and k != "images_per_s"}
        for r in rows(out)
    ]


@pytest.mark.slow
def test_the_run_ends_saying_where_its_checkpoints_are(runs):
    a = runs["a"]
    best = load_checkpoint(a / "last.pth")["best_epoch"]
    assert best > 0
    said = f"checkpoints: {a / 'last.pth'}; best val top-1 (epoch {best}): {a / 'best.pth'}"
    assert any(line.endswith(said) for line in (a / "log.txt").read_text().splitlines())


def test_same_seed_on_the_same_cpu_gives_bit_identical_runs(runs, tiny_root, tmp_path):
    """What docs/usage.md ("Reproducibility") states: with TRAIN.DETERMINISTIC, the same seed on
    the same machine (same torch threads) gives the same weights and metrics bit for bit, with any
    number of data-loading workers. Measured too: on the CPU it holds without the flag."""
    workers = train(tiny_cfg(tiny_root, tmp_path / "workers", "DATA.NUM_WORKERS", "2"))
    no_flag = train(tiny_cfg(tiny_root, tmp_path / "no_flag", "TRAIN.DETERMINISTIC", "False"))
    reference = load_checkpoint(runs["a"] / "last.pth")["model"]
    for out in (workers, no_flag):
        weights = load_checkpoint(out / "last.pth")["model"]
        assert all(torch.equal(weights[k], reference[k]) for k in reference), out
        assert _without_timings(out) == _without_timings(runs["a"]), out
    assert (
        json.loads((no_flag / "run.json").read_text())["torch_threads"] == torch.get_num_threads()
    )


def test_metrics_count_bad_and_skipped_images(runs):
    for r in rows(runs["a"]):
        # 24 images: one undecodable (label -1), one without boxes skipped by NO_BOX=skip
        assert (r["images"], r["bad_images"], r["skipped_no_box"], r["used"]) == (24, 1, 1, 22)
        assert r["with_box_fraction"] == 1.0
        assert 0.0 < r["mean_coverage"] < 1.0
        assert r["mean_e"] == pytest.approx(
            1.0 - r["mean_coverage"], abs=1e-6
        )  # e = 1 - a, no clipping
        assert r["val_n"] == 9 and r["val_bad_images"] == 0
        for key in (
            "lr",
            "train_loss",
            "images_per_s",
            "val_top1",
            "val_top5",
            "val_nll",
            "val_ece",
            "val_brier",
            "epoch_time_s",
        ):
            assert math.isfinite(r[key]), key
    run = json.loads((runs["a"] / "run.json").read_text())
    assert run["index"]["train"]["images"] == 24 and run["index"]["train"]["with_boxes"] == 23
    assert 0.0 < run["train_mean_box_area"] < 1.0
    assert run["revision"] == code_revision()


def test_checkpoint_contents(runs, tiny_root):
    out = runs["a"]
    ckpt = load_checkpoint(out / "last.pth")
    assert set(REQUIRED_KEYS) <= set(ckpt)
    reference = torchvision.models.resnet18(num_classes=3).state_dict()
    assert list(ckpt["model"]) == list(reference)
    assert all(ckpt["model"][k].shape == v.shape for k, v in reference.items())
    assert ckpt["arch"] == "resnet18" and ckpt["num_classes"] == 3 and ckpt["epoch"] == 2
    assert ckpt["classes"] == sorted(p.name for p in (tiny_root / "train").iterdir())
    assert ckpt["label_strategy"] == {
        "name": "als",
        "epsilon": 0.1,
        "e_min": 0.0,
        "e_max": 1.0,
        "no_box": "skip",
        "no_box_epsilon": 0.1,
        "coverage": "crop",
        "power": 1.0,
        "mix_alpha": 1.0,
    }
    assert ckpt["preprocessing"] == {
        "input_format": "RGB",
        "pixel_mean": pytest.approx([123.675, 116.28, 103.53]),
        "pixel_std": pytest.approx([58.395, 57.12, 57.375]),
        "image_size": 16,
    }
    saved_cfg = get_cfg()
    saved_cfg.merge_from_other_cfg(CfgNode.load_cfg(ckpt["config"]))
    assert saved_cfg == tiny_cfg(tiny_root, out)
    assert (out / "config.yaml").read_text() == ckpt["config"]
    assert ckpt["seed"] == 0 and torch.__version__.startswith(ckpt["versions"]["torch"])
    history = rows(out)
    assert ckpt["metrics"]["top1"] == history[-1]["val_top1"]
    best = load_checkpoint(out / "best.pth")
    top1 = [r["val_top1"] for r in history]
    assert best["epoch"] == 1 + top1.index(max(top1))
    assert list((out / "tb").glob("events.out.tfevents.*"))
    model, _ = load_backbone(out / "last.pth")
    assert not model.training and torch.equal(model.fc.weight, ckpt["model"]["fc.weight"])


def test_nan_stops_and_keeps_last_good_checkpoint(tiny_root, runs, tmp_path):
    calls = {"n": 0}

    def poison_after_epoch_1(model: torch.nn.Module) -> None:
        def hook(module, args, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 3:  # 3 iterations per epoch: epoch 2, iteration 1
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 1/3"):
        train(tiny_cfg(tiny_root, tmp_path), model_hook=poison_after_epoch_1)
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt["epoch"] == 1
    good = load_checkpoint(runs["epoch1"])  # the same run, stopped cleanly after epoch 1
    for key, value in good["model"].items():
        assert torch.equal(ckpt["model"][key], value), key
    assert [r["epoch"] for r in rows(tmp_path)] == [1]

    # a fresh run in the same OUTPUT_DIR replaces the failed one instead of mixing with it
    train(
        tiny_cfg(
            tiny_root,
            tmp_path,
            "TRAIN.MAX_ITERS_PER_EPOCH",
            "1",
            "SOLVER.EPOCHS",
            "1",
            "SOLVER.WARMUP_EPOCHS",
            "0",
        )
    )
    (row,) = rows(tmp_path)
    assert row["iterations"] == 1 and load_checkpoint(tmp_path / "last.pth")["epoch"] == 1
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_missing_resume_checkpoint_is_an_error(runs, tiny_root):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        train(tiny_cfg(tiny_root, runs["a"]), resume=str(runs["a"] / "nothing.pth"))


def test_lr_schedule_and_scaling():
    cfg = load_config(
        str(CONFIGS / "Base-ImageNet.yaml"), ["SOLVER.EPOCHS", "3", "SOLVER.WARMUP_EPOCHS", "1"]
    )
    ipe = 10
    assert lr_factor(0, ipe, cfg) == pytest.approx(0.1)  # linear warm-up per iteration
    assert lr_factor(9, ipe, cfg) == pytest.approx(1.0)
    assert lr_factor(10, ipe, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_factor(20, ipe, cfg) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(29, ipe, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    step = load_config(
        str(CONFIGS / "Base-ImageNet.yaml"),
        [
            "SOLVER.SCHEDULE",
            "step",
            "SOLVER.STEPS",
            "(1, 2)",
            "SOLVER.WARMUP_EPOCHS",
            "0",
            "SOLVER.EPOCHS",
            "3",
        ],
    )
    assert [lr_factor(i, ipe, step) for i in (0, 9, 10, 25)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg, world_size=8)  # 32 x 8 = 256 images
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert build_optimizer(torch.nn.Linear(2, 2), cfg, world_size=2).param_groups[0][
        "lr"
    ] == pytest.approx(0.025)


def test_fresh_run_sets_an_earlier_run_aside(tiny_root, tmp_path):
    out = tmp_path / "run"
    train(
        tiny_cfg(
            tiny_root,
            out,
            "SOLVER.EPOCHS",
            "1",
            "TRAIN.MAX_ITERS_PER_EPOCH",
            "1",
            "SOLVER.WARMUP_EPOCHS",
            "0",
        )
    )
    first = (out / "last.pth").read_bytes()
    train(
        tiny_cfg(
            tiny_root,
            out,
            "SOLVER.EPOCHS",
            "1",
            "TRAIN.MAX_ITERS_PER_EPOCH",
            "1",
            "SEED",
            "1",
            "SOLVER.WARMUP_EPOCHS",
            "0",
        )
    )
    aside = list(out.glob("previous-*"))
    assert len(aside) == 1
    assert (aside[0] / "last.pth").read_bytes() == first  # the earlier result survives, untouched
    assert (aside[0] / "metrics.jsonl").is_file() and (out / "metrics.jsonl").is_file()
    assert len(rows(out)) == 1  # the new run's history holds only its own epoch


def _first_inputs(store: list) -> Callable[[torch.nn.Module], None]:
    def hook(model: torch.nn.Module) -> None:
        model.register_forward_pre_hook(
            lambda m, args: store.append(args[0].clone()) if m.training else None
        )

    return hook


def test_cutmix_mixes_the_crops_the_hard_arm_sees_and_resumes_exactly(tiny_root, tmp_path):
    one = ("SOLVER.EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0", "TRAIN.MAX_ITERS_PER_EPOCH", "1")
    hard_inputs, cutmix_inputs = [], []
    train(
        tiny_cfg(tiny_root, tmp_path / "hard", "LABELS.STRATEGY", "hard", *one),
        model_hook=_first_inputs(hard_inputs),
    )
    train(
        tiny_cfg(tiny_root, tmp_path / "cm1", "LABELS.STRATEGY", "cutmix", *one),
        model_hook=_first_inputs(cutmix_inputs),
    )
    # one batch of 8 crops: undecodable image masked, the others mixed as BatchMixer mixes them
    labels = torch.tensor([-1 if x.abs().sum() == 0 else 0 for x in hard_inputs[0]])
    expected, _ = BatchMixer(LabelStrategy("cutmix"), 3, seed=0)(hard_inputs[0], labels, 1, 0)
    assert torch.equal(cutmix_inputs[0], expected) and not torch.equal(expected, hard_inputs[0])

    cfg = ("LABELS.STRATEGY", "cutmix", "LABELS.MIX_ALPHA", "0.5")
    straight = train(tiny_cfg(tiny_root, tmp_path / "a", *cfg))
    resumed_cfg = tiny_cfg(tiny_root, tmp_path / "b", *cfg)
    train(resumed_cfg, stop_after_epoch=1)
    train(resumed_cfg, resume="last")
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(tmp_path / "b" / "last.pth")
    assert a["label_strategy"]["name"] == "cutmix" and a["label_strategy"]["mix_alpha"] == 0.5
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for x, y in zip(rows(straight), rows(tmp_path / "b")):
        assert x["train_loss"] == y["train_loss"] and x["mean_e"] == y["mean_e"]
        assert (
            0.0 < x["mean_e"] < 1.0 and 0.0 < x["mean_coverage"] < 1.0
        )  # crops' coverage, before mixing
        assert x["used"] == 23  # mixing uses every decodable image; the no-box policy is ALS's


def test_als_object_coverage_run_logs_its_coverage(tiny_root, tmp_path):
    out = train(
        tiny_cfg(
            tiny_root,
            tmp_path,
            "LABELS.COVERAGE",
            "object",
            "LABELS.POWER",
            "2.0",
            "SOLVER.EPOCHS",
            "1",
            "SOLVER.WARMUP_EPOCHS",
            "0",
        )
    )
    (row,) = rows(out)
    assert (
        0.0 < row["mean_coverage"] < row["mean_object_coverage"] <= 1.0
    )  # objects are smaller than crops
    assert (
        row["mean_e"] <= 1.0 - row["mean_object_coverage"]
    )  # (1 - a) ** 2 <= 1 - a, mean over crops
    with pytest.raises(ValueError, match='LABELS.COVERAGE: "object" \\(checkpoint\\) -> "crop"'):
        train(
            tiny_cfg(
                tiny_root,
                tmp_path,
                "LABELS.POWER",
                "2.0",
                "SOLVER.EPOCHS",
                "1",
                "SOLVER.WARMUP_EPOCHS",
                "0",
            ),
            resume="last",
        )  # a resume must not switch the coverage

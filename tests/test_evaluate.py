"""The evaluation run end to end on a tiny image tree with hand-built checkpoints (random
ResNet-18s)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from als_det.analysis.context import FILLS
from als_det.analysis.evaluate import EvalOptions, evaluate_checkpoints
from als_det.analysis.models import EvaluationInputError
from als_det.config import get_cfg
from als_det.engine.checkpoint import save_checkpoint
from als_det.metrics.comparison import near_chance
from als_det.metrics.context import (
    bootstrap_ratio_intervals,
    fill_comparisons,
    headline,
    headline_comparison,
)
from als_det.models import build_resnet
from als_det.report.evaluation import write_evaluation
from als_det.report.fills import fill_section
from als_det.report.headline import headline_sentence
from als_det.revision import code_revision

CLASSES = ["n00000001", "n00000002", "n00000003"]
REPO = Path(__file__).resolve().parents[1]
VIEW_TITLES = [f"bg_only, {f} fill" for f in FILLS] + ["outside_crop (no fill)"]


def _voc(wnid: str, stem: str, w: int, h: int, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<annotation><filename>{stem}</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size><object><name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
    )


def make_tree(root: Path, classes=CLASSES, per_class: int = 4) -> Path:
    """val/<wnid>/*.JPEG with VOC boxes; the last image of each class has no box file."""
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(classes):
        (root / "val" / wnid).mkdir(parents=True)
        (root / "Annotation" / "val" / wnid).mkdir(parents=True)
        for i in range(per_class):
            w, h = 48 + 4 * i, 40
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            stem = f"{wnid}_{i}"
            Image.fromarray(img).save(root / "val" / wnid / f"{stem}.JPEG")
            if i < per_class - 1:
                box = (4 + i, 6, 20 + 2 * i, 30)
                (root / "Annotation" / "val" / wnid / f"{stem}.xml").write_text(
                    _voc(wnid, stem, w, h, box)
                )
    return root


def make_checkpoint(
    path: Path, strategy: str, classes=CLASSES, seed: int = 0, arch: str = "resnet18"
) -> Path:
    torch.manual_seed(seed)
    model = build_resnet(arch, len(classes))
    cfg = get_cfg()
    cfg.DATA.IMAGE_SIZE, cfg.DATA.VAL_RESIZE, cfg.LABELS.STRATEGY = 32, 37, strategy
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": {},
            "scheduler": {},
            "scaler": None,
            "epoch": 1,
            "arch": arch,
            "num_classes": len(classes),
            "classes": list(classes),
            "label_strategy": {
                "name": strategy,
                "epsilon": 0.1,
                "e_min": 0.0,
                "e_max": 1.0,
                "no_box": "ls",
                "no_box_epsilon": 0.1,
            },
            "preprocessing": {
                "input_format": "RGB",
                "pixel_mean": [123.675, 116.28, 103.53],
                "pixel_std": [58.395, 57.12, 57.375],
                "image_size": 32,
            },
            "config": cfg.dump(),
            "seed": seed,
            "rng_state": {},
            "metrics": {},
            "best_top1": -1.0,
            "versions": {},
        },
    )
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    root = make_tree(base / "data")
    # The generated data set's layout: its own val_mixed (with boxes) and val_bg_only (no boxes)
    # splits.
    shutil.copytree(root / "val", root / "val_mixed")
    shutil.copytree(root / "Annotation" / "val", root / "Annotation" / "val_mixed")
    shutil.copytree(root / "val", root / "val_bg_only")
    (root / "generation.json").write_text("{}")
    (root / "classes.json").write_text(json.dumps(dict(zip(CLASSES, ("disc", "ring", "cross")))))
    ckpts = [
        make_checkpoint(base / "hard.pth", "hard", seed=0),
        make_checkpoint(base / "als.pth", "als", seed=1),
    ]
    return base, root, ckpts


def _opts(**kw) -> EvalOptions:
    return EvalOptions(batch_size=4, workers=0, grid_images=3, progress=False, device="cpu", **kw)


def test_evaluation_writes_every_section(setup) -> None:
    base, root, ckpts = setup
    out = base / "out"
    metrics = evaluate_checkpoints(
        [str(c) for c in ckpts], str(root), str(out), opts=_opts(temperature_scaling=True)
    )
    assert (
        not (out / "metrics.json").exists() and (out / "cam_grid.npz").is_file()
    )  # the report writes the rest
    write_evaluation(metrics, out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk["models"]) == {"hard", "als"}
    hard = on_disk["models"]["hard"]
    assert hard["val"]["n"] == 12
    assert hard["checkpoint"]["sha256"] and hard["label_strategy"]["name"] == "hard"
    # 3 images without boxes leave every box variant, counted.
    assert (
        hard["variants"]["bg_only"]["n"] == 9
        and hard["variants"]["bg_only"]["skipped"]["no_box"] == 3
    )
    assert (
        "context_accuracy" in hard["variants"]["bg_only"]
        and "accuracy" in hard["variants"]["fg_only"]
    )
    assert (
        hard["variants"]["outside_crop"]["n"]
        + sum(hard["variants"]["outside_crop"]["skipped"].values())
        == 12
    )
    cam = hard["cam"]
    assert cam["skipped"]["no_box"] == 3 and cam["n"] + cam["skipped"]["no_positive_energy"] == 9
    assert cam["n"] == 0 or 0.0 <= cam["mean_energy_inside_boxes"] <= 1.0
    assert "temperature" in hard["temperature_scaling"]
    assert hard["variants"]["val_mixed"]["n"] == 12 and "ece" in hard["variants"]["val_mixed"]
    assert (
        hard["variants"]["val_bg_only"]["n"] == 12
        and "context_accuracy" in hard["variants"]["val_bg_only"]
    )
    # val_mixed here holds the very images of val: the same numbers.
    assert hard["variants"]["val_mixed"]["top1"] == hard["val"]["top1"]
    assert "val_bg_only" in on_disk["headline"]["comparisons"]["als"]
    head = on_disk["headline"]
    assert head["baseline"] == "hard" and "bg_only" in head["comparisons"]["als"]
    assert on_disk["versions"]["torch"] == torch.__version__.split("+")[0]
    assert on_disk["revision"] == code_revision()
    report = (out / "report.md").read_text()
    for section in (
        "## Classification",
        "## Calibration",
        "## Context-only evaluation",
        "## Where the model looks",
        "## Context reliance: confidence from context alone",
    ):
        assert section in report
    for fig in ("reliability.png", "context_confidence.png", "cam_grid.png"):
        assert f"]({fig})" in report
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    assert metrics["headline"] == on_disk["headline"]
    # readable class names (the generated set's classes.json) in the data record and the report
    assert (
        on_disk["data"]["class_names"] == ["disc", "ring", "cross"]
        and on_disk["data"]["classes"] == CLASSES
    )
    assert "Classes: disc, ring, cross." in report
    # the CAM grid's rows are class names; the files are secondary
    grid = on_disk["cam_grid"]
    assert grid["method"] == "cam" and set(grid["rows"]) <= {"disc", "ring", "cross"}
    assert [f.split("_")[0] for f in grid["files"]] == [
        CLASSES[["disc", "ring", "cross"].index(r)] for r in grid["rows"]
    ]
    # a degenerate temperature fit is flagged in the report, a sound one is not
    for name, model in on_disk["models"].items():
        ts = model["temperature_scaling"]
        assert ts["degenerate"] == (ts["reason"] is not None)
        assert (f"Degenerate temperature fit for `{name}`" in report) == ts["degenerate"]


def test_report_follows_the_cam_method(setup, tmp_path) -> None:
    """An evaluation under --cam gradcam says Grad-CAM in its text and its figure, never bare
    CAM."""
    base, _, _ = setup
    metrics = json.loads((base / "out" / "metrics.json").read_text())
    metrics["cam_grid"]["method"] = "gradcam"
    for model in metrics["models"].values():
        model["cam"]["method"] = "gradcam"
    shutil.copy(base / "out" / "cam_grid.npz", tmp_path / "cam_grid.npz")
    report = write_evaluation(metrics, tmp_path).read_text()
    assert "positive Grad-CAM energy" in report and "GRADCAM" not in report
    assert (tmp_path / "cam_grid.png").is_file()


def test_calibration_section_flags_a_degenerate_temperature(setup, tmp_path) -> None:
    base, _, _ = setup
    metrics = json.loads((base / "out" / "metrics.json").read_text())
    ts = metrics["models"]["als"]["temperature_scaling"]
    ts.update(
        temperature=5387011.0,
        degenerate=True,
        reason="T = 5.39e+06 > 100: NLL keeps falling as T grows",
    )
    hard = metrics["models"]["hard"]["temperature_scaling"]
    hard.update(temperature=1.5, degenerate=False, reason=None)
    shutil.copy(base / "out" / "cam_grid.npz", tmp_path / "cam_grid.npz")
    report = write_evaluation(metrics, tmp_path).read_text()
    assert "**Degenerate temperature fit for `als`**: T = 5.39e+06 > 100" in report
    assert "Degenerate temperature fit for `hard`" not in report
    assert "| temperature T | 1.5 | 5.39e+06 (degenerate) |" in re.sub(r" {2,}", " ", report)
    assert "5387011.000" not in report


def test_bg_only_confidence_differs_from_intact(setup) -> None:
    """The variant really changes the input: confidences on bg_only differ from intact val."""
    base, root, ckpts = setup
    m = json.loads((base / "out" / "metrics.json").read_text())["models"]["hard"]
    assert m["variants"]["bg_only"]["mean_confidence"] != pytest.approx(
        m["val"]["mean_confidence"], abs=1e-6
    )


def test_bg_only_runs_under_every_fill_side_by_side(setup) -> None:
    base, root, ckpts = setup
    on_disk = json.loads((base / "out" / "metrics.json").read_text())
    hard = on_disk["models"]["hard"]
    assert set(hard["bg_only_by_fill"]) == set(FILLS)
    assert (
        hard["bg_only_by_fill"]["black"] == hard["variants"]["bg_only"]
    )  # the headline fill's pass
    assert (
        len({v["mean_confidence"] for v in hard["bg_only_by_fill"].values()}) == 3
    )  # three different inputs
    fills = on_disk["fills"]
    assert fills["primary"] == "black" and set(fills["comparisons"]["als"]) == set(FILLS)
    black, head = (
        fills["comparisons"]["als"]["black"],
        on_disk["headline"]["comparisons"]["als"]["bg_only"],
    )
    assert black["ratio_relative_to_val"] == head["ratio_relative_to_val"]
    assert black["intervals_95"] == head["intervals_95"]
    blur = fills["comparisons"]["als"]["blur"]
    assert (
        blur["confidence"]["als"]
        == on_disk["models"]["als"]["bg_only_by_fill"]["blur"]["mean_confidence"]
    )
    report = (base / "out" / "report.md").read_text()
    assert "### Every context-only view" in report and "bg_only, blur fill" in report
    # untrained checkpoints: at chance, no verdict, in every view
    rows = re.findall(r"^\| als / hard +\| ([^|]+?) +\|.*\| ([^|]+?) +\|$", report, re.M)
    assert rows == [(view, "at chance") for view in VIEW_TITLES]
    assert "no verdict: " in report and not re.search(r"relies (less|more)|rely on context", report)


def test_single_fill_runs_bg_only_once(setup) -> None:
    base, root, ckpts = setup
    metrics = evaluate_checkpoints(
        [str(c) for c in ckpts],
        str(root),
        str(base / "one_fill"),
        opts=_opts(single_fill=True, fill="blur", max_images=6),
    )
    assert set(metrics["models"]["als"]["bg_only_by_fill"]) == {"blur"}
    assert set(metrics["fills"]["comparisons"]["als"]) == {"blur"}
    assert fill_section(metrics) == []


def _fill_metrics(levels: dict[str, dict[str, float]], n: int = 300, top1: float = 0.8) -> dict:
    """Hand-made models whose per-image confidences sit at `levels[model][view]` (views: val, each
    fill, outside_crop), with their comparisons as the evaluation makes them; val top-1 `top1`."""
    g = torch.Generator().manual_seed(0)
    conf = {
        m: {v: (x + 0.02 * torch.randn(n, generator=g)).clamp(0.01, 1) for v, x in views.items()}
        for m, views in levels.items()
    }
    conf = {
        m: {("bg_only@" + v if v in FILLS else v): c for v, c in views.items()}
        for m, views in conf.items()
    }
    summary = lambda c: {"n": n, "mean_confidence": float(c.mean())}  # noqa: E731
    models = {
        m: {
            "val": {**summary(c["val"]), "num_classes": 10, "top1": top1},
            "variants": {
                "bg_only": summary(c["bg_only@black"]),
                "outside_crop": summary(c["outside_crop"]),
            },
            "bg_only_by_fill": {f: summary(c[f"bg_only@{f}"]) for f in FILLS},
        }
        for m, c in conf.items()
    }
    for c in conf.values():
        c["bg_only"] = c["bg_only@black"]
    return {
        "models": models,
        "headline": headline(models, "hard", conf),
        "fills": {"primary": "black", "comparisons": fill_comparisons(models, "hard", conf)},
    }


def test_fill_section_says_when_the_verdict_depends_on_the_fill() -> None:
    hard = {"val": 0.8, "black": 0.6, "mean": 0.6, "blur": 0.6, "outside_crop": 0.5}
    text = "\n".join(fill_section(_fill_metrics({"hard": hard, "als": {**hard, "black": 0.3}})))
    assert (
        "als vs hard: **depends on the view** (bg_only, black fill: lower; bg_only, mean fill: "
        "alike; bg_only, blur fill: alike; outside_crop (no fill): alike)" in text
    )
    # one row per view: the ratios and their intervals in columns of their own
    comp = _fill_metrics({"hard": hard, "als": {**hard, "black": 0.3}})["fills"]["comparisons"]
    black = comp["als"]["black"]
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in text.splitlines() if r[:1] == "|"]
    (cells,) = [r for r in rows if r[:2] == ["als / hard", "bg_only, black fill"]]
    iv = black["intervals_95"]["ratio_relative_to_val"]
    assert cells[2] == f"{black['ratio_absolute']:.3f}"
    assert cells[4:] == [
        f"{black['ratio_relative_to_val']:.3f}",
        f"[{iv[0]:.3f}, {iv[1]:.3f}]",
        "lower",
    ]
    same = "\n".join(
        fill_section(_fill_metrics({"hard": hard, "als": {k: v / 2 for k, v in hard.items()}}))
    )
    assert "als vs hard: **consistent across views**: alike in every one" in same


def test_models_at_chance_get_no_verdict() -> None:
    assert near_chance(0.14, 100_000, 10)  # below 1.5/K however many images
    assert near_chance(0.2, 20, 10) and not near_chance(0.3, 20, 10)  # the interval includes 1/K
    assert not near_chance(0.5, 50_000, 1000) and near_chance(0.0012, 50_000, 1000)
    hard = {"val": 0.8, "black": 0.6, "mean": 0.6, "blur": 0.6, "outside_crop": 0.5}
    levels = {"hard": hard, "als": {**hard, "black": 0.3}}
    text = "\n".join(fill_section(_fill_metrics(levels, top1=0.11)))
    assert "als vs hard: no verdict: als and hard are at or near chance on val" in text
    assert "lower" not in text.split("| als / hard")[1] and "| at chance |" in text
    # the headline sentence states the numbers and no verdict
    als, hard = _fake(0.3, 0.6, 0.11, 0.04), _fake(0.6, 0.6, 0.6, 0.04)
    sentence = _sentence(headline_comparison("als", "hard", als, hard, "bg_only"), als, hard)
    assert "no verdict: als is at or near chance on val (top-1 als 11.0%; chance" in sentence
    assert "relies" not in sentence and "rely" not in sentence and "ratio 0.50" in sentence


def test_checkpoint_with_other_class_count_is_a_clear_error(setup, tmp_path) -> None:
    _, root, ckpts = setup
    bad = make_checkpoint(tmp_path / "k4.pth", "hard", classes=CLASSES + ["n00000004"])
    with pytest.raises(
        EvaluationInputError, match=r"k4\.pth: a resnet18 with 4 classes cannot be evaluated"
    ):
        evaluate_checkpoints(
            [str(ckpts[0]), str(bad)],
            str(root),
            str(tmp_path / "o"),
            names=["a", "b"],
            opts=_opts(),
        )
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_checkpoint_with_other_classes_is_a_clear_error(setup, tmp_path) -> None:
    _, root, _ = setup
    bad = make_checkpoint(
        tmp_path / "other.pth", "hard", classes=["n00000001", "n00000002", "n09999999"]
    )
    with pytest.raises(EvaluationInputError, match=r"other\.pth: its classes differ .*n09999999"):
        evaluate_checkpoints([str(bad)], str(root), str(tmp_path / "o"), opts=_opts())


def test_checkpoint_whose_weights_are_another_architecture_is_a_clear_error(
    setup, tmp_path
) -> None:
    _, root, _ = setup
    path = make_checkpoint(tmp_path / "r18.pth", "hard")
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"] = "resnet34"
    save_checkpoint(path, ckpt)
    with pytest.raises(ValueError, match=r"r18\.pth: weights do not fit resnet34"):
        evaluate_checkpoints([str(path)], str(root), str(tmp_path / "o"), opts=_opts())


def test_duplicate_names_are_rejected(setup, tmp_path) -> None:
    _, root, ckpts = setup
    with pytest.raises(EvaluationInputError, match="both named 'hard'"):
        evaluate_checkpoints(
            [str(ckpts[0]), str(ckpts[0])], str(root), str(tmp_path / "o"), opts=_opts()
        )


def _sentence(h: dict, model: dict, baseline: dict) -> str:
    return headline_sentence(h, {h["model"]: model, h["baseline"]: baseline})


def _fake(conf_bg: float, conf_val: float, top1: float, ece: float, k: int = 10) -> dict:
    return {
        "val": {"num_classes": k, "mean_confidence": conf_val, "top1": top1, "ece": ece, "n": 100},
        "variants": {"bg_only": {"n": 100, "mean_confidence": conf_bg}},
    }


def test_headline_three_forms_and_the_sentence_follow_the_numbers() -> None:
    # The independent 64 px check: ALS lowers bg_only confidence, but only as much as val
    # confidence.
    als, hard = _fake(0.33, 0.33 / 0.96, 0.44, 0.11), _fake(0.56, 0.56 / 0.93, 0.59, 0.04)
    h = headline_comparison("als", "hard", als, hard, "bg_only")
    sentence = _sentence(h, als, hard)
    assert h["ratio_absolute"] == pytest.approx(0.33 / 0.56)
    assert h["ratio_above_chance"] == pytest.approx((0.33 - 0.1) / (0.56 - 0.1))
    assert h["ratio_relative_to_val"] == pytest.approx(0.96 / 0.93)
    assert "lowers" in sentence and "relies on context no less than hard" in sentence
    # A model as confident as the baseline on val but much less on bg_only relies less on context.
    als2, hard2 = _fake(0.3, 0.6, 0.6, 0.04), _fake(0.6, 0.6, 0.6, 0.04)
    h2 = headline_comparison("als", "hard", als2, hard2, "bg_only")
    assert h2["ratio_relative_to_val"] == pytest.approx(0.5)
    assert "relies less on context than hard" in _sentence(h2, als2, hard2)
    assert "none of the bg_only drop" in _sentence(h2, als2, hard2)
    # Val confidence fell more (in log terms) than bg_only confidence: it accounts for all of the
    # drop.
    assert math.log(h["ratio_val_confidence"]) / math.log(h["ratio_absolute"]) > 1
    assert "accounts for all of the bg_only drop" in sentence
    als3 = _fake(0.4, 0.54, 0.6, 0.04)
    h3 = headline_comparison("als", "hard", als3, hard2, "bg_only")
    share = math.log(0.9) / math.log(0.4 / 0.6)
    assert f"accounts for {share:.0%} of the bg_only drop" in _sentence(h3, als3, hard2)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(setup, tmp_path) -> None:
    """Under torchrun (gloo, CPU) each image is counted once and the numbers equal a single
    process."""
    base, root, ckpts = setup
    single = json.loads((base / "out" / "metrics.json").read_text())
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tools" / "evaluate.py"),
        "--checkpoint",
        str(ckpts[0]),
        "--checkpoint",
        str(ckpts[1]),
        "--data",
        str(root),
        "--out",
        str(tmp_path / "dist"),
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--grid-images",
        "3",
        "--temperature-scaling",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = json.loads((tmp_path / "dist" / "metrics.json").read_text())
    assert multi["data"]["world_size"] == 2
    for name in ("hard", "als"):
        a, b = single["models"][name], multi["models"][name]
        assert b["val"]["n"] == a["val"]["n"] == 12
        for key in ("top1", "nll", "ece", "brier"):
            assert b["val"][key] == pytest.approx(a["val"][key], abs=1e-5)
        for v in ("bg_only", "fg_only", "outside_crop"):
            assert b["variants"][v]["n"] == a["variants"][v]["n"]
            assert b["variants"][v]["mean_confidence"] == pytest.approx(
                a["variants"][v]["mean_confidence"], abs=1e-5
            )
        assert b["cam"]["mean_energy_inside_boxes"] == pytest.approx(
            a["cam"]["mean_energy_inside_boxes"], abs=1e-5
        )
    shutil.rmtree(tmp_path / "dist")


def test_bootstrap_intervals_cover_one_only_when_models_agree() -> None:
    g = torch.Generator().manual_seed(0)
    val = torch.rand(400, generator=g) * 0.5 + 0.4
    bg = torch.rand(300, generator=g) * 0.5 + 0.2
    same = {"a": {"val": val, "bg_only": bg}, "b": {"val": val.clone(), "bg_only": bg.clone()}}
    iv = bootstrap_ratio_intervals(same, "a", "b", "bg_only", k=10, n_boot=200)
    assert all(lo == pytest.approx(1.0) and hi == pytest.approx(1.0) for lo, hi in iv.values())
    # b is less confident on bg_only alone (by 30%): absolute and relative ratios exclude 1.
    less = {"a": {"val": val, "bg_only": bg}, "b": {"val": val, "bg_only": bg * 0.7}}
    iv = bootstrap_ratio_intervals(less, "a", "b", "bg_only", k=10, n_boot=200)
    assert iv["ratio_absolute"][0] > 1.3 and iv["ratio_relative_to_val"][0] > 1.3
    # b is less confident everywhere by the same factor: the relative ratio is 1 in every resample
    # (up to float32 rounding), so its interval is the point 1 whatever the factor.
    for factor in (0.7, 0.5):
        scaled = {
            "a": {"val": val, "bg_only": bg},
            "b": {"val": val * factor, "bg_only": bg * factor},
        }
        iv = bootstrap_ratio_intervals(scaled, "a", "b", "bg_only", k=10, n_boot=200)
        assert iv["ratio_relative_to_val"] == pytest.approx([1.0, 1.0], abs=1e-6)  # float32 inputs
        assert iv["ratio_absolute"][0] > 1 / factor - 0.01


def test_sentence_says_alike_when_the_relative_interval_includes_one() -> None:
    als, hard = _fake(0.33, 0.33 / 0.96, 0.44, 0.11), _fake(0.56, 0.56 / 0.93, 0.59, 0.04)
    h = headline_comparison(
        "als", "hard", als, hard, "bg_only", {"ratio_relative_to_val": [0.95, 1.12]}
    )
    assert "rely on context alike" in _sentence(h, als, hard) and "95% CI 0.95-1.12" in _sentence(
        h, als, hard
    )
    ls, hard2 = _fake(0.55, 0.58, 0.6, 0.05), _fake(0.56, 0.6, 0.6, 0.04)
    flat = headline_comparison(
        "ls",
        "hard",
        ls,
        hard2,
        "bg_only",
        {"ratio_absolute": [0.97, 1.01], "ratio_relative_to_val": [1.01, 1.04]},
    )
    assert "leaves mean bg_only confidence about unchanged" in _sentence(flat, ls, hard2)
    assert "drop" not in _sentence(
        flat, ls, hard2
    ) and "relies on context more than hard" in _sentence(flat, ls, hard2)

"""ImageNet-9 Backgrounds Challenge evaluation on a small tree in the challenge's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from tiny_runs import run_tool

from als_det.analysis.backgrounds import IN9_VARIANTS, evaluate_in9
from als_det.analysis.evaluate import EvalOptions
from als_det.analysis.models import EvaluationInputError
from als_det.config import get_cfg
from als_det.engine.checkpoint import save_checkpoint
from als_det.models import build_resnet
from als_det.report.backgrounds import render_in9_report, summary_lines, write_in9_report

IN9 = [
    "00_dog",
    "01_bird",
    "02_wheeled vehicle",
    "03_reptile",
    "04_carnivore",
    "05_insect",
    "06_musical instrument",
    "07_primate",
    "08_fish",
]
SIZE = 16  # the models' input; the images are 40 px, so they are resized
# images per class; class 4 is over-represented in mixed_same and rarer in mixed_rand
COUNTS = {v: [1] * 9 for v in IN9_VARIANTS}
COUNTS["mixed_same"] = [1, 1, 1, 1, 3, 1, 1, 1, 1]
COUNTS["mixed_rand"] = [2, 2, 2, 2, 1, 2, 2, 2, 2]


def make_in9_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for v, counts in COUNTS.items():
        for k, (cls, n) in enumerate(zip(IN9, counts)):
            folder = root / v / "val" / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    folder / f"{k}_{i}.JPEG"
                )
    good = root / "only_fg" / "val" / IN9[0] / "0_0.JPEG"
    (good.parent / "0_9.JPEG").write_bytes(good.read_bytes()[:200])  # truncated: counted, left out
    return root


def make_checkpoint(
    path: Path, classes: list[str], predict: int | None = None, seed: int = 0
) -> Path:
    """A ResNet-18 at SIZE px; with `predict`, its fc always picks that output."""
    torch.manual_seed(seed)
    model = build_resnet("resnet18", len(classes))
    if predict is not None:
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.zero_()
            model.fc.bias[predict] = 10.0
    cfg = get_cfg()
    cfg.DATA.IMAGE_SIZE, cfg.DATA.VAL_RESIZE = SIZE, SIZE + 2
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": {},
            "scheduler": {},
            "scaler": None,
            "epoch": 1,
            "arch": "resnet18",
            "num_classes": len(classes),
            "classes": list(classes),
            "label_strategy": {
                "name": "hard",
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
                "image_size": SIZE,
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
def tree(tmp_path_factory) -> Path:
    return make_in9_tree(tmp_path_factory.mktemp("in9") / "bg_challenge")


def _opts() -> EvalOptions:
    return EvalOptions(batch_size=16, workers=0, progress=False, device="cpu")


def _share_of_class(variant: str, k: int) -> float:
    return COUNTS[variant][k] / sum(COUNTS[variant])


def test_nine_class_and_mapped_models_follow_the_challenge_rule(tree, tmp_path) -> None:
    nine = make_checkpoint(tmp_path / "in9.pth", IN9, predict=4)
    wide = make_checkpoint(tmp_path / "k1000.pth", [f"n{i:08d}" for i in range(1000)], predict=7)
    mapping = {str(i): -1 for i in range(1000)}
    (tmp_path / "to_four.json").write_text(json.dumps({**mapping, "7": 4, "8": 0}))
    m = evaluate_in9(
        [str(nine), str(wide)],
        str(tree),
        str(tmp_path / "out"),
        names=["nine", "wide"],
        in_to_in9=str(tmp_path / "to_four.json"),
        opts=_opts(),
    )
    for name in ("nine", "wide"):
        res = m["models"][name]
        for v in IN9_VARIANTS:
            assert res["variants"][v]["accuracy"] == pytest.approx(_share_of_class(v, 4))
            assert res["variants"][v]["n"] == sum(COUNTS[v])
        assert res["bg_gap"] == pytest.approx(
            _share_of_class("mixed_same", 4) - _share_of_class("mixed_rand", 4)
        )
        assert res["variants"]["only_fg"]["undecodable"] == 1
        assert res["variants"]["original"]["per_class_accuracy"][4] == 1.0
    assert m["models"]["nine"]["output_mapping"] == "IN-9 classes"
    assert m["models"]["wide"]["variants"]["original"]["predicted_outside_in9"] == 0.0
    # one class for every image: at chance on the originals, so no verdict from the BG-Gap
    report = write_in9_report(m, tmp_path / "out").read_text()
    for name in ("nine", "wide"):
        assert (
            f"- `{name}`: no verdict: {name} is at or near chance on the original images (top-1 "
            f"{name} 11.1%; chance 1/K = 11.1%), so its BG-Gap says nothing" in report
        )
    assert "classified correctly" not in report
    assert all("(at or near chance on original: no verdict)" in line for line in summary_lines(m))
    # the same numbers from a model well above chance on the originals: what its BG-Gap says
    m["models"]["nine"]["variants"]["original"]["accuracy"] = 0.9
    gap = m["models"]["nine"]["bg_gap"]
    assert (
        f"- `nine`: an object is classified correctly {100 * gap:.1f} points more often on a "
        "background of its own class than on a random class's (BG-Gap" in render_in9_report(m)
    )

    # the same 1000-class model when its prediction maps to -1: every image counts as wrong
    (tmp_path / "to_none.json").write_text(json.dumps({**mapping, "8": 0}))
    m = evaluate_in9(
        [str(wide)],
        str(tree),
        str(tmp_path / "out2"),
        in_to_in9=str(tmp_path / "to_none.json"),
        opts=_opts(),
    )
    write_in9_report(m, tmp_path / "out2")
    orig = m["models"]["hard"]["variants"]["original"]
    assert orig["accuracy"] == 0.0 and orig["predicted_outside_in9"] == 1.0
    report = (tmp_path / "out2" / "in9_report.md").read_text()
    assert (
        "BG-Gap" in report and "95.6%" in report and "7.3%" in report and "outside IN-9" in report
    )
    assert (
        json.loads((tmp_path / "out2" / "in9_metrics.json").read_text())["reference"]["bg_gap"]
        == 0.073
    )


def test_accuracy_matches_an_independent_forward_pass(tree, tmp_path) -> None:
    ckpt = make_checkpoint(tmp_path / "rand.pth", IN9, seed=3)
    m = evaluate_in9([str(ckpt)], str(tree), str(tmp_path / "out"), opts=_opts())
    model = build_resnet("resnet18", 9)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    model.eval()
    correct = n = 0
    for k, cls in enumerate(IN9):
        for path in sorted((tree / "mixed_rand" / "val" / cls).iterdir()):
            x = TF.to_tensor(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
            x = TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
            correct += int(model(x[None]).argmax(1).item() == k)
            n += 1
    assert m["models"]["hard"]["variants"]["mixed_rand"]["accuracy"] == pytest.approx(correct / n)


def test_bad_inputs_are_clear_errors(tree, tmp_path) -> None:
    other = make_checkpoint(tmp_path / "ten.pth", [f"n{i:08d}" for i in range(10)])
    with pytest.raises(EvaluationInputError, match="pass --in-to-in9"):
        evaluate_in9([str(other)], str(tree), str(tmp_path / "o"), opts=_opts())
    (tmp_path / "short.json").write_text(json.dumps({str(i): 0 for i in range(9)}))
    with pytest.raises(EvaluationInputError, match="maps 9 outputs, the model has 10"):
        evaluate_in9(
            [str(other)],
            str(tree),
            str(tmp_path / "o"),
            in_to_in9=str(tmp_path / "short.json"),
            opts=_opts(),
        )
    (tmp_path / "bad.json").write_text(json.dumps({str(i): 9 for i in range(10)}))
    with pytest.raises(EvaluationInputError, match="IN-9 indices 0-8 or -1"):
        evaluate_in9(
            [str(other)],
            str(tree),
            str(tmp_path / "o"),
            in_to_in9=str(tmp_path / "bad.json"),
            opts=_opts(),
        )
    assert not (tmp_path / "o").exists()


def test_evaluate_tool_recognises_the_layout(tree, tmp_path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "in9.pth", IN9, predict=4)
    args = ["--checkpoint", str(ckpt), "--data", str(tree)]
    capsys.readouterr()
    assert (
        run_tool(
            "evaluate", [*args, "--out", str(tmp_path / "out"), "--device", "cpu", "--workers", "0"]
        )
        == 0
    )
    out = capsys.readouterr().err
    assert "in9_report.md" in out
    line = next(x for x in out.splitlines() if "]: hard: " in x)
    assert "original 11.1% (ref 95.6%)" in line and "mixed_rand 5.9% (ref 78.9%)" in line
    # 3/11 - 1/17, from a model at chance (1 of 9 classes) on the original images: no verdict
    assert "BG-Gap 21.4% (at or near chance on original: no verdict) (ref 7.3%" in line
    code = run_tool("evaluate", [*args, "--fill", "mean"])
    refused = capsys.readouterr().err
    assert code == 2 and "--fill do(es) not apply to ImageNet-9 data" in refused

"""The sweep report on cells made by real tiny trainings and the real evaluation code."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import TINY_GEN, tiny_data_overrides

from als_det.analysis.evaluate import EvalOptions, evaluate_checkpoints
from als_det.config import load_config
from als_det.data.generated import generate
from als_det.engine.trainer import train
from als_det.io import sha256_file
from als_det.metrics.intervals import t_interval
from als_det.report.evaluation import write_evaluation
from als_det.report.sweep import SweepCell, SweepInputError, summarize
from als_det.report.sweep_figures import pareto_front
from als_det.report.sweep_report import write_sweep_report

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
SETTINGS = {
    "hard": ["LABELS.STRATEGY", "hard"],
    "ls": ["LABELS.STRATEGY", "ls"],
    "als": [],
    "als_object": ["LABELS.COVERAGE", "object", "LABELS.E_MAX", "0.5"],
    "cutmix": ["LABELS.STRATEGY", "cutmix"],
}
SEEDS = (0, 1)
# (epochs, seed) -> settings: ls has one seed (no interval), hard and als also run 2 epochs
# (training length)
PLAN = {
    (1, 0): list(SETTINGS),
    (1, 1): ["hard", "als", "als_object", "cutmix"],
    (2, 0): ["hard", "als"],
}


def _train(root: Path, out: Path, setting: str, seed: int, epochs: int) -> Path:
    return train(
        load_config(
            str(CONFIGS / "demo_als.yaml"),
            [
                *tiny_data_overrides(root, out / "cache"),
                "SOLVER.EPOCHS",
                str(epochs),
                "SOLVER.WARMUP_EPOCHS",
                "0",
                "SOLVER.BATCH_SIZE",
                "8",
                "SOLVER.BASE_LR",
                "0.2",
                "TRAIN.MAX_ITERS_PER_EPOCH",
                "1",
                "TRAIN.DEVICE",
                "cpu",
                "SEED",
                str(seed),
                "OUTPUT_DIR",
                str(out),
                *SETTINGS[setting],
            ],
        )
    )


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> list[SweepCell]:
    """PLAN's runs; each seed's and length's arms evaluated together with that seed's hard model,
    as a sweep would."""
    base = tmp_path_factory.mktemp("sweep")
    root = generate(base / "gen", TINY_GEN, progress=False)
    opts = EvalOptions(batch_size=16, workers=0, grid_images=0, progress=False, device="cpu")
    out: list[SweepCell] = []
    for (epochs, seed), settings in PLAN.items():
        runs = {s: _train(root, base / f"{s}_s{seed}_e{epochs}", s, seed, epochs) for s in settings}
        ev = base / f"eval_s{seed}_e{epochs}"
        write_evaluation(
            evaluate_checkpoints(
                [str(r / "last.pth") for r in runs.values()],
                str(root),
                str(ev),
                names=list(runs),
                opts=opts,
            ),
            ev,
        )
        out += [SweepCell(s, seed, r, ev / "metrics.json") for s, r in runs.items()]
    return out


@pytest.mark.slow
def test_report_numbers_come_from_the_evaluations(cells, tmp_path) -> None:
    report = write_sweep_report(cells, tmp_path / "report", title="tiny")
    sweep = summarize(cells)
    assert sweep.main_epochs == 1 and sweep.sources == [
        "bg_only",
        "bg_only_mean",
        "bg_only_blur",
        "outside_crop",
        "val_bg_only",
    ]
    groups = {(g.setting, g.epochs): g for g in sweep.groups}
    assert list(groups)[0] == ("hard", 1) and set(groups) == {(s, 1) for s in SETTINGS} | {
        ("hard", 2),
        ("als", 2),
    }
    assert groups[("ls", 1)].stats["d_top1"]["interval"] is None  # one seed: no interval
    evals = {
        (c.seed, c.setting): json.loads(Path(c.eval_metrics).read_text())
        for c in cells
        if "_e1" in str(c.eval_metrics)
    }
    als = groups[("als", 1)]
    top1 = [evals[(s, "als")]["models"]["als"]["val"]["top1"] for s in SEEDS]
    assert als.stats["top1"]["mean"] == pytest.approx(np.mean(top1))
    assert als.stats["top1"]["std"] == pytest.approx(np.std(top1, ddof=1))
    diffs = [
        evals[(s, "als")]["models"]["als"]["val"]["top1"]
        - evals[(s, "hard")]["models"]["hard"]["val"]["top1"]
        for s in SEEDS
    ]
    assert als.stats["d_top1"]["interval"] == pytest.approx(list(t_interval(diffs)[1:]))
    # the paired ratios are those the joint evaluation itself reported against hard
    for seed, cell in zip(SEEDS, als.cells):
        head = evals[(seed, "als")]["headline"]["comparisons"]["als"]
        for source in ("bg_only", "outside_crop"):
            for form in ("ratio_absolute", "ratio_relative_to_val"):
                assert cell.values[f"{form}_{source}"] == pytest.approx(head[source][form])
        # bg_only under the other fills: the evaluation's own per-fill comparisons
        by_fill = evals[(seed, "als")]["fills"]["comparisons"]["als"]
        for fill in ("mean", "blur"):
            for form in ("ratio_absolute", "ratio_relative_to_val"):
                assert cell.values[f"{form}_bg_only_{fill}"] == pytest.approx(by_fill[fill][form])
    assert (
        groups[("cutmix", 1)].strategy["name"] == "cutmix"
        and groups[("cutmix", 1)].stats["mean_e"]["mean"] > 0
    )

    text = report.read_text()
    for part in (
        "## Verdict",
        "**bg_only_mean, 1-epoch runs**",
        "## Context reliance: bg_only_blur",
        "may be about the fill, not the context",
        "## Accuracy and calibration",
        "## Context reliance: bg_only",
        "## Training length",
        "## Cells",
        "Student-t interval over seeds",
        "als: object coverage, e in [0, 0.5]",
        "cutmix: alpha=1",
    ):
        assert part in text, part
    assert (
        "no setting lowers" in text
        or "lowers relative context reliance" in text
        or "lowers it" in text
        or "is at or near chance on val in seed(s)" in text  # one iteration per cell
    )
    for fig in (
        "tradeoff_bg_only.png",
        "tradeoff_bg_only_mean.png",
        "tradeoff_outside_crop.png",
        "training_length.png",
    ):
        assert f"]({fig})" in text and (tmp_path / "report" / fig).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "report" / "sweep.json").read_text())
    assert len(saved["cells"]) == len(cells) and saved["groups"][0]["setting"] == "hard"


@pytest.mark.slow
def test_cells_that_cannot_be_paired_are_refused(cells, tmp_path) -> None:
    no_hard = [c for c in cells if not (c.setting == "hard" and c.seed == 1)]
    with pytest.raises(SweepInputError, match=r"no 'hard' cell for \(seed, epochs\) \[\(1, 1\)\]"):
        summarize(no_hard)
    wrong_seed = [
        SweepCell(c.setting, 7, c.run_dir, c.eval_metrics)
        if c.setting == "ls" and c.seed == 0
        else c
        for c in cells
    ]
    with pytest.raises(SweepInputError, match="has seed 0"):
        summarize(wrong_seed)
    als = next(c for c in cells if c.setting == "als" and c.seed == 0)
    with pytest.raises(SweepInputError, match="no evaluated checkpoint"):
        summarize([SweepCell("als", 0, als.run_dir, cells[-1].eval_metrics)])
    with pytest.raises(SweepInputError, match="model 'hard' is .*, not a checkpoint in"):
        summarize([SweepCell("als", 0, als.run_dir, als.eval_metrics, model="hard")])
    # an evaluation of fewer images cannot be compared with the others
    other = tmp_path / "other_eval"
    write_evaluation(
        evaluate_checkpoints(
            [str(Path(als.run_dir) / "last.pth")],
            str(_data_root(als)),
            str(other),
            opts=EvalOptions(max_images=4, workers=0, grid_images=0, progress=False, device="cpu"),
        ),
        other,
    )
    with pytest.raises(SweepInputError, match=r"differs in \['images_evaluated'\]"):
        summarize(
            [c for c in cells if c is not als]
            + [SweepCell("als", 0, als.run_dir, other / "metrics.json")]
        )


@pytest.mark.slow
def test_a_moved_sweep_folder_is_matched_by_checkpoint_hash(cells, tmp_path) -> None:
    als = next(c for c in cells if c.setting == "als" and c.seed == 0)
    metrics = json.loads(Path(als.eval_metrics).read_text())
    run = Path(als.run_dir).resolve()
    (name,) = [
        n for n, m in metrics["models"].items() if Path(m["checkpoint"]["path"]).parent == run
    ]
    ck = metrics["models"][name]["checkpoint"]
    ck["path"] = str(Path("/elsewhere/before/the/move") / Path(ck["path"]).name)
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(metrics))
    as_moved_cells = [SweepCell("als", 0, als.run_dir, moved) if c is als else c for c in cells]
    as_moved = summarize(as_moved_cells)
    stats = [json.dumps(g.stats, default=str) for g in summarize(cells).groups]
    assert [json.dumps(g.stats, default=str) for g in as_moved.groups] == stats
    ck["sha256"] = "0" * 64  # another checkpoint of the same name: not this run's
    moved.write_text(json.dumps(metrics))
    with pytest.raises(SweepInputError, match="no evaluated checkpoint"):
        summarize(as_moved_cells)


def _transfer_json(path: Path, cell: SweepCell, top1: float, **changes) -> Path:
    """A transfer.json of the cell's checkpoint as tools/transfer.py writes it (the keys the sweep
    reads), with top-1 `top1` under each protocol; `changes` edit its model entry or options."""
    ckpt = Path(cell.run_dir).resolve() / "last.pth"
    model = {
        "checkpoint": str(ckpt),
        "sha256": sha256_file(ckpt),
        "pretrain_seed": cell.seed,
        "pretrain_epoch": int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]),
        **{p: {"top1": top1} for p in ("linear_probe", "knn")},
    }
    options = {"protocols": "linear_probe,knn", "k": 20, "seed": 0, "workers": 2}
    for key, value in changes.items():
        (options if key in options else model)[key] = value
    results = {
        "models": {cell.setting: model},
        "data": {
            "root": "/down",
            "classes": ["a", "b"],
            "images": {"train": 4, "val": 2},
            "max_per_class": 0,
            "digest": "d",
        },
        "options": options,
    }
    path.write_text(json.dumps(results))
    return path


@pytest.mark.slow
def test_transfer_results_are_paired_by_seed_and_must_belong_to_their_cell(cells, tmp_path):
    main = [c for c in cells if "_e1" in str(c.run_dir) and c.setting in ("hard", "als")]
    top1 = {("hard", 0): 0.50, ("hard", 1): 0.60, ("als", 0): 0.55, ("als", 1): 0.75}

    def with_transfer(cell: SweepCell, **changes) -> SweepCell:
        path = tmp_path / f"{cell.setting}_{cell.seed}.json"
        t = _transfer_json(path, cell, top1[(cell.setting, cell.seed)], **changes)
        return replace(cell, transfer=t)

    sweep = summarize([with_transfer(c) for c in main])
    als = next(g for g in sweep.groups if g.setting == "als")
    assert als.stats["transfer_knn"]["mean"] == pytest.approx(0.65)
    assert als.stats["d_transfer_linear_probe"]["mean"] == pytest.approx(0.10)
    assert als.stats["d_transfer_linear_probe"]["interval"] == pytest.approx(
        list(t_interval([0.05, 0.15])[1:])
    )
    assert sweep.transfer["options"] == {"protocols": "linear_probe,knn", "k": 20, "seed": 0}
    # a cell without its transfer: its numbers are left out, nothing is paired with it
    partial = summarize([with_transfer(c) if c.seed == 0 else c for c in main])
    als = next(g for g in partial.groups if g.setting == "als")
    assert als.stats["d_transfer_linear_probe"]["n"] == 1
    assert als.stats["d_transfer_linear_probe"]["interval"] is None
    # workers change how it ran, not what it measured; k changes what it measured
    assert summarize([with_transfer(c, workers=0) if c.seed else with_transfer(c) for c in main])
    with pytest.raises(SweepInputError, match=r"differs in \['options.k'\]"):
        summarize([with_transfer(c, k=5) if c.seed else with_transfer(c) for c in main])
    with pytest.raises(SweepInputError, match="its checkpoint has seed 7"):
        summarize([with_transfer(c, pretrain_seed=7) if c.seed else c for c in main])
    hard = next(c for c in main if c.setting == "hard")
    with pytest.raises(SweepInputError, match="not a checkpoint in"):
        summarize(
            [
                with_transfer(c, sha256="0" * 64, checkpoint="/else/last.pth") if c is hard else c
                for c in main
            ]
        )


def _data_root(cell: SweepCell) -> Path:
    return Path(json.loads(Path(cell.eval_metrics).read_text())["data"]["root"])


def test_pareto_front_keeps_the_points_nothing_beats() -> None:
    points = [(50.0, 1.0), (49.0, 0.8), (48.0, 0.9), (45.0, 0.5), (49.0, 0.8)]
    # (48, 0.9) is beaten by (49, 0.8); the duplicates do not beat each other
    assert pareto_front(points) == [3, 1, 4, 0]

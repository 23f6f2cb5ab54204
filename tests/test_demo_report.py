"""The demo report's verdict: one seed states no direction; several seeds pair each arm with hard of
the same seed and conclude from t-intervals over seeds (real tiny trainings and evaluations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tiny_runs import TINY_GEN, tiny_data_overrides

from als_det.analysis.evaluate import EvalOptions, evaluate_checkpoints
from als_det.config import load_config
from als_det.data.generated import generate
from als_det.engine.trainer import train
from als_det.experiment.plan import parse_plan
from als_det.metrics.intervals import t_interval
from als_det.report.demo import what_the_numbers_say
from als_det.report.evaluation import write_evaluation

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = re.compile(r"relies (less|more)|rely on context alike|lowers|raises")


def _plan(seeds: list[int]):
    raw = yaml.safe_load((REPO / "configs/experiments/demo.yaml").read_text())
    raw["seeds"] = seeds
    return parse_plan(raw, "demo.yaml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every arm of the demo plan at seeds 0 and 1, one iteration each, evaluated together."""
    base = tmp_path_factory.mktemp("demo")
    root = generate(base / "gen", TINY_GEN, progress=False)
    plan = _plan([0, 1])
    ckpts = {}
    for run, arm, seed in plan.runs():
        ckpts[run] = (
            train(
                load_config(
                    str(REPO / arm.config),
                    [
                        *tiny_data_overrides(root, base / "cache"),
                        "SOLVER.EPOCHS",
                        "1",
                        "SOLVER.WARMUP_EPOCHS",
                        "0",
                        "SOLVER.BATCH_SIZE",
                        "8",
                        "TRAIN.MAX_ITERS_PER_EPOCH",
                        "1",
                        "TRAIN.DEVICE",
                        "cpu",
                        "SEED",
                        str(seed),
                        "OUTPUT_DIR",
                        str(base / run),
                    ],
                )
            )
            / "last.pth"
        )
    ev = base / "evaluation"
    opts = EvalOptions(batch_size=16, workers=0, grid_images=0, progress=False, device="cpu")
    metrics = evaluate_checkpoints(
        [str(c) for c in ckpts.values()],
        str(root),
        str(ev),
        names=list(ckpts),
        baseline="hard_s0",
        opts=opts,
    )
    write_evaluation(metrics, ev)
    return plan, ckpts, ev, metrics


def _row(text: str, comparison: str, view: str) -> list[str]:
    """The cells of the Markdown table row for `comparison` in `view`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:2] == [comparison, view]:
            return cells[2:]
    raise AssertionError(f"no row {comparison} / {view} in\n{text}")


def test_several_seeds_conclude_from_the_spread_across_seeds(runs) -> None:
    plan, ckpts, ev, metrics = runs
    text = "\n".join(what_the_numbers_say(plan, ckpts, ev, metrics))
    assert "2 seeds" in text and "Student-t interval over seeds" in text
    assert "bg_only, 1-epoch runs" in text and "outside_crop, 1-epoch runs" in text
    # every view, paired by seed: a column per seed, then the mean and its t-interval apart
    assert "### Context reliance in every context-only view, over seeds" in text
    assert "| comparison | view | seed 0 | seed 1 | mean | 95% interval | verdict |" in re.sub(
        r" {2,}", " ", text
    )
    models = metrics["models"]
    for view, fill in (("bg_only", "black"), ("outside_crop", None), ("bg_only", "blur")):
        rel = [
            _relative(models[f"als_s{s}"], view, fill) / _relative(models[f"hard_s{s}"], view, fill)
            for s in (0, 1)
        ]
        mean, lo, hi = t_interval(rel)
        title = f"bg_only, {fill} fill" if fill else "outside_crop (no fill)"
        assert _row(text, "als / hard", title)[:4] == [
            f"{rel[0]:.3f}",
            f"{rel[1]:.3f}",
            f"{mean:.3f}",
            f"[{lo:.3f}, {hi:.3f}]",
        ]


def _relative(model: dict, view: str, fill: str | None) -> float:
    summary = model["bg_only_by_fill"][fill] if fill else model["variants"][view]
    return summary["mean_confidence"] / model["val"]["mean_confidence"]


def test_one_seed_says_so_and_states_no_direction(runs) -> None:
    plan, ckpts, ev, metrics = runs
    one = {k: v for k, v in ckpts.items() if k.endswith("_s0")}
    comparisons = metrics["headline"]["comparisons"]
    assert {"ls_s0", "als_s0"} <= set(comparisons)
    text = "\n".join(what_the_numbers_say(_plan([0]), one, ev, metrics))
    assert "one seed" in text and "not training variance" in text and "make demo SEEDS=3" in text
    verdicts, fills = text.split("### Every context-only view")
    assert not DIRECTIONS.search(verdicts), verdicts
    assert "One seed: lower / alike / higher below describe these checkpoints" in fills
    h = comparisons["als_s0"]["outside_crop"]
    iv = h["intervals_95"]["ratio_relative_to_val"]
    assert _row(fills, "als_s0 / hard_s0", "outside_crop (no fill)")[2:4] == [
        f"{h['ratio_relative_to_val']:.3f}",
        f"[{iv[0]:.3f}, {iv[1]:.3f}]",
    ]

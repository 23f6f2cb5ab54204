"""Every report reads its views, fills and arms from one place: a view or fill registered in
`als_det.views` appears in report.md, the sweep report and the demo report; the demo's rows are the
plan's arms. The evaluations are made by the real metric functions from seeded random logits (no
training), so the reports see metrics.json exactly as an evaluation writes it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from als_det import views
from als_det.experiment.plan import parse_plan
from als_det.metrics.calibration import calibration_metrics_from_logits
from als_det.metrics.comparison import UnpairedError, direction, pair_with_baseline, seed_stats
from als_det.metrics.context import confidence_summary, fill_comparisons, headline
from als_det.metrics.intervals import t_interval
from als_det.report.demo import write_demo_report
from als_det.report.evaluation import write_evaluation
from als_det.report.fills import agreement
from als_det.report.sweep import SweepCell, summarize
from als_det.report.sweep_report import write_sweep_report
from als_det.targets import LabelStrategy

REPO = Path(__file__).resolve().parents[1]
K, N = 3, 16
ARMS = {
    "hard": ({"config": "configs/pretrain/demo_hard.yaml"}, LabelStrategy("hard")),
    "als": ({"config": "configs/pretrain/demo_als.yaml"}, LabelStrategy("als")),
    "als_soft": (
        {"config": "configs/pretrain/demo_als.yaml", "overrides": {"LABELS.E_MAX": 0.5}},
        LabelStrategy("als", e_max=0.5),
    ),
}
CAM = {
    "method": "cam",
    "mean_energy_inside_boxes": 0.4,
    "mean_box_area_fraction": 0.3,
    "n": N,
    "skipped": {},
}


def _plan(seeds: list[int]):
    raw = yaml.safe_load((REPO / "configs/experiments/demo.yaml").read_text())
    raw["seeds"], raw["arms"] = seeds, {name: arm for name, (arm, _) in ARMS.items()}
    return parse_plan(raw, "demo.yaml")


def _view(g: torch.Generator, name: str, labels: torch.Tensor) -> tuple[dict, torch.Tensor]:
    logits = torch.randn(N, K, generator=g) * 1.5
    return {**confidence_summary(logits, labels, name), "skipped": {}}, logits


def _evaluate(plan, out: Path, learnt: bool = False) -> tuple[dict[str, Path], Path]:
    """One pretraining folder per run (metrics.jsonl) and their joint evaluation (metrics.json,
    report.md) under `out`: every view and fill of the registry, from seeded random logits (at
    chance on val; `learnt`: val logits that favour the true class, well above chance)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % K
    models, conf, ckpts = {}, {}, {}
    for run, arm, seed in plan.runs():
        logits = torch.randn(N, K, generator=g) * 2
        if learnt:
            logits += 4 * torch.nn.functional.one_hot(labels, K)
        val = calibration_metrics_from_logits(logits, labels)
        val.update(
            {
                k: v
                for k, v in confidence_summary(logits, labels, "intact").items()
                if k in ("frac_confidence_gt_0.5", "confidence_histogram")
            }
        )
        val["skipped"] = {}
        conf[run] = {"val": logits.softmax(1).max(1).values}
        variants = {}
        for v in views.VIEWS.values():
            variants[v.name], lv = _view(g, v.name, labels)
            conf[run][v.name] = lv.softmax(1).max(1).values
            if v.calibration:
                cal = calibration_metrics_from_logits(lv, labels)
                variants[v.name].update({"top1": cal["top1"], "ece": cal["ece"], "cam": CAM})
        by_fill = {"black": variants[views.PRIMARY]}
        conf[run]["bg_only@black"] = conf[run][views.PRIMARY]
        for fill in (f for f in views.FILLS if f != "black"):
            by_fill[fill], lv = _view(g, views.PRIMARY, labels)
            conf[run][f"bg_only@{fill}"] = lv.softmax(1).max(1).values
        folder = out / "pretrain" / run
        folder.mkdir(parents=True)
        row = {"epoch": 1, "train_loss": 1.0, "val_top1": val["top1"], "val_ece": val["ece"]}
        row.update({"mean_e": 0.2, "mean_coverage": 0.5, "epoch_time_s": 2.0})
        (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        ckpts[run] = folder / "last.pth"
        models[run] = {
            "checkpoint": {
                "path": str(ckpts[run].resolve()),
                "sha256": "0" * 64,
                "arch": "resnet18",
                "num_classes": K,
                "epoch": 1,
                "seed": seed,
                "preprocessing": {"image_size": 16},
                "val_resize": 18,
            },
            "label_strategy": ARMS[arm.name][1].to_dict(),
            "val": val,
            "cam": CAM,
            "variants": variants,
            "bg_only_by_fill": by_fill,
        }
    baseline = plan.run_name(plan.baseline, plan.seeds[0])
    metrics = {
        "models": models,
        "headline": headline(models, baseline, conf),
        "fills": {"primary": "black", "comparisons": fill_comparisons(models, baseline, conf)},
        "data": {
            "root": "/data",
            "split": "val",
            "classes": ["a", "b", "c"],
            "images_in_index": N,
            "images_evaluated": N,
            "with_boxes": N,
            "world_size": 1,
            "device": "cpu",
        },
        "options": {"fill": "black"},
        "cam_grid": None,
        "figures": {},
        "versions": {},
    }
    ev = out / "evaluation"
    write_evaluation(metrics, ev)
    return ckpts, ev


def _reports(
    tmp_path: Path, seeds: list[int], sweep: bool = True, learnt: bool = False
) -> dict[str, str]:
    """report.md of the evaluation, the demo report over `seeds` and (`sweep`) the sweep report
    over the same runs."""
    plan = _plan(seeds)
    ckpts, ev = _evaluate(plan, tmp_path, learnt)
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "comparison.md").write_text("| AP |\n")
    demo, _ = write_demo_report(tmp_path, plan, ckpts, ev, [], compare, {"pretrain": 1.0})
    text = {"report.md": (ev / "report.md").read_text(), "demo": demo.read_text()}
    if sweep:
        text["sweep"] = write_sweep_report(_cells(plan, ckpts, ev), tmp_path / "sweep").read_text()
    return text


def _cells(plan, ckpts: dict[str, Path], ev: Path) -> list[SweepCell]:
    return [
        SweepCell(arm.name, seed, ckpts[run].parent, ev / "metrics.json", model=run)
        for run, arm, seed in plan.runs()
    ]


DUMMY_VIEWS = (
    views.View("val_dummy", "a generated split of a test", True, split="val_dummy"),
    views.View("dummy_crop", "a box variant of a test, no fill", True, variant="outside_crop"),
)


def test_registered_views_and_fills_appear_in_every_report(monkeypatch, tmp_path) -> None:
    for view in DUMMY_VIEWS:
        monkeypatch.setitem(views.VIEWS, view.name, view)
    monkeypatch.setitem(views.FILLS, "gray", views.Fill("gray", "grey"))
    text = _reports(tmp_path, [0, 1])
    evaluation, sweep, demo = text["report.md"], text["sweep"], text["demo"]
    for view in DUMMY_VIEWS:
        assert f"**{view.name}** ({view.text}): mean confidence" in evaluation
        assert f"### {view.name}\n" in evaluation  # its headline ratios
        assert f"## Context reliance: {view.name}\n" in sweep
        assert f"conf {view.name} " in demo
    # a view of the val images without fill stands beside every fill and gets verdicts
    crop = DUMMY_VIEWS[1].name
    assert f"{crop} (no fill)" in evaluation and f"{crop} (no fill)" in demo
    assert f"**{crop}, 1-epoch runs**" in sweep and f"**{crop}, 1-epoch runs**" in demo
    assert f"tradeoff_{crop}.png" in sweep
    # the fill: bg_only under it, in report.md's fill table, the sweep and the demo's fill table
    assert "bg_only, gray fill" in evaluation and "bg_only, gray fill" in demo
    assert "## Context reliance: bg_only_gray\n" in sweep
    assert "**bg_only_gray, 1-epoch runs**" in sweep


def test_demo_rows_are_the_plans_arms(tmp_path) -> None:
    """One seed: the runs are named as their arms, and `als_soft` is an arm of its own, not
    `als` (the demo once split run names on "_s")."""
    demo = _reports(tmp_path, [0], sweep=False)["demo"]
    table = demo.split("## Classification, calibration and context reliance")[1].split("**What")[0]
    rows = re.findall(r"^\| (\w+) +\| (\d+) +\|", table, re.M)
    assert rows == [(arm, "1") for arm in ARMS]


@pytest.mark.parametrize("seeds", [[0], [0, 1]])
def test_detection_table_has_the_one_seed_caveat_with_one_seed(tmp_path, seeds) -> None:
    plan = _plan(seeds)
    ckpts, ev = _evaluate(plan, tmp_path)
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "comparison.md").write_text("| strategy | AP |\n| als | 40.0 (+29.6) |\n")
    demo, tables = write_demo_report(tmp_path, plan, ckpts, ev, [], compare, {})
    detection = demo.read_text().split("## Detection transfer")[1].split("## Stages")[0]
    caveat = "one run does not show which arm transfers better"
    assert (caveat in detection) == (len(seeds) == 1)
    assert (caveat in tables.split("Detection AP")[1]) == (len(seeds) == 1)


@pytest.mark.parametrize("learnt", [True, False])
def test_demo_over_seeds_uses_the_sweep_numbers(tmp_path, learnt) -> None:
    """The demo's per-fill table holds the sweep's paired per-seed ratios and their t-interval,
    and their verdict unless a model is at chance."""
    text = _reports(tmp_path, [0, 1], learnt=learnt)
    demo = text["demo"]
    ev = tmp_path / "evaluation"
    metrics = json.loads((ev / "metrics.json").read_text())["models"]
    plan = _plan([0, 1])
    ckpts = {run: tmp_path / "pretrain" / run / "last.pth" for run, _, _ in plan.runs()}
    (group,) = [g for g in summarize(_cells(plan, ckpts, ev)).groups if g.setting == "als_soft"]
    key = "ratio_relative_to_val_bg_only_blur"
    per_seed = []
    for s in (0, 1):
        rel = [
            m["bg_only_by_fill"]["blur"]["mean_confidence"] / m["val"]["mean_confidence"]
            for m in (metrics[f"als_soft_s{s}"], metrics[f"hard_s{s}"])
        ]
        per_seed.append(rel[0] / rel[1])
    assert [c.values[key] for c in group.cells] == pytest.approx(per_seed)
    mean, lo, hi = t_interval(per_seed)
    stats = group.stats[key]
    assert stats["mean"] == pytest.approx(mean) and stats["interval"] == pytest.approx([lo, hi])
    row = next(
        line
        for line in demo.splitlines()
        if re.match(r"\| als_soft / hard +\| bg_only, blur fill ", line)
    )
    word = direction([lo, hi]) if learnt else "at chance"
    assert [c.strip() for c in row.strip("|").split("|")][2:] == [
        *(f"{x:.3f}" for x in per_seed),
        f"{mean:.3f}",
        f"[{lo:.3f}, {hi:.3f}]",
        word,
    ]
    # whether the views agree, in the demo and the sweep report alike
    titles = {
        "bg_only": "bg_only, black fill",
        "bg_only_mean": "bg_only, mean fill",
        "bg_only_blur": "bg_only, blur fill",
        "outside_crop": "outside_crop (no fill)",
    }
    words = {
        s: direction(group.stats[f"ratio_relative_to_val_{s}"]["interval"])
        if learnt
        else "at chance"
        for s in titles
    }
    assert agreement("`als_soft`", words) in text["sweep"]
    if learnt:
        assert agreement("als_soft vs hard", {titles[s]: w for s, w in words.items()}) in demo
    else:
        assert "- als_soft vs hard: no verdict: it or hard is at or near chance on val" in demo
    said = "no verdict for `als_soft`: it or hard is at or near chance on val in seed(s) 0, 1"
    assert (said in text["sweep"]) != learnt and (said in demo) != learnt


def test_the_verdict_rule_and_seed_statistics() -> None:
    assert [direction(iv) for iv in ([0.8, 0.99], [0.9, 1.1], [1.01, 1.2], None)] == [
        "lower",
        "alike",
        "higher",
        None,
    ]
    stats = seed_stats([1.0, None, 3.0], paired=True)
    assert stats["n"] == 2 and stats["mean"] == 2.0 and stats["std"] == pytest.approx(2**0.5)
    assert stats["interval"] == pytest.approx(list(t_interval([1.0, 3.0])[1:]))
    assert seed_stats([1.0])["std"] is None and seed_stats([1.0, 2.0])["interval"] is None
    runs = [("hard", 0), ("als", 0), ("als", 1)]
    with pytest.raises(UnpairedError) as e:
        pair_with_baseline(runs, lambda r: r[1], lambda r: r[0] == "hard")
    assert e.value.missing == [1]
    pairs = pair_with_baseline(runs[:2], lambda r: r[1], lambda r: r[0] == "hard")
    assert pairs == [(("als", 0), ("hard", 0))]


def _imports(path: Path) -> set[str]:
    """Every als_det module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("als_det"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("als_det"))
    return found


def test_the_report_and_metrics_modules_import_no_cycle() -> None:
    """Among als_det/report, als_det/metrics and the registries, lazy imports included."""
    files = [
        *(REPO / "als_det" / "report").glob("*.py"),
        *(REPO / "als_det" / "metrics").glob("*.py"),
    ]
    files += [REPO / "als_det" / "views.py", REPO / "als_det" / "strategies.py"]
    name = {f: ".".join(f.relative_to(REPO).with_suffix("").parts) for f in files}
    graph = {name[f]: _imports(f) & set(name.values()) for f in files}
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            mod = todo.pop()
            assert mod != start, f"{start} imports itself through {sorted(seen)}"
            if mod not in seen:
                seen.add(mod)
                todo += graph.get(mod, ())


def test_demo_stages_total_every_stage_and_this_invocation_apart(tmp_path) -> None:
    """A resumed demo: the total sums every stage's recorded time, whichever invocation ran it;
    this invocation's wall time stands apart, labelled."""
    plan = _plan([0])
    ckpts, ev = _evaluate(plan, tmp_path)
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "comparison.md").write_text("| AP |\n")
    timings = {"pretrain_hard": 120.4, "evaluate": 38.2, "compare": 1.1}
    demo, _ = write_demo_report(tmp_path, plan, ckpts, ev, [], compare, timings, 4.6)
    stages = demo.read_text().split("## Stages")[1].split("## Versions")[0]
    rows = re.findall(r"^\| (.+?) +\| +(\d+) \|$", stages, re.M)
    assert rows == [
        ("pretrain_hard", "120"),
        ("evaluate", "38"),
        ("compare", "1"),
        ("**total, every stage** (what the whole demo cost)", "160"),
    ]
    assert "This invocation took 5 s of wall time" in stages
    assert "this run" not in stages

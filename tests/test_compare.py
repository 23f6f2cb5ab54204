"""tools/compare.py and als_det.report.compare on hand-written results.json files (the fields
fine-tuning writes: tests/test_finetune_outputs.py checks them on real runs)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from als_det.config import get_cfg
from als_det.report.compare import METRICS, ResultsError, compare
from als_det.report.compare_output import format_table, run_compare

# strategy -> AP per seed (other metrics derived from AP by fixed offsets below)
AP = {"hard": [30.0, 32.0, 31.0], "ls": [31.5, 33.5], "als": [34.0, 35.0, 36.5]}
OFFSET = {"AP": 0.0, "AP50": 20.0, "AP75": 2.0, "APs": -15.0, "APm": -2.0, "APl": 8.0}


def _squash(table: str) -> str:
    """A table with the column padding taken out: `| als | 3 |`."""
    return re.sub(r" {2,}", " ", table)


def _recipe(strategy: str, seed: int, **changes) -> str:
    """A pretraining config as a converted backbone records it (`backbone.pretrain_config`)."""
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "LABELS.STRATEGY",
            strategy,
            "SEED",
            seed,
            "OUTPUT_DIR",
            f"out/{strategy}_{seed}",
            *[x for kv in changes.items() for x in kv],
        ]
    )
    return cfg.dump()


def _write_run(
    root: Path,
    name: str,
    strategy,
    seed: int,
    ap: float,
    pretrain_seed: int | None = None,
    recipe: dict | None = None,
    test_sha: str = "t" * 64,
    **overrides,
) -> Path:
    """A results.json: `seed` is the fine-tuning seed; the backbone's pretraining seed is the same
    unless `pretrain_seed`."""
    pretrain_seed = seed if pretrain_seed is None else pretrain_seed
    run = root / f"{name}_s{seed}"
    run.mkdir(parents=True)
    bbox = {m: ap + OFFSET[m] for m in METRICS}
    bbox["per_class"] = {"cat": ap}
    bbox.update(overrides)
    label = strategy["name"] if isinstance(strategy, dict) else strategy
    backbone = {
        "path": f"{name}.pkl",
        "sha256": f"pkl-{name}-{pretrain_seed}",
        "source_sha256": f"pth-{name}-{pretrain_seed}",
        "label_strategy": strategy,
        "pretrain_seed": pretrain_seed,
        "pretrain_config": _recipe(label, pretrain_seed, **(recipe or {})) if label else None,
    }
    data = {
        "bbox": bbox,
        "test_dataset": "val",
        "backbone": backbone,
        "iterations": 300,
        "seed": seed,
        "eval_only": False,
        "training": {"seed": seed, "train_sets": {"train": "a" * 64}},
        "datasets": {
            "val": {"json_file": "/d/val.json", "image_root": "/d/val", "json_sha256": test_sha}
        },
        "detection_config": {"fingerprint": "c" * 64, "values": {"SOLVER.MAX_ITER": 300}},
        "versions": {},
    }
    (run / "results.json").write_text(json.dumps(data))
    return run


def _edit(run: Path, edit) -> Path:
    data = json.loads((run / "results.json").read_text())
    edit(data)
    (run / "results.json").write_text(json.dumps(data))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    out = []
    for name, aps in AP.items():
        for seed, ap in enumerate(aps):
            out.append(_write_run(tmp_path, name, {"name": name, "epsilon": 0.1}, seed, ap))
    return out


def test_means_stds_and_deltas(runs):
    comp = compare(runs)
    assert [g.name for g in comp.groups] == ["hard", "ls", "als"]
    for g in comp.groups:
        assert g.n == len(AP[g.name])
        for m in METRICS:
            vals = [a + OFFSET[m] for a in AP[g.name]]
            assert g.mean(m) == pytest.approx(statistics.mean(vals))
            assert g.std(m) == pytest.approx(statistics.stdev(vals))
            assert comp.delta(g, m) == pytest.approx(
                statistics.mean(AP[g.name]) - statistics.mean(AP["hard"])
            )
    js = comp.to_json()["groups"]["als"]["AP"]
    assert js["delta"] == pytest.approx(35.1666666 - 31.0, abs=1e-6)


def test_other_baseline_and_csv(runs):
    comp = compare(runs, baseline="ls")
    rows = list(csv.DictReader(io.StringIO(format_table(comp, "csv"))))
    by = {r["strategy"]: r for r in rows}
    assert float(by["ls"]["AP_delta"]) == 0.0
    assert float(by["hard"]["AP_delta"]) == pytest.approx(31.0 - 32.5, abs=1e-4)
    assert float(by["als"]["APl_std"]) == pytest.approx(statistics.stdev(AP["als"]), abs=1e-4)
    assert int(by["ls"]["n"]) == 2


def test_markdown_and_latex_show_deltas(runs):
    comp = compare(runs)
    md = format_table(comp, "markdown")
    als_row = next(line for line in _squash(md).splitlines() if line.startswith("| als "))
    mean, std = statistics.mean(AP["als"]), statistics.stdev(AP["als"])
    assert f"{mean:.2f} ± {std:.2f} ({mean - 31.0:+.2f})" in als_row
    assert "| 3 |" in als_row
    tex = format_table(comp, "latex")
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and f"({mean - 31.0:+.2f})" in tex


def test_single_run_has_no_std_and_differing_params_split_groups(tmp_path):
    a = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    b = _write_run(tmp_path, "als1", {"name": "als", "e_max": 1.0}, 0, 33.0)
    c = _write_run(tmp_path, "als2", {"name": "als", "e_max": 0.5}, 0, 32.0)
    comp = compare([a, b, c])
    assert [g.name for g in comp.groups] == ["hard", "als[e_max=0.5]", "als[e_max=1.0]"]
    assert all(g.n == 1 for g in comp.groups)
    assert "±" not in format_table(comp).split("\n")[2]


def test_null_size_metric_is_shown_as_missing(tmp_path):
    a = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0, APl=None)
    b = _write_run(tmp_path, "als", {"name": "als"}, 0, 33.0, APl=None)
    comp = compare([a, b])
    assert math.isnan(comp.groups[1].mean("APl"))
    assert comp.to_json()["groups"]["als"]["APl"] == {"mean": None, "std": None, "delta": None}
    assert _squash(format_table(comp)).split("\n")[3].endswith("| 31.00 (+3.00) | n/a |")


def test_run_without_detections_keeps_its_row_as_na(tmp_path):
    # a finished fine-tune whose model detected nothing: COCOeval gives no number, results.json
    # holds null
    a = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    c = _write_run(tmp_path, "ls", {"name": "ls"}, 0, 31.0, **{m: None for m in METRICS})
    comp = compare([a, c])
    assert [g.name for g in comp.groups] == ["hard", "ls"]
    md = format_table(comp)
    assert (
        "| ls | 1 | n/a | n/a | n/a | n/a | n/a | n/a |" in _squash(md)
        and "n/a: no number (no detections" in md
    )
    assert comp.to_json()["groups"]["ls"]["AP"] == {"mean": None, "std": None, "delta": None}
    assert "ls,1,nan" in format_table(comp, "csv")
    assert "| ls | 1 | n/a" in _squash(
        run_compare([a, c], out_dir=tmp_path / "cmp")
    )  # the chart copes too
    assert (tmp_path / "cmp" / "ap_by_strategy.png").is_file()


def test_tool_writes_table_json_and_chart(runs, tmp_path):
    out = tmp_path / "cmp"
    tool = Path(__file__).resolve().parents[1] / "tools" / "compare.py"
    proc = subprocess.run(
        [sys.executable, str(tool), *map(str, runs), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| als | 3 |" in _squash(proc.stdout) and "(+4.17)" in proc.stdout
    assert _squash((out / "comparison.md").read_text()).startswith("| strategy | n |")
    assert json.loads((out / "comparison.json").read_text())["baseline"] == "hard"
    assert (out / "ap_by_strategy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no results.json"),
        ("{not json", "not a readable json"),
        (json.dumps({"backbone": {}}), "no 'bbox'"),
        (
            json.dumps(
                {
                    "bbox": {m: 1.0 for m in METRICS if m != "APl"},
                    "backbone": {"label_strategy": {"name": "hard"}},
                }
            ),
            "bbox.APl",
        ),
        (
            json.dumps({"bbox": {m: 1.0 for m in METRICS}, "backbone": {"label_strategy": None}}),
            "label_strategy.name",
        ),
    ],
)
def test_bad_results_name_the_file(tmp_path, runs, content, needle):
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "results.json").write_text(content)
    with pytest.raises(ResultsError, match=needle) as err:
        compare([*runs, bad])
    assert str(bad / "results.json") in str(err.value)


def test_missing_baseline_and_duplicates_are_errors(runs, tmp_path):
    with pytest.raises(ResultsError, match="baseline 'none'"):
        run_compare(runs, baseline="none", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ResultsError, match="more than once"):
        compare([runs[0], runs[0] / "results.json"])


def test_mask_ap_is_tabulated_beside_box_ap(tmp_path):
    """Mask R-CNN runs: box AP and mask AP each get a table with deltas, csv columns and json."""
    runs = []
    for name, aps in AP.items():
        for seed, ap in enumerate(aps):
            run = _write_run(tmp_path, name, {"name": name}, seed, ap)
            data = json.loads((run / "results.json").read_text())
            data["segm"] = {m: ap - 3.0 + OFFSET[m] for m in METRICS}
            (run / "results.json").write_text(json.dumps(data))
            runs.append(run)
    comp = compare(runs)
    assert comp.tasks == ("bbox", "segm")
    als = comp.groups[2]
    assert als.mean("AP", "segm") == pytest.approx(statistics.mean(AP["als"]) - 3.0)
    assert comp.delta(als, "AP", "segm") == pytest.approx(statistics.mean(AP["als"]) - 31.0)
    md = format_table(comp)
    box, mask = md.split("mask AP (segm)")
    assert box.startswith("box AP (bbox)") and "| als | 3 | 35.17 ± 1.26 (+4.17)" in _squash(box)
    assert "| als | 3 | 32.17 ± 1.26 (+4.17)" in _squash(mask)
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO(format_table(comp, "csv")))}
    assert float(rows["als"]["segm_AP_mean"]) == pytest.approx(32.1667, abs=1e-4)
    assert float(rows["als"]["AP_mean"]) == pytest.approx(35.1667, abs=1e-4)
    js = comp.to_json()
    assert js["tasks"] == ["bbox", "segm"]
    assert js["groups"]["als"]["segm"]["AP"]["delta"] == pytest.approx(4.1667, abs=1e-4)
    assert js["groups"]["als"]["AP"]["mean"] == pytest.approx(35.1667, abs=1e-4)
    written = run_compare(runs, out_dir=tmp_path / "cmp")
    assert "mask AP (segm)" in written and (tmp_path / "cmp" / "ap_by_strategy.png").is_file()
    # box-only runs next to mask runs: refused rather than a table with holes
    box_only = _write_run(tmp_path / "more", "ls", {"name": "ls"}, 9, 30.0)
    with pytest.raises(ResultsError, match="only some runs have mask AP"):
        compare([*runs, box_only])


# ---------------------------------------------------------------------------------------------
# which runs are pooled as seeds (als_det.report.pooling)


def _copy(run: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    (dst / "results.json").write_bytes((run / "results.json").read_bytes())
    return dst


def test_two_copies_of_one_run_count_once_and_name_the_duplicate(tmp_path):
    hard = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    als = _write_run(tmp_path, "als", {"name": "als"}, 0, 34.0)
    copy = _copy(als, tmp_path / "copy_of_als")
    comp = compare([hard, als, copy])
    group = comp.groups[1]
    assert group.name == "als" and group.n == 1 and math.isnan(group.std("AP"))
    js = comp.to_json()["groups"]["als"]
    assert js["n"] == 1 and js["runs"] == [str(als / "results.json")]
    assert js["seeds"] == [{"pretrain": 0, "finetune": 0}]
    assert js["duplicates"] == [
        {
            "run": str(copy / "results.json"),
            "same_as": str(als / "results.json"),
            "why": "same backbone and seeds",
        }
    ]
    md = format_table(comp)
    assert "| als | 1 | 34.00 (+4.00) |" in _squash(md)
    assert (
        f"- als (n=1): {als} (seeds 0/0); counted once: {copy} (as {als}: same backbone and seeds)"
        in md
    )
    assert f"- hard (n=1): {hard} (seeds 0/0)" in md
    assert f"% als (n=1): {als} (seeds 0/0)" in format_table(comp, "latex")
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO(format_table(comp, "csv")))}
    assert rows["als"]["runs"] == str(als)


def test_runs_on_different_test_sets_are_refused(tmp_path):
    hard = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    als = _write_run(tmp_path, "als", {"name": "als"}, 0, 34.0)
    other = _write_run(tmp_path, "als", {"name": "als"}, 1, 20.0, test_sha="f" * 64)
    with pytest.raises(
        ResultsError, match="refusing to pool or compare runs evaluated on different test sets"
    ) as err:
        compare([hard, als, other])
    assert (
        f"val (json sha256 tttttttttttt...): {hard / 'results.json'}, {als / 'results.json'}"
        in str(err.value)
    )
    assert f"val (json sha256 ffffffffffff...): {other / 'results.json'}" in str(err.value)
    tool = Path(__file__).resolve().parents[1] / "tools" / "compare.py"
    proc = subprocess.run(
        [sys.executable, str(tool), str(hard), str(other), "--out", str(tmp_path / "cmp")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and proc.stderr.startswith("error: refusing to pool")
    assert not (tmp_path / "cmp").exists()


def test_seeds_pool_and_reruns_of_a_seed_do_not(tmp_path):
    hard = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    runs = [
        _write_run(tmp_path / "a", "als", {"name": "als"}, 0, 34.0),
        _write_run(
            tmp_path / "b", "als", {"name": "als"}, 1, 36.0, pretrain_seed=0
        ),  # fine-tuning seed differs
        _write_run(tmp_path / "c", "als", {"name": "als"}, 0, 32.0, pretrain_seed=1),
    ]  # backbone seed differs
    # the same seeds from another pretraining run (e.g. a rerun on another machine): not a new seed
    rerun = _edit(
        _write_run(tmp_path / "d", "als", {"name": "als"}, 0, 50.0),
        lambda d: d["backbone"].update(source_sha256="pth-rerun"),
    )
    comp = compare([hard, *runs, rerun])
    als = comp.groups[1]
    assert als.n == 3 and als.mean("AP") == pytest.approx(34.0)
    assert [d.why for d in als.duplicates] == [
        "same seeds from another copy of the pretraining (a rerun of that seed, not a new seed)"
    ]
    assert comp.to_json()["groups"]["als"]["seeds"] == [
        {"pretrain": 0, "finetune": 0},
        {"pretrain": 0, "finetune": 1},
        {"pretrain": 1, "finetune": 0},
    ]


def test_an_eval_only_run_is_not_a_new_seed(tmp_path):
    hard = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    als = _write_run(tmp_path, "als", {"name": "als"}, 0, 34.0)

    def eval_only(
        d,
    ):  # --eval-only of als's model_final.pth with another SEED: training records its seed
        d.update(eval_only=True, seed=7)
        d["backbone"].update(checkpoint="als_s0/model_final.pth")

    ev = _edit(_copy(als, tmp_path / "als_eval"), eval_only)
    comp = compare([hard, ev, als])  # the fine-tuning run is kept, whatever the order given
    group = comp.groups[1]
    assert group.n == 1 and group.runs[0].path == als / "results.json"
    assert [(d.run, d.why) for d in group.duplicates] == [
        (ev / "results.json", "an --eval-only run of the same seeds, not a new seed")
    ]
    # weights that do not record how they were fine-tuned: the seed it measures is unknown
    _edit(ev, lambda d: d.update(training=None))
    with pytest.raises(
        ResultsError,
        match="an --eval-only run of weights that do not record how they were fine-tuned",
    ):
        compare([hard, als, ev])


def test_a_smoke_run_beside_the_real_ones_is_refused_naming_what_differs(tmp_path):
    hard = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    als = _write_run(tmp_path, "als", {"name": "als"}, 0, 34.0)

    def smoke(d):
        d.update(iterations=2)
        d["detection_config"] = {"fingerprint": "s" * 64, "values": {"SOLVER.MAX_ITER": 2}}

    short = _edit(_write_run(tmp_path / "smoke", "als", {"name": "als"}, 1, 1.0), smoke)
    with pytest.raises(
        ResultsError,
        match=r"runs of different experiments .*SOLVER.MAX_ITER 2 vs 300; "
        r"2 vs 300 fine-tuning iterations",
    ):
        compare([hard, als, short])
    other_data = _edit(
        _write_run(tmp_path / "data", "als", {"name": "als"}, 1, 1.0),
        lambda d: d["training"].update(train_sets={"train": "b" * 64}),
    )
    with pytest.raises(ResultsError, match="trained on different data"):
        compare([hard, als, other_data])


def test_backbone_recipes_that_differ_get_their_own_rows(tmp_path):
    hard = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    short = _write_run(tmp_path / "8", "als", {"name": "als"}, 0, 34.0, recipe={"SOLVER.EPOCHS": 8})
    long = _write_run(
        tmp_path / "16", "als", {"name": "als"}, 1, 36.0, recipe={"SOLVER.EPOCHS": 16}
    )
    comp = compare([hard, short, long])
    assert [(g.name, g.n) for g in comp.groups] == [
        ("hard", 1),
        ("als[SOLVER.EPOCHS=16]", 1),
        ("als[SOLVER.EPOCHS=8]", 1),
    ]


def test_results_without_the_identity_records_are_refused(tmp_path):
    hard = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    old = _edit(_write_run(tmp_path, "als", {"name": "als"}, 0, 34.0), lambda d: d.pop("datasets"))
    with pytest.raises(
        ResultsError, match=rf"{old / 'results.json'}: no datasets.val.json_sha256; .*re-run"
    ):
        compare([hard, old])
    _edit(
        old, lambda d: d.update(datasets={"val": {"json_sha256": "t" * 64}}, detection_config=None)
    )
    with pytest.raises(ResultsError, match="no detection_config.values"):
        compare([hard, old])
    _edit(old, lambda d: d.update(detection_config={"fingerprint": "c" * 64, "values": {}}))
    _edit(old, lambda d: d["backbone"].update(pretrain_config=None))
    with pytest.raises(
        ResultsError,
        match="no backbone.pretrain_config; the backbone records no pretraining config",
    ):
        compare([hard, old])

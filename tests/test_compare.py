"""tools/compare.py and als_det.report.compare on hand-written results.json files."""
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

from als_det.report.compare import METRICS, ResultsError, compare, format_table, run_compare

# strategy -> AP per seed (other metrics derived from AP by fixed offsets below)
AP = {"hard": [30.0, 32.0, 31.0], "ls": [31.5, 33.5], "als": [34.0, 35.0, 36.5]}
OFFSET = {"AP": 0.0, "AP50": 20.0, "AP75": 2.0, "APs": -15.0, "APm": -2.0, "APl": 8.0}



def _squash(table: str) -> str:
    """A table with the column padding taken out: `| als | 3 |`."""
    return re.sub(r" {2,}", " ", table)

def _write_run(root: Path, name: str, strategy, seed: int, ap: float, **overrides) -> Path:
    run = root / f"{name}_s{seed}"
    run.mkdir(parents=True)
    bbox = {m: ap + OFFSET[m] for m in METRICS}
    bbox["per_class"] = {"cat": ap}
    bbox.update(overrides)
    data = {"bbox": bbox, "backbone": {"path": f"{name}.pkl", "label_strategy": strategy},
            "iterations": 300, "seed": seed, "versions": {}}
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
            assert comp.delta(g, m) == pytest.approx(statistics.mean(AP[g.name])
                                                     - statistics.mean(AP["hard"]))
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
    # a finished fine-tune whose model detected nothing: COCOeval gives no number, results.json holds null
    a = _write_run(tmp_path, "hard", {"name": "hard"}, 0, 30.0)
    c = _write_run(tmp_path, "ls", {"name": "ls"}, 0, 31.0, **{m: None for m in METRICS})
    comp = compare([a, c])
    assert [g.name for g in comp.groups] == ["hard", "ls"]
    md = format_table(comp)
    assert "| ls | 1 | n/a | n/a | n/a | n/a | n/a | n/a |" in _squash(md) and "n/a: no number (no detections" in md
    assert comp.to_json()["groups"]["ls"]["AP"] == {"mean": None, "std": None, "delta": None}
    assert "ls,1,nan" in format_table(comp, "csv")
    assert "| ls | 1 | n/a" in _squash(run_compare([a, c], out_dir=tmp_path / "cmp"))  # the chart copes too
    assert (tmp_path / "cmp" / "ap_by_strategy.png").is_file()


def test_tool_writes_table_json_and_chart(runs, tmp_path):
    out = tmp_path / "cmp"
    tool = Path(__file__).resolve().parents[1] / "tools" / "compare.py"
    proc = subprocess.run([sys.executable, str(tool), *map(str, runs), "--out", str(out)],
                          capture_output=True, text=True, check=True)
    assert "| als | 3 |" in _squash(proc.stdout) and "(+4.17)" in proc.stdout
    assert _squash((out / "comparison.md").read_text()).startswith("| strategy | n |")
    assert json.loads((out / "comparison.json").read_text())["baseline"] == "hard"
    assert (out / "ap_by_strategy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content, needle", [
    (None, "no results.json"),
    ("{not json", "not a readable json"),
    (json.dumps({"backbone": {}}), "no 'bbox'"),
    (json.dumps({"bbox": {m: 1.0 for m in METRICS if m != "APl"},
                 "backbone": {"label_strategy": {"name": "hard"}}}), "bbox.APl"),
    (json.dumps({"bbox": {m: 1.0 for m in METRICS}, "backbone": {"label_strategy": None}}),
     "label_strategy.name"),
])
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

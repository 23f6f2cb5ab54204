"""Sweep plans through the experiment runner: the grid (settings x seeds x training lengths) as
cells, its checks, the dry run, the progress line, each cell's transfer stage, and
`configs/experiments/sweep_smoke.yaml` end to end on the real-photo fixtures (a broken cell
reported while the others finish, the report over the finished cells from their real evaluations
and transfers, a second invocation that runs nothing)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from als_det.config import load_config
from als_det.experiment.commands import override_args
from als_det.experiment.graph import build_graph
from als_det.experiment.launchers import Outcome
from als_det.experiment.plan import PlanError, load_plan, parse_plan
from als_det.experiment.stages import fingerprint
from als_det.experiment.sweep import Progress, sweep_cells
from als_det.io import atomic_write_json
from als_det.revision import code_revision

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "configs/experiments/sweep_tiny_imagenet.yaml"
SMOKE = REPO / "configs/experiments/sweep_smoke.yaml"
RUN = re.compile(r"(?P<setting>\w+)_e(?P<epochs>\d+)_s(?P<seed>\d+)")


def _raw(path: Path = SMOKE) -> dict:
    return yaml.safe_load(path.read_text())


def test_sweep_plan_is_settings_x_seeds_x_lengths_one_cell_after_the_other():
    plan = load_plan(SWEEP)
    grid = plan.sweep
    assert plan.report == "sweep" and plan.evaluate.per_run and not plan.detection
    assert {
        "hard",
        "ls",
        "als",
        "als_object",
        "als_emax05",
        "als_emax03",
        "cutmix",
        "mixup",
    } <= set(grid.settings)
    assert (
        plan.seeds == [0, 1, 2]
        and grid.epochs == [8, 32]
        and grid.lengths_for == ["hard", "als"]
        and grid.length_seeds is None  # every seed
    )
    expected = {(s, 8) for s in grid.settings} | {(s, 32) for s in ("hard", "als")}
    assert {(setting, e) for _, setting, e in grid.cells()} == expected
    # every setting is what its name says, at the length its arm names
    for name, arm in plan.arms.items():
        cfg = load_config(
            str(REPO / arm.config), override_args({**plan.pretrain_overrides, **arm.overrides})
        )
        setting, epochs = name.rsplit("_e", 1)
        assert (
            cfg.SOLVER.EPOCHS == int(epochs) and cfg.DATA.ROOT == "../shared/data/tiny-imagenet-10"
        )
        labels = cfg.LABELS
        want = {
            "hard": ("hard", "crop", 1.0, 1.0),
            "ls": ("ls", "crop", 1.0, 1.0),
            "als": ("als", "crop", 1.0, 1.0),
            "als_object": ("als", "object", 1.0, 1.0),
            "als_emax05": ("als", "crop", 0.5, 1.0),
            "als_emax03": ("als", "crop", 0.3, 1.0),
            "als_p2": ("als", "crop", 1.0, 2.0),
            "cutmix": ("cutmix", "crop", 1.0, 1.0),
            "mixup": ("mixup", "crop", 1.0, 1.0),
        }[setting]
        assert (labels.STRATEGY, labels.COVERAGE, labels.E_MAX, labels.POWER) == want, name

    graph = build_graph(plan)
    assert len(graph.stages) == 3 * len(expected) * 3  # every (setting, length) over 3 seeds
    runs = []
    # each cell trained, evaluated, then transferred (after its pretraining only)
    for pre, ev, tr in zip(graph.stages[::3], graph.stages[1::3], graph.stages[2::3]):
        assert (pre.kind, ev.kind, ev.deps) == ("pretrain", "evaluate", (pre.name,))
        assert (tr.kind, tr.deps, tr.inputs) == ("transfer", (pre.name,), (pre.outputs[0],))
        args = list(tr.command.args)
        assert args[args.index("--data") + 1] == "../shared/data/tiny-imagenet-transfer"
        run = RUN.fullmatch(pre.name.removeprefix("pretrain_"))
        args = list(pre.command.args)
        assert args[args.index("SEED") + 1] == run["seed"]
        assert args[args.index("SOLVER.EPOCHS") + 1] == run["epochs"]
        assert (
            ev.outputs[0]
            == REPO / "output/sweep_tiny_imagenet/evaluation" / run[0] / "metrics.json"
        )
        runs.append(run[0])
    assert runs[:2] == ["hard_e8_s0", "ls_e8_s0"] and runs[-1] == "als_e32_s2"
    assert "mixup_e8_s2" in runs
    assert {r for r in runs if "_e32_" in r} == {
        f"{s}_e32_s{seed}" for s in ("hard", "als") for seed in (0, 1, 2)
    }
    # length_seeds limits the longer runs to those seeds; the main length keeps every seed
    limited = dataclasses.replace(plan, sweep=dataclasses.replace(grid, length_seeds=[0, 1]))
    names = [
        st.name.removeprefix("pretrain_")
        for st in build_graph(limited).stages
        if st.kind == "pretrain"
    ]
    assert "mixup_e8_s2" in names and "hard_e32_s1" in names
    assert not any(n.endswith("_s2") and "_e8_" not in n for n in names)
    assert runs.index("als_e8_s2") < runs.index(
        "hard_e32_s0"
    )  # the main length over every seed first
    # fewer seeds from the command line keep the same cell names (their results are reused)
    one = [st.name for st in build_graph(plan.with_changes(seeds=[0])).stages]
    assert one == [name for name in (st.name for st in graph.stages) if name.endswith("_s0")]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p["sweep"].update(lengths_for=["als"]),
            "lengths_for must include the baseline 'hard'",
        ),
        (
            lambda p: p["sweep"].update(lengths_for=["nope"]),
            "lengths_for must list settings among the arms",
        ),
        (
            lambda p: p["sweep"].update(epochs=[1, 1]),
            "sweep.epochs must be a non-empty list of distinct positive",
        ),
        (
            lambda p: p["sweep"].update(epochs=[1], lengths_for=["hard"]),
            "lengths_for needs more than one length",
        ),
        (lambda p: p["sweep"].update(seeds=[0]), r"unknown key\(s\) \['seeds'\] in sweep"),
        (
            lambda p: p["sweep"].update(length_seeds=[0, 7]),
            r"sweep.length_seeds must be among the plan.s seeds \[.*\], got \[0, 7\]",
        ),
        (
            lambda p: p["arms"]["als"].update(overrides={"SOLVER.EPOCHS": 4}),
            r"arms.als.overrides set SOLVER.EPOCHS; in a sweep the lengths come from sweep.epochs",
        ),
        (lambda p: p["evaluate"].update(per_run=False), "a sweep evaluates every run on its own"),
        (lambda p: p.update(report="demo"), "a sweep writes the sweep report, not report: 'demo'"),
        (lambda p: p["transfer"].pop("data"), r"transfer.data is required \(the downstream set"),
        (lambda p: p["transfer"].update(seeds=[0]), r"unknown key\(s\) \['seeds'\] in transfer"),
        (lambda p: p["transfer"].update(args="--epochs 1"), "transfer.args must be a list"),
        (
            lambda p: p.update(
                detection=[
                    {"name": "d", "config": "configs/detection/faster_rcnn_R_18_FPN_demo.yaml"}
                ]
            ),
            "a sweep pretrains and evaluates only",
        ),
        (
            lambda p: (p.pop("sweep"), p.update(report="sweep")),
            "report: sweep needs a `sweep` section",
        ),
    ],
)
def test_sweep_plan_errors_name_the_key(edit, message):
    raw = _raw()
    edit(raw)
    with pytest.raises(PlanError, match=message):
        parse_plan(raw, "sweep.yaml")


def test_dry_run_lists_every_cell():
    out = subprocess.run(
        [
            sys.executable,
            "tools/run_experiment.py",
            "--plan",
            str(SWEEP.relative_to(REPO)),
            "--dry-run",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == (
        "# sweep: 9 settings x 3 seeds at 8 epochs, and hard, als at 32 epochs: "
        "33 cells (a pretraining, an evaluation and a transfer each); report: "
        "output/sweep_tiny_imagenet/report.md"
    )
    commands = [ln for ln in lines if not ln.startswith("#")]
    assert len(commands) == 99
    emax = next(
        ln for ln in commands if "pretrain/als_emax03_e8_s2" in ln and "tools/pretrain.py" in ln
    )
    assert (
        "configs/pretrain/tiny_imagenet_als.yaml" in emax
        and "LABELS.E_MAX 0.3" in emax
        and "SEED 2" in emax
    )
    assert any("evaluation/mixup_e8_s1" in ln and "tools/evaluate.py" in ln for ln in commands)
    assert (
        "python tools/transfer.py --checkpoint "
        "output/sweep_tiny_imagenet/pretrain/ls_e8_s2/last.pth --name ls_e8_s2 --data "
        "../shared/data/tiny-imagenet-transfer --out "
        "output/sweep_tiny_imagenet/transfer/ls_e8_s2 --max-per-class 100 --epochs 3"
    ) in commands
    stage = next(ln for ln in lines if ". transfer_ls_e8_s2 [" in ln)
    assert stage.endswith("[1 node, no GPU, 2 CPUs/process, 60 min; after pretrain_ls_e8_s2]")


def test_transfer_stage_fingerprint_follows_its_options_data_and_checkpoint(tmp_path):
    def stages(edit=lambda raw: None) -> dict:
        raw = _raw()
        raw["out"] = str(tmp_path / "sweep")
        edit(raw)
        return {st.name: st for st in build_graph(parse_plan(raw, "sweep.yaml")).stages}

    base = stages()
    tr = base["transfer_als_e2_s1"]
    out = tmp_path / "sweep/transfer/als_e2_s1"
    assert (tr.outputs, tr.owns) == ((out / "transfer.json",), out)
    fp = fingerprint(tr)
    epochs = stages(lambda raw: raw["transfer"]["args"].extend(["--epochs", "2"]))
    assert fingerprint(epochs["transfer_als_e2_s1"]) != fp
    # the evaluation is independent of the transfer's options
    assert fingerprint(epochs["evaluate_als_e2_s1"]) == fingerprint(base["evaluate_als_e2_s1"])
    data = stages(lambda raw: raw["transfer"].update(data=str(tmp_path / "elsewhere")))
    assert fingerprint(data["transfer_als_e2_s1"]) != fp
    assert fingerprint(stages()["transfer_als_e2_s1"]) == fp
    tr.inputs[0].parent.mkdir(parents=True)
    tr.inputs[0].write_bytes(b"a checkpoint")  # the checkpoint's content is an input
    assert fingerprint(tr) != fp


def test_progress_names_the_cell_and_estimates_the_time_left(tmp_path, caplog):
    raw = _raw()
    raw["out"] = str(tmp_path / "sweep")
    plan = parse_plan(raw, "sweep.yaml")
    cells = sweep_cells(plan, build_graph(plan))
    assert [c.run for c in cells] == [
        "hard_e1_s0",
        "als_e1_s0",
        "hard_e1_s1",
        "als_e1_s1",
        "hard_e2_s0",
        "als_e2_s0",
        "hard_e2_s1",
        "als_e2_s1",
    ]
    progress = Progress(cells)
    caplog.set_level(logging.INFO, logger="als_det.experiment")
    progress(cells[0].pretrain, Outcome())
    assert (
        "cell 1/8 hard_e1_s0 (hard, seed 0, 1 epoch): pretraining; 0 cells "
        "finished (0 earlier), 0 failed; time left: known once a cell has finished" in caplog.text
    )
    caplog.clear()
    # the first cell took 600 s (one epoch) + 40 s; an earlier invocation ran hard_e2_s1 in 1300 s +
    # 60 s
    for stage, seconds in (
        (cells[0].pretrain, 600),
        (cells[0].evaluate, 40),
        (cells[0].transfer, 30),
        (cells[6].pretrain, 1300),
        (cells[6].evaluate, 60),
        (cells[6].transfer, 50),
    ):
        atomic_write_json(
            stage.marker, {"fingerprint": "x", "seconds": seconds, "resumed_from": None}
        )
    progress(
        cells[1].pretrain,
        Outcome(
            ran=[st.name for st in cells[0].stages], reused=[st.name for st in cells[6].stages]
        ),
    )
    # rates: (600 + 1300) s / 3 epochs, (40 + 60) / 2 s, (30 + 50) / 2 s; left: cells 1-5 and 7,
    # 1+1+1+2+2+2 = 9 epochs, 6 evaluations and 6 transfers: 9 * 1900 / 3 + 6 * 50 + 6 * 40 = 6240 s
    assert (
        "cell 2/8 als_e1_s0 (als, seed 0, 1 epoch): pretraining; 2 cells finished (1 earlier), "
        "0 failed; about 1 h 44 min left (633.3 s per training epoch, 50 s per evaluation, 40 s "
        "per transfer so far)" in caplog.text
    )
    caplog.clear()
    # two stages side by side (each record already includes sharing the CPUs): half the wall time
    Progress(cells, at_once=2)(cells[1].pretrain, Outcome())
    assert (
        "about 52 min left with 2 stages side by side (1 h 44 min of stage time; 633.3 s per "
        "training epoch" in caplog.text
    )
    caplog.clear()
    # a cell is finished once its transfer is: the one before it has only been evaluated
    progress(cells[1].transfer, Outcome(ran=[st.name for st in cells[0].stages[:2]]))
    assert "cell 2/8 als_e1_s0 (als, seed 0, 1 epoch): transfer; 0 cells finished" in caplog.text


def _sweep(plan: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "tools/run_experiment.py", "--plan", str(plan), "--out", str(out)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _metrics(out: Path, run: str) -> dict:
    return json.loads((out / "evaluation" / run / "metrics.json").read_text())["models"][run]


def _transfer(out: Path, run: str) -> dict:
    return json.loads((out / "transfer" / run / "transfer.json").read_text())["models"][run]


def _table_rows(section: str) -> dict[tuple[str, str], list[str]]:
    """(setting, epochs) -> the cells of its row in a Markdown table."""
    rows = {}
    for line in section.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[(cells[0].replace("**", "").split()[0], cells[1])] = cells
    return rows


@pytest.mark.slow
def test_smoke_sweep_reports_a_broken_cell_finishes_the_others_then_reuses_them(
    tmp_path, tiny_imagenet, tiny_imagenet_transfer
):
    out = tmp_path / "sweep"
    raw = _raw()
    raw["data"]["root"] = str(tiny_imagenet)
    raw["transfer"]["data"] = str(tiny_imagenet_transfer)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["arms"]["broken"] = {
        "config": "configs/pretrain/tiny_imagenet_hard.yaml",
        "overrides": {"LABELS.STRATEGY": "no_such_strategy"},
    }
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    first = _sweep(tmp_path / "broken.yaml", out)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    logs = {s: out / "logs" / f"pretrain_broken_e1_s{s}.log" for s in (0, 1)}
    for seed, log in logs.items():  # an unknown strategy is a user error: exit 2
        assert (
            f"FAILED stage pretrain_broken_e1_s{seed} failed (exit 2); log: {log}" in first.stderr
        )
        assert "no_such_strategy" in log.read_text()
    assert (
        "cell 10/10 als_e2_s1 (als, seed 1, 2 epochs): transfer; 7 cells finished" in first.stderr
    )
    assert "per transfer so far)" in first.stderr.split("cell 10/10")[1].splitlines()[0]
    report = (out / "report.md").read_text()
    assert report.startswith("# Sweep: sweep_smoke (incomplete)")
    assert "**2 of 10 planned cells are missing.**" in report
    missing = report.split("## Missing cells")[1].split("## Verdict")[0]
    for seed, log in logs.items():
        assert re.search(rf"`broken_e1_s{seed}` \| broken +\| {seed} .*\| 1 .*log: {log}", missing)
    assert json.loads((out / "sweep.json").read_text())["missing"][1]["cell"] == "broken_e1_s1"
    cells = report.split("## Cells")[1].split("## Code revisions")[0]
    assert len(cells.strip().splitlines()) == 2 + 8

    second = _sweep(tmp_path / "sweep.yaml", out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "]: 0 stage(s) ran, 24 reused" in second.stderr
    assert "tools/pretrain.py" not in second.stdout + second.stderr
    report = (out / "report.md").read_text()
    assert "Missing" not in report and "(incomplete)" not in report
    assert f"## Code revisions\n\nCode revision of every cell: `{code_revision()}`." in report
    for part in (
        "## Verdict",
        "## Accuracy and calibration",
        "## Context reliance: bg_only",
        "## Training length",
        "## Transfer",
    ):
        assert part in report, part
    for fig in (
        "tradeoff_bg_only.png",
        "tradeoff_outside_crop.png",
        "training_length.png",
        "transfer.png",
    ):
        assert f"]({fig})" in report and (out / fig).read_bytes()[:4] == b"\x89PNG"

    # the numbers are those of the cells' own evaluations, paired with hard of the same seed and
    # length
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["missing"] == [] and saved["main_epochs"] == 1
    assert (
        list(saved["revisions"]) == [code_revision()]
        and len(saved["revisions"][code_revision()]) == 24
    )
    assert saved["missing_transfer"] == [] and saved["transfer"]["data"]["images"] == {
        "train": 60,
        "val": 60,
    }
    groups = {(g["setting"], g["epochs"]): g["stats"] for g in saved["groups"]}
    assert set(groups) == {(s, e) for s in ("hard", "als") for e in (1, 2)}
    for epochs in (1, 2):
        als = [_metrics(out, f"als_e{epochs}_s{s}") for s in (0, 1)]
        hard = [_metrics(out, f"hard_e{epochs}_s{s}") for s in (0, 1)]
        assert [m["checkpoint"]["epoch"] for m in als + hard] == [epochs] * 4
        stats = groups[("als", epochs)]
        assert stats["top1"]["mean"] == pytest.approx(np.mean([m["val"]["top1"] for m in als]))
        assert stats["d_top1"]["mean"] == pytest.approx(
            np.mean([a["val"]["top1"] - h["val"]["top1"] for a, h in zip(als, hard)])
        )
        rel = [
            (a["variants"]["bg_only"]["mean_confidence"] / a["val"]["mean_confidence"])
            / (h["variants"]["bg_only"]["mean_confidence"] / h["val"]["mean_confidence"])
            for a, h in zip(als, hard)
        ]
        assert stats["ratio_relative_to_val_bg_only"]["mean"] == pytest.approx(np.mean(rel))
        assert stats["ratio_relative_to_val_bg_only"]["std"] == pytest.approx(np.std(rel, ddof=1))

    # the transfer columns: each cell's own transfer.json, over seeds and paired with hard's
    transfer = report.split("## Transfer")[1].split("\n\n")[2]
    rows = _table_rows(transfer)
    assert list(rows) == [("hard", "1"), ("als", "1"), ("hard", "2"), ("als", "2")]
    for epochs in (1, 2):
        als = [_transfer(out, f"als_e{epochs}_s{s}") for s in (0, 1)]
        hard = [_transfer(out, f"hard_e{epochs}_s{s}") for s in (0, 1)]
        assert [m["pretrain_epoch"] for m in als + hard] == [epochs] * 4
        row = rows[("als", str(epochs))]
        assert row[2] == "2"  # seeds
        for i, protocol in enumerate(("linear_probe", "knn", "finetune")):
            top1 = [m[protocol]["top1"] for m in als]
            delta = [a[protocol]["top1"] - h[protocol]["top1"] for a, h in zip(als, hard)]
            stats = groups[("als", epochs)]
            assert stats[f"transfer_{protocol}"]["mean"] == pytest.approx(np.mean(top1))
            assert stats[f"d_transfer_{protocol}"]["mean"] == pytest.approx(np.mean(delta))
            assert row[3 + 2 * i] == (
                f"{100 * np.mean(top1):.1f} ± {100 * np.std(top1, ddof=1):.1f}"
            )
            assert row[4 + 2 * i].startswith(f"{100 * np.mean(delta):+.1f} [")
        assert rows[("hard", str(epochs))][4] == "—"

"""The smoke plan end to end through `tools/run_experiment.py`: every stage runs its real entry
point for a few iterations, so a broken hand-off (checkpoint -> evaluate, checkpoint -> convert
-> fine-tune -> compare -> report) fails here. Once in this process's order (`local`, what `make
demo` uses), once as submitit jobs on this machine (`submitit-local`, the SLURM code path) with a
training killed mid-run and a broken arm."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from als_det.revision import code_revision

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs/experiments/smoke.yaml"
ARMS = ("hard", "als")
DET = "faster_rcnn_R_18_FPN"


def _run(plan: Path, out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "tools/run_experiment.py",
        "--plan",
        str(plan),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _check_outputs(out: Path, arms=ARMS) -> None:
    for arm in arms:
        assert (out / "pretrain" / arm / "last.pth").is_file()
        results = json.loads((out / "detection" / DET / arm / "results.json").read_text())
        assert results["backbone"]["label_strategy"]["name"] == arm
        assert results["backbone"]["path"] == str(out / "pretrained" / f"{arm}.pkl")
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert sorted(metrics["models"]) == sorted(arms)
    assert all(m["label_strategy"]["name"] == name for name, m in metrics["models"].items())
    comparison = json.loads((out / "compare" / DET / "comparison.json").read_text())
    assert sorted(comparison["groups"]) == sorted(arms)
    report = (out / "report.md").read_text()
    for section in (
        "## Pretraining",
        "## Classification, calibration and context reliance",
        "## Detection transfer",
        "evaluation/report.md",
    ):
        assert section in report
    assert re.search(r"^\| pretrain_hard +\|", report, re.MULTILINE)
    for line in report.splitlines():  # every figure the page links exists
        if line.startswith("![") and "](" in line:
            assert (out / line.split("](", 1)[1].rstrip(")")).is_file(), line


@pytest.mark.slow
def test_smoke_plan_local_end_to_end_then_reused(tmp_path):
    out = tmp_path / "smoke"
    first = _run(SMOKE, out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _check_outputs(out)
    assert (
        "Classification / calibration / context" in first.stderr and "Detection AP" in first.stderr
    )
    assert f"report: {out / 'report.md'}" in first.stderr
    assert (out / "logs" / "pretrain_hard.log").read_text().count("epoch 1/1") >= 1

    second = _run(SMOKE, out, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    reused = [ln for ln in second.stderr.splitlines() if "done earlier, reused" in ln]
    assert len(reused) == 1 + 2 + 1 + 2 + 2 + 1, second.stderr[-3000:]
    assert "tools/pretrain.py --config-file" not in second.stdout + second.stderr
    assert "another code revision" not in second.stderr
    records = [json.loads(p.read_text()) for p in (out / ".stages").glob("*.json")]
    finished = [r for r in records if "command" in r]
    assert len(finished) == len(reused) and {r["revision"] for r in finished} == {code_revision()}
    # the resumed run's report: the total is every stage's recorded time, whichever invocation ran
    # it; this invocation's wall time (all stages reused) stands apart
    stages = (out / "report.md").read_text().split("## Stages")[1]
    total = sum(r["seconds"] for r in finished)
    shown = re.search(r"^\| \*\*total, every stage\*\*.*\| +(\d+) \|$", stages, re.M)
    assert abs(int(shown.group(1)) - total) <= 0.5 + 1e-6
    wall = int(re.search(r"This invocation took (\d+) s of wall time", stages).group(1))
    assert wall < total


def _plan(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    edit(raw)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _epochs(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if path.is_file()
        else []
    )


@pytest.mark.slow
def test_smoke_plan_as_submitit_jobs_survives_a_kill_and_a_broken_arm(tmp_path):
    out = tmp_path / "smoke"
    epochs = 4

    # hard and a broken arm: the local test above runs every stage of both real arms, here each
    # stage is a cold-started job
    def broken_and_slow(raw):
        del raw["arms"]["als"]
        raw["arms"]["hard"]["overrides"] = {"SOLVER.EPOCHS": epochs}
        raw["arms"]["broken"] = {
            "config": "configs/pretrain/demo_hard.yaml",
            "overrides": {"NOT.A.KEY": 1},
        }

    plan = _plan(tmp_path, broken_and_slow)
    cmd = [
        sys.executable,
        "tools/run_experiment.py",
        "--plan",
        str(plan),
        "--out",
        str(out),
        "--launcher",
        "submitit-local",
    ]

    # 1. Kill everything (runner, submitit controller, job, trainer) once hard has an epoch on disk.
    first = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while not _epochs(out / "pretrain" / "hard"):
        assert first.poll() is None and time.time() < deadline, "the first invocation ended early"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _epochs(out / "pretrain" / "hard")
    assert 1 <= len(before) < epochs, "training finished before it could be killed"

    # 2. The next invocation resumes hard from last.pth, runs what is independent of the broken arm,
    #    and names the broken stage, its log and everything it stopped.
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    log = out / "logs" / "pretrain_broken.log"
    assert (
        f"FAILED stage pretrain_broken failed (exit 2); log: {log}" in second.stderr
    )  # a user error: 2
    assert "NOT" in log.read_text()  # the config error itself is in the stage's log
    stopped = second.stderr.split("not run because pretrain_broken failed: ")[1].splitlines()[0]
    assert set(stopped.split(", ")) == {
        "evaluate",
        "convert_broken",
        f"finetune_{DET}_broken",
        f"compare_{DET}",
    }
    after = _epochs(out / "pretrain" / "hard")
    assert [r["epoch"] for r in after] == list(range(1, epochs + 1))
    assert after[: len(before)] == before  # the epochs before the kill were kept, not trained again
    assert (
        f"resumed from {out / 'pretrain' / 'hard' / 'last.pth'} after epoch {len(before)}"
        in (out / "logs" / "pretrain_hard.log").read_text()
    )
    assert (out / "detection" / DET / "hard" / "results.json").is_file()
    assert not (out / "report.md").exists()

    # 3. Without the broken arm, a third invocation runs only what is left, and the report appears.
    def slow(raw):
        del raw["arms"]["als"]
        raw["arms"]["hard"]["overrides"] = {"SOLVER.EPOCHS": epochs}

    plan = _plan(tmp_path, slow)
    third = subprocess.run(
        [*cmd[:3], str(plan), *cmd[4:]], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    ran = [
        ln.split(": submitted job")[0].split("]: ")[1]
        for ln in third.stderr.splitlines()
        if ": submitted job" in ln
    ]
    assert sorted(ran) == ["compare_" + DET, "evaluate"]
    _check_outputs(out, arms=("hard",))


def _slurm_cluster() -> bool:
    """A SLURM controller that answers and has a usable node (e.g. scripts/slurm_one_node.sh)."""
    import shutil

    if not (shutil.which("sbatch") and shutil.which("sinfo")):
        return False
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=3
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s in states for s in ("idle", "mixed", "allocated"))


@pytest.mark.slow
@pytest.mark.skipif(
    not _slurm_cluster(), reason="no SLURM cluster here (scripts/slurm_one_node.sh makes one)"
)
def test_smoke_plan_on_slurm_with_preemption_and_a_broken_arm(tmp_path):
    """The real thing: sbatch jobs with afterok dependencies; SLURM's preemption signal to a
    training job makes submitit checkpoint and `scontrol requeue` it, and it resumes."""
    out = tmp_path / "smoke"
    epochs = 4

    def edit(raw):
        raw["arms"]["hard"]["overrides"] = {"SOLVER.EPOCHS": epochs}
        raw["arms"]["broken"] = {
            "config": "configs/pretrain/demo_hard.yaml",
            "overrides": {"NOT.A.KEY": 1},
        }

    cmd = [
        sys.executable,
        "tools/run_experiment.py",
        "--plan",
        str(_plan(tmp_path, edit)),
        "--out",
        str(out),
        "--launcher",
        "slurm",
    ]
    run = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 600
    while not _epochs(out / "pretrain" / "hard"):
        assert run.poll() is None and time.time() < deadline
        time.sleep(0.2)
    job = json.loads((out / ".stages" / "pretrain_hard.job.json").read_text())["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    stdout, _ = run.communicate(timeout=900)
    assert run.returncode == 1, stdout[-3000:]
    assert (
        f"FAILED stage pretrain_broken failed (exit 2); log: {out / 'logs' / 'pretrain_broken.log'}"
        in stdout
    )
    stopped = stdout.split("not run because pretrain_broken failed: ")[1].splitlines()[0]
    assert set(stopped.split(", ")) == {
        "evaluate",
        "convert_broken",
        f"finetune_{DET}_broken",
        f"compare_{DET}",
    }
    assert [r["epoch"] for r in _epochs(out / "pretrain" / "hard")] == list(range(1, epochs + 1))
    log = (out / "logs" / "pretrain_hard.log").read_text()
    assert "(resuming from" in log and "resumed from" in log
    job_logs = "".join(p.read_text() for p in (out / ".submitit").glob(f"{job}_0_log.out"))
    assert "requeued; will resume from" in job_logs
    for arm in ARMS:
        assert (out / "detection" / DET / arm / "results.json").is_file()

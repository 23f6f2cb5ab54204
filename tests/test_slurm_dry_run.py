"""`--dry-run --launcher slurm` shows what each SLURM job will be submitted with (submitit's own
sbatch writer over the launcher's parameters), and `--partition` / `--account` set them."""

from __future__ import annotations

from pathlib import Path

import yaml
from tiny_runs import run_tool

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs/experiments/paper_r50.yaml"


def _jobs(text: str) -> dict[str, list[str]]:
    """Stage -> its sbatch options (the options of every job included)."""
    lines = text.split("# SLURM: one sbatch job per stage; every job: ", 1)[1].splitlines()
    common = lines[0].split()
    jobs = {}
    for line in lines[1:]:
        if line.startswith(("# pre-flight", "# estimates")):
            break
        name, flags = line.split(". ", 1)[1].split(": ", 1)
        jobs[name] = common + flags.split()
    return jobs


def test_slurm_dry_run_shows_each_jobs_resources_and_dependencies(tmp_path, capsys):
    raw = yaml.safe_load(PAPER.read_text())
    raw["slurm"].update(partition="from_plan", account="plan_account", qos="high")
    raw["convert"]["resources"]["partition"] = "cpu"
    plan = tmp_path / "paper.yaml"
    plan.write_text(yaml.safe_dump(raw, sort_keys=False))
    argv = ["--plan", str(plan), "--out", str(tmp_path / "out"), "--dry-run"]

    assert (
        run_tool(
            "run_experiment",
            [*argv, "--launcher", "slurm", "--partition", "gpu", "--account", "lab"],
        )
        == 0
    )
    jobs = _jobs(capsys.readouterr().out)
    assert len(jobs) == 14
    pretrain = jobs["pretrain_hard"]
    for flag in (
        "--partition=gpu",  # the command line over the plan's slurm section
        "--account=lab",
        "--qos=high",  # the plan's, kept
        "--nodes=1",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--cpus-per-task=80",  # 10 per process x 8 processes
        "--mem=480GB",
        "--time=1440",
        "--signal=USR2@120",
        "--job-name=paper_r50.pretrain_hard",
    ):
        assert flag in pretrain, (flag, pretrain)
    assert not any(f.startswith("--dependency") for f in pretrain)
    assert "--partition=cpu" in jobs["convert_ls"]  # a stage's own partition wins
    assert "--dependency=afterok:pretrain_ls" in jobs["convert_ls"]
    assert "--dependency=afterok:pretrain_hard:pretrain_ls:pretrain_als" in jobs["evaluate"]
    assert "--kill-on-invalid-dep=yes" in jobs["evaluate"]
    assert "--dependency=afterok:convert_als" in jobs["finetune_faster_rcnn_R_50_FPN_1x_als"]
    assert "--time=10" in jobs["compare_faster_rcnn_R_50_FPN_1x"]
    transfer = jobs["transfer_als"]
    for flag in ("--gpus-per-node=1", "--cpus-per-task=10", "--mem=64GB", "--time=240"):
        assert flag in transfer, (flag, transfer)
    assert "--dependency=afterok:pretrain_als" in transfer  # not after the evaluation

    assert run_tool("run_experiment", [*argv, "--launcher", "slurm"]) == 0
    jobs = _jobs(capsys.readouterr().out)
    assert (
        "--partition=from_plan" in jobs["evaluate"] and "--account=plan_account" in jobs["evaluate"]
    )

    assert run_tool("run_experiment", argv) == 0  # the local launcher submits nothing
    assert "# SLURM" not in capsys.readouterr().out

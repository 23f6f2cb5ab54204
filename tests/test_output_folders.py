"""Output folders that cannot be one, and a launcher that cannot run here: one line `error: ...`,
exit status 2, before anything is written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import run_tool

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = ["--config-file", "configs/pretrain/demo_als.yaml", "OUTPUT_DIR"]
FINETUNE = ["--config-file", "configs/detection/faster_rcnn_R_18_FPN_demo.yaml", "OUTPUT_DIR"]
SMOKE_PLAN = ["--plan", "configs/experiments/smoke.yaml"]


def _error_line(capsys) -> str:
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    return line


@pytest.mark.parametrize(
    "tool, argv, option",
    [
        ("pretrain", lambda out: [*PRETRAIN, out], "OUTPUT_DIR"),
        ("finetune_coco", lambda out: [*FINETUNE, out], "OUTPUT_DIR"),
        ("evaluate", lambda out: ["--checkpoint", "x.pth", "--data", ".", "--out", out], "--out"),
        ("compare", lambda out: ["run", "--out", out], "--out"),
        ("run_experiment", lambda out: [*SMOKE_PLAN, "--out", out], "out"),
    ],
)
def test_an_output_folder_that_is_a_file(tool, argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    afile = tmp_path / "afile"
    afile.write_text("a user's file")
    assert run_tool(tool, argv(str(afile))) == 2
    assert _error_line(capsys).startswith(f"error: {option} {afile} is a file, not a folder (")
    assert run_tool(tool, argv(str(afile / "sub"))) == 2
    assert _error_line(capsys).startswith(
        f"error: {option} {afile / 'sub'} cannot be made: {afile} is a file, not a folder ("
    )
    assert afile.read_text() == "a user's file" and sorted(tmp_path.iterdir()) == [afile]


def test_a_conversion_into_a_file_or_a_folder(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("a user's file")
    assert run_tool("convert_to_d2", ["in.pth", str(afile / "x.pkl")]) == 2
    assert _error_line(capsys).startswith(
        f"error: OUTPUT's folder {afile} is a file, not a folder ("
    )
    (tmp_path / "d.pkl").mkdir()
    assert run_tool("convert_to_d2", ["in.pth", str(tmp_path / "d.pkl")]) == 2
    assert _error_line(capsys).startswith(f"error: {tmp_path / 'd.pkl'} is a folder: OUTPUT names")


def _without_write_permission() -> list[str] | None:
    """A command prefix under which permissions hold (root: DAC capabilities dropped), or None."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return prefix if subprocess.run([*prefix, "true"]).returncode == 0 else None


@pytest.mark.skipif(
    _without_write_permission() is None,
    reason="running as root without setpriv to drop the DAC capabilities",
)
@pytest.mark.parametrize(
    "tool, argv, option",
    [
        ("pretrain", lambda out: [*PRETRAIN, out], "OUTPUT_DIR"),
        ("compare", lambda out: ["run", "--out", out], "--out"),
    ],
)
def test_an_unwritable_output_folder(tool, argv, option, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    out = locked / "run"
    run = subprocess.run(
        [*_without_write_permission(), sys.executable, f"tools/{tool}.py", *argv(str(out))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert (
        run.stderr.rstrip()
        .splitlines()[-1]
        .startswith(f"error: {option} {out}: cannot write into {locked} (permission denied")
    )
    assert list(locked.iterdir()) == []


def test_slurm_launcher_without_slurm(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    out = tmp_path / "exp"
    assert run_tool("run_experiment", [*SMOKE_PLAN, "--out", str(out), "--launcher", "slurm"]) == 2
    assert _error_line(capsys).startswith(
        "error: --launcher slurm needs SLURM, and there is no `srun` on PATH here"
    )
    assert not out.exists()


def test_an_empty_output_folder_name_is_not_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs/pretrain/demo_als.yaml")
    assert run_tool("pretrain", ["--config-file", config, "OUTPUT_DIR", ""]) == 2
    assert _error_line(capsys).startswith("error: OUTPUT_DIR is empty: name the output folder (")
    assert run_tool("compare", ["run", "--out", ""]) == 2
    assert _error_line(capsys).startswith("error: --out is empty")
    assert list(tmp_path.iterdir()) == []

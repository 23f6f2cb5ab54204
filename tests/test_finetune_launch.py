"""Two fine-tuning processes on the CPU: `--num-gpus 2` (gloo) and torchrun, each one job of two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import DETECTION_DEMO, FINETUNE_TINY, tiny_coco

from als_det.detection.launch import LaunchError, launch_processes

REPO = Path(__file__).resolve().parents[1]


def _two_process_run(
    launcher: list[str], flags: list[str], weights: Path, tmp_path: Path
) -> tuple[Path, str]:
    js, img = tiny_coco(tmp_path / "data")
    out = tmp_path / "run"
    tiny = [*FINETUNE_TINY, "SOLVER.IMS_PER_BATCH", "2"]  # one image per process
    cmd = [
        sys.executable,
        *launcher,
        "tools/finetune_coco.py",
        *flags,
        "--config-file",
        DETECTION_DEMO,
        "--dataset",
        f"tiny={js}:{img}",
        "--train-dataset",
        "tiny",
        "--test-dataset",
        "tiny",
        "MODEL.WEIGHTS",
        str(weights),
        "OUTPUT_DIR",
        str(out),
        "SOLVER.MAX_ITER",
        "2",
        *tiny,
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out, log


def _assert_one_job_of_two(out: Path, log: str) -> None:
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and res["device"] == "cpu" and res["iterations"] == 2
    assert log.count("Wrote " + str(out / "results.json")) == 1  # the main process alone writes it
    iters = [
        json.loads(line).get("iteration")
        for line in (out / "metrics.json").read_text().splitlines()
    ]
    assert iters == sorted(set(iters))  # one run's iterations, not two runs' interleaved
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_num_gpus_2_without_cuda_runs_two_gloo_processes(resnet18_pkl, tmp_path):
    out, log = _two_process_run([], ["--num-gpus", "2"], resnet18_pkl, tmp_path)
    _assert_one_job_of_two(out, log)
    assert "no CUDA: --num-gpus 2 starts 2 CPU processes (gloo)" in log


@pytest.mark.slow
def test_torchrun_processes_join_one_job(resnet18_pkl, tmp_path):
    out, log = _two_process_run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        [],
        resnet18_pkl,
        tmp_path,
    )
    _assert_one_job_of_two(out, log)


def test_torchrun_with_num_gpus_is_refused(monkeypatch):
    for key, value in {
        "TORCHELASTIC_RUN_ID": "x",
        "LOCAL_WORLD_SIZE": "2",
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
    }.items():
        monkeypatch.setenv(key, value)

    def never(*args):
        raise AssertionError("started although the process options contradict each other")

    with pytest.raises(LaunchError, match="torchrun already starts the processes: drop --num-gpus"):
        launch_processes(never, (), num_gpus=2)

"""torch.distributed helpers with real gloo process groups, and a 2-process torchrun pretraining
run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_runs import TINY_GEN, tiny_data_overrides

from als_det.config import load_config
from als_det.data.generated import generate
from als_det.engine.checkpoint import load_checkpoint
from als_det.engine.distributed import (
    all_gather_cat,
    all_gather_objects,
    all_reduce_sum,
    init_distributed,
    resolve_device,
)
from als_det.engine.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_world_of_one(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    assert not dist.is_initialized()
    x = torch.arange(6.0).reshape(3, 2)
    assert (
        all_gather_cat(x) is x
        and torch.equal(all_reduce_sum(x.clone()), x)
        and all_gather_objects(1) == [1]
    )
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="TRAIN.DEVICE"):
        resolve_device("tpu")


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = torch.full((rank + 2, 3), float(rank))  # rank 0: 2 rows, rank 1: 3 rows
        gathered = all_gather_cat(rows)
        total = all_reduce_sum(torch.tensor([rank + 1.0]))
        token = all_gather_objects({"from": rank})
        torch.save(
            {"gathered": gathered, "total": total, "token": token}, Path(out_dir) / f"{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_collectives_with_uneven_shards(tmp_path):
    mp.start_processes(
        _gather_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    expected = torch.cat([torch.zeros(2, 3), torch.ones(3, 3)])
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(got["gathered"], expected)  # no padding rows, rank order
        assert got["total"].item() == 3.0
        assert got["token"] == [{"from": 0}, {"from": 1}]


@pytest.mark.slow
def test_torchrun_two_process_gloo_run(tmp_path):
    root = generate(tmp_path / "gen", TINY_GEN, progress=False)
    opts = [
        *tiny_data_overrides(root),
        "SOLVER.EPOCHS",
        "1",
        "SOLVER.BATCH_SIZE",
        "4",
        "SOLVER.WARMUP_EPOCHS",
        "0",
        "SOLVER.SCHEDULE",
        "step",
        "SOLVER.STEPS",
        "()",
        "TRAIN.MAX_ITERS_PER_EPOCH",
        "2",
        "TRAIN.DEVICE",
        "cpu",
    ]
    single = train(
        load_config(
            str(REPO / "configs/pretrain/demo_als.yaml"),
            opts + ["OUTPUT_DIR", str(tmp_path / "one")],
        )
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "tools/pretrain.py",
        "--config-file",
        "configs/pretrain/demo_als.yaml",
        "--opts",
        *opts,
        "OUTPUT_DIR",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "two"
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (ref,) = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert set(row) == set(ref)  # the same per-epoch format as one process
    assert row["images"] == 2 * 4 * 2 and ref["images"] == 2 * 4  # 2 iterations x batch 4 x ranks
    assert row["val_n"] == ref["val_n"] == 9  # 9 val images split 5 + 4, none counted twice
    # global batch 8 doubles the lr (linear scaling; constant: no warm-up, no steps)
    assert row["lr"] == pytest.approx(2 * ref["lr"]) and ref["lr"] == pytest.approx(0.4 * 4 / 256)
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["model"])
    assert (
        proc.stdout.count("epoch 1/1:") + proc.stderr.count("epoch 1/1:") == 1
    )  # rank 0 logs alone

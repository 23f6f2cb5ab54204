"""A pretraining SIGKILLed in the middle of an epoch's writes (last.pth, best.pth, the metrics.jsonl
row) and resumed leaves what an uninterrupted run leaves: best.pth, every epoch's row once, no
temporary files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer import TINY_GEN, rows, tiny_cfg

from als_det.data.generated import generate
from als_det.engine.checkpoint import load_checkpoint
from als_det.engine.trainer import train

ONE_ITER = ("TRAIN.MAX_ITERS_PER_EPOCH", "1")

# Trains as the config file says, and SIGKILLs itself halfway through the n-th atomic write of NAME.
KILLED_RUN = """
import json, os, signal, sys
from pathlib import Path
import torch
from als_det import io
from als_det.config import load_config
from als_det.engine.trainer import train

config, opts, name, nth, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
real_write, seen = io._atomic_write, []

def write_then_die(f):
    f.write(b"half a file")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def atomic_write(path, write):
    seen.extend([Path(path).name] if Path(path).name == name else [])
    return real_write(path, write_then_die if len(seen) == nth else write)

io._atomic_write = atomic_write
train(load_config(config, opts))
"""


@pytest.fixture(scope="module")
def data_and_straight_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("killed")
    root = generate(base / "gen", TINY_GEN, progress=False)
    return root, train(tiny_cfg(root, base / "straight", *ONE_ITER))


def _without_timings(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.endswith("_time_s") and k != "images_per_s"}
        for r in rows(out)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, nth",
    [
        ("best.pth", 1),  # epoch 1: last.pth written, best.pth half, no row
        ("metrics.jsonl", 1),  # epoch 1: both checkpoints written, the row half
    ],
)
def test_a_kill_between_checkpoint_writes_loses_nothing_after_resume(
    data_and_straight_run, tmp_path, name, nth
):
    root, straight = data_and_straight_run
    out = tmp_path / "run"
    cfg = tiny_cfg(root, out, *ONE_ITER)
    (tmp_path / "cfg.yaml").write_text(cfg.dump())
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_RUN,
            json.dumps([str(tmp_path / "cfg.yaml"), [], name, nth, torch.get_num_threads()]),
        ],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert list(out.glob(f".{name}.*.tmp"))  # the dead writer's leftover

    train(cfg, resume="last")

    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in straight.iterdir())
    assert not list(out.rglob("*.tmp"))
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    assert _without_timings(out) == _without_timings(straight)
    for ckpt in ("last.pth", "best.pth"):
        a, b = load_checkpoint(straight / ckpt), load_checkpoint(out / ckpt)
        assert a["epoch"] == b["epoch"], ckpt
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), ckpt

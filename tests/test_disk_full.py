"""A full disk while pretraining writes a checkpoint or its metrics: one line `error: no space left
on device writing PATH`, exit status 2, the traceback in log.txt, no partial file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainer import TINY_GEN
from tiny_runs import tiny_data_overrides

from als_det.data.generated import generate

REPO = Path(__file__).resolve().parents[1]

# tools/pretrain.py, with the disk full from the first write of argv[1]'s file on: the suite's
# write boundary (als_det.io) hands the writer a file whose writes fail as a full disk's do.
FULL_DISK = """
import errno, os, runpy, sys
from pathlib import Path
from als_det import io

full_name = sys.argv.pop(1)
real_write = io._atomic_write

class FullDiskFile:
    def __init__(self, f):
        self.f, self.room = f, 100
    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)

def atomic_write(path, write):
    if Path(path).name != full_name:
        return real_write(path, write)
    return real_write(path, lambda f: write(FullDiskFile(f)))

io._atomic_write = atomic_write
sys.path.insert(0, "tools")  # as when the tool runs as a script
runpy.run_path("tools/pretrain.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("full") / "gen", TINY_GEN, progress=False)


def _pretrain_args(root: Path, out: Path) -> list[str]:
    return [
        "--config-file",
        "configs/pretrain/demo_als.yaml",
        *tiny_data_overrides(root, out.parent / "cache"),
        "SOLVER.EPOCHS",
        "1",
        "SOLVER.BATCH_SIZE",
        "8",
        "SOLVER.WARMUP_EPOCHS",
        "0",
        "TRAIN.MAX_ITERS_PER_EPOCH",
        "1",
        "TRAIN.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        str(out),
    ]


def _check_one_line_and_no_partial_file(run: subprocess.CompletedProcess, out: Path, name: str):
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.rstrip().splitlines()[-1] == (
        f"error: no space left on device writing {out / name} (traceback in {out / 'log.txt'})"
    )
    assert "Traceback" not in run.stderr
    log = (out / "log.txt").read_text()
    assert "Traceback" in log and "No space left on device" in log
    assert not (out / name).exists()
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["last.pth", "metrics.jsonl"])
def test_disk_full_at_the_write_boundary(data_root, tmp_path, name):
    out = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-c", FULL_DISK, name, *_pretrain_args(data_root, out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_one_line_and_no_partial_file(run, out, name)
    if name == "metrics.jsonl":  # the epoch's checkpoints were written before it
        assert (out / "last.pth").is_file() and (out / "best.pth").is_file()


def _mount_namespace() -> list[str] | None:
    """The `unshare` prefix that gives a command a private mount namespace where it may mount a
    tmpfs (root, or a user namespace), or None where that is not allowed here."""
    if shutil.which("unshare") is None:
        return None
    prefix = (
        ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount", "--map-root-user"]
    )
    probe = subprocess.run(
        [*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True
    )
    return prefix if probe.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.skipif(
    _mount_namespace() is None, reason="cannot mount a tmpfs here (needs root or user namespaces)"
)
def test_disk_full_on_a_real_3mb_tmpfs(data_root, tmp_path):
    out, seen = tmp_path / "disk" / "run", tmp_path / "seen"
    out.parent.mkdir()
    seen.mkdir()
    # the tmpfs lives as long as the command's mount namespace: the shell copies out what it left
    script = (
        f'mount -t tmpfs -o size=3m tmpfs "{out.parent}" && "$@"; rc=$?; '
        f'ls -A "{out}" > "{seen}/files"; cp "{out}/log.txt" "{seen}/"; exit $rc'
    )
    cmd = [sys.executable, "tools/pretrain.py", *_pretrain_args(data_root, out)]
    run = subprocess.run(
        [*_mount_namespace(), "sh", "-c", script, "sh", *cmd],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.rstrip().splitlines()[-1] == (
        f"error: no space left on device writing {out / 'last.pth'} "
        f"(traceback in {out / 'log.txt'})"
    )
    assert "Traceback" not in run.stderr
    log = (seen / "log.txt").read_text()
    assert "Traceback" in log and "No space left on device" in log
    assert (seen / "files").read_text().split() == ["config.yaml", "log.txt", "run.json", "tb"]

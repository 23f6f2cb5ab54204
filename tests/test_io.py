"""Atomic writes: leftovers of killed saves are cleaned up, permissions follow the umask."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from als_det.io import STALE_TEMP_AGE_S, atomic_torch_save, atomic_write_text

KILLED_SAVE = """
import os, signal, sys
from als_det.io import atomic_write_bytes

def write_then_die(f):
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write_bytes(sys.argv[1], b"")  # the earlier, complete file
from als_det import io
io._atomic_write(sys.argv[1], write_then_die)
"""


def _temps(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path: Path) -> None:
    target = tmp_path / "last.pth"
    run = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target)], capture_output=True)
    assert run.returncode == -9, run.stderr
    (left,) = _temps(tmp_path, "last.pth")
    assert left.read_bytes() == b"half a checkpoint" and target.read_bytes() == b""
    # a write in progress in a live process (this one) and another target's temp file stay
    live = tmp_path / f".last.pth.{socket.gethostname()}.{os.getpid()}.abc123.tmp"
    live.write_bytes(b"being written")
    other = tmp_path / f".best.pth.{socket.gethostname()}.999999999.abc123.tmp"
    other.write_bytes(b"another target")
    atomic_torch_save(target, {"epoch": torch.tensor(3)})
    assert _temps(tmp_path, "last.pth") == [live] and other.exists()
    assert torch.load(target, weights_only=True)["epoch"] == 3


def test_temp_files_of_unknown_writers_are_removed_only_when_old(tmp_path: Path) -> None:
    target = tmp_path / "metrics.jsonl"
    young = tmp_path / ".metrics.jsonl.other-host.12.abc.tmp"
    old = tmp_path / ".metrics.jsonl.k3j4h5.tmp"  # the naming of earlier versions
    for p in (young, old):
        p.write_text("x")
    past = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(old, (past, past))
    atomic_write_text(target, "{}\n")
    assert _temps(tmp_path, "metrics.jsonl") == [young]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "results.json", "{}\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~umask

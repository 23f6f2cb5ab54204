"""One run per output folder: a second run into a folder another live process holds is refused
with one line naming the holder, for pretraining, fine-tuning and the experiment runner; a lock
left by a killed process blocks nobody."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from als_det.run_lock import LOCK_FILE, FolderInUseError, output_lock

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from als_det.run_lock import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_live_holder_refuses_and_a_killed_one_does_not_block(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(FolderInUseError) as err:
            with output_lock(folder):
                pass
        assert (
            f"{folder} is in use by another run: pid {holder.pid} on {socket.gethostname()} "
            in (str(err.value))
        )
        assert " since 20" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_FILE).is_file()  # the killed holder's lock file stays, unlocked
    with output_lock(folder):
        assert f'"pid": {os.getpid()}' in (folder / LOCK_FILE).read_text()
    assert folder.is_dir() and not (folder / LOCK_FILE).exists()


def test_a_folder_the_lock_created_goes_again_if_nothing_was_written(tmp_path):
    with output_lock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_FILE).is_file()
    assert not (tmp_path / "a" / "b").exists()
    with output_lock(tmp_path / "c", enabled=False):  # ranks other than 0
        pass
    assert not (tmp_path / "c").exists()


def _tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["tools/pretrain.py", "--config-file", "configs/pretrain/demo_als.yaml", "OUTPUT_DIR"],
        [
            "tools/finetune_coco.py",
            "--config-file",
            "configs/detection/faster_rcnn_R_18_FPN_demo.yaml",
            "OUTPUT_DIR",
        ],
        ["tools/run_experiment.py", "--plan", "configs/experiments/smoke.yaml", "--out"],
    ],
    ids=["pretrain", "finetune", "runner"],
)
def test_a_second_run_into_a_folder_in_use_is_one_line_naming_the_holder(tmp_path, argv):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "last.pth").write_bytes(b"the running run's")
    with output_lock(folder):
        second = _tool(*argv, str(folder))
    assert second.returncode == 2, second.stderr[-3000:]
    (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert f"{folder} is in use by another run: pid {os.getpid()} on " in line
    assert "Traceback" not in second.stderr
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.pth"
    ]  # nothing written, nothing moved


def test_a_folder_where_the_lock_goes_is_one_clear_error(tmp_path):
    (tmp_path / LOCK_FILE).mkdir()
    with pytest.raises(ValueError, match=r"\.lock is a folder: remove it"):
        with output_lock(tmp_path):
            pass
